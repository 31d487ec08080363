r"""The LSTM of Hochreiter & Schmidhuber (1997), "Long Short-Term Memory", Neural
Computation 9(8): memory cells with an input gate and an output gate, no forget gate.

Each memory cell keeps its state on the constant error carousel (CEC): a linear
self-connection of weight 1.0. In lstmkit's notation (the paper's names in brackets; every
unit of the layer feeds every gate and cell input through W_h*, as in the paper, and each
cell has its own two gates, i.e. blocks of size 1), with gate rows i, g, o::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)                   input gate   [y^in]
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)                   output gate  [y^out]
    g_t = g(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)                   cell input   [g(net_c)]
    c_t = c_{t-1} + i_t ⊙ g_t                                        the CEC      [s_c]
    h_t = o_t ⊙ h(c_t)                                               cell output  [y^c]

with the paper's squashing functions g(z) = 4σ(z) − 2 ∈ [−2, 2] and h(z) = 2σ(z) − 1 ∈
[−1, 1] (σ the logistic sigmoid). ``truncate=True`` trains with the paper's truncated
gradient: errors flow back in time only through the CEC, never through the recurrent
weights into h_{t-1} (W_h* still get their gradients).

BPTT of one step (:class:`LSTM1997Fused`), with dh = ∂L/∂h_t and dc_next the carried
∂L/∂c_t; since g(z) = 2 tanh(z/2) and h(z) = tanh(z/2), g' = 1 − g²/4 and h' = (1 − h²)/2::

    da_o = dh ⊙ h(c_t) ⊙ o(1 − o)
    dc   = dc_next + dh ⊙ o ⊙ (1 − h(c_t)²)/2
    da_g = dc ⊙ i ⊙ (1 − g²/4),   da_i = dc ⊙ g ⊙ i(1 − i)
    dc_{t-1} = dc                                    (the CEC: weight 1)
    ∂L/∂ĥ_{t-1} = [da_i, da_g, da_o] W_hh            (0 with truncate=True)

For the paper's own tiny networks — memory blocks of several cells sharing their gates,
gate activations fed back, online training — see :mod:`lstmkit.ops.tiny1997` (a C++
trainer) and :mod:`lstmkit.train.protocol1997` (the adding problem of Table 7).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    C_STATE,
    H_STATE,
    BackwardStep,
    CellSpec,
    ForwardStep,
    FusedCell,
    Gates,
    LayerWeights,
    State,
    register,
)


def lstm1997_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
                  truncate: bool = False) -> tuple[State, Gates]:
    """One step of the 1997 LSTM (the module docstring's equations)."""
    h_prev, c_prev = state                                         # (B, H) each
    h_in = h_prev if h_in is None else h_in
    if truncate:                        # no error into h_{t-1} through the recurrent weights
        h_in = h_in.detach()
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh, w.b_hh)     # (B, 3H)
    a_i, a_g, a_o = a.chunk(3, dim=1)
    i_t = torch.sigmoid(a_i)
    g_t = 4 * torch.sigmoid(a_g) - 2                               # g ∈ [−2, 2]
    o_t = torch.sigmoid(a_o)
    c_t = c_prev + i_t * g_t                                       # the CEC
    h_t = o_t * (2 * torch.sigmoid(c_t) - 1)                       # h ∈ [−1, 1]
    return (h_t, c_t), {"i": i_t, "g": g_t, "o": o_t}


class LSTM1997Fused(FusedCell):
    """The fused step (see the module docstring); ``a`` keeps i, g, o."""

    cpp = "lstm1997"

    def cpp_options(self, spec):
        return [float(spec.option("truncate"))]

    def forward_step(self, spec, s: ForwardStep) -> None:
        a_i, a_g, a_o = s.a.addmm_(s.h_in, s.w[0].t()).chunk(3, dim=1)
        i_t, o_t = a_i.sigmoid_(), a_o.sigmoid_()
        g_t = a_g.mul_(0.5).tanh_().mul_(2)                         # 4σ(z) − 2 = 2 tanh(z/2)
        c_t = torch.addcmul(s.prev[1], i_t, g_t, out=s.next[1])
        torch.mul(o_t, (0.5 * c_t).tanh_(), out=s.next[0])          # 2σ(c) − 1 = tanh(c/2)

    def backward_step(self, spec, s: BackwardStep):
        i_t, g_t, o_t = s.gates.chunk(3, dim=1)
        da_i, da_g, da_o = s.dA.chunk(3, dim=1)
        dh = s.dnext[0]
        h_c = (0.5 * s.next[1]).tanh() if not s.zoned[1] else (
            0.5 * (s.prev[1] + i_t * g_t)).tanh()                  # h(c̃_t)
        torch.mul(dh * h_c, o_t * (1 - o_t), out=da_o)
        dc = s.dnext[1] + dh * o_t * (1 - h_c * h_c) * 0.5
        torch.mul(dc * i_t, 1 - 0.25 * g_t * g_t, out=da_g)
        torch.mul(dc * g_t, i_t * (1 - i_t), out=da_i)
        return [None, dc], None if spec.option("truncate") else s.dA @ s.w[0]


def lstm1997_spec(*, truncate: bool = False) -> CellSpec:
    return CellSpec(
        family="lstm1997",
        step=partial(lstm1997_step, truncate=bool(truncate)),
        gate_rows=("i", "g", "o"),
        gates=("i", "g", "o"),
        n_states=2,
        options=(("truncate", bool(truncate)),),
        states=(H_STATE, C_STATE),
        fused=LSTM1997Fused(),
    )


register("lstm1997", lstm1997_spec)
