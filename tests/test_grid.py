"""lstmkit.GridLSTM (Kalchbrenner, Danihelka & Graves 2015) against outside references: the
paper's block equations by hand in NumPy, torch.nn.LSTM (one-dimensional grids), gradcheck,
and the tasks' targets recomputed with Python integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import lstmkit
from lstmkit.cells.grid import GridBlock, grid_block
from lstmkit.data.grid_tasks import Addition, Parity
from lstmkit.data.synthetic import make_task

D64 = torch.float64


# -- the paper's equations by hand --------------------------------------------------------------
def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_block(h, m, W, b, *, non_lstm=(), priority=(), form="paper", act=np.tanh):
    """The N-D block of §3 (and §3.2, §3.3) in NumPy, rows of a batch as rows."""
    N = len(h)
    order = [k for k in range(N) if k not in priority] + list(priority)
    seen, h_new, m_new = list(h), [None] * N, [None] * N
    for k in order:
        H = np.concatenate(seen if k in priority else h, axis=1)
        a = H @ W[k].T + b[k]
        if k in non_lstm:
            h_new[k] = act(a)
        else:
            d = a.shape[1] // 4
            gu, gf = np_sigmoid(a[:, :d]), np_sigmoid(a[:, d:2 * d])
            gc, go = np.tanh(a[:, 2 * d:3 * d]), np_sigmoid(a[:, 3 * d:])
            m_new[k] = gf * m[k] + gu * gc
            h_new[k] = np.tanh(go * m_new[k]) if form == "paper" else go * np.tanh(m_new[k])
        seen[k] = h_new[k]
    return h_new, m_new


def np_grid2d(m: lstmkit.GridLSTM, x, h0, c0):
    """The 2-D time × depth grid by hand: x (T, B, I) → output (T, B, d), h_n, c_n."""
    T = x.shape[0]
    dims = list(m.dims)
    non = [dims.index(d) for d in m.non_lstm]
    pri = [dims.index(d) for d in m.priority]
    hd = [x[t] @ m.weight_in.detach().numpy().T + m.bias_in.detach().numpy() for t in range(T)]
    md = [np.zeros_like(hd[0]) for _ in range(T)]
    hn, cn = [], []
    for layer in range(m.num_layers):
        W = [w.detach().numpy() for w, _ in m.block_weights(layer)]
        b = [bb.detach().numpy() for _, bb in m.block_weights(layer)]
        ht, mt = h0[layer], c0[layer]
        for t in range(T):
            (ht, hd[t]), (mt, md_t) = np_block([ht, hd[t]], [mt, md[t]], W, b, non_lstm=non,
                                               priority=pri, form=m.cell_output)
            md[t] = md_t if md_t is not None else md[t]
        hn.append(ht)
        cn.append(mt)
    return np.stack(hd), np.stack(hn), np.stack(cn)


def np_lstm_paper(x, h0, c0, w_ih, w_hh, b):
    """A one-layer LSTM with the paper's cell output h = tanh(o ⊙ c), rows i, f, g, o."""
    h, c, out = h0, c0, []
    for t in range(x.shape[0]):
        a = x[t] @ w_ih.T + h @ w_hh.T + b
        d = a.shape[1] // 4
        i, f = np_sigmoid(a[:, :d]), np_sigmoid(a[:, d:2 * d])
        g, o = np.tanh(a[:, 2 * d:3 * d]), np_sigmoid(a[:, 3 * d:])
        c = f * c + i * g
        h = np.tanh(o * c)
        out.append(h)
    return np.stack(out), h, c


def grid(*args, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmkit.GridLSTM(*args, dtype=D64, **kw)


# -- the block --------------------------------------------------------------------------------
@pytest.mark.parametrize("non_lstm,priority", [((), ()), ((1,), ()), ((), (0,)),
                                               ((2,), (1, 0))])
@pytest.mark.parametrize("form", ["paper", "standard"])
def test_nd_block_matches_numpy(non_lstm, priority, form):
    torch.manual_seed(1)
    N, B, d = 3, 4, 5
    blk = GridBlock(N, d, non_lstm=non_lstm, priority=priority, cell_output=form, dtype=D64)
    h = [torch.randn(B, d, dtype=D64) for _ in range(N)]
    m = [None if k in non_lstm else torch.randn(B, d, dtype=D64) for k in range(N)]
    h_new, m_new = blk(h, m)
    W = [w.detach().numpy() for w, _ in blk.weights()]
    b = [bb.detach().numpy() for _, bb in blk.weights()]
    hn, mn = np_block([v.numpy() for v in h], [None if v is None else v.numpy() for v in m],
                      W, b, non_lstm=non_lstm, priority=priority, form=form)
    for k in range(N):
        np.testing.assert_allclose(h_new[k].detach().numpy(), hn[k], rtol=0, atol=1e-12)
        if k in non_lstm:
            assert m_new[k] is None
        else:
            np.testing.assert_allclose(m_new[k].detach().numpy(), mn[k], rtol=0, atol=1e-12)


def test_block_paper_form_differs_from_standard():
    torch.manual_seed(2)
    h, m = [torch.randn(3, 4, dtype=D64)], [torch.randn(3, 4, dtype=D64)]
    w = [(torch.randn(16, 4, dtype=D64), torch.randn(16, dtype=D64))]
    hp = grid_block(h, m, w, cell_output="paper")[0][0]
    hs = grid_block(h, m, w, cell_output="standard")[0][0]
    assert (hp - hs).abs().max() > 1e-3


# -- the 2-D grid: time × depth ------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"priority": "depth"}, {"priority": "time"},
                                {"non_lstm": "depth"}, {"tied": True},
                                {"cell_output": "standard", "priority": "depth"}])
def test_2d_grid_matches_numpy(kw):
    m = grid(3, 4, 3, **kw)
    T, B = 5, 2
    x = torch.randn(T, B, 3, dtype=D64)
    h0, c0 = torch.randn(3, B, 4, dtype=D64), torch.randn(3, B, 4, dtype=D64)
    out, (hn, cn) = m(x, (h0, c0))
    ref_out, ref_h, ref_c = np_grid2d(m, x.numpy(), h0.numpy(), c0.numpy())
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hn.detach().numpy(), ref_h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cn.detach().numpy(), ref_c, rtol=0, atol=1e-12)


def test_priority_is_computed_last_and_sees_the_new_vector():
    """§3.2: with depth prioritised, the depth transform reads [h^t'; h^d], the new time
    vector of the same block; without priority it reads h^t of the previous step."""
    base = grid(2, 3, 1)
    pri = grid(2, 3, 1, priority="depth")
    pri.load_state_dict(base.state_dict())
    x = torch.randn(4, 2, 2, dtype=D64)
    with lstmkit.record(pri) as rec:
        out_p, _ = pri(x)
    out_b, _ = base(x)
    assert (out_p - out_b).abs().max() > 1e-3                # the order matters
    (w_d, b_d) = pri.block_weights(0)[1]
    hd0 = x @ pri.weight_in.T + pri.bias_in                  # the depth input of layer 0
    r = rec.layers[0]
    for t in range(4):
        a = torch.cat([r["h_time"][t], hd0[t]], 1) @ w_d.T + b_d
        u, f, c, o = a.chunk(4, 1)
        m_new = torch.sigmoid(f) * 0 + torch.sigmoid(u) * torch.tanh(c)  # m^d_0 = 0
        h_new = torch.tanh(torch.sigmoid(o) * m_new)
        torch.testing.assert_close(out_p[t], h_new, rtol=0, atol=1e-12)


def test_2d_grid_with_identity_depth_is_a_stacked_lstm():
    """A 2-D grid whose depth is a non-LSTM identity dimension passing h^t' up (V = [I 0],
    priority on depth) is a stacked LSTM: with h' = o ⊙ tanh(m') it is torch.nn.LSTM."""
    H, L = 4, 3
    ref = torch.nn.LSTM(H, H, L, dtype=D64)
    m = grid(H, H, L, non_lstm="depth", priority="depth", activation="identity",
             cell_output="standard")
    with torch.no_grad():
        m.weight_in.copy_(torch.eye(H, dtype=D64))
        m.bias_in.zero_()
        for k in range(L):
            w_t, b_t = m.block_weights(k)[0]
            w_d, b_d = m.block_weights(k)[1]
            w_t.copy_(torch.cat([getattr(ref, f"weight_hh_l{k}"),
                                 getattr(ref, f"weight_ih_l{k}")], 1))
            b_t.copy_(getattr(ref, f"bias_ih_l{k}") + getattr(ref, f"bias_hh_l{k}"))
            w_d.copy_(torch.cat([torch.eye(H, dtype=D64), torch.zeros(H, H, dtype=D64)], 1))
            b_d.zero_()
    x = torch.randn(6, 2, H, dtype=D64)
    h0, c0 = torch.randn(L, 2, H, dtype=D64), torch.randn(L, 2, H, dtype=D64)
    out, (hn, cn) = m(x, (h0, c0))
    out_r, (hn_r, cn_r) = ref(x, (h0, c0))
    torch.testing.assert_close(out, out_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(hn, hn_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(cn, cn_r, rtol=0, atol=1e-12)
    # the paper's form: the same grid equals a hand-written one-layer LSTM with h = tanh(o ⊙ c)
    m1 = grid(H, H, 1, non_lstm="depth", priority="depth", activation="identity")
    m1.load_state_dict({k: v for k, v in m.state_dict().items() if not k.endswith(("l1", "l2"))})
    out1, (h1, c1) = m1(x, (h0[:1], c0[:1]))
    w = m1.block_weights(0)[0][0].detach().numpy()
    b = m1.block_weights(0)[0][1].detach().numpy()
    ref_out, ref_h, ref_c = np_lstm_paper(x.numpy(), h0[0].numpy(), c0[0].numpy(),
                                          w[:, H:], w[:, :H], b)
    np.testing.assert_allclose(out1.detach().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c1[0].detach().numpy(), ref_c, rtol=0, atol=1e-12)


# -- the 1-D grid: depth ------------------------------------------------------------------------
def test_1d_tied_grid_is_an_lstm_over_depth():
    """One dimension: (h_l, m_l) = LSTM(h_{l−1}, m_{l−1}, W): an LSTM run for num_layers
    steps with no input from h_0 = W_in x + b_in, m_0 = 0 — torch.nn.LSTM with zero input
    (standard form) and a hand-written LSTM of the paper's form."""
    I, H, L = 5, 4, 6
    x = torch.randn(3, 2, I, dtype=D64)
    for form in ("standard", "paper"):
        m = grid(I, H, L, dims="depth", tied=True, cell_output=form)
        out, (hn, mn) = m(x)
        w, b = m.block_weights(0)[0]
        h0 = (x @ m.weight_in.T + m.bias_in).reshape(1, 6, H)
        zeros = torch.zeros(L, 6, 1, dtype=D64)
        if form == "standard":
            ref = torch.nn.LSTM(1, H, dtype=D64)
            with torch.no_grad():
                ref.weight_hh_l0.copy_(w)
                ref.bias_hh_l0.copy_(b)
                ref.bias_ih_l0.zero_()
            seq, (h_r, c_r) = ref(zeros, (h0, torch.zeros_like(h0)))
            top, m_top = h_r[0], c_r[0]
        else:
            seq, top, m_top = np_lstm_paper(zeros.numpy(), h0[0].detach().numpy(),
                                            np.zeros((6, H)), np.zeros((4 * H, 1)),
                                            w.detach().numpy(), b.detach().numpy())
            top, m_top = torch.from_numpy(top), torch.from_numpy(m_top)
        torch.testing.assert_close(out.reshape(6, H), top, rtol=0, atol=1e-12)
        torch.testing.assert_close(hn[0], out[-1], rtol=0, atol=0)
        torch.testing.assert_close(mn[0], m_top.reshape(3, 2, H)[-1], rtol=0, atol=1e-12)


def test_1d_non_lstm_grid_is_a_tanh_feed_forward_net():
    m = grid(5, 4, 3, dims="depth", non_lstm="depth")
    x = torch.randn(2, 3, 5, dtype=D64)
    a = x @ m.weight_in.T + m.bias_in
    for k in range(3):
        w, b = m.block_weights(k)[0]
        a = torch.tanh(a @ w.T + b)
    out, _ = m(x)
    torch.testing.assert_close(out, a, rtol=0, atol=1e-12)


def test_tied_equals_untied_with_copied_weights():
    for dims in ("time-depth", "depth"):
        tied = grid(3, 4, 3, dims=dims, tied=True)
        untied = grid(3, 4, 3, dims=dims, seed=5)
        with torch.no_grad():
            for k in range(3):
                for (wt, bt), (wu, bu) in zip(tied.block_weights(0), untied.block_weights(k)):
                    wu.copy_(wt)
                    bu.copy_(bt)
            untied.weight_in.copy_(tied.weight_in)
            untied.bias_in.copy_(tied.bias_in)
        x = torch.randn(4, 2, 3, dtype=D64)
        (o1, s1), (o2, s2) = tied(x), untied(x)     # (the tied 1-D grid: one engine call;
        torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)   # the untied: the block loop)
        torch.testing.assert_close(s1, s2, rtol=0, atol=1e-12)
        assert lstmkit.count_parameters(untied) > lstmkit.count_parameters(tied)


# -- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"priority": "depth", "tied": True},
                                {"non_lstm": "depth", "priority": "time"},
                                {"dims": "depth", "tied": True},
                                {"dims": "depth", "non_lstm": "depth"}])
def test_gradcheck(kw):
    m = grid(2, 3, 2, **kw)
    x = torch.randn(3, 2, 2, dtype=D64, requires_grad=True)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]
    if "dims" in kw:
        def f(x, *ps):
            out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
            return out, h, c
        args = (x, *params)
    else:
        h0 = torch.randn(2, 2, 3, dtype=D64, requires_grad=True)
        c0 = torch.randn(2, 2, 3, dtype=D64, requires_grad=True)

        def f(x, h0, c0, *ps):
            out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
            return out, h, c
        args = (x, h0, c0, *params)
    assert torch.autograd.gradcheck(f, args, atol=1e-7)


# -- the torch.nn contract ------------------------------------------------------------------------
@pytest.mark.parametrize("dims", ["time-depth", "depth"])
def test_packed_batch_first_and_unbatched(dims):
    m = grid(3, 4, 2, dims=dims)
    seqs = [torch.randn(n, 3, dtype=D64) for n in (4, 6, 2)]
    out, (h, c) = m(pack_sequence(seqs, enforce_sorted=False))
    padded, lengths = pad_packed_sequence(out)
    for j, s in enumerate(seqs):
        o1, (h1, c1) = m(s)                                  # unbatched, alone
        torch.testing.assert_close(padded[: len(s), j], o1, rtol=0, atol=1e-12)
        torch.testing.assert_close(h[:, j], h1, rtol=0, atol=1e-12)
        torch.testing.assert_close(c[:, j], c1, rtol=0, atol=1e-12)
    mb = grid(3, 4, 2, dims=dims, batch_first=True)
    mb.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=D64)
    torch.testing.assert_close(mb(x.transpose(0, 1))[0].transpose(0, 1), m(x)[0])


def test_record_and_summary():
    m = grid(3, 4, 2, priority="depth")
    x = torch.randn(5, 2, 3, dtype=D64)
    with lstmkit.record(m) as rec:
        out, (h, c) = m(x)
    assert [r.layer for r in rec.layers] == [0, 1]
    top = rec.layers[1]
    assert set(top.keys()) >= {"u_time", "f_time", "c_time", "o_time", "u_depth", "o_depth",
                               "h_time", "m_time", "h_depth", "m_depth"}
    torch.testing.assert_close(top["h_depth"], out, rtol=0, atol=0)
    torch.testing.assert_close(top["m_time"][-1], c[1], rtol=0, atol=0)
    text = lstmkit.summary(m)
    assert f"parameters: {lstmkit.count_parameters(m):,}" in text
    assert "(priority)" in text and "tanh(o ⊙ m')" in text


def test_dropout_between_layers_only_in_training():
    m = grid(3, 4, 3, dropout=0.5)
    x = torch.randn(4, 2, 3, dtype=D64)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.train()
    torch.manual_seed(0)
    assert (m(x)[0] - a).abs().max() > 1e-6


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"dims": "time"}, "dims must be"),
    ({"dims": "depth", "priority": "depth"}, "priority needs two dimensions"),
    ({"priority": ("time", "depth")}, "one dimension"),
    ({"priority": "width"}, "grid's dimensions"),
    ({"non_lstm": "time"}, "non_lstm='time' is not offered"),
    ({"cell_output": "tanh"}, "cell_output must be"),
    ({"activation": "gelu"}, "activation"),
    ({"backend": "fused_cpp", "non_lstm": "depth"}, "LSTM transforms in both"),
    ({"backend": "cuda"}, "backend must be"),
    ({"bidirectional": True}, "bidirectional"),
    ({"dropout": 2.0}, "dropout"),
])
def test_constructor_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        lstmkit.GridLSTM(3, 4, **kw)


def test_call_errors():
    m = lstmkit.GridLSTM(3, 4)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="Expected hidden size"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        m(torch.full((5, 2, 3), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="hx must be None"):
        lstmkit.GridLSTM(3, 4, dims="depth")(torch.randn(5, 2, 3),
                                             (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(TypeError, match="priority must be"):
        lstmkit.GridLSTM(3, 4, priority=1)
    with pytest.raises(ValueError, match="num_dims|dimensions"):
        GridBlock(2, 3, priority=(2,))


# -- the tasks of §4 ----------------------------------------------------------------------------
def test_parity_targets():
    task = make_task("parity", 37)
    assert isinstance(task, Parity) and task.input_size == 37
    b = task.sample(64, torch.Generator().manual_seed(0))
    assert b.x.shape == (64, 1, 37)
    for row, y in zip(b.x[:, 0].tolist(), b.y.tolist()):
        assert y == int(sum(row)) % 2
    assert 0.3 < b.y.float().mean() < 0.7


def test_addition_targets():
    task = make_task("addition", 6)
    assert isinstance(task, Addition)
    b = task.sample(50, torch.Generator().manual_seed(1))
    assert b.x.shape == (50, 22, 11)
    ids, y = b.x.argmax(-1), b.y
    for j in range(50):
        a = int("".join(str(d) for d in reversed(ids[j, :6].tolist())))
        c = int("".join(str(d) for d in reversed(ids[j, 7:13].tolist())))
        s = int("".join(str(d) for d in reversed(y[j, 13:20].tolist())))
        assert s == a + c
        assert ids[j, 6] == 10 and ids[j, 13:].eq(10).all() and y[j, 20] == 10
    perfect = torch.nn.functional.one_hot(y, 11).double() * 50
    assert task.score(perfect, b)["solved"]
    off = perfect.clone()
    off[0, 15] = off[0, 15].roll(1)
    assert task.score(off, b)["wrong"] == pytest.approx(1 / 50)


def test_experiment_runs_grid_cells():
    from lstmkit.train.experiment import ExperimentConfig, run_experiment
    r = run_experiment(ExperimentConfig("parity", T=4, cell="grid1d", hidden=8, layers=2,
                                        budget=64, batch=32, val_size=32, test_size=32))
    assert r["sequences"] == 64 and 0 <= r["test"]["wrong"] <= 1
    r = run_experiment(ExperimentConfig("addition", T=2, cell="grid-tied", hidden=8, layers=2,
                                        budget=32, batch=16, val_size=16, test_size=16))
    assert r["sequences"] == 32 and "digit_accuracy" in r["test"]


# -- the fused 2-D layer on the engine ---------------------------------------------------------
def _run_all(m, x, hx, seed=3):
    """Outputs, final states and every gradient (input, initial states, parameters) for
    random upstream gradients."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    out, (h, c) = m(x, hx)
    data = out.data if hasattr(out, "batch_sizes") else out
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=D64)).sum() for t in (data, h, c))
    m.zero_grad()
    loss.backward()
    return [data, h, c, x.grad, *(t.grad for t in hx), *(p.grad.clone() for p in m.parameters())]


@pytest.mark.parametrize("kw", [{}, {"priority": "depth"}, {"tied": True},
                                {"cell_output": "standard", "priority": "depth", "tied": True},
                                {"bias": False}])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_fused_equals_reference(kw, packed, chunked, monkeypatch):
    if chunked:
        monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)   # many backward chunks
    m = grid(3, 4, 3, **kw)
    hx = (torch.randn(3, 3, 4, dtype=D64), torch.randn(3, 3, 4, dtype=D64))
    x = torch.randn(6, 3, 3, dtype=D64)
    if packed:
        x = pack_sequence([torch.randn(n, 3, dtype=D64) for n in (4, 6, 2)],
                          enforce_sorted=False)
    results = {}
    for backend in ("reference", "fused_py", "fused_cpp"):
        m.backend = backend
        if packed:
            results[backend] = _run_packed(m, x, hx)
        else:
            results[backend] = _run_all(m, x, hx)
    for fused in ("fused_py", "fused_cpp"):
        for a, b in zip(results["reference"], results[fused], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _run_packed(m, packed, hx):
    data = packed.data.detach().clone().requires_grad_()
    p = torch.nn.utils.rnn.PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                          packed.unsorted_indices)
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    out, (h, c) = m(p, hx)
    g = torch.Generator().manual_seed(4)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=D64)).sum()
               for t in (out.data, h, c))
    m.zero_grad()
    loss.backward()
    return [out.data, h, c, data.grad, *(t.grad for t in hx),
            *(q.grad.clone() for q in m.parameters())]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("layout", [[3] * 5, [3, 3, 2, 1, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("form", ["paper", "standard"])
def test_fused_step_equals_its_engine_reference_step(reverse, layout, form):
    """The spec's reference step (the block equations) through the engine's reference loop
    equals its fused step through the engine's autograd Function on both loops (torch and
    C++), side gradient included, in both directions (the engine's reverse pass: what a
    bidirectional grid layer would run) and on a packed layout."""
    from lstmkit.cells.grid import grid2d_spec, grid_layer_weights
    from lstmkit.ops import cpp_kernels, fused, loops, reference
    torch.manual_seed(6)
    d, B, N = 4, 3, sum(layout)
    cpp = cpp_kernels(required=True)
    for priority in (False, True):
        spec = grid2d_spec(form, priority)
        w = grid_layer_weights(torch.randn(4 * d, 2 * d, dtype=D64, requires_grad=True),
                               torch.randn(4 * d, dtype=D64, requires_grad=True),
                               torch.randn(4 * d, 2 * d, dtype=D64, requires_grad=True),
                               torch.randn(4 * d, dtype=D64, requires_grad=True))
        x = torch.randn(N, d, dtype=D64, requires_grad=True)
        side = torch.randn(N, d, dtype=D64, requires_grad=True)
        s0 = tuple(torch.randn(B, d, dtype=D64, requires_grad=True) for _ in range(4))
        outs = {}
        for name, run in (("ref", reference.run_layer),
                          ("py", lambda *a, **k: fused.run_layer(*a, kernels=loops, **k)),
                          ("cpp", lambda *a, **k: fused.run_layer(*a, kernels=cpp, **k))):
            _, finals, _, seqs = run(spec, x, layout, s0, w, side=(side,), sequences=True,
                                     reverse=reverse)
            loss = sum((t * torch.sin(torch.arange(t.numel(), dtype=D64)).view_as(t)).sum()
                       for t in (*seqs, *finals))
            grads = torch.autograd.grad(loss, [x, side, *s0[2:], w.w_ih, w.w_hh, w.b_ih])
            # (h^d, m^d of step 0 are never read: no gradient)
            outs[name] = [*seqs, *finals, *grads]
        for fused_name in ("py", "cpp"):
            for a, b in zip(outs["ref"], outs[fused_name], strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["fused_py", "fused_cpp"])
@pytest.mark.parametrize("kw", [{"priority": "depth"}, {"cell_output": "standard"}])
def test_fused_gradcheck(backend, kw):
    m = grid(2, 3, 2, backend=backend, **kw)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=D64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=D64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=D64, requires_grad=True)

    def f(x, h0, c0, *ps):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
        return out, h, c
    assert torch.autograd.gradcheck(f, (x, h0, c0, *m.parameters()), atol=1e-7)


def test_fused_backend_errors():
    with pytest.raises(ValueError, match="float32/float64"):
        lstmkit.GridLSTM(3, 4, backend="fused_cpp", dtype=torch.bfloat16)(
            torch.randn(2, 1, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="not time"):
        lstmkit.GridLSTM(3, 4, priority="time", backend="fused_cpp")
    with pytest.raises(ValueError, match="untied 1-D grid"):
        lstmkit.GridLSTM(3, 4, dims="depth", backend="fused")
    with pytest.raises(ValueError, match="LSTM transforms"):
        lstmkit.GridLSTM(3, 4, dims="depth", tied=True, non_lstm="depth", backend="fused_cpp")
    with pytest.raises(ValueError, match="not time"):
        lstmkit.GridLSTM(3, 4, priority="time", backend="fused_py")
    with pytest.raises(ValueError, match="LSTM transforms in both"):
        lstmkit.GridLSTM(3, 4, non_lstm="depth", backend="fused")


def test_cli_experiment_addition_with_grid_layers(tmp_path, capsys):
    from lstmkit.cli import main
    code = main(["experiment", "addition", "--T", "2", "--cell", "grid-tied", "lstm",
                 "--layers", "2", "--hidden", "8", "--budget", "64", "--out", str(tmp_path)])
    assert code == 0
    import json
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["config"]["cell"] for r in runs] == ["grid-tied", "lstm"]
    assert all(r["config"]["layers"] == 2 for r in runs)
    assert "addition, T = 2" in capsys.readouterr().out


def test_save_and_load_with_weights_only(tmp_path):
    m = grid(3, 4, 2, tied=True, priority="depth")
    path = tmp_path / "grid.pt"
    torch.save(m, path)
    back = torch.load(path, weights_only=True)
    x = torch.randn(5, 2, 3, dtype=D64)
    torch.testing.assert_close(back(x)[0], m(x)[0], rtol=0, atol=0)
    assert back.tied and back.priority == ("depth",)


def test_auto_takes_the_fused_step_and_equals_reference(monkeypatch):
    calls = []
    from lstmkit.ops import fused
    real = fused.run_layer
    monkeypatch.setattr(fused, "run_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = grid(3, 4, 2)
    x = torch.randn(5, 2, 3, dtype=D64)
    out_auto = m(x)[0]
    assert len(calls) == 2                                   # one engine call per layer
    m.backend = "reference"
    torch.testing.assert_close(m(x)[0], out_auto, rtol=0, atol=1e-12)
    assert len(calls) == 2


def test_fused_double_backward_equals_reference():
    """create_graph=True: the engine differentiates the reference step instead (its
    hand-derived backward is not itself differentiable); the result equals the reference
    backend's second derivatives."""
    m = grid(2, 3, 2, priority="depth")
    x0 = torch.randn(4, 2, 2, dtype=D64)
    res = {}
    for backend in ("reference", "fused_py"):
        m.backend = backend
        x = x0.clone().requires_grad_()
        out, _ = m(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sin().sum(), x)
        res[backend] = (g, gg)
    for a, b in zip(res["reference"], res["fused_py"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_auto_runs_the_cpp_step(monkeypatch):
    """"auto" (float32/float64 on the CPU) runs the family's C++ step through the engine."""
    from lstmkit.ops import extension
    kernels = extension.cpp_kernels(required=True)
    seen = []
    real = kernels.forward
    monkeypatch.setattr(kernels, "forward", lambda cell, *a: seen.append(cell.fused.cpp)
                        or real(cell, *a))
    m = grid(3, 4, 2, tied=True)
    m(torch.randn(5, 2, 3, dtype=D64))
    assert seen == ["grid_lstm", "grid_lstm"]                # one engine call per layer


@pytest.mark.parametrize("backend", ["fused_py", "fused_cpp"])
def test_record_through_the_engine_equals_the_reference_record(backend):
    """lstmkit.record on the engine path (the saved gates and states of the fused layer)
    gives the same names and values as the reference loop over the block equations."""
    m = grid(3, 4, 2, priority="depth")
    x = pack_sequence([torch.randn(n, 3, dtype=D64) for n in (5, 3)])
    recs = {}
    for b in ("reference", backend):
        m.backend = b
        with lstmkit.record(m) as rec:
            m(x)
        recs[b] = rec.layers
    for a, b in zip(recs["reference"], recs[backend], strict=True):
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("kw", [{}, {"dims": "depth", "tied": True}], ids=["2d", "1d-tied"])
def test_compile_equals_eager(kw):
    """torch.compile runs each layer (the tied 1-D grid: its whole depth) as the custom op
    lstmkit::grid_lstm_layer; outputs and states equal eager."""
    import torch._dynamo as dynamo
    torch.manual_seed(3)
    m = lstmkit.GridLSTM(3, 4, 2, **kw)
    x = torch.randn(6, 2, 3)
    dynamo.reset()
    explained = dynamo.explain(m)(x)
    used = {str(n.target) for gm in explained.graphs for n in gm.graph.nodes
            if n.op == "call_function"}
    assert any("grid_lstm_layer" in op for op in used), used
    compiled = torch.compile(m, backend="aot_eager")
    want, got = m(x), compiled(x)
    for a, b in zip((want[0], *want[1]), (got[0], *got[1])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- the tied 1-D grid on the engine (a recurrence over depth) -------------------------------------
@pytest.mark.parametrize("form", ["paper", "standard"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunked", [False, True])
def test_1d_tied_fused_equals_reference(form, bias, chunked, monkeypatch):
    """The tied 1-D grid as one engine call (both loops) equals the autograd loop over the
    block equations: outputs, final states and every gradient, on packed input."""
    if chunked:
        monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)
    m = grid(3, 4, 5, dims="depth", tied=True, cell_output=form, bias=bias)
    x = pack_sequence([torch.randn(n, 3, dtype=D64) for n in (4, 6, 2)], enforce_sorted=False)
    results = {}
    for backend in ("reference", "fused_py", "fused_cpp"):
        m.backend = backend
        data = x.data.detach().clone().requires_grad_()
        out, (h, c) = m(torch.nn.utils.rnn.PackedSequence(data, x.batch_sizes, x.sorted_indices,
                                                          x.unsorted_indices))
        g = torch.Generator().manual_seed(4)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=D64)).sum()
                   for t in (out.data, h, c))
        m.zero_grad()
        loss.backward()
        results[backend] = [out.data, h, c, data.grad,
                            *(q.grad.clone() for q in m.parameters())]
    for fused in ("fused_py", "fused_cpp"):
        for a, b in zip(results["reference"], results[fused], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["fused_py", "fused_cpp"])
def test_1d_tied_fused_gradcheck(backend):
    m = grid(2, 3, 4, dims="depth", tied=True, backend=backend)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=D64, requires_grad=True)

    def f(x, *ps):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return out, h, c
    assert torch.autograd.gradcheck(f, (x, *m.parameters()), atol=1e-7)


def test_1d_tied_auto_is_one_engine_call(monkeypatch):
    from lstmkit.ops import fused
    calls = []
    real = fused.run_layer
    monkeypatch.setattr(fused, "run_layer", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    m = grid(3, 4, 6, dims="depth", tied=True)
    m(torch.randn(5, 2, 3, dtype=D64))
    assert calls == [[10] * 6]              # 5 steps × 2 sequences = 10 rows, 6 layers deep
