r"""Time loops for the Depth-Gated LSTM (see :mod:`lstmkit.cells.depth_gated`): the
reference (autograd through the cell) and the fused path (hand-derived BPTT).

Both run one layer and direction and return, besides the LSTM's outputs, the cell states
c of every step, flat (N, H) like the outputs: the layer above takes them as c^L. In the
fused path they are a differentiable output, so the gradient the layer above sends into
c^L flows back through this layer's recurrence.

Fused forward: the depth gate is a fifth gate block. One GEMM gives the input part of
all five blocks, ``xw = x [W_ih; W_xd]ᵀ + [b_ih + b_hh; b_d]`` (N, 5H), and the lower-cell
term ``w_ld ⊙ c^L_t`` is added to the d block for all steps at once (it does not depend on
the recurrence). Per step: ``a[:, :4H] += h_{t-1} W_hhᵀ``, ``a_d += w_cd ⊙ c_{t-1}``, then the
pointwise update. BPTT per step, with dh = ∂L/∂h_t (output + carried) and dc_in the
gradient arriving at c_t from outside (the layer above, through its c^L)::

    da_o = dh ⊙ tanh(c_t) ⊙ o(1 − o)
    dc   = dc_next + dc_in + dh ⊙ o ⊙ (1 − tanh² c_t)
    da_i = dc ⊙ g ⊙ i(1 − i),  da_f = dc ⊙ c_{t-1} ⊙ f(1 − f),  da_g = dc ⊙ i ⊙ (1 − g²)
    da_d = dc ⊙ c^L_t ⊙ d(1 − d)
    ∂L/∂c^L_t = dc ⊙ d + da_d ⊙ w_ld                     (into the layer below)
    dc_{t-1}  = dc ⊙ f + da_d ⊙ w_cd,   dh_{t-1} = [da_i, da_f, da_g, da_o] W_hh

and then large GEMMs: ``dx = dA [W_ih; W_xd]``, ``d[W_ih; W_xd] = dAᵀ x``,
``dW_hh = dA[:, :4H]ᵀ H_prev``, ``dw_cd = Σ da_d ⊙ c_{t-1}``, ``dw_ld = Σ da_d ⊙ c^L_t``.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import LayerWeights
from ..cells.depth_gated import depth_gated_step
from . import _cpp_can_run
from .extension import cpp_module
from .fused import _prev_of, _refuse_double_backward, prev_rows
from .loops import step_rows


# -- reference --------------------------------------------------------------------------
def reference_layer(x: Tensor, c_low: Tensor | None, batch_sizes: list[int], h0: Tensor,
                    c0: Tensor, w: LayerWeights, *, reverse: bool = False,
                    record: bool = False):
    """The autograd loop over :func:`depth_gated_step`. Returns (out (N, H), c (N, H),
    (h_n, c_n), trace or None). The carries keep the rows of sequences that ended (forward)
    or have not started (reverse), so they start as (h0, c0) and end as the final state."""
    xs = x.split(batch_sizes)
    cls = c_low.split(batch_sizes) if c_low is not None else [None] * len(batch_sizes)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    outs: list[Tensor] = [x] * len(batch_sizes)
    cells: list[Tensor] = [x] * len(batch_sizes)
    trace: list[dict[str, Tensor]] = [{} for _ in batch_sizes]
    h, c = h0, c0
    for t in order:
        n = batch_sizes[t]
        (h_t, c_t), gates = depth_gated_step(xs[t], (h[:n], c[:n]), w, c_low=cls[t])
        h, c = torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]])
        outs[t], cells[t] = h_t, c_t
        trace[t] = {**gates, "c": c_t, "h": h_t}
    return torch.cat(outs), torch.cat(cells), (h, c), trace if record else None


# -- fused: the torch loop ----------------------------------------------------------------
def depth_gated_forward(xw: Tensor, c_low: Tensor | None, w_hh: Tensor, w_cd: Tensor | None,
                        h0: Tensor, c0: Tensor, batch_sizes: list[int], reverse: bool):
    """Returns (out (N, H), c (N, H), h_n, c_n); ``xw`` (N, 4H or 5H) becomes the gate
    activations i, f, g, o [, d]."""
    N, H = xw.shape[0], h0.shape[1]
    out, c = xw.new_empty(N, H), xw.new_empty(N, H)
    h_carry, c_carry = h0.clone(), c0.clone()
    w_hh_t = w_hh.t()
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        a = xw[rows]
        a[:, : 4 * H].addmm_(h_carry[:n], w_hh_t)                         # (n, 4H)
        c_prev = c_carry[:n]
        i_t, f_t, o_t = (a[:, j * H:(j + 1) * H].sigmoid_() for j in (0, 1, 3))
        g_t = a[:, 2 * H: 3 * H].tanh_()
        c_t = torch.addcmul(f_t * c_prev, i_t, g_t, out=c[rows])
        if c_low is not None:
            d_t = a[:, 4 * H:].addcmul_(w_cd, c_prev).sigmoid_()
            c_t.addcmul_(d_t, c_low[rows])
        torch.mul(o_t, c_t.tanh(), out=out[rows])
        h_carry[:n] = out[rows]
        c_carry[:n] = c_t
    return out, c, h_carry, c_carry


def depth_gated_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor, dc_in: Tensor | None,
                         gates: Tensor, c: Tensor, c_prev_all: Tensor, c_low: Tensor | None,
                         w_hh: Tensor, w_cd: Tensor | None, w_ld: Tensor | None,
                         batch_sizes: list[int], reverse: bool):
    """BPTT (see the module docstring). Returns (dA (N, 4H or 5H), dh_0, dc_0, dc_low)."""
    H = c.shape[1]
    dA = torch.empty_like(gates)
    dc_low = torch.empty_like(c_low) if c_low is not None else None
    dh_carry, dc_carry = dh_n.clone(), dc_n.clone()
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        c_t, c_prev = c[rows], c_prev_all[rows]
        g = gates[rows]
        i_t, f_t, g_t, o_t = (g[:, j * H:(j + 1) * H] for j in range(4))
        da = dA[rows]
        da_i, da_f, da_g, da_o = (da[:, j * H:(j + 1) * H] for j in range(4))
        tanh_c = c_t.tanh()
        torch.mul(dh * tanh_c, o_t * (1 - o_t), out=da_o)
        dc = dc_carry[:n] + dh * o_t * (1 - tanh_c * tanh_c)
        if dc_in is not None:
            dc += dc_in[rows]
        torch.mul(dc * i_t, 1 - g_t * g_t, out=da_g)
        torch.mul(dc * g_t, i_t * (1 - i_t), out=da_i)
        torch.mul(dc * c_prev, f_t * (1 - f_t), out=da_f)
        dc_prev = dc * f_t
        if c_low is not None:
            d_t = g[:, 4 * H:]
            da_d = torch.mul(dc * c_low[rows], d_t * (1 - d_t), out=da[:, 4 * H:])
            torch.addcmul(dc * d_t, da_d, w_ld, out=dc_low[rows])
            dc_prev.addcmul_(da_d, w_cd)
        dh_carry[:n] = da[:, : 4 * H] @ w_hh
        dc_carry[:n] = dc_prev
    return dA, dh_carry, dc_carry, dc_low


TORCH_LOOPS = SimpleNamespace(depth_gated_forward=depth_gated_forward,
                              depth_gated_backward=depth_gated_backward)


def kernels_for(backend: str, x: Tensor) -> ModuleType | SimpleNamespace:
    """The recurrence kernels for ``backend``: the C++ extension (``csrc/depth_gated.cpp``)
    for "fused_cpp" (required) and, where it can run, "fused"/"auto"; else the torch loops."""
    if backend == "fused_py":
        return TORCH_LOOPS
    if backend == "fused_cpp":
        if not _cpp_can_run(x):
            raise ValueError(f"backend='fused_cpp' runs on CPU float32/float64 tensors, got "
                             f"{x.dtype} on {x.device}; use backend='fused' or 'auto'")
        return cpp_module("depth_gated", required=True)
    module = cpp_module("depth_gated", required=False) if _cpp_can_run(x) else None
    return module or TORCH_LOOPS


class DepthGatedFunction(Function):
    @staticmethod
    def forward(ctx, x, c_low, h0, c0, w_ih, w_hh, b_ih, b_hh, w_xd, b_d, w_cd, w_ld,
                batch_sizes, reverse, kernels):
        depth = c_low is not None
        w_in = torch.cat([w_ih, w_xd]) if depth else w_ih                  # (5H or 4H, I)
        b = None
        if b_ih is not None:
            b = torch.cat([b_ih + b_hh, b_d]) if depth else b_ih + b_hh
        xw = torch.mm(x, w_in.t()) if b is None else torch.addmm(b, x, w_in.t())
        H = h0.shape[1]
        if depth:
            xw[:, 4 * H:].addcmul_(w_ld, c_low)                              # w_ld ⊙ c^L_t
        out, c, h_n, c_n = kernels.depth_gated_forward(xw, c_low, w_hh, w_cd, h0, c0,
                                                       batch_sizes, reverse)
        gates = xw
        ctx.save_for_backward(x, c_low, h0, c0, w_in, w_hh, w_cd, w_ld, out, c, gates)
        ctx.config = (batch_sizes, reverse, b is not None, kernels)
        ctx.mark_non_differentiable(gates)
        return out, c, h_n, c_n, gates

    @staticmethod
    def backward(ctx, dout, dc_in, dh_n, dc_n, _dgates):
        _refuse_double_backward()
        x, c_low, h0, c0, w_in, w_hh, w_cd, w_ld, out, c, gates = ctx.saved_tensors
        batch_sizes, reverse, has_bias, kernels = ctx.config
        need = ctx.needs_input_grad
        H = h0.shape[1]
        prev = prev_rows(batch_sizes, reverse, x.device)
        c_prev = _prev_of(c, c0, prev, 0, x.shape[0])
        dA, dh0, dc0, *dc_low = kernels.depth_gated_backward(
            _dense(dout, out), _dense(dh_n, h0), _dense(dc_n, c0),
            dc_in.contiguous() if dc_in is not None else None, gates, c, c_prev, c_low,
            w_hh, w_cd, w_ld, batch_sizes, reverse)
        dc_low = dc_low[0] if dc_low else None
        dx = dA @ w_in if need[0] else None
        dw_in = dA.t() @ x if need[4] or need[8] else None
        dw_hh = dA[:, : 4 * H].t() @ _prev_of(out, h0, prev, 0, x.shape[0]) if need[5] else None
        db = dA.sum(0) if has_bias else None
        dw_cd = dw_ld = None
        if c_low is not None:
            da_d = dA[:, 4 * H:]
            dw_cd = (da_d * c_prev).sum(0)
            dw_ld = (da_d * c_low).sum(0)
        return (dx, dc_low, dh0, dc0, _rows(dw_in, 0, 4 * H), dw_hh, _rows(db, 0, 4 * H),
                _rows(db, 0, 4 * H), _rows(dw_in, 4 * H, 5 * H), _rows(db, 4 * H, 5 * H),
                dw_cd, dw_ld, None, None, None)


def _dense(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _rows(t: Tensor | None, r0: int, r1: int) -> Tensor | None:
    return None if t is None or t.shape[0] < r1 else t[r0:r1]


def fused_layer(x: Tensor, c_low: Tensor | None, batch_sizes: list[int], h0: Tensor,
                c0: Tensor, w: LayerWeights, *, reverse: bool = False, record: bool = False,
                backend: str = "fused"):
    """:func:`reference_layer` with hand-derived BPTT; ``backend`` picks the recurrence
    kernels (see :func:`kernels_for`)."""
    w_xd, b_d, w_cd, w_ld = w.extra if c_low is not None else (None,) * 4
    out, c, h_n, c_n, gates = DepthGatedFunction.apply(
        x.contiguous(), c_low, h0.contiguous(), c0.contiguous(), w.w_ih, w.w_hh, w.b_ih,
        w.b_hh, w_xd, b_d, w_cd, w_ld, batch_sizes, reverse, kernels_for(backend, x))
    trace = _trace(batch_sizes, out, c, gates) if record else None
    return out, c, (h_n, c_n), trace


def _trace(batch_sizes: list[int], out: Tensor, c: Tensor, gates: Tensor):
    names = ("i", "f", "g", "o", "d")
    steps = []
    for h_t, c_t, g_t in zip(out.detach().split(batch_sizes), c.detach().split(batch_sizes),
                             gates.detach().split(batch_sizes)):
        record = dict(zip(names, g_t.split(h_t.shape[1], dim=1)))
        steps.append({**record, "c": c_t, "h": h_t})
    return steps
