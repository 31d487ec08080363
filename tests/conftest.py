import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import lstmkit.ops  # noqa: E402

# Every backend a user can name, except "auto" (which is one of them); tested as pairs.
BACKENDS = [b for b in lstmkit.ops.BACKENDS if b not in ("auto", "fused")]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
