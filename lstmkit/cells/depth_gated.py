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
same hidden size.

``LayerWeights.extra`` holds (W_xd, b_d or None, w_cd, w_ld) for layers above the first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State
from .lstm import lstm_step


def depth_gated_step(x_t: Tensor, state: State, w: LayerWeights, *, c_low: Tensor | None
                     ) -> tuple[State, Gates]:
    """One step; ``c_low`` (B, H) is the cell of the layer below at this step (None for the
    lowest layer, which is a plain LSTM)."""
    if c_low is None:
        return lstm_step(x_t, state, w)
    h_prev, c_prev = state                                                 # (B, H) each
    w_xd, b_d, w_cd, w_ld = w.extra
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_prev, w.w_hh, w.b_hh)   # (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i_t = torch.sigmoid(a_i)
    f_t = torch.sigmoid(a_f)
    g_t = torch.tanh(a_g)
    o_t = torch.sigmoid(a_o)
    d_t = torch.sigmoid(F.linear(x_t, w_xd, b_d) + w_cd * c_prev + w_ld * c_low)
    c_t = d_t * c_low + f_t * c_prev + i_t * g_t
    h_t = o_t * torch.tanh(c_t)
    return (h_t, c_t), {"i": i_t, "f": f_t, "g": g_t, "o": o_t, "d": d_t}


def depth_gated_spec() -> CellSpec:
    return CellSpec(
        family="depth_gated_lstm",
        step=depth_gated_step,
        gate_rows=("i", "f", "g", "o"),
        gates=("i", "f", "g", "o", "d"),
        n_states=2,
    )
