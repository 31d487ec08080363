"""Bad arguments and inputs raise ValueError/TypeError naming what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import lstmkit

I, H = 4, 5


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"dropout": 1.5}, ValueError, ["[0, 1]", "1.5"]),
    ({"dropout": -0.1}, ValueError, ["[0, 1]", "-0.1"]),
    ({"dropout": "0.2"}, ValueError, ["[0, 1]", "'0.2'"]),
    ({"bias": "False"}, TypeError, ["bias must be a bool", "'False'"]),
    ({"batch_first": 0}, TypeError, ["batch_first must be a bool", "int"]),
    ({"proj_size": H}, ValueError, ["proj_size must be smaller than hidden_size", "5"]),
    ({"proj_size": -1}, ValueError, ["proj_size must be >= 0", "-1"]),
    ({"num_layers": 0}, ValueError, ["num_layers must be >= 1", "0"]),
    ({"num_layers": 2.0}, TypeError, ["num_layers must be an int", "float"]),
    ({"dtype": torch.int64}, TypeError, ["floating-point", "torch.int64"]),
    ({"backend": "cuda"}, ValueError, ["backend must be one of", "'reference'", "'cuda'"]),
])
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        lstmkit.LSTM(I, H, **kwargs)
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"


def test_bad_sizes():
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        lstmkit.RNN(I, 0)
    with pytest.raises(TypeError, match="input_size must be an int, got str"):
        lstmkit.GRU("4", H)


@pytest.mark.parametrize("cls, kwargs, words", [
    (lstmkit.GRU, {"coupled": True}, ["GRU does not support coupled=True", "forget gate"]),
    (lstmkit.GRU, {"peephole": True}, ["GRU does not support peephole=True", "cell state"]),
    (lstmkit.RNN, {"proj_size": 2}, ["RNN does not support proj_size=2", "only defined for LSTM"]),
    (lstmkit.RNN, {"reset_after": False}, ["RNN does not support reset_after", "reset gate"]),
    (lstmkit.GRU, {"nonlinearity": "relu"}, ["GRU does not support nonlinearity"]),
])
def test_keyword_of_another_cell(cls, kwargs, words):
    with pytest.raises(ValueError) as info:
        cls(I, H, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_unknown_keyword_and_nonlinearity():
    with pytest.raises(TypeError, match="unexpected keyword argument 'peephole_size'"):
        lstmkit.GRU(I, H, peephole_size=3)
    with pytest.raises(ValueError,
                       match=r"Unknown nonlinearity 'sigmoid'; nonlinearity must be one of "
                             r"\['relu', 'tanh'\]"):
        lstmkit.RNN(I, H, nonlinearity="sigmoid")


@pytest.fixture
def lstm():
    return lstmkit.LSTM(I, H, num_layers=2)


def test_wrong_rank(lstm):
    with pytest.raises(ValueError, match=r"3-D \(L, N, H_in\).*got a 4-D tensor of shape "
                                         r"\(2, 3, 4, 1\)"):
        lstm(torch.randn(2, 3, 4, 1))
    with pytest.raises(ValueError, match=r"got a 1-D tensor"):
        lstm(torch.randn(4))


def test_wrong_rank_batch_first_names_layout():
    m = lstmkit.GRU(I, H, batch_first=True)
    with pytest.raises(ValueError, match=r"\(N, L, H_in\)"):
        m(torch.randn(5))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match=r"input_size=4.*got 7 in input of shape \(6, 2, 7\)"):
        lstm(torch.randn(6, 2, 7))
    with pytest.raises(ValueError, match=r"input_size=4.*got 3 in PackedSequence data"):
        lstm(pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]))


def test_empty_input(lstm):
    """Zero steps: an error that is a ValueError and, as torch.nn's, a RuntimeError. An
    empty batch: empty outputs of torch.nn's shapes."""
    for exc in (ValueError, RuntimeError):
        with pytest.raises(exc, match="sequence length to be larger than 0"):
            lstm(torch.randn(0, 2, I))
    with pytest.raises(RuntimeError):
        torch.nn.LSTM(I, H)(torch.randn(0, 2, I))          # torch.nn: RuntimeError too
    x = torch.randn(3, 0, I)
    out, (h, c) = lstm(x)
    ref_out, (ref_h, ref_c) = torch.nn.LSTM(I, H, lstm.num_layers)(x)
    assert out.shape == ref_out.shape == (3, 0, H)
    assert h.shape == ref_h.shape and c.shape == ref_c.shape == (lstm.num_layers, 0, H)


def test_not_a_tensor(lstm):
    with pytest.raises(TypeError, match="Tensor or a PackedSequence, got list"):
        lstm([[0.0] * I])


def test_integer_and_mismatched_dtype(lstm):
    with pytest.raises(TypeError, match="floating-point tensor.*got dtype torch.int64"):
        lstm(torch.ones(3, 2, I, dtype=torch.int64))
    with pytest.raises(TypeError, match="input has dtype torch.float64 but the module's "
                                        "parameters are torch.float32"):
        lstm(torch.randn(3, 2, I, dtype=torch.float64))
    h0 = torch.zeros(2, 2, H, dtype=torch.float64)
    with pytest.raises(TypeError, match="h_0 has dtype torch.float64"):
        lstm(torch.randn(3, 2, I), (h0, h0.float()))


def test_mismatched_device(lstm):
    with pytest.raises(ValueError, match="input is on device meta but the module's parameters "
                                         "are on cpu"):
        lstm(torch.randn(3, 2, I, device="meta"))


def test_wrong_hx(lstm):
    x = torch.randn(3, 2, I)
    good = torch.zeros(2, 2, H)
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 5\) for h_0.*"
                                                r"got \(1, 2, 5\)"):
        lstm(x, (torch.zeros(1, 2, H), good))
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 5\) for c_0.*"
                                                r"got \(2, 3, 5\)"):
        lstm(x, (good, torch.zeros(2, 3, H)))
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\) of Tensors, got Tensor"):
        lstm(x, good)
    with pytest.raises(TypeError, match="hx must be a Tensor h_0, got tuple"):
        lstmkit.GRU(I, H, 2)(x, (good,))


def test_wrong_hx_unbatched_and_projected():
    m = lstmkit.LSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 2\) for h_0 "
                                                r"\(unbatched input"):
        m(torch.randn(3, I), (torch.zeros(1, H), torch.zeros(1, H)))

