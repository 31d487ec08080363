"""The math: each cell family as its equations, beside its fused step (see design.md §1).

Importing this package registers every family (:func:`lstmkit.cells.base.register`): a new
family is one more module on the registration line below.
"""

from . import (  # noqa: F401
    clockwork,
    depth_gated,
    grid,
    gru,
    layernorm,
    lstm,
    lstm1997,
    minrnn,
    mut,
    rnn,
    slstm,
)
from .base import CellSpec, ExtraParam, LayerWeights, build, families
from .clockwork import clockwork_spec
from .depth_gated import depth_gated_spec
from .gru import gru_spec, gru_step
from .layernorm import ln_gru_spec, ln_gru_step, ln_lstm_spec, ln_lstm_step
from .lstm import lstm_spec, lstm_step
from .rnn import rnn_spec, rnn_step

__all__ = [
    "CellSpec", "ExtraParam", "LayerWeights", "build", "families",
    "lstm_step", "lstm_spec", "gru_step", "gru_spec", "rnn_step", "rnn_spec",
    "ln_lstm_step", "ln_lstm_spec", "ln_gru_step", "ln_gru_spec",
    "clockwork_spec", "depth_gated_spec",
]
