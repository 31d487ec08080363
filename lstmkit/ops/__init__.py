"""Time loops that run a cell over a sequence, and the one place that picks among them.

Every backend has the signature of :func:`lstmkit.ops.reference.run_layer`.
:func:`select_backend` is the only dispatch: the modules call it once per forward call and
tests may swap it. It reads the cell's declared capabilities (:class:`CellSpec` fields
``fused``, ``native``, ``onnx``), never its family name.

Backends:

* ``"reference"``: the autograd loop over the cell equations, the ground truth;
* ``"fused_cpp"``: hand-derived BPTT with the recurrence in the C++ extension (CPU,
  float32/float64), compiled on first use;
* ``"fused_py"``: the same algorithm with the recurrence as a torch loop (any device,
  any floating dtype);
* ``"fused"``: ``fused_cpp`` where it can run, else ``fused_py``;
* ``"onednn"``: oneDNN's RNN primitives from the optional wheel (``lstmkit[onednn]``;
  see ``onednn.py``): LSTM (plain, peephole, projection), GRU with reset_after=True,
  tanh/relu RNN, CPU float32 on padded input, not recording, no recurrent masks; raises
  :class:`~lstmkit.ops.onednn.OneDNNUnavailable` naming what is missing otherwise;
* ``"auto"``: the fastest backend that computes the same function: ``"onednn"`` where it
  runs, the wheel is installed and the layer is large enough to be measured faster there
  (``onednn.AUTO_MIN_BH``), else
  torch's own oneDNN LSTM for a plain float32 LSTM on padded input (see ``native.py``),
  else ``"fused"``.

A family whose recurrence is linear in h with coefficients from x_t alone (minGRU,
minLSTM) declares ``CellSpec.scan``: every backend but ``"reference"`` then runs its
whole-layer scan (:mod:`lstmkit.ops.scan`: ``fused_py`` the log-space scan in torch ops,
``fused_cpp`` its C++ kernel) instead of a step loop.

Under ``torch.compile`` and ``torch.export`` the fused backends run as one custom op per
layer and family (:mod:`lstmkit.ops.library`); while ``lstmkit.interop.onnx.export`` runs, a
cell without an ONNX operator runs the reference loop instead (plain ONNX operators).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from ..cells.base import CellSpec
from . import fused, loops, native, onednn, reference
from .extension import cpp_kernels  # noqa: F401  (re-exported)

BACKENDS = ("auto", "reference", "fused", "fused_py", "fused_cpp", "onednn")

LayerFn = Callable[..., tuple]


def check_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}"
        )
    return backend


_CPP_DTYPES = (torch.float32, torch.float64)


def _cpp_can_run(cell: CellSpec, x: Tensor) -> bool:
    return (cell.fused is not None and cell.fused.cpp is not None and x.device.type == "cpu"
            and x.dtype in _CPP_DTYPES)


def _require_cpp(cell: CellSpec, x: Tensor) -> None:
    if not (x.device.type == "cpu" and x.dtype in _CPP_DTYPES):
        raise ValueError(f"backend='fused_cpp' runs on CPU float32/float64 tensors, got "
                         f"{x.dtype} on {x.device}; use backend='fused' or 'auto'")
    if cell.fused is None or cell.fused.cpp is None:
        raise ValueError(f"the {cell.family} cell has no C++ kernel; use backend='fused_py' "
                         "or 'auto'")


def _native_can_run(cell: CellSpec, x: Tensor, batch_sizes: list[int], projected: bool,
                    recording: bool, masked: bool) -> bool:
    return (cell.native and not recording and not masked
            and native.can_run(cell, x, batch_sizes, projected))


def select_backend(backend: str, cell: CellSpec, x: Tensor, batch_sizes: list[int], *,
                   projected: bool = False, recording: bool = False,
                   masked: bool = False, hidden: int | None = None) -> LayerFn:
    """Return the layer loop for ``backend``, ``cell`` and an input like ``x``.

    ``"auto"`` takes oneDNN's primitives where they run, the wheel is installed and the
    layer is large enough (:func:`lstmkit.ops.onednn.preferred`: ``cell.onednn``, CPU
    float32, padded, not recording, no recurrent masks, batch × ``hidden`` size at least
    ``onednn.AUTO_MIN_BH``), else torch's LSTM kernel where it runs
    (``cell.native``: plain float32 LSTM, padded, no projection, not recording, no
    recurrent masks), else the C++ kernels
    when the extension is available and the input is a CPU float32/float64 tensor, else
    the torch loop; ``"fused"`` the same without torch's kernel. ``"fused_cpp"`` raises if
    the extension cannot be built or cannot take ``x``. Every backend but torch's returns
    the per-step gates. ``masked``: the layers get recurrent masks (recurrent dropout,
    zoneout; see ``ops/masks.py``), which every backend but torch's kernel and oneDNN's
    takes. ``"onednn"`` raises :class:`~lstmkit.ops.onednn.OneDNNUnavailable` (a
    ValueError) where it cannot run.
    """
    check_backend(backend)
    if backend == "reference" or plain_onnx_export():
        return reference.run_layer       # plain ops: unrolled into ONNX's standard operators
    compiling = torch.compiler.is_compiling()
    if not compiling and fused._is_batched(x):
        return reference.run_layer       # vmap / torch.func batch plain ops, not the kernels
    if torch.is_autocast_enabled(x.device.type):
        if backend == "auto":            # autocast treats its ops as those of torch.nn's loops
            return reference.run_layer
        with torch.autocast(x.device.type, enabled=False):
            run = select_backend(backend, cell, x, batch_sizes, projected=projected,
                                 recording=recording, masked=masked, hidden=hidden)
        return _autocast_off(run, x)
    if backend == "onednn":              # explicit: runs, or says what is missing
        onednn.require(cell, x, batch_sizes, recording=recording, masked=masked)
        return onednn.run_layer
    if cell.scan is not None:            # a linear recurrence: its own whole-layer paths
        return cell.scan(backend, x)
    if cell.fused is None:
        if backend == "auto":
            return reference.run_layer
        raise ValueError(f"the {cell.family} cell has only the reference loop; "
                         f"backend={backend!r} cannot run it, use 'auto' or 'reference'")
    if compiling or torch.jit.is_tracing():   # one custom op per layer: a general graph
        return _compiled(backend, cell, x, batch_sizes, projected, recording, masked)
    if backend == "auto" and onednn.preferred(cell, x, batch_sizes, hidden=hidden,
                                              projected=projected, recording=recording,
                                              masked=masked):
        return onednn.run_layer
    if backend == "auto" and _native_can_run(cell, x, batch_sizes, projected, recording,
                                             masked):
        return native.run_layer
    return partial(fused.run_layer, kernels=kernels_for(backend, cell, x))


def plain_onnx_export() -> bool:
    """``torch.onnx.export`` is running, not :func:`lstmkit.interop.onnx.export` (which maps
    LSTM, GRU and RNN layers to ONNX's operators): every layer unrolls into plain operators."""
    if not torch.onnx.is_in_onnx_export():
        return False
    # imported here, not at the top: it imports torch._dynamo (1.5 s), wanted only now
    from . import library
    return not library.onnx_exporting()


def _autocast_off(run: LayerFn, x: Tensor) -> LayerFn:
    """An explicitly chosen fused backend under autocast runs in the parameters' dtype, as a
    custom kernel outside autocast's op lists does."""
    device = x.device.type

    def run_without_autocast(*args, **kwargs):
        with torch.autocast(device, enabled=False):
            return run(*args, **kwargs)
    return run_without_autocast


def kernels_for(backend: str, cell: CellSpec, x: Tensor):
    """The time loop a fused backend runs: :mod:`lstmkit.ops.loops` for ``"fused_py"``, the
    C++ extension for ``"fused_cpp"`` (raising if it cannot run), and for ``"fused"`` and
    ``"auto"`` the C++ extension where it can run, else the torch loop. The custom ops call
    it too, when they run."""
    if backend == "fused_py":
        return loops
    if backend == "fused_cpp":
        _require_cpp(cell, x)
        return cpp_kernels(required=True)
    return (cpp_kernels(required=False) if _cpp_can_run(cell, x) else None) or loops


def _compiled(backend: str, cell: CellSpec, x: Tensor, batch_sizes: list[int],
              projected: bool, recording: bool, masked: bool) -> LayerFn:
    """Under ``torch.compile``: the same choice, through the custom ops of
    :mod:`lstmkit.ops.library`, which pick their kernels when they run."""
    from . import library
    if backend == "fused_cpp":
        _require_cpp(cell, x)
    if library.onnx_exporting() and (cell.onnx is None or masked):
        return reference.run_layer      # the equations, unrolled into plain ONNX operators
    if backend == "auto" and _native_can_run(cell, x, batch_sizes, projected, recording,
                                             masked):
        return native.run_layer
    return partial(library.run_layer, kernels="fused" if backend == "auto" else backend)
