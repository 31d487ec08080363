"""nn.Module front ends: drop-ins for torch.nn.LSTM, GRU and RNN."""

from .base import RecurrentBase
from .clockwork import ClockworkRNN
from .depth_gated import DepthGatedLSTM
from .family import FamilyModule, module_for
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

__all__ = ["LSTM", "GRU", "RNN", "RecurrentBase", "ClockworkRNN", "DepthGatedLSTM",
           "FamilyModule", "module_for"]
