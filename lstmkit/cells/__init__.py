"""The math: each cell family as its equations (see design.md §1)."""

from .base import CellSpec, ExtraParam, LayerWeights
from .gru import gru_spec, gru_step
from .layernorm import ln_gru_spec, ln_gru_step, ln_lstm_spec, ln_lstm_step
from .lstm import lstm_spec, lstm_step
from .rnn import rnn_spec, rnn_step

__all__ = [
    "CellSpec", "ExtraParam", "LayerWeights",
    "lstm_step", "lstm_spec", "gru_step", "gru_spec", "rnn_step", "rnn_spec",
    "ln_lstm_step", "ln_lstm_spec", "ln_gru_step", "ln_gru_spec",
]
