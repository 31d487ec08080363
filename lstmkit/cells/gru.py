r"""The GRU cell (Cho et al. 2014), gate order r, z, n as in PyTorch.

``reset_after=True`` (default; PyTorch and cuDNN)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

``reset_after=False`` (the paper's form; ONNX ``linear_before_reset=0``)::

    n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)

Note the role of ``z``: here (as in PyTorch) ``z_t`` keeps the old state. Some texts,
colah's blog among them, write ``h_t = (1 − z_t) h_{t-1} + z_t h̃_t`` instead.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State


def _chunk3(t: Tensor | None, dim: int = 0) -> tuple:
    return (None, None, None) if t is None else t.chunk(3, dim=dim)


def gru_step(
    x_t: Tensor, state: State, w: LayerWeights, *, reset_after: bool = True
) -> tuple[State, Gates]:
    (h_prev,) = state                                          # (B, H)
    ax_r, ax_z, ax_n = F.linear(x_t, w.w_ih, w.b_ih).chunk(3, dim=1)
    if reset_after:
        ah_r, ah_z, ah_n = F.linear(h_prev, w.w_hh, w.b_hh).chunk(3, dim=1)
        r_t = torch.sigmoid(ax_r + ah_r)
        z_t = torch.sigmoid(ax_z + ah_z)
        n_t = torch.tanh(ax_n + r_t * ah_n)
    else:
        W_hr, W_hz, W_hn = w.w_hh.chunk(3, dim=0)
        b_hr, b_hz, b_hn = _chunk3(w.b_hh)
        r_t = torch.sigmoid(ax_r + F.linear(h_prev, W_hr, b_hr))
        z_t = torch.sigmoid(ax_z + F.linear(h_prev, W_hz, b_hz))
        n_t = torch.tanh(ax_n + F.linear(r_t * h_prev, W_hn, b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_prev
    return (h_t,), {"r": r_t, "z": z_t, "n": n_t}


def gru_spec(*, reset_after: bool = True) -> CellSpec:
    return CellSpec(
        family="gru",
        step=partial(gru_step, reset_after=reset_after),
        gate_rows=("r", "z", "n"),
        gates=("r", "z", "n"),
        n_states=1,
        options=(("reset_after", reset_after),),
    )
