r"""Bernoulli masks for dropout and zoneout from a counter-based generator.

The masks of the regularisers (:mod:`lstmkit.nn.regularize`, the cells' ``dropout_mask`` and
``zoneout_mask``) are drawn here instead of by ``Tensor.bernoulli_``, which on the CPU took
about 7 ns per element (1.4 ms for one (1600, 128) zoneout mask: a quarter of a zoneout LSTM's
training step at (100,16,128)). The generator is Philox4x32-10 (Salmon, Moraes, Dror & Shaw
2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11): ten rounds of

    (c0, c1, c2, c3) ← (hi(M1·c2) ⊕ c1 ⊕ k0, lo(M1·c2), hi(M0·c0) ⊕ c3 ⊕ k1, lo(M0·c0))
    (k0, k1) ← (k0 + W0, k1 + W1)          (32-bit words, M0 = 0xD2511F53, M1 = 0xCD9E8D57,
                                            W0 = 0x9E3779B9, W1 = 0xBB67AE85)

The stream of a mask: element i (row-major) is word i mod 4 of the generator at counter
(⌊i/4⌋ mod 2³², ⌊i/4⌋ div 2³², 0, 0); the key (k0, k1) is two 32-bit words drawn from
torch's default CPU generator for each mask, so ``torch.manual_seed`` makes the masks
reproducible, and every device, thread count and backend gets the same mask (in eager
mode; see :func:`bernoulli_mask` for torch.compile). An element is
kept (``value``) when its word is below ``round(p · 2³²)``: probability p up to 2⁻³³.

The C++ extension fills CPU float32/float64 masks (``csrc/philox.h``, shared out over torch's
threads); :func:`philox4x32` is the same generator in int64 torch operations, used for every
other tensor (other devices and dtypes, under ``torch.compile`` and ``torch.jit.trace``, or
without the extension): the same numbers for the same key.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_WORD = 0xFFFFFFFF


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int]
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 of int64 tensors holding 32-bit words (the counter) under one key:
    the four output words, int64 in [0, 2³²). The 64-bit products wrap in int64, whose low 64
    bits are the exact 32 × 32-bit product."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = c0 * M0, c2 * M1
        hi0, lo0 = (p0 >> 32) & _WORD, p0 & _WORD
        hi1, lo1 = (p1 >> 32) & _WORD, p1 & _WORD
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & _WORD, (k1 + W1) & _WORD
    return c0, c1, c2, c3


def _threshold(p: float) -> int:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a Bernoulli probability must be in [0, 1], got {p!r}")
    return round(p * 2.0 ** 32)


def _draw_key() -> Tensor:
    """(k0, k1): two 32-bit words from torch's default CPU generator (int64 tensor)."""
    return torch.randint(0, 1 << 32, (2,), dtype=torch.int64)


def _mask_torch(shape: tuple[int, ...], threshold: int, value: float, key: Tensor,
                dtype: torch.dtype, device: torch.device) -> Tensor:
    numel = math.prod(shape)
    g = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    zero = torch.zeros_like(g)
    key = key.to(device)
    words = philox4x32((g & _WORD, g >> 32, zero, zero), (key[0], key[1]))
    stream = torch.stack(words, dim=1).reshape(-1)[:numel]
    keep = stream < threshold
    return torch.where(keep, torch.tensor(value, dtype=dtype, device=device),
                       torch.tensor(0, dtype=dtype, device=device)).reshape(shape)


def bernoulli_mask(shape: tuple[int, ...], p: float, value: float, like: Tensor) -> Tensor:
    """A new tensor of ``shape`` (``like``'s dtype and device): ``value`` with probability
    ``p``, else 0, independently per element (see the module docstring for the stream).
    Under ``torch.compile`` and ``torch.jit.trace`` the torch operations run, so the graph
    records them (no graph break; a trace replays the generator, not a fixed tensor). The
    key comes from ``torch.randint``: eager and ``aot_eager`` draw the same key, inductor
    draws its own (as for torch's own dropout), so compiled masks equal eager ones only
    there."""
    threshold, key = _threshold(p), _draw_key()
    shape = tuple(int(n) for n in shape)
    if (like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
        from .extension import cpp_module
        module = cpp_module("engine", required=False)
        if module is not None:
            out = torch.empty(shape, dtype=like.dtype)
            module.bernoulli_mask(out, threshold, float(value), *key.tolist())
            return out
    return _mask_torch(shape, threshold, value, key, like.dtype, like.device)
