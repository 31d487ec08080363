"""nn.Module front ends: drop-ins for torch.nn.LSTM, GRU and RNN and their cells."""

from .base import RecurrentBase
from .cells import GRUCell, LSTMCell, RecurrentCell, RNNCell
from .clockwork import ClockworkRNN
from .depth_gated import DepthGatedLSTM
from .family import FamilyModule, module_for
from .gru import GRU
from .lstm import LSTM
from .minrnn import minGRU, minLSTM
from .mut import MUT
from .rnn import RNN
from .slstm import sLSTM

__all__ = ["LSTM", "GRU", "RNN", "RecurrentBase", "ClockworkRNN", "DepthGatedLSTM", "MUT",
           "FamilyModule", "module_for", "LSTMCell", "GRUCell", "RNNCell", "RecurrentCell",
           "minGRU", "minLSTM", "sLSTM"]
