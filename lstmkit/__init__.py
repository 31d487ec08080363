"""lstmkit: the LSTM family of recurrent networks for PyTorch.

    import lstmkit
    m = lstmkit.LSTM(10, 20, num_layers=2, peephole=True)
    output, (h_n, c_n) = m(x)

See ``lstmkit.LSTM``, ``lstmkit.GRU``, ``lstmkit.RNN``, ``lstmkit.record`` and
``lstmkit.summary``.
"""

import torch as _torch

from .crf import CRF
from .inspect import LayerRecord, Recording, record
from .nn import (
    GRU,
    LSTM,
    MUT,
    RNN,
    ClockworkRNN,
    DepthGatedLSTM,
    GRUCell,
    LSTMCell,
    RNNCell,
    minGRU,
    minLSTM,
    module_for,
    sLSTM,
)
from .nn.grid import GridLSTM  # Kalchbrenner et al. 2015
from .nn.mlstm import mLSTM  # xLSTM's matrix-memory LSTM, a module beside the engine
from .quantized import DynamicQuantized, quantize_dynamic
from .quantized import register as register_quantization
from .summary import count_parameters, summary

LSTM1997 = module_for("lstm1997", "LSTM1997")      # Hochreiter & Schmidhuber 1997

# A whole module pickles as plain data (its configuration and tensors), so torch's safe
# loader can rebuild it once the class is allowed; lstmkit allows its own classes here, so
# ``torch.load(path, weights_only=True)`` needs only the user's classes allow-listed.
_torch.serialization.add_safe_globals([LSTM, GRU, RNN, ClockworkRNN, DepthGatedLSTM, LSTM1997, MUT,
                                       LSTMCell, GRUCell, RNNCell, DynamicQuantized])
_torch.serialization.add_safe_globals([sLSTM])
_torch.serialization.add_safe_globals([mLSTM])
_torch.serialization.add_safe_globals([GridLSTM])
_torch.serialization.add_safe_globals([minGRU, minLSTM])
register_quantization()               # torch's quantize_dynamic maps lstmkit's classes too

__version__ = "0.1.0"


def from_keras(layer_or_file):
    """An lstmkit module from a Keras 3 LSTM/GRU/SimpleRNN layer or ``.keras`` file; see
    :mod:`lstmkit.interop.keras`."""
    from .interop.keras import from_keras as convert
    return convert(layer_or_file)


__all__ = ["LSTM", "GRU", "RNN", "ClockworkRNN", "DepthGatedLSTM", "LSTM1997", "MUT", "LSTMCell",
           "GridLSTM", "GRUCell", "RNNCell", "CRF", "quantize_dynamic", "record",
           "Recording", "LayerRecord", "count_parameters", "summary", "from_keras", "__version__"]
__all__ += ["sLSTM"]
__all__ += ["mLSTM"]
__all__ += ["minGRU", "minLSTM"]
