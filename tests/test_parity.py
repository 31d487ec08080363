"""lstmkit against torch.nn: same weights in, same outputs, final states and gradients out."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import (
    TOL,
    as_tuple,
    assert_close,
    backward_with_random_grads,
    compare_modules,
    lstmkit_twin,
    make_input,
    output_tensor,
)
from torch import nn

T, B, I, H, P = 6, 3, 4, 5, 3

CELLS = {
    "lstm": lambda **kw: nn.LSTM(I, H, **kw),
    "lstm_proj": lambda **kw: nn.LSTM(I, H, proj_size=P, **kw),
    "gru": lambda **kw: nn.GRU(I, H, **kw),
    "rnn_tanh": lambda **kw: nn.RNN(I, H, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: nn.RNN(I, H, nonlinearity="relu", **kw),
}

MATRIX = list(itertools.product(CELLS, (1, 3), (False, True), (False, True), (False, True),
                                (False, True)))


def _ids(case):
    cell, layers, bidir, bf, packed, hx = case
    return (f"{cell}-L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "")
            + ("-packed" if packed else "") + ("-hx" if hx else ""))


def _initial_state(module: nn.Module, dtype, g) -> tuple[torch.Tensor, ...]:
    D = 2 if module.bidirectional else 1
    n = D * module.num_layers
    h_size = getattr(module, "proj_size", 0) or module.hidden_size
    shapes = [(n, B, h_size)] + ([(n, B, module.hidden_size)] if isinstance(module, nn.LSTM)
                                 else [])
    return tuple(torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in shapes)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", MATRIX, ids=[_ids(c) for c in MATRIX])
def test_matches_torch_nn(case, dtype, backend):
    cell, layers, bidir, batch_first, packed, given_hx = case
    tol = TOL[dtype]
    torch.manual_seed(0)
    theirs = CELLS[cell](num_layers=layers, bidirectional=bidir, batch_first=batch_first,
                         dtype=dtype)
    ours = lstmkit_twin(theirs, backend)

    runs = []
    for module in (ours, theirs):
        g = torch.Generator().manual_seed(1)
        x, feed = make_input(T, B, I, dtype, batch_first=batch_first, packed=packed, generator=g)
        hx = _initial_state(theirs, dtype, g) if given_hx else ()
        hx_arg = (hx if len(hx) == 2 else hx[0]) if hx else None
        out, state = module(feed, hx_arg)
        state = as_tuple(state)
        backward_with_random_grads(out, state, seed=2)
        runs.append((x, hx, out, state))

    (x1, hx1, out1, st1), (x2, hx2, out2, st2) = runs
    assert type(out1) is type(out2)
    assert_close(output_tensor(out1), output_tensor(out2), "output", tol)
    for k, (a, b) in enumerate(zip(st1, st2, strict=True)):
        assert_close(a, b, f"final state {k}", tol)
    assert_close(x1.grad, x2.grad, "grad input", tol)
    for k, (a, b) in enumerate(zip(hx1, hx2, strict=True)):
        assert_close(a.grad, b.grad, f"grad initial state {k}", tol)
    compare_modules(ours, theirs, tol)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_unbatched_input(cell, backend):
    torch.manual_seed(0)
    theirs = CELLS[cell](num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = lstmkit_twin(theirs, backend)
    x = torch.randn(T, I, dtype=torch.float64)
    out1, st1 = ours(x)
    out2, st2 = theirs(x)
    assert out1.shape == out2.shape
    assert_close(out1, out2, "output", 1e-10)
    for a, b in zip(as_tuple(st1), as_tuple(st2), strict=True):
        assert a.shape == b.shape
        assert_close(a, b, "final state", 1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
def test_same_seed_same_initial_weights(cell):
    import lstmkit
    kinds = {"lstm": lambda: lstmkit.LSTM(I, H, 2, bidirectional=True),
             "lstm_proj": lambda: lstmkit.LSTM(I, H, 2, proj_size=P),
             "gru": lambda: lstmkit.GRU(I, H, 2), "rnn_tanh": lambda: lstmkit.RNN(I, H, 2),
             "rnn_relu": lambda: lstmkit.RNN(I, H, 2, nonlinearity="relu")}
    torch.manual_seed(123)
    ours = kinds[cell]()
    torch.manual_seed(123)
    theirs = CELLS[cell](num_layers=2, bidirectional=cell == "lstm")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name
    bound = 1 / H ** 0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())


def test_load_state_dict_from_torch_and_back():
    import lstmkit
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, 2, proj_size=P, bidirectional=True)
    ours = lstmkit.LSTM(I, H, 2, proj_size=P, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    back = ours.to_torch()
    x = torch.randn(T, B, I)
    with torch.no_grad():
        assert_close(back(x)[0], theirs(x)[0], "to_torch output", 1e-6)
        assert_close(ours(x)[0], theirs(x)[0], "loaded output", 1e-5)


def test_to_torch_refuses_variants():
    import lstmkit
    with pytest.raises(ValueError, match="peephole"):
        lstmkit.LSTM(I, H, peephole=True).to_torch()
    with pytest.raises(ValueError, match="reset_after"):
        lstmkit.GRU(I, H, reset_after=False).to_torch()
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        lstmkit.LSTM.from_torch(nn.GRU(I, H))


def test_dropout_between_layers_training_only():
    import lstmkit
    torch.manual_seed(0)
    m = lstmkit.LSTM(I, H, 3, dropout=0.5, dtype=torch.float64)
    ref = lstmkit.LSTM(I, H, 3, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    m.eval()
    assert_close(m(x)[0], ref(x)[0], "eval output with dropout", 1e-12)
    m.train()
    a, b = m(x)[0], m(x)[0]
    assert not torch.allclose(a, b), "dropout in training should draw new masks"
    # The first layer sees no dropout: its final state equals the dropout-free model's.
    (_, (h1, _)), (_, (h2, _)) = m(x), ref(x)
    assert_close(h1[0], h2[0], "layer-0 final state", 1e-12)
    assert not torch.allclose(h1[1], h2[1])


def test_dropout_warning_single_layer():
    import lstmkit
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        lstmkit.GRU(I, H, dropout=0.3)
