"""Keras 3 (torch backend) layers with random weights against lstmkit after from_keras."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

keras = pytest.importorskip("keras")

import lstmkit  # noqa: E402

if keras.backend.backend() != "torch":                      # keras imported earlier, elsewhere
    pytest.skip("these tests need Keras on its torch backend", allow_module_level=True)


def _randomise(layer, rng):
    layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype("float32")
                       for w in layer.get_weights()])


def _keras_out(layer, x):
    out = layer(x)
    return np.asarray(keras.ops.convert_to_numpy(out))


LAYERS = {
    "lstm": lambda: keras.layers.LSTM(6, return_sequences=True),
    "lstm_nobias": lambda: keras.layers.LSTM(6, return_sequences=True, use_bias=False),
    "gru_reset_after": lambda: keras.layers.GRU(6, return_sequences=True, reset_after=True),
    "gru_reset_before": lambda: keras.layers.GRU(6, return_sequences=True, reset_after=False),
    "simple_rnn_tanh": lambda: keras.layers.SimpleRNN(6, return_sequences=True),
    "simple_rnn_relu": lambda: keras.layers.SimpleRNN(6, return_sequences=True,
                                                      activation="relu"),
    "bidirectional_lstm": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(6, return_sequences=True)),
    "bidirectional_gru": lambda: keras.layers.Bidirectional(
        keras.layers.GRU(6, return_sequences=True, reset_after=False)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_same_outputs_as_keras(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 4)).astype("float32")       # (N, L, I)
    layer = LAYERS[name]()
    layer(x)                                                     # build
    _randomise(layer, rng)
    expected = _keras_out(layer, x)
    ours = lstmkit.from_keras(layer)
    assert ours.batch_first
    with torch.no_grad():
        out, _ = ours(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_saved_model_file(tmp_path):
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((7, 3)), keras.layers.GRU(5, return_sequences=True),
                              keras.layers.Dense(2)])
    _randomise(model.layers[0], rng)
    path = tmp_path / "m.keras"
    model.save(path)
    x = rng.standard_normal((2, 7, 3)).astype("float32")
    ours = lstmkit.from_keras(path)
    with torch.no_grad():
        out, _ = ours(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), _keras_out(model.layers[0], x), atol=1e-5)
    two = keras.Sequential([keras.Input((7, 3)), keras.layers.LSTM(4, return_sequences=True),
                            keras.layers.LSTM(4)])
    two.save(tmp_path / "two.keras")
    with pytest.raises(ValueError, match="2 recurrent layers"):
        lstmkit.from_keras(tmp_path / "two.keras")


@pytest.mark.parametrize("layer, message", [
    (lambda: keras.layers.LSTM(3, activation="relu"), "activation 'relu'"),
    (lambda: keras.layers.GRU(3, recurrent_activation="hard_sigmoid"), "hard_sigmoid"),
    (lambda: keras.layers.SimpleRNN(3, activation="sigmoid"), "tanh and relu"),
    (lambda: keras.layers.LSTM(3, go_backwards=True), "go_backwards"),
    (lambda: keras.layers.Bidirectional(keras.layers.LSTM(3), merge_mode="sum"), "merge_mode"),
    (lambda: keras.layers.Dense(3), "supports LSTM, GRU and SimpleRNN"),
])
def test_unsupported_layers_say_why(layer, message):
    layer = layer()
    layer(np.zeros((1, 4, 2), "float32"))
    with pytest.raises(ValueError, match=message):
        lstmkit.from_keras(layer)
