"""Moving models between lstmkit and other libraries.

* :func:`from_keras` — Keras 3 LSTM/GRU/SimpleRNN layers to lstmkit modules;
* :func:`lstmkit.interop.onnx.export_module` — an lstmkit module as ONNX LSTM/GRU/RNN
  operators (imported on use: it needs the ``onnx`` package).
"""

from .keras import from_keras

__all__ = ["from_keras"]
