"""Keras 3 recurrent layers → lstmkit modules: ``lstmkit.from_keras(layer_or_file)``.

Supported: ``keras.layers.LSTM``, ``GRU`` (``reset_after`` True or False) and ``SimpleRNN``
(tanh or relu), alone or inside ``keras.layers.Bidirectional`` (``merge_mode="concat"``), as
layer objects or as the single recurrent layer of a saved ``.keras`` model. The result is an
lstmkit module with ``batch_first=True`` (Keras is batch-major) that computes the same
sequence output; Keras's ``return_sequences`` only decides what Keras returns.

Layouts (Keras stores ``kernel`` (I, G·H), ``recurrent_kernel`` (H, G·H), ``bias``):

* LSTM gates in Keras order i, f, c, o = torch's i, f, g, o: ``weight_ih = kernelᵀ``,
  ``weight_hh = recurrent_kernelᵀ``, ``bias_ih = bias``, ``bias_hh = 0`` (Keras has one bias);
* GRU gates in Keras order z, r, h → torch's r, z, n. ``reset_after=True`` (Keras's default)
  keeps two biases, ``bias[0]`` for the input and ``bias[1]`` for the recurrent projection,
  as torch.nn.GRU does; ``reset_after=False`` (one bias) maps onto
  ``lstmkit.GRU(reset_after=False)``, which torch.nn does not have;
* SimpleRNN: one gate, ``nonlinearity`` from the layer's activation.

Anything else (other activations, ``go_backwards``, other merge modes, ``unroll`` is fine)
raises a ``ValueError`` that says what is not supported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import lstmkit


def _keras():
    try:
        import keras
    except ImportError as e:
        raise ImportError("from_keras needs Keras 3: pip install keras") from e
    return keras


def _act(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _check(layer, kind: str) -> None:
    name = f"{type(layer).__name__} {layer.name!r}"
    if getattr(layer, "go_backwards", False):
        raise ValueError(f"{name}: go_backwards=True is not supported (wrap the layer in "
                         "keras.layers.Bidirectional, or reverse the input yourself)")
    if kind == "rnn":
        if _act(layer.activation) not in ("tanh", "relu"):
            raise ValueError(f"{name}: activation {_act(layer.activation)!r} is not "
                             "supported (lstmkit.RNN has tanh and relu)")
        return
    if _act(layer.activation) != "tanh" or _act(layer.recurrent_activation) != "sigmoid":
        raise ValueError(f"{name}: activation {_act(layer.activation)!r} / "
                         f"recurrent_activation {_act(layer.recurrent_activation)!r} are not "
                         "supported; lstmkit computes tanh and sigmoid")


def _kind(layer) -> str:
    keras = _keras()
    for cls, kind in ((keras.layers.LSTM, "lstm"), (keras.layers.GRU, "gru"),
                      (keras.layers.SimpleRNN, "rnn")):
        if isinstance(layer, cls):
            return kind
    raise ValueError(f"from_keras supports LSTM, GRU and SimpleRNN layers (alone or in "
                     f"Bidirectional), got {type(layer).__name__}")


def _gru_order(a: np.ndarray, H: int, axis: int) -> np.ndarray:
    z, r, h = np.split(a, [H, 2 * H], axis=axis)              # Keras: z, r, h
    return np.concatenate([r, z, h], axis=axis)               # torch: r, z, n


def _weights(layer, kind: str) -> dict[str, np.ndarray]:
    """torch-layout arrays: weight_ih, weight_hh and, with a bias, bias_ih, bias_hh."""
    H = layer.units
    values = {w.path.rsplit("/", 1)[-1]: np.asarray(w.numpy(), dtype=np.float32)
              for w in layer.weights}
    kernel, recurrent = values["kernel"], values["recurrent_kernel"]
    bias = values.get("bias")
    if kind == "gru":
        kernel, recurrent = _gru_order(kernel, H, 1), _gru_order(recurrent, H, 1)
        if bias is not None:
            bias = _gru_order(bias, H, bias.ndim - 1)
    out = {"weight_ih": kernel.T, "weight_hh": recurrent.T}
    if bias is not None:
        if bias.ndim == 2:                                    # GRU reset_after: (2, 3H)
            out["bias_ih"], out["bias_hh"] = bias[0], bias[1]
        else:
            out["bias_ih"], out["bias_hh"] = bias, np.zeros_like(bias)
    return out


def _module(layer, kind: str, bidirectional: bool):
    I = layer.weights[0].shape[0]
    kw = dict(batch_first=True, bias=bool(layer.use_bias), bidirectional=bidirectional)
    if kind == "lstm":
        return lstmkit.LSTM(I, layer.units, **kw)
    if kind == "gru":
        return lstmkit.GRU(I, layer.units, reset_after=bool(layer.reset_after), **kw)
    return lstmkit.RNN(I, layer.units, nonlinearity=_act(layer.activation), **kw)


def _convert(layer):
    keras = _keras()
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode != "concat":
            raise ValueError(f"Bidirectional {layer.name!r}: merge_mode "
                             f"{layer.merge_mode!r} is not supported (lstmkit concatenates "
                             "the two directions, merge_mode='concat')")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        kind = _kind(fwd)
        _check(fwd, kind)
        if _kind(bwd) != kind:
            raise ValueError("Bidirectional with different forward and backward layers")
        module = _module(fwd, kind, bidirectional=True)
        pairs = [(_weights(fwd, kind), ""), (_weights(bwd, kind), "_reverse")]
    else:
        kind = _kind(layer)
        _check(layer, kind)
        module = _module(layer, kind, bidirectional=False)
        pairs = [(_weights(layer, kind), "")]
    state = {f"{name}_l0{suffix}": torch.from_numpy(np.ascontiguousarray(a))
             for weights, suffix in pairs for name, a in weights.items()}
    module.load_state_dict(state)
    return module


def from_keras(layer_or_file):
    """An lstmkit module with the weights of a Keras 3 recurrent layer, or of the single
    recurrent layer of a saved ``.keras`` model (a path)."""
    keras = _keras()
    if isinstance(layer_or_file, (str, Path)):
        path = Path(layer_or_file)
        if not path.is_file():
            raise ValueError(f"Keras model file not found: {path}")
        model = keras.saving.load_model(path)
        kinds = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN,
                 keras.layers.Bidirectional)
        found = [layer for layer in model.layers if isinstance(layer, kinds)]
        if len(found) != 1:
            names = ", ".join(layer.name for layer in found) or "none"
            raise ValueError(f"{path} has {len(found)} recurrent layers ({names}); load the "
                             "model with keras and pass the layer to convert")
        layer_or_file = found[0]
    return _convert(layer_or_file)
