"""lstmkit: the LSTM family of recurrent networks for PyTorch.

    import lstmkit
    m = lstmkit.LSTM(10, 20, num_layers=2, peephole=True)
    output, (h_n, c_n) = m(x)

See ``lstmkit.LSTM``, ``lstmkit.GRU``, ``lstmkit.RNN``, ``lstmkit.record`` and
``lstmkit.summary``.
"""

from .inspect import LayerRecord, Recording, record
from .nn import GRU, LSTM, RNN
from .summary import count_parameters, summary

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "record", "Recording", "LayerRecord",
           "count_parameters", "summary", "__version__"]
