r"""The LSTM cell (Hochreiter & Schmidhuber 1997, forget gate of Gers et al. 2000).

One step, with PyTorch's gate order i, f, g, o in the weight rows::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi  [+ p_i ⊙ c_{t-1}])
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf  [+ p_f ⊙ c_{t-1}])   or 1 − i_t (coupled)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho  [+ p_o ⊙ c_t])
    h_t = o_t ⊙ tanh(c_t)                         [h_t = W_hr (o_t ⊙ tanh(c_t)) with proj_size]

Variants:

* ``peephole`` (Gers & Schmidhuber 2000): diagonal peephole weights ``p`` (3H,) in
  the order i, f, o; the input and forget gates look at c_{t-1}, the output gate at c_t.
* ``coupled`` (CIFG, Greff et al. 2015): ``f_t = 1 − i_t``; the weight rows of the
  forget gate are absent (rows i, g, o) and so is its peephole (``p`` is (2H,): i, o).
* projections (Sak et al. 2014): ``w_hr`` (P, H) maps the cell output to h_t, as
  ``torch.nn.LSTM(proj_size=P)``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State


def lstm_step(
    x_t: Tensor, state: State, w: LayerWeights, *, peephole: bool = False, coupled: bool = False
) -> tuple[State, Gates]:
    h_prev, c_prev = state                                    # (B, H or P), (B, H)
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_prev, w.w_hh, w.b_hh)   # (B, G·H)
    if coupled:
        a_i, a_g, a_o = a.chunk(3, dim=1)
    else:
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    if peephole:
        if coupled:
            p_i, p_o = w.peephole.chunk(2)
        else:
            p_i, p_f, p_o = w.peephole.chunk(3)
            a_f = a_f + p_f * c_prev
        a_i = a_i + p_i * c_prev

    i_t = torch.sigmoid(a_i)
    f_t = 1 - i_t if coupled else torch.sigmoid(a_f)
    g_t = torch.tanh(a_g)
    c_t = f_t * c_prev + i_t * g_t
    o_t = torch.sigmoid(a_o + p_o * c_t if peephole else a_o)
    h_t = o_t * torch.tanh(c_t)
    if w.w_hr is not None:
        h_t = F.linear(h_t, w.w_hr)                           # (B, P)
    return (h_t, c_t), {"i": i_t, "f": f_t, "g": g_t, "o": o_t}


def lstm_spec(*, peephole: bool = False, coupled: bool = False) -> CellSpec:
    return CellSpec(
        family="lstm",
        step=partial(lstm_step, peephole=peephole, coupled=coupled),
        gate_rows=("i", "g", "o") if coupled else ("i", "f", "g", "o"),
        gates=("i", "f", "g", "o"),
        n_states=2,
        options=(("peephole", peephole), ("coupled", coupled)),
    )
