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
