"""Time loops that run a cell over a sequence, and the one place that picks among them.

Every backend has the signature of :func:`lstmkit.ops.reference.run_layer`.
``select_backend`` is the only dispatch: the modules call it and tests may swap it.

Backends:

* ``"reference"``: the autograd loop over the cell equations, the ground truth;
* ``"fused_cpp"``: hand-derived BPTT with the recurrence in the C++ extension (CPU,
  float32/float64), compiled on first use;
* ``"fused_py"``: the same algorithm with the recurrence as a torch loop (any device,
  any floating dtype);
* ``"fused"``: ``fused_cpp`` where it can run, else ``fused_py``;
* ``"auto"``: the fastest backend that computes the same function: torch's own oneDNN
  LSTM for a plain float32 LSTM on padded input (see ``native.py``), else ``"fused"``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from ..cells.base import CellSpec
from . import fused, loops, native, reference
from .extension import cpp_kernels, cpp_module  # noqa: F401  (cpp_kernels re-exported)

BACKENDS = ("auto", "reference", "fused", "fused_py", "fused_cpp")

LayerFn = Callable[..., tuple]


def check_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}"
        )
    return backend


_CPP_DTYPES = (torch.float32, torch.float64)


def _cpp_can_run(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _CPP_DTYPES


def _native_can_run(cell: CellSpec, x: Tensor, batch_sizes: list[int], projected: bool) -> bool:
    """torch's LSTM kernel computes none of lstmkit's variants, layer_norm included."""
    return not cell.option("layer_norm") and native.can_run(cell, x, batch_sizes, projected)


def select_backend(backend: str, cell: CellSpec, x: Tensor, batch_sizes: list[int], *,
                   projected: bool = False, recording: bool = False,
                   masked: bool = False) -> LayerFn:
    """Return the layer loop for ``backend``, ``cell`` and an input like ``x``.

    ``"auto"`` takes torch's LSTM kernel where it runs (plain float32 LSTM, padded, no
    projection, not recording), else the C++ kernels when the extension is available and
    the input is a CPU float32/float64 tensor, else the torch-loop kernels; ``"fused"``
    the same without torch's kernel. ``"fused_cpp"`` raises if the extension cannot be
    built or cannot take ``x``. Every backend but torch's returns the per-step gates.
    ``masked``: the layers get recurrent masks (recurrent dropout, zoneout; see
    ``ops/masks.py``), which the fused kernels take and torch's kernel does not. Under
    ``torch.compile`` (whose custom ops take no masks) ``"auto"``/``"fused"`` then run the
    reference loop, which compiles as plain torch code, and an explicit fused backend raises.
    """
    check_backend(backend)
    if backend == "reference":
        return reference.run_layer
    if torch.compiler.is_compiling():
        if masked and backend in ("auto", "fused"):
            return reference.run_layer
        if masked:
            raise ValueError(f"backend={backend!r} cannot run recurrent dropout or zoneout "
                             f"under torch.compile; use backend='auto' or 'reference'")
        return _compiled(backend, cell, x, batch_sizes, projected, recording)
    if backend == "fused_py":
        return partial(fused.run_layer, kernels=loops)
    if backend == "fused_cpp":
        if not _cpp_can_run(x):
            raise ValueError(f"backend='fused_cpp' runs on CPU float32/float64 tensors, got "
                             f"{x.dtype} on {x.device}; use backend='fused' or 'auto'")
        if cell.option("layer_norm"):
            cpp_module("layernorm", required=True)        # raises if it cannot be built
        return partial(fused.run_layer, kernels=cpp_kernels(required=True))
    if (backend == "auto" and not recording and not masked
            and _native_can_run(cell, x, batch_sizes, projected)):
        return native.run_layer
    kernels = cpp_kernels(required=False) if _cpp_can_run(x) else None
    return partial(fused.run_layer, kernels=kernels or loops)


def _compiled(backend: str, cell: CellSpec, x: Tensor, batch_sizes: list[int],
              projected: bool, recording: bool) -> LayerFn:
    """Under ``torch.compile``: the same choice, through the custom ops of
    :mod:`lstmkit.ops.library`, which pick their kernels when they run."""
    from . import library
    if backend == "fused_cpp" and not _cpp_can_run(x):
        raise ValueError(f"backend='fused_cpp' runs on CPU float32/float64 tensors, got "
                         f"{x.dtype} on {x.device}; use backend='fused' or 'auto'")
    if cell.option("layer_norm") and torch.compiler.is_exporting():
        return reference.run_layer      # no custom op for it: export the equations, unrolled
    if cell.option("layer_norm"):       # no custom op for it: a graph break, run eagerly
        use_cpp = backend != "fused_py" and _cpp_can_run(x)
        kernels = (cpp_kernels(required=backend == "fused_cpp") if use_cpp else None) or loops
        return torch.compiler.disable(partial(fused.run_layer, kernels=kernels))
    if backend == "auto" and not recording and _native_can_run(cell, x, batch_sizes, projected):
        return native.run_layer
    return partial(library.run_layer, kernels="fused" if backend == "auto" else backend)
