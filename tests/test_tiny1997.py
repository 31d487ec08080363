"""The tiny-network C++ trainer of the 1997 LSTM (lstmkit.ops.tiny1997) and the 1997 adding
protocol (lstmkit.train.protocol1997): outputs and truncated gradients against
lstmkit.LSTM1997(truncate=True) with autograd, against an independent torch autograd of the
blocks-with-gate-feedback network, against a hand derivation (NumPy, frozen-source finite
differences) on a 1-cell net; the online update; the paper's initialisation; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lstmkit
from lstmkit.data.synthetic import Adding1997
from lstmkit.ops.tiny1997 import Shape1997, Tiny1997
from lstmkit.train.protocol1997 import score_adding, train_adding_1997

F64 = torch.float64


def _random_net(shape, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    return Tiny1997(shape, (torch.rand(shape.n_weights, generator=g, dtype=F64) * 2 - 1) * scale)


# ---- against lstmkit.LSTM1997(truncate=True) + a logistic output unit, autograd ---------

def _lstm1997_pair(seed=0, I=2, H=3):
    """An LSTM1997 layer (truncate=True) with random weights and the Tiny1997 net (blocks
    of size 1, no gate feedback) holding the same weights."""
    torch.manual_seed(seed)
    m = lstmkit.LSTM1997(I, H, truncate=True, dtype=F64)
    head = torch.nn.Linear(H, 1, dtype=F64)
    with torch.no_grad():
        for p in list(m.parameters()) + list(head.parameters()):
            p.uniform_(-0.8, 0.8)
    return m, head, _tiny_from(m, head, I, H)


def _tiny_from(m, head, I, H):
    """A Tiny1997 net (blocks of size 1, no gate feedback) with the weights of the
    LSTM1997 layer ``m`` and the output unit ``head``."""
    shape = Shape1997(input_size=I, blocks=H, block_size=1, gate_feedback=False)
    net = Tiny1997(shape)
    rows = net.rows()
    W_ih, W_hh = m.weight_ih_l0.detach(), m.weight_hh_l0.detach()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach()
    # lstmkit's gate rows are i, g, o; Tiny1997's rows are cells (g), input gates, output gates
    for k, gate in enumerate((1, 0, 2)):
        sl = slice(gate * H, (gate + 1) * H)
        rows[k * H:(k + 1) * H, 0] = b[sl]
        rows[k * H:(k + 1) * H, 1:1 + I] = W_ih[sl]
        rows[k * H:(k + 1) * H, 1 + I:] = W_hh[sl]
    out = net.output_row()
    out[0] = head.bias.detach()[0]
    out[1:] = head.weight.detach()[0]
    return net


def _lstm1997_grad_as_flat(m, head, H, I):
    """The autograd gradients of the LSTM1997 + head pair in Tiny1997's flat layout."""
    gW_ih, gW_hh = m.weight_ih_l0.grad, m.weight_hh_l0.grad
    gb = m.bias_ih_l0.grad                      # = bias_hh's gradient
    rows = []
    for gate in (1, 0, 2):
        sl = slice(gate * H, (gate + 1) * H)
        rows.append(torch.cat([gb[sl, None], gW_ih[sl], gW_hh[sl]], 1))
    return torch.cat([torch.cat(rows).reshape(-1), head.bias.grad, head.weight.grad[0]])


@pytest.mark.parametrize("L", [1, 2, 9])
def test_output_and_gradient_equal_lstm1997_truncated(L):
    I, H = 2, 3
    m, head, net = _lstm1997_pair(seed=L, I=I, H=H)
    x = torch.randn(L, 1, I, dtype=F64, generator=torch.Generator().manual_seed(L))
    target = 0.3
    out, _ = m(x)
    y = torch.sigmoid(head(out[-1]))[0, 0]
    (0.5 * (y - target) ** 2).backward()
    y_cpp, g_cpp = net.grad(x[:, 0], target)
    assert abs(y_cpp - y.item()) < 1e-13
    expected = _lstm1997_grad_as_flat(m, head, H, I)
    torch.testing.assert_close(g_cpp, expected, rtol=1e-10, atol=1e-14)
    if L > 1:   # truncation is real: full BPTT (truncate=False) gives another gradient
        full = lstmkit.LSTM1997(I, H, truncate=False, dtype=F64)
        full.load_state_dict(m.state_dict())
        head.zero_grad()
        out, _ = full(x)
        (0.5 * (torch.sigmoid(head(out[-1]))[0, 0] - target) ** 2).backward()
        assert (_lstm1997_grad_as_flat(full, head, H, I) - g_cpp).abs().max() > 1e-6


def test_online_updates_equal_sgd_on_lstm1997():
    """train() over 3 sequences = three steps of W −= lr·∂L/∂W on the reference, in turn
    (the reference's b_hh is frozen at zero: its b_ih alone is the paper's bias weight)."""
    I, H, lr = 2, 3, 0.5
    m, head, _ = _lstm1997_pair(seed=4, I=I, H=H)
    with torch.no_grad():
        m.bias_ih_l0 += m.bias_hh_l0
        m.bias_hh_l0.zero_()
    m.bias_hh_l0.requires_grad_(False)
    net = _tiny_from(m, head, I, H)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 3, 4])
    x = torch.rand(3, 5, I, dtype=F64, generator=g) * 2 - 1
    targets = torch.tensor([0.2, 0.7, 0.5], dtype=F64)
    ref_out = []
    params = [p for p in list(m.parameters()) + list(head.parameters()) if p.requires_grad]
    for b in range(3):
        for p in params:
            p.grad = None
        out, _ = m(x[b, :lengths[b], None])
        y = torch.sigmoid(head(out[-1]))[0, 0]
        ref_out.append(y.item())
        (0.5 * (y - targets[b]) ** 2).backward()
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
    outs, streak = net.train(x, targets, lengths, lr=lr)
    torch.testing.assert_close(outs, torch.tensor(ref_out, dtype=F64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(net.weights, _tiny_from(m, head, I, H).weights, rtol=1e-11,
                               atol=1e-13)
    assert streak == int(((outs - targets).abs() < 0.04).flip(0).cumprod(0).sum())


# ---- blocks of size 2 with gate feedback: an independent autograd reference ------------

def _autograd_blocks(W, shape, x, target):
    """The network of lstmkit.ops.tiny1997's docstring in torch ops, recurrent sources
    detached (the truncated gradient); returns (y, grad)."""
    B, S = shape.blocks, shape.block_size
    C, M = shape.cells, shape.sources
    W = W.clone().requires_grad_(True)
    rows = W[: shape.rows * M].view(shape.rows, M)
    wk = W[shape.rows * M:]
    yc = torch.zeros(C, dtype=F64)
    gin = torch.zeros(B, dtype=F64)
    gout = torch.zeros(B, dtype=F64)
    s = torch.zeros(C, dtype=F64)
    for t in range(x.shape[0]):
        parts = [torch.ones(1, dtype=F64), x[t], yc.detach()]
        if shape.gate_feedback:
            parts += [gin.detach(), gout.detach()]
        u = torch.cat(parts)
        net = rows @ u
        g = 4 * torch.sigmoid(net[:C]) - 2
        gin = torch.sigmoid(net[C:C + B])
        gout = torch.sigmoid(net[C + B:])
        s = s + gin.repeat_interleave(S) * g
        yc = gout.repeat_interleave(S) * (2 * torch.sigmoid(s) - 1)
    y = torch.sigmoid(wk[0] + wk[1:] @ yc)
    (0.5 * (y - target) ** 2).backward()
    return y.item(), W.grad


@pytest.mark.parametrize("shape", [Shape1997(), Shape1997(2, 1, 3, True), Shape1997(3, 2, 2, False),
                                   Shape1997(1, 3, 1, True)])
def test_blocks_and_gate_feedback_equal_autograd(shape):
    net = _random_net(shape, seed=shape.blocks)
    x = torch.rand(11, shape.input_size, dtype=F64, generator=torch.Generator().manual_seed(3))
    y_ref, g_ref = _autograd_blocks(net.weights, shape, x, 0.8)
    y, g = net.grad(x, 0.8)
    assert abs(y - y_ref) < 1e-13
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)


def test_paper_network_has_93_weights_and_its_initialisation():
    shape = Shape1997()                  # 2 inputs, 2 blocks of 2 cells, gate feedback
    assert shape.n_weights == 93         # the paper's Table 7 lists 93 weights
    net = Tiny1997.init(shape, gen=torch.Generator().manual_seed(0))
    rows = net.rows()
    assert rows[4, 0].item() == -3.0 and rows[5, 0].item() == -6.0      # input-gate biases
    rest = torch.cat([rows[:4].reshape(-1), rows[4:6, 1:].reshape(-1), rows[6:].reshape(-1),
                      net.output_row()])
    assert rest.abs().max() <= 0.1 and rest.abs().max() > 0.05


# ---- hand derivation on a 1-cell net -------------------------------------------------

def _np_forward(W, xs, frozen=None):
    """1 input, 1 cell (one block), no gate feedback; rows: cell, in, out; then output.
    With ``frozen`` the recurrent source y^c(t−1) is taken from it (the truncation)."""
    sig = lambda z: 1 / (1 + np.exp(-z))                     # noqa: E731
    Wc, Win, Wout, wk = W[0:3], W[3:6], W[6:9], W[9:11]
    s, yc, ys = 0.0, 0.0, []
    for t, x in enumerate(xs):
        prev = yc if frozen is None else frozen[t]
        u = np.array([1.0, x, prev])
        g = 4 * sig(Wc @ u) - 2
        i, o = sig(Win @ u), sig(Wout @ u)
        s = s + i * g
        ys.append(yc)
        yc = o * (2 * sig(s) - 1)
    return sig(wk[0] + wk[1] * yc), ys


@pytest.mark.parametrize("xs", [[0.7], [0.7, -0.4], [0.7, -0.4, 1.0]])
def test_one_cell_hand_derivation(xs):
    shape = Shape1997(input_size=1, blocks=1, block_size=1, gate_feedback=False)
    W = np.random.default_rng(len(xs)).uniform(-1, 1, shape.n_weights)
    target = 0.35
    sig = lambda z: 1 / (1 + np.exp(-z))                     # noqa: E731
    # by hand: δ_s = ∂L/∂s(T) is carried unchanged along the CEC to every step
    Wc, Win, Wout, wk = W[0:3], W[3:6], W[6:9], W[9:11]
    s, yc, us, ins, gs, ncs = 0.0, 0.0, [], [], [], []
    for x in xs:
        u = np.array([1.0, x, yc])
        nc = Wc @ u
        g, i, o = 4 * sig(nc) - 2, sig(Win @ u), sig(Wout @ u)
        s += i * g
        yc = o * (2 * sig(s) - 1)
        us.append(u), ins.append(i), gs.append(g), ncs.append(nc)
    y = sig(wk[0] + wk[1] * yc)
    dk = (y - target) * y * (1 - y)
    h = 2 * sig(s) - 1
    ds = dk * wk[1] * o * (1 - h * h) / 2
    grad = np.zeros_like(W)
    for u, i, g, nc in zip(us, ins, gs, ncs):
        grad[0:3] += ds * i * 4 * sig(nc) * (1 - sig(nc)) * u
        grad[3:6] += ds * g * i * (1 - i) * u
    grad[6:9] = dk * wk[1] * h * o * (1 - o) * us[-1]
    grad[9:11] = dk * np.array([1.0, yc])
    y_cpp, g_cpp = Tiny1997(shape, torch.from_numpy(W)).grad(
        torch.tensor(xs, dtype=F64)[:, None], target)
    assert abs(y_cpp - y) < 1e-14
    np.testing.assert_allclose(g_cpp.numpy(), grad, rtol=1e-11, atol=1e-15)
    # and the truncated gradient is the derivative with the recurrent sources frozen
    _, frozen = _np_forward(W, xs)
    eps, fd = 1e-6, np.zeros_like(W)
    for k in range(len(W)):
        Wp, Wm = W.copy(), W.copy()
        Wp[k] += eps
        Wm[k] -= eps
        lp = 0.5 * (_np_forward(Wp, xs, frozen)[0] - target) ** 2
        lm = 0.5 * (_np_forward(Wm, xs, frozen)[0] - target) ** 2
        fd[k] = (lp - lm) / (2 * eps)
    np.testing.assert_allclose(g_cpp.numpy(), fd, rtol=1e-6, atol=1e-10)


# ---- batches, padding, stopping, prediction ---------------------------------------

def test_padding_and_predict_and_stop_streak():
    shape = Shape1997()
    net = _random_net(shape, seed=5, scale=0.3)
    task = Adding1997(20)
    batch = task.sample(6, torch.Generator().manual_seed(0))
    x = batch.x.to(F64)
    y_pred = net.predict(x, batch.lengths)
    for b in range(6):
        y, _ = net.grad(x[b, :batch.lengths[b]], 0.0)
        assert abs(y_pred[b].item() - y) < 1e-14
    # online training on the padded batch = one sequence at a time, unpadded
    one = Tiny1997(shape, net.weights)
    outs, _ = net.train(x, batch.y.to(F64), batch.lengths, lr=0.5)
    for b in range(6):
        o, _ = one.train(x[b:b + 1, :batch.lengths[b]], batch.y[b:b + 1].to(F64), lr=0.5)
        assert abs(o.item() - outs[b].item()) < 1e-14
    torch.testing.assert_close(one.weights, net.weights, rtol=0, atol=1e-14)
    # stop_streak: a tolerance everyone meets stops after exactly stop_streak sequences
    outs, streak = net.train(x, batch.y.to(F64), batch.lengths, stop_streak=3, streak=1,
                             tol=10.0)
    assert len(outs) == 2 and streak == 3


def test_bad_input_is_named():
    shape = Shape1997()
    with pytest.raises(ValueError, match="blocks must be an int"):
        Shape1997(blocks=0)
    with pytest.raises(ValueError, match="93 entries"):
        Tiny1997(shape, torch.zeros(92, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        Tiny1997(shape, torch.full((93,), float("nan"), dtype=F64))
    net = Tiny1997(shape)
    with pytest.raises(ValueError, match=r"x must be \(N, L, 2\)"):
        net.predict(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="empty"):
        net.predict(torch.zeros(0, 4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        net.predict(torch.zeros(2, 4, 2, dtype=F64), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="lr must be a positive"):
        net.train(torch.zeros(1, 4, 2, dtype=F64), torch.zeros(1, dtype=F64), lr=-1.0)
    with pytest.raises(ValueError, match="targets must be 1 finite"):
        net.train(torch.zeros(1, 4, 2, dtype=F64), torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match=r"x must be \(L ≥ 1, 2\)"):
        net.grad(torch.zeros(0, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="T must be an int"):
        train_adding_1997(5)


def test_protocol_runs_and_scores_with_caps():
    r = train_adding_1997(20, 0, max_sequences=3000, n_test=256)
    assert r["sequences"] <= 3000 and r["reason"] in ("sequence cap", "stop criterion")
    assert r["shape"]["n_weights"] == 93 and r["test_n"] == 256
    assert 0 <= r["test_wrong"] <= 256
    # the score is an independent count of |y − t| ≥ 0.04 over fresh sequences
    net = Tiny1997.init(gen=torch.Generator().manual_seed(1))
    s = score_adding(net, 20, 3, n=100)
    task = Adding1997(20)
    from lstmkit.train.protocol1997 import TEST_SEED_OFFSET
    batch = task.sample(100, torch.Generator().manual_seed(3 + TEST_SEED_OFFSET))
    err = net.predict(batch.x.to(F64), batch.lengths) - batch.y.to(F64)
    assert s["test_wrong"] == int((err.abs() >= 0.04).sum())


def test_cli_experiment_adding_lstm1997_runs_the_1997_protocol(tmp_path, capsys):
    import json

    from lstmkit.cli import main
    out = tmp_path / "exp"
    assert main(["experiment", "adding", "--cell", "lstm1997", "--T", "20", "--budget", "500",
                 "--seeds", "2", "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(r["sequences"] == 500 and r["reason"] == "sequence cap" for r in runs)
    assert "| 20 | 1 |" in (out / "results.md").read_text()
    assert main(["experiment", "copy", "--protocol", "1997", "--cell", "lstm1997"]) == 2
    assert main(["experiment", "adding", "--protocol", "1997", "--cell", "lstm"]) == 2
    err = capsys.readouterr().err
    assert "adding problem" in err and "--cell lstm1997 alone" in err
    assert main(["experiment", "copy", "--cell", "lstm1997", "lstm"]) == 2     # no protocol
    assert "--cell lstm1997 runs only the 1997 protocol" in capsys.readouterr().err


def test_protocol_stops_on_the_streak_and_the_window_mse():
    """With a tolerance every output meets, the run stops right after `window` sequences,
    but only if the window's MSE is also below mse_stop."""
    r = train_adding_1997(20, 0, window=5, tol=10.0, mse_stop=1.0, max_sequences=1000,
                          n_test=64)
    assert r["stopped"] and r["reason"] == "stop criterion" and r["sequences"] == 5
    r = train_adding_1997(20, 0, window=5, tol=10.0, mse_stop=1e-12, max_sequences=300,
                          n_test=64)
    assert not r["stopped"] and r["reason"] == "sequence cap" and r["sequences"] == 300
    # every call after the streak reaches the window stops after one sequence; the rest of
    # the sampled chunk must still be trained on, in order: the same stream as a run whose
    # streak never builds (tol 0), so the same weights and the same test error
    never = train_adding_1997(20, 0, window=5, tol=0.0, mse_stop=1e-12, max_sequences=300,
                              n_test=64)
    assert never["streak"] == 0 and never["sequences"] == 300
    assert r["test_mse"] == never["test_mse"]
