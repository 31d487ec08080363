r"""The Depth-Gated LSTM cell (Yao, Cohn, Vylomova, Duh & Dyer 2015, "Depth-Gated LSTM",
arXiv:1508.03790).

A stack of LSTM layers in which the memory cell of layer L+1 also receives the memory cell
of layer L at the same step, through a *depth gate* d that looks at the layer's input, its
own previous cell and the lower cell (the paper's depth-gate and memory-cell equations)::

    d_t = σ(b_d + W_xd x_t + w_cd ⊙ c_{t-1} + w_ld ⊙ c^L_t)            depth gate
    c_t = d_t ⊙ c^L_t + f_t ⊙ c_{t-1} + i_t ⊙ g_t

with x_t = h^L_t the layer's input (the output of layer L), ``W_xd`` (H, I) a full matrix,
``w_cd`` and ``w_ld`` (H,) diagonal (element-wise) weights and ``b_d`` (H,) a bias.
The gates i, f, g, o and h_t = o_t ⊙ tanh(c_t) are those of :mod:`lstmkit.cells.lstm`
(PyTorch's form: no peepholes on i, f, o). The lowest layer has no cell below it and is a
plain LSTM. c^L_t and c_t have the same size H because every layer of the stack has the
same hidden size. The lower cell c^L is the side input of the layer (the whole cell
sequence of the layer below: ``layer_link``).

``LayerWeights.extra`` holds (W_xd, b_d, w_cd, w_ld) for layers above the first (b_d None
without biases) and Nones for the first.

Fused: the depth gate is a fifth gate block. One GEMM gives the input part of all five
blocks, ``a = x [W_ih; W_xd]ᵀ + [b_ih + b_hh; b_d]`` (N, 5H), and ``w_ld ⊙ c^L_t`` is added
to the d block for all steps at once. Per step: ``a[:, :4H] += ĥ_{t-1} W_hhᵀ``,
``a_d += w_cd ⊙ c_{t-1}``, the pointwise update. BPTT per step, with dh = ∂L/∂h_t and dc
the carried ∂L/∂c_t plus the gradient the layer above sends into c_t (as its c^L)::

    da_o = dh ⊙ tanh(c_t) ⊙ o(1 − o)
    dc   = dc + dh ⊙ o ⊙ (1 − tanh² c_t)
    da_i = dc ⊙ g ⊙ i(1 − i),  da_f = dc ⊙ c_{t-1} ⊙ f(1 − f),  da_g = dc ⊙ i ⊙ (1 − g²)
    da_d = dc ⊙ c^L_t ⊙ d(1 − d)
    ∂L/∂c^L_t = dc ⊙ d + da_d ⊙ w_ld                     (into the layer below)
    dc_{t-1}  = dc ⊙ f + da_d ⊙ w_cd,   ∂L/∂ĥ_{t-1} = [da_i, da_f, da_g, da_o] W_hh

and then ``dx = dA [W_ih; W_xd]``, ``d[W_ih; W_xd] = dAᵀ x``, ``dW_hh = dA[:, :4H]ᵀ Ĥ_prev``,
``dw_cd = Σ da_d ⊙ c_{t-1}``, ``dw_ld = Σ da_d ⊙ c^L_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    C_STATE,
    H_STATE,
    BackwardStep,
    CellSpec,
    Chunk,
    ExtraParam,
    ForwardStep,
    FusedCell,
    Gates,
    Grads,
    LayerWeights,
    State,
    new_buffer,
    register,
)
from .lstm import lstm_step


def depth_gated_step(x_t: Tensor, state: State, w: LayerWeights, c_low: Tensor | None = None,
                     *, h_in: Tensor | None = None) -> tuple[State, Gates]:
    """One step; ``c_low`` (B, H) is the cell of the layer below at this step (None for the
    lowest layer, which is a plain LSTM)."""
    if c_low is None:
        return lstm_step(x_t, state, w, h_in=h_in)
    h_prev, c_prev = state                                                 # (B, H) each
    h_in = h_prev if h_in is None else h_in
    w_xd, b_d, w_cd, w_ld = w.extra
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh, w.b_hh)     # (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i_t = torch.sigmoid(a_i)
    f_t = torch.sigmoid(a_f)
    g_t = torch.tanh(a_g)
    o_t = torch.sigmoid(a_o)
    d_t = torch.sigmoid(F.linear(x_t, w_xd, b_d) + w_cd * c_prev + w_ld * c_low)
    c_t = d_t * c_low + f_t * c_prev + i_t * g_t
    h_t = o_t * torch.tanh(c_t)
    return (h_t, c_t), {"i": i_t, "f": f_t, "g": g_t, "o": o_t, "d": d_t}


class DepthGatedFused(FusedCell):
    """Loop weights: W_hh, w_cd. Gradient buffer (with a cell below): dc ⊙ d, the part of
    ∂L/∂c^L_t through the cell (the part through the gate is added per chunk)."""

    cpp = "depth_gated"

    def project(self, spec, x, w, side):
        if not side:
            return super().project(spec, x, w, side)
        w_xd, b_d, _, w_ld = w.extra
        w_in = torch.cat([w.w_ih, w_xd])                                   # (5H, I)
        b = None if w.b_ih is None else torch.cat([w.b_ih + w.b_hh, b_d])
        a = torch.mm(x, w_in.t()) if b is None else torch.addmm(b, x, w_in.t())
        H = w.w_hh.shape[1]
        a[:, 4 * H:].addcmul_(w_ld, side[0])                               # + w_ld ⊙ c^L_t
        return a, (w_in,)

    def loop_weights(self, spec, w):
        w_cd = w.extra[2] if w.extra and w.extra[2] is not None else None
        return [w.w_hh.contiguous(), None if w_cd is None else w_cd.contiguous()]

    def grad_buffers(self, spec, rows, like, H, side):
        return [new_buffer(like, rows, H)] if side else []

    def forward_step(self, spec, s: ForwardStep) -> None:
        w_hh, w_cd = s.w
        H = w_hh.shape[1]
        a, c_prev = s.a, s.prev[1]
        a[:, :4 * H].addmm_(s.h_in, w_hh.t())
        i_t, f_t, o_t = (a[:, j * H:(j + 1) * H].sigmoid_() for j in (0, 1, 3))
        g_t = a[:, 2 * H:3 * H].tanh_()
        c_t = torch.addcmul(f_t * c_prev, i_t, g_t, out=s.next[1])
        if s.side:
            d_t = a[:, 4 * H:].addcmul_(w_cd, c_prev).sigmoid_()
            c_t.addcmul_(d_t, s.side[0])
        torch.mul(o_t, c_t.tanh(), out=s.next[0])

    def backward_step(self, spec, s: BackwardStep):
        w_hh, w_cd = s.w
        H = w_hh.shape[1]
        g, da = s.gates, s.dA
        i_t, f_t, g_t, o_t = (g[:, j * H:(j + 1) * H] for j in range(4))
        da_i, da_f, da_g, da_o = (da[:, j * H:(j + 1) * H] for j in range(4))
        c_prev, dh = s.prev[1], s.dnext[0]
        c_t = s.next[1]
        if s.zoned[1]:                                   # the candidate the step computed
            c_t = f_t * c_prev + i_t * g_t + (g[:, 4 * H:] * s.side[0] if s.side else 0)
        tanh_c = c_t.tanh()
        torch.mul(dh * tanh_c, o_t * (1 - o_t), out=da_o)
        dc = s.dnext[1] + dh * o_t * (1 - tanh_c * tanh_c)
        torch.mul(dc * i_t, 1 - g_t * g_t, out=da_g)
        torch.mul(dc * g_t, i_t * (1 - i_t), out=da_i)
        torch.mul(dc * c_prev, f_t * (1 - f_t), out=da_f)
        dc_prev = dc * f_t
        if s.side:
            d_t = g[:, 4 * H:]
            da_d = torch.mul(dc * s.side[0], d_t * (1 - d_t), out=da[:, 4 * H:])
            torch.mul(dc, d_t, out=s.grads[0])
            dc_prev.addcmul_(da_d, w_cd)
        return [None, dc_prev], da[:, :4 * H] @ w_hh

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        if not c.side:
            return super().chunk_grads(spec, c, w, aux, g)
        (w_in,) = aux
        H = w.w_hh.shape[1]
        rows = slice(c.r0, c.r1)
        dA, da_d = c.dA, c.dA[:, 4 * H:]
        if g.dx is not None:
            torch.mm(dA, w_in, out=g.dx[rows])
        if g.w["w_ih"] is not None or g.extra[0] is not None:
            d_in = dA.t() @ c.x                                            # (5H, I)
            g.add("w_ih", d_in[:4 * H])
            g.add_extra(0, d_in[4 * H:])
        db = dA.sum(0)
        g.add("b_ih", db[:4 * H])
        g.add("b_hh", db[:4 * H])
        g.add_extra(1, db[4 * H:])
        if g.w["w_hh"] is not None:
            g.w["w_hh"].addmm_(dA[:, :4 * H].t(), c.h_in)
        c_low = c.side[0]
        g.add_extra(2, (da_d * c.prev[1]).sum(0))
        g.add_extra(3, (da_d * c_low).sum(0))
        if g.side[0] is not None:                         # ∂L/∂c^L_t = dc ⊙ d + da_d ⊙ w_ld
            torch.addcmul(c.grads[0], da_d, w.extra[3], out=g.side[0][rows])

    def trace_gates(self, spec, gates, H):
        return dict(zip(("i", "f", "g", "o", "d"), gates.split(H, dim=1)))    # d above layer 0


def _above_first(layer: int, bias: bool) -> bool:
    return layer > 0


def depth_gated_spec() -> CellSpec:
    return CellSpec(
        family="depth_gated_lstm",
        step=depth_gated_step,
        gate_rows=("i", "f", "g", "o"),
        gates=("i", "f", "g", "o", "d"),
        n_states=2,
        extra_params=(
            ExtraParam("weight_xd", lambda H, I, R: (H, I), present=_above_first),
            ExtraParam("bias_d", lambda H, I, R: (H,), present=lambda layer, bias:
                       layer > 0 and bias),
            ExtraParam("weight_cd", lambda H, I, R: (H,), present=_above_first),
            ExtraParam("weight_ld", lambda H, I, R: (H,), present=_above_first),
        ),
        states=(H_STATE, C_STATE),
        fused=DepthGatedFused(),
        layer_link=1,
    )


register("depth_gated_lstm", lambda **options: depth_gated_spec())
