"""The large GEMMs of a fused layer call (the input projection ``x W_ihᵀ``, the input
gradient ``dA W_ih`` and the weight gradients ``dAᵀ x``, ``dAᵀ ĥ``), run by the C++ engine's
blocked brgemm (``mm_into`` in ``csrc/engine.cpp``, ``big_gemm`` in ``csrc/common.h``:
oneDNN's micro-kernels, picked at run time for the CPU, split over torch's threads) while
a layer runs on the C++ loop, else by torch.

Why: torch's float32 ``mm`` goes to MKL, which on AMD CPUs runs its AVX2 kernels even where
the CPU has AVX-512; oneDNN's kernels use what the CPU has (see docs/performance.md).

:func:`using_engine` is entered by :mod:`lstmkit.ops.fused` around a layer call whose loop is
the C++ extension; :func:`matmul_into` (and :func:`addmm`) take the engine's path only then,
for float32 CPU tensors, and when ``LSTMKIT_GEMM`` is not ``blas``. Anything else (the torch
loop backend, float64, other devices, tracing) runs torch's own ops, unchanged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

_state = threading.local()


@contextlib.contextmanager
def using_engine(module) -> Iterator[None]:
    """Within this block (one layer call), :func:`matmul_into` runs on ``module``'s
    ``mm_into`` (the compiled engine), or on torch if ``module`` is None."""
    saved = getattr(_state, "module", None)
    _state.module = module
    try:
        yield
    finally:
        _state.module = saved


def _engine(*tensors: Tensor):
    module = getattr(_state, "module", None)
    if module is None or os.environ.get("LSTMKIT_GEMM", "").strip().lower() == "blas":
        return None
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2:
            return None
    return module


def matmul_into(out: Tensor, a: Tensor, b: Tensor, accumulate: bool = False) -> Tensor:
    """``out = a @ b`` (``accumulate``: ``out += a @ b``), in place; returns ``out``."""
    module = _engine(out, a, b)
    if module is None or not _dense_rows(out) or not (_unit(a) and _unit(b)):
        if accumulate:
            return out.addmm_(a, b)
        return torch.mm(a, b, out=out)
    module.mm_into(out, a, b, accumulate)
    return out


def addmm(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """A new ``bias + a @ b`` (``a @ b`` without a bias), as ``torch.addmm``."""
    if _engine(a, b) is None:
        return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)
    if bias is None:
        out = a.new_empty(a.shape[0], b.shape[1])
        return matmul_into(out, a, b)
    # a new tensor: .contiguous() of a one-row expand is the bias itself, which the
    # accumulation would then overwrite
    out = a.new_empty(a.shape[0], b.shape[1])
    out.copy_(bias.expand_as(out))
    return matmul_into(out, a, b, accumulate=True)


def _unit(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1 or t.shape[0] <= 1 or t.stride(0) == 1


def _dense_rows(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1
