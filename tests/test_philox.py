"""The dropout and zoneout masks' generator (lstmkit/ops/philox.py, csrc/philox.h).

Outside reference: the known-answer vectors of Philox4x32-10 published with Random123
(Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"; the
kat_vectors file of the Random123 distribution): counter (4 words), key (2 words) → output
(4 words). The C++ kernel and the torch operations must both give them, and the same masks
bit for bit; the masks must have the Bernoulli statistics they claim."""

from __future__ import annotations

import math

import pytest
import torch

from lstmkit.ops import philox
from lstmkit.ops.extension import cpp_module

KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _engine():
    module = cpp_module("engine", required=False)
    if module is None:
        pytest.skip("the C++ extension is not available")
    return module


@pytest.mark.parametrize("counter, key, want", KAT)
def test_known_answers_torch_operations(counter, key, want):
    words = philox.philox4x32(tuple(torch.tensor([c]) for c in counter), key)
    assert [int(w) for w in words] == list(want)


@pytest.mark.parametrize("counter, key, want", KAT)
def test_known_answers_cpp(counter, key, want):
    assert _engine().philox_words(list(counter), list(key)) == list(want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (257, 129), (1600, 128)])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_mask_equals_torch_operations(dtype, shape, threads):
    """Bit for bit, for sizes that are no multiple of 4 or of the kernel's blocks, on one and
    two threads (the stream is a function of the element index only)."""
    _engine()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(7)
        got = philox.bernoulli_mask(shape, 0.3, 2.5, torch.empty(0, dtype=dtype))
    finally:
        torch.set_num_threads(before)
    torch.manual_seed(7)
    want = philox._mask_torch(shape, philox._threshold(0.3), 2.5, philox._draw_key(), dtype,
                              torch.device("cpu"))
    assert got.dtype == dtype and got.shape == shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.9])
def test_bernoulli_statistics(p):
    """The share of kept elements within 5 standard errors of p over 10⁶ elements, and
    neighbouring elements (same counter, next word; next counter) uncorrelated."""
    torch.manual_seed(0)
    n = 1 << 20
    m = philox.bernoulli_mask((n,), p, 1.0, torch.empty(0, dtype=torch.float64))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(m.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    for lag in (1, 4, 5):
        a, b = m[:-lag] - p, m[lag:] - p
        corr = (a * b).mean().item() / (p * (1 - p))
        assert abs(corr) < 5 / math.sqrt(n), (lag, corr)


def test_edges_seed_and_errors():
    like = torch.empty(0)
    assert philox.bernoulli_mask((10, 10), 0.0, 1.0, like).sum() == 0
    assert torch.equal(philox.bernoulli_mask((10, 10), 1.0, 3.0, like), torch.full((10, 10), 3.0))
    torch.manual_seed(1)
    a = philox.bernoulli_mask((64, 64), 0.5, 1.0, like)
    b = philox.bernoulli_mask((64, 64), 0.5, 1.0, like)
    torch.manual_seed(1)
    assert torch.equal(philox.bernoulli_mask((64, 64), 0.5, 1.0, like), a)
    assert not torch.equal(a, b)                      # a new key per mask
    half = philox.bernoulli_mask((5,), 0.5, 1.0, torch.empty(0, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16               # other dtypes: the torch operations
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            philox.bernoulli_mask((2,), bad, 1.0, like)


def test_traced_masks_are_drawn_again():
    """Under torch.jit.trace the mask comes from the torch operations, so the trace records
    the generator: a traced function gives fresh 0/value masks per call (the C++ fill, which
    a trace cannot see, would replay an uninitialised tensor)."""
    def f(x):
        return x * philox.bernoulli_mask(tuple(x.shape), 0.5, 2.0, x)

    x = torch.ones(64, 32)
    traced = torch.jit.trace(f, (x,), check_trace=False)
    a, b = traced(x), traced(x)
    assert set(a.unique().tolist()) <= {0.0, 2.0} and set(b.unique().tolist()) <= {0.0, 2.0}
    assert 0.3 < (a > 0).double().mean().item() < 0.7
    assert not torch.equal(a, b)
