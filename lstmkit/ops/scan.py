"""The whole-layer paths of the linear-recurrence families (minGRU, minLSTM; see
:mod:`lstmkit.cells.minrnn`): h_t = a_t ⊙ h_{t-1} + b_t with a_t, b_t from x_t alone, so a
layer is one input GEMM for all steps and then a scan over time, with no GEMM per step.

:func:`select` is what ``CellSpec.scan`` points to; :func:`lstmkit.ops.select_backend`
calls it for every backend but ``"reference"`` (the autograd loop over the equations):

* ``"fused_py"``: the log-space parallel scan in torch ops (``logcumsumexp``,
  :func:`lstmkit.cells.minrnn.log_scan`), differentiated by autograd; any device and dtype;
* ``"fused_cpp"``: the C++ kernel (``csrc/minrnn.h``): one pass over time per sequence,
  vectorised over the units, sequences in parallel, with its hand-derived backward; CPU
  float32/float64;
* ``"fused"`` and ``"auto"``: the C++ kernel where it runs (measured faster and more
  precise than the torch scan at every size tried, see docs/xlstm-and-scans.md), else the
  torch scan.

The C++ kernel is the custom op ``lstmkit::minrnn_scan`` (with its backward
``lstmkit::minrnn_scan_backward``), so ``torch.compile`` and ``torch.export`` keep it in
one graph.

Both take the pre-activations in *scan order* (T, B, K·H): padded, and for the reverse
direction each sequence reversed within its own length, so that every sequence starts at
row 0 and its final state is at its own last step.
"""

from __future__ import annotations

from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import custom_op

from ..cells import minrnn
from ..cells.base import CellSpec, LayerWeights, State
from .extension import cpp_module, disabled

_CPP_DTYPES = (torch.float32, torch.float64)
KERNELS = ("torch", "cpp")


def select(backend: str, x: Tensor, *, family: str, log_space: bool):
    """The layer function of ``backend`` for ``family`` (see the module docstring)."""
    cpp_ok = x.device.type == "cpu" and x.dtype in _CPP_DTYPES
    if backend == "fused_py":
        kernel = "torch"
    elif backend == "fused_cpp":
        if not cpp_ok:
            raise ValueError(f"backend='fused_cpp' runs on CPU float32/float64 tensors, got "
                             f"{x.dtype} on {x.device}; use backend='fused' or 'auto'")
        cpp_module("engine", required=True)
        kernel = "cpp"
    elif torch.compiler.is_compiling():     # the kernel is a custom op: it compiles too;
        kernel = "cpp" if cpp_ok and not disabled() else "torch"   # built when it first runs
    else:
        use_cpp = cpp_ok and cpp_module("engine", required=False) is not None
        kernel = "cpp" if use_cpp else "torch"
    return partial(run_layer, family=family, log_space=log_space, kernel=kernel)


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              masks: object = None, side: tuple[Tensor, ...] = (), sequences: bool = False,
              family: str, log_space: bool, kernel: str) -> tuple:
    """One layer and direction, with the signature of :func:`lstmkit.ops.reference.run_layer`
    (flat rows as in a PackedSequence; returns the outputs, the final state of each sequence
    and, with ``record``, the trace of every step)."""
    if masks is not None or side:
        raise ValueError(f"the {family} layer takes no recurrent masks or side inputs")
    T, B = len(batch_sizes), batch_sizes[0]
    k_flat = F.linear(x, w.w_ih, w.b_ih)                                # (N, K·H)
    h0 = state0[0]                                                      # (B, H)
    H = h0.shape[1]
    padded = batch_sizes[-1] == B
    if padded:
        k = k_flat.view(T, B, -1)
        k = k.flip(0) if reverse else k
    else:
        rows, last = _layout(tuple(batch_sizes), reverse, x.device)
        k = k_flat.new_zeros(T * B, k_flat.shape[1]).index_copy(0, rows, k_flat).view(T, B, -1)
    h = scan(family, k, h0, log_space, kernel)                          # (T, B, H)
    if padded:
        h = h.flip(0) if reverse else h
        out, final = h.reshape(T * B, H), h[0 if reverse else -1]
    else:
        flat = h.reshape(T * B, H)
        out, final = flat.index_select(0, rows), flat.index_select(0, last)
    trace = None
    if record:
        gates = minrnn.gates_of(family, k_flat.detach(), log_space)
        parts = {name: g.split(batch_sizes) for name, g in gates.items()}
        parts["h"] = out.detach().split(batch_sizes)
        trace = [{name: p[t] for name, p in parts.items()} for t in range(T)]
    if sequences:
        return out, (final,), trace, [out]
    return out, (final,), trace


def scan(family: str, k: Tensor, h0: Tensor, log_space: bool, kernel: str) -> Tensor:
    """h (T, B, H) from the pre-activations ``k`` (T, B, K·H) in scan order and h_0 (B, H)."""
    if kernel == "cpp":
        return minrnn_scan(k, h0, family == "minlstm", log_space)
    log_a, log_u, k_h = minrnn.log_coefficients(family, k)
    return minrnn.log_scan(log_a, log_u, k_h, h0, log_space)


@lru_cache(maxsize=64)
def _layout(batch_sizes: tuple[int, ...], reverse: bool, device: torch.device
            ) -> tuple[Tensor, Tensor]:
    """For packed rows: the scan-order position t'·B + b of every flat row (t' = t, or
    L_b − 1 − t in reverse, L_b the length of sequence b), and the position of each
    sequence's last step in scan order."""
    bs = torch.tensor(batch_sizes)
    T, B = len(batch_sizes), batch_sizes[0]
    lengths = (bs.unsqueeze(1) > torch.arange(B)).sum(0)                # (B,)
    t = torch.repeat_interleave(torch.arange(T), bs)                    # step of each row
    starts = torch.cumsum(bs, 0) - bs
    b = torch.arange(int(bs.sum())) - starts[t]                         # sequence of each row
    t_scan = lengths[b] - 1 - t if reverse else t
    rows = t_scan * B + b
    last = (lengths - 1) * B + torch.arange(B)
    return rows.to(device), last.to(device)


# -- the C++ kernel as torch.library custom ops: eager, torch.compile and torch.export alike ------
@custom_op("lstmkit::minrnn_scan", mutates_args=())
def minrnn_scan(k: Tensor, h0: Tensor, lstm: bool, log_space: bool) -> Tensor:
    """h (T, B, H) of the C++ kernel (``csrc/minrnn.h``) from k (T, B, K·H) and h0 (B, H)."""
    return cpp_module("engine", required=True).minrnn_forward(
        k.contiguous(), h0.contiguous(), lstm, log_space)


@minrnn_scan.register_fake
def _(k: Tensor, h0: Tensor, lstm: bool, log_space: bool) -> Tensor:
    return k.new_empty(k.shape[0], k.shape[1], h0.shape[1])


@custom_op("lstmkit::minrnn_scan_backward", mutates_args=())
def minrnn_scan_backward(k: Tensor, h0: Tensor, h: Tensor, dh: Tensor, lstm: bool,
                         log_space: bool) -> tuple[Tensor, Tensor]:
    """(∂L/∂k, ∂L/∂h0) by the kernel's hand-derived backward, from ∂L/∂h (T, B, H)."""
    dk, dh0 = cpp_module("engine", required=True).minrnn_backward(
        k.contiguous(), h0.contiguous(), h.contiguous(), dh.contiguous(), lstm, log_space)
    return dk, dh0


@minrnn_scan_backward.register_fake
def _(k, h0, h, dh, lstm, log_space):
    return torch.empty_like(k), torch.empty_like(h0)


def _setup_context(ctx, inputs, output) -> None:
    k, h0, lstm, log_space = inputs
    ctx.save_for_backward(k, h0, output)
    ctx.flags = (lstm, log_space)


def _backward(ctx, dh):
    if torch.is_grad_enabled():
        raise RuntimeError("the C++ minGRU/minLSTM kernel cannot differentiate twice "
                           "(create_graph=True); use backend='reference' or 'fused_py'")
    k, h0, h = ctx.saved_tensors
    dk, dh0 = minrnn_scan_backward(k, h0, h, dh, *ctx.flags)
    return dk, dh0, None, None


minrnn_scan.register_autograd(_backward, setup_context=_setup_context)
