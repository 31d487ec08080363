r"""The plain (Elman 1990) recurrent cell::

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      (or relu)
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_step(
    x_t: Tensor, state: State, w: LayerWeights, *, nonlinearity: str = "tanh"
) -> tuple[State, Gates]:
    (h_prev,) = state                                          # (B, H)
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_prev, w.w_hh, w.b_hh)   # (B, H)
    h_t = NONLINEARITIES[nonlinearity](a)
    return (h_t,), {}


def rnn_spec(*, nonlinearity: str = "tanh") -> CellSpec:
    return CellSpec(
        family="rnn",
        step=partial(rnn_step, nonlinearity=nonlinearity),
        gate_rows=("h",),
        gates=(),
        n_states=1,
        options=(("nonlinearity", nonlinearity),),
    )
