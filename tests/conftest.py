import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import lstmkit.ops  # noqa: E402

# Every backend a user can name, except "auto" (which is one of them); tested as pairs.
# "onednn" (the optional wheel) takes only float32 padded input of some cells: its pairs
# with the reference are in tests/test_onednn.py.
BACKENDS = [b for b in lstmkit.ops.BACKENDS if b not in ("auto", "fused", "onednn")]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="session", autouse=True)
def gemm_routes_file(tmp_path_factory):
    """The engine's measured GEMM routes (lstmkit/ops/gemm.py) go to a file of this test
    session, not beside the shared build: a measurement taken while the suite loads the
    machine must not decide for later benchmark runs. Set in the environment, so that the
    suite's subprocesses share it."""
    import os

    from lstmkit.ops import gemm
    path = tmp_path_factory.mktemp("gemm") / gemm.ROUTES_FILE
    saved = os.environ.get(gemm.ROUTES_ENV)
    os.environ[gemm.ROUTES_ENV] = str(path)
    yield path
    if saved is None:
        os.environ.pop(gemm.ROUTES_ENV, None)
    else:
        os.environ[gemm.ROUTES_ENV] = saved
