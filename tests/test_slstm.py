"""lstmkit.sLSTM (xLSTM, Beck et al. 2024): the paper's unstabilised equations by hand in
NumPy (float64, and long double where float64 overflows), every backend against the
reference (float64, every gradient, loss on all four final states, padded and packed, both
directions, two layers, regularisers, the backward in many chunks), the gradient through the
stabiliser against the unstabilised equations, gradcheck, T = 2,000 with large
pre-activations, the empty-memory first step, clear errors, record, summary, torch.compile,
the command lines, and NX-AI's vanilla sLSTM where the ``xlstm`` package is importable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from helpers import TOL, assert_close, backward_with_random_grads, make_input, output_tensor

import lstmkit
from lstmkit.cells import slstm as cell

F64 = torch.float64
I, H, K = 3, 6, 2                                      # two heads of d = 3
BACKENDS = ["reference", "fused_py", "fused_cpp"]
ROOT = Path(__file__).resolve().parents[1]


def _module(backend, *, forget_gate="sigmoid", scale=0.8, **kw):
    torch.manual_seed(0)
    kw.setdefault("num_heads", K)
    m = lstmkit.sLSTM(kw.pop("input_size", I), kw.pop("hidden_size", H), dtype=F64,
                      backend=backend, forget_gate=forget_gate, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-scale, scale)
    return m


def _dense_numpy(m, layer=0, direction=0):
    """W (4H, I), R (4H, H) dense block-diagonal, b (4H,) from the documented layout:
    weight_hh (4H, d), head k's rows [4dk, 4d(k+1)), gate-major i, f, z, o inside."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    W = getattr(m, "weight_ih" + sfx).detach().numpy()
    Wh = getattr(m, "weight_hh" + sfx).detach().numpy()
    b = (getattr(m, "bias_ih" + sfx) + getattr(m, "bias_hh" + sfx)).detach().numpy()
    Hm = W.shape[0] // 4
    d = Wh.shape[1]
    R = np.zeros((4 * Hm, Hm))
    for k in range(Hm // d):
        for g in range(4):
            for j in range(d):
                R[g * Hm + k * d + j, k * d:(k + 1) * d] = Wh[k * 4 * d + g * d + j]
    return W, R, b


def _numpy_unstabilised(W, R, b, x, forget_gate, state=None, dtype=np.float64):
    """The paper's sLSTM equations (§2.2) without the stabiliser: C, N unscaled; the
    stabiliser m computed beside them (m_t = max(log f_t + m_{t-1}, ĩ_t); m_1 = ĩ_1 from an
    empty memory) only to compare the scaled states. ``state`` = (h, c, n, m) gives
    C_0 = c e^m, N_0 = n e^m."""
    W, R, b = (np.asarray(t, dtype=dtype) for t in (W, R, b))
    Hm = R.shape[1]
    if state is None:
        h, C, N, m = (np.zeros(Hm, dtype) for _ in range(4))
        empty = True
    else:
        h, c, n, m = (np.asarray(s, dtype) for s in state)
        C, N, empty = c * np.exp(m), n * np.exp(m), False
    outs = []
    with np.errstate(over="ignore", invalid="ignore"):
        for x_t in np.asarray(x, dtype):
            a = W @ x_t + R @ h + b
            ai, af, az, ao = (a[k * Hm:(k + 1) * Hm] for k in range(4))
            i = np.exp(ai)
            f = 1 / (1 + np.exp(-af)) if forget_gate == "sigmoid" else np.exp(af)
            log_f = -np.log1p(np.exp(-af)) if forget_gate == "sigmoid" else af
            C = f * C + i * np.tanh(az)
            N = f * N + i
            h = (1 / (1 + np.exp(-ao))) * C / N
            m = ai if empty else np.maximum(log_f + m, ai)
            empty = False
            outs.append(h)
    return np.stack(outs), (h, C * np.exp(-m), N * np.exp(-m), m)


# -- the equations -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_the_papers_equations_by_hand(forget_gate, backend):
    m = _module(backend, forget_gate=forget_gate)
    g = np.random.default_rng(1)
    x = g.normal(size=(7, 2, I))
    out, (h_n, c_n, n_n, m_n) = m(torch.from_numpy(x))
    W, R, b = _dense_numpy(m)
    for k in range(2):
        want, (h, c, n, mm) = _numpy_unstabilised(W, R, b, x[:, k], forget_gate)
        np.testing.assert_allclose(out[:, k].detach().numpy(), want, rtol=1e-11, atol=1e-12)
        for got, ref in zip((h_n, c_n, n_n, m_n), (h, c, n, mm)):
            np.testing.assert_allclose(got[0, k].detach().numpy(), ref, rtol=1e-11, atol=1e-12)
    # from a given state (h_0, c_0, n_0 > 0, m_0): the same equations with C_0 = c_0 e^{m_0}
    state = (g.normal(size=(1, 2, H)), g.normal(size=(1, 2, H)),
             g.uniform(0.5, 2, size=(1, 2, H)), g.normal(size=(1, 2, H)))
    out, final = m(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state))
    for k in range(2):
        want, ref = _numpy_unstabilised(W, R, b, x[:, k], forget_gate,
                                        [s[0, k] for s in state])
        np.testing.assert_allclose(out[:, k].detach().numpy(), want, rtol=1e-10, atol=1e-12)
        for got, r in zip(final, ref):
            np.testing.assert_allclose(got[0, k].detach().numpy(), r, rtol=1e-10, atol=1e-12)


def test_parameter_layout_counts_and_recurrent_matrix():
    m = lstmkit.sLSTM(I, 8, num_heads=4)
    d = 2
    assert m.weight_ih_l0.shape == (32, I) and m.weight_hh_l0.shape == (32, d)
    assert m.bias_ih_l0.shape == (32,) and m.bias_hh_l0.shape == (32,)
    assert (m.num_heads, m.head_size) == (4, d)
    assert lstmkit.count_parameters(m) == 32 * I + 32 * d + 64
    bound = 1 / 8 ** 0.5                                   # torch.nn's U(−1/√H, 1/√H)
    assert all(float(p.detach().abs().max()) <= bound for p in m.parameters())
    W, R, b = _dense_numpy(m)
    np.testing.assert_array_equal(m.recurrent_matrix().detach().numpy(), R)
    assert np.count_nonzero(R) == 32 * d                   # block-diagonal: 4 gates × K d×d
    # NX-AI's vanilla layouts (cell.py): internal [K, 4d, d] is weight_hh.view; their
    # external recurrent_kernel [K, d_in, 4, d_out] maps by permute(0, 2, 3, 1)
    ext = torch.randn(4, d, 4, d)
    ours = ext.permute(0, 2, 3, 1).reshape(32, d)
    Rd = cell.recurrent_matrix(ours)
    k, l_in, g, j = 2, 1, 3, 0
    assert Rd[g * 8 + k * d + j, k * d + l_in] == ext[k, l_in, g, j]
    assert not hasattr(lstmkit.sLSTM(I, 8, bias=False), "bias_ih_l0")


# -- every backend against the reference ---------------------------------------------------------
SHAPES = {"2-layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True},
          "2-layers-bidirectional": {"num_layers": 2, "bidirectional": True}}
REGULARISERS = {"plain": {}, "regularised": {"zoneout": 0.3, "recurrent_dropout": 0.3,
                                             "input_dropout": 0.2, "weight_dropout": 0.2}}


def _states0(m, B, g):
    n = m.num_layers * m.num_directions
    Hm = m.hidden_size
    h, c, mm = (torch.randn(n, B, Hm, dtype=F64, generator=g) for _ in range(3))
    nn_ = torch.rand(n, B, Hm, dtype=F64, generator=g) + 0.5        # a non-empty memory
    return tuple(s.requires_grad_() for s in (h, c, nn_, mm))


def _run(m, packed, given_state, seed=2):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(6, 3, I, F64, batch_first=False, packed=packed, generator=g)
    hx = _states0(m, 3, g) if given_state else None
    torch.manual_seed(7)                                  # the same masks on every backend
    out, state = m(feed, hx)
    backward_with_random_grads(out, state, seed=seed)     # the loss reads h, c, n and m
    return (output_tensor(out), state, x.grad,
            [None] * 4 if hx is None else [s.grad for s in hx],
            {n: p.grad for n, p in m.named_parameters()})


BACKEND_CASES = [(s, r, "sigmoid") for s in SHAPES for r in REGULARISERS] + [
    ("2-layers-bidirectional", r, "exp") for r in REGULARISERS]


@pytest.mark.parametrize("shape, regularisers, forget_gate", BACKEND_CASES)
def test_every_backend_equals_the_reference(shape, regularisers, forget_gate, monkeypatch):
    monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)    # the backward in chunks
    for packed, given in ((True, True), (False, False)):
        results = {}
        for backend in ("reference", "fused_py", "fused_cpp", "fused", "auto"):
            m = _module(backend, forget_gate=forget_gate, **SHAPES[shape],
                        **REGULARISERS[regularisers]).train()
            results[backend] = _run(m, packed, given)
        want = results.pop("reference")
        for backend, got in results.items():
            what = f"{shape} {regularisers} {forget_gate} packed={packed} {backend}"
            assert_close(got[0], want[0], f"{what} output", TOL[F64])
            for k, name in enumerate("hcnm"):
                assert_close(got[1][k], want[1][k], f"{what} final {name}", TOL[F64])
                if want[3][k] is not None:
                    assert_close(got[3][k], want[3][k], f"{what} grad {name}_0", TOL[F64])
            assert_close(got[2], want[2], f"{what} grad input", TOL[F64])
            assert got[4].keys() == want[4].keys()
            for name, grad in want[4].items():
                assert grad is not None, f"{what}: no gradient for {name}"
                assert_close(got[4][name], grad, f"{what} grad {name}", TOL[F64])


def _torch_unstabilised(m, x):
    """The unstabilised equations in torch (float64, short sequences): the exact function
    of h, differentiable with no stabiliser at all."""
    W, Wh = m.weight_ih_l0, m.weight_hh_l0
    R, b = cell.recurrent_matrix(Wh), m.bias_ih_l0 + m.bias_hh_l0
    h = x.new_zeros(x.shape[1], H)
    C, N = torch.zeros_like(h), torch.zeros_like(h)
    outs = []
    for x_t in x:
        ai, af, az, ao = (x_t @ W.T + h @ R.T + b).chunk(4, dim=1)
        C = torch.sigmoid(af) * C + torch.exp(ai) * torch.tanh(az)
        N = torch.sigmoid(af) * N + torch.exp(ai)
        h = torch.sigmoid(ao) * C / N
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_the_stabiliser_is_that_of_the_unstabilised_equations(backend):
    """h does not depend on m, so a loss on h alone has the gradients of the unstabilised
    equations: the stabiliser's paths cancel (δm = 0) and nothing leaks through the max."""
    m = _module(backend, scale=1.5)
    x = torch.randn(8, 3, I, dtype=F64, generator=torch.Generator().manual_seed(3),
                    requires_grad=True)
    gy = torch.randn(8, 3, H, dtype=F64, generator=torch.Generator().manual_seed(4))
    params = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0, x]
    ours = torch.autograd.grad((m(x)[0] * gy).sum(), params)
    want = torch.autograd.grad((_torch_unstabilised(m, x) * gy).sum(), params)
    for name, a, b in zip(("W_ih", "W_hh", "b_ih", "b_hh", "x"), ours, want):
        assert_close(a, b, f"{backend} grad {name}", 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_gradcheck(forget_gate, backend):
    m = _module(backend, forget_gate=forget_gate, bidirectional=True, scale=0.5,
                hidden_size=4, input_size=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 2, dtype=F64, generator=g, requires_grad=True)
    h0, c0, n0, m0 = _states0(m, 1, g)

    def everything(x, *hx):                      # the output and all four final states
        out, state = m(x, hx)
        return torch.cat([t.flatten() for t in (out, *state)])
    assert torch.autograd.gradcheck(everything, (x, h0, c0, n0, m0), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))            # from an empty memory


# -- the stabiliser at work ------------------------------------------------------------------------
def test_long_sequences_with_large_pre_activations(monkeypatch):
    """T = 2,000 with an exponential forget gate (log f ≈ +3 per step) and input-gate
    pre-activations up to ≈ ±60: the unstabilised C, N reach e^6000 and overflow float64 —
    but not long double, in which the same NumPy computation is the reference for h. Every
    backend agrees with the reference on outputs, states and gradients."""
    monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 16)
    T = 2000
    if np.finfo(np.longdouble).maxexp < 16384:
        pytest.skip("np.longdouble is not the 80-bit extended type here")
    results = {}
    for backend in BACKENDS:
        m = _module(backend, forget_gate="exp", hidden_size=4, input_size=2, scale=0.3)
        with torch.no_grad():
            m.bias_ih_l0[4:8] = 3.0                              # f̃ ≈ 3: f ≈ e^3 per step
            m.weight_ih_l0[:4] *= 100                            # ĩ up to ≈ ±60
        g = torch.Generator().manual_seed(6)
        x = torch.randn(T, 1, 2, dtype=F64, generator=g, requires_grad=True)
        out, state = m(x)
        assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in state)
        backward_with_random_grads(out, state, seed=3)
        results[backend] = (out, state, x.grad, {n: p.grad for n, p in m.named_parameters()})
    W, R, b = _dense_numpy(m)
    with np.errstate(over="ignore", invalid="ignore"):
        naive, _ = _numpy_unstabilised(W, R, b, x[:, 0].detach().numpy(), "exp")
    assert not np.isfinite(naive).all()                  # float64 without m: inf/inf = nan
    wide, (h, c, n, mm) = _numpy_unstabilised(W, R, b, x[:, 0].detach().numpy(), "exp",
                                              dtype=np.longdouble)
    assert float(np.max(mm)) > 5000                       # log N_T: far beyond float64's 709
    want = results["reference"]
    np.testing.assert_allclose(want[0][:, 0].detach().numpy(), wide.astype(np.float64),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(want[1][3][0, 0].detach().numpy(), mm.astype(np.float64),
                               rtol=1e-12)
    for backend in ("fused_py", "fused_cpp"):
        got = results[backend]
        assert_close(got[0], want[0], f"{backend} T=2000 output", 1e-9)
        for k in range(4):
            assert_close(got[1][k], want[1][k], f"{backend} T=2000 state {k}", 1e-9)
        assert_close(got[2], want[2], f"{backend} T=2000 grad x", 1e-8)
        for name, grad in want[3].items():
            assert_close(got[3][name], grad, f"{backend} T=2000 grad {name}", 1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_memory_first_step(backend):
    """ĩ_1 = −1000 from the zero state: m_1 = ĩ_1, so i'_1 = 1, n_1 = 1 and h_1 = o z, where
    m_0 = 0 with the plain max would give n_1 = e^{−1000} = 0 and h_1 = 0/0."""
    m = _module(backend, hidden_size=4, input_size=2, num_heads=1)
    with torch.no_grad():
        m.weight_ih_l0.zero_()
        m.weight_hh_l0.zero_()
        m.bias_hh_l0.zero_()
        m.bias_ih_l0[:4] = -1000.0
    x = torch.randn(3, 2, 2, dtype=F64)
    out, (h, c, n, mm) = m(x)
    b = m.bias_ih_l0.detach()
    want = torch.sigmoid(b[12:]) * torch.tanh(b[8:12])         # o z: i and f cancel in c/n
    assert_close(out[0], want.expand(2, 4), "h_1", 1e-12)
    assert_close(out[-1], want.expand(2, 4), "h_3", 1e-12)
    # m_1 = ĩ_1; then max(log f + m_{t-1}, ĩ_t) = ĩ_t again, since log f < 0
    assert torch.equal(mm[0], torch.full((2, 4), -1000.0, dtype=F64))
    assert float(n.detach().min()) >= 1.0                                 # n_t ≥ 1 after step 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_carried_state_continues_the_sequence(backend):
    """Two windows with the returned (h, c, n, m) carried over compute the whole sequence:
    the stabilised state is a complete state (batch_first and unbatched input too)."""
    m = _module(backend, batch_first=True, forget_gate="exp", scale=1.5)
    x = torch.randn(2, 9, I, dtype=F64, generator=torch.Generator().manual_seed(9))
    whole, final = m(x)
    first, state = m(x[:, :4])
    second, final2 = m(x[:, 4:], state)
    assert_close(torch.cat([first, second], dim=1), whole, "two windows", 1e-12)
    for a, b in zip(final2, final):
        assert_close(a, b, "final state", 1e-12)
    one, _ = m(x[1])                                       # unbatched (L, H_in)
    assert_close(one, whole[1], "unbatched", 1e-12)


# -- errors, record, summary, compile -------------------------------------------------------------
def test_clear_errors():
    with pytest.raises(ValueError, match=r"hidden_size \(6\) must be divisible by num_heads \(4\)"):
        lstmkit.sLSTM(3, 6)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        lstmkit.sLSTM(3, 6, num_heads=0)
    with pytest.raises(ValueError, match="forget_gate must be 'sigmoid' or 'exp'"):
        lstmkit.sLSTM(3, 8, forget_gate="tanh")
    with pytest.raises(ValueError, match="zoneout must be one number"):
        lstmkit.sLSTM(3, 8, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        lstmkit.sLSTM(3, 8).to_torch()
    m = lstmkit.sLSTM(3, 8)
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0, n_0, m_0\)"):
        m(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 2, 8\) for n_0"):
        m(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), torch.zeros(1, 2, 7),
              torch.zeros(1, 2, 8)))
    with pytest.raises(ValueError, match="input"):
        m(torch.randn(5, 2, 4))


def test_record_summary_repr_and_pickle(tmp_path):
    m = lstmkit.sLSTM(3, 8, num_layers=2, num_heads=2, forget_gate="exp")
    with lstmkit.record(m) as rec:
        out, (h, c, n, mm) = m(torch.randn(5, 2, 3))
    assert rec.layers[0].keys() == ["i", "f", "z", "o", "c", "n", "m", "h"]
    i, f = rec.layers[1]["i"], rec.layers[1]["f"]
    assert bool(((i > 0) & (i <= 1)).all() and ((f >= 0) & (f <= 1)).all())   # stabilised
    torch.testing.assert_close(rec.layers[1]["m"][-1], mm[1])
    text = lstmkit.summary(m)
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text
    assert "z (cell input)" in text and "8x4" in text and "K=2 heads of d=4" in text
    assert repr(m) == "sLSTM(3, 8, num_layers=2, num_heads=2, forget_gate='exp')"
    path = tmp_path / "m.pt"
    torch.save(m, path)
    again = torch.load(path, weights_only=True)
    x = torch.randn(3, 1, 3)
    torch.testing.assert_close(again(x)[0], m(x)[0])


def test_compile_has_no_graph_breaks():
    torch.manual_seed(0)
    m = lstmkit.sLSTM(3, 8, bidirectional=True)
    x = torch.randn(6, 2, 3)
    dynamo.reset()
    explained = dynamo.explain(m)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0], rtol=1e-6, atol=1e-6)


def test_onnx_export_and_gradient_flow(tmp_path):
    """No ONNX operator computes sLSTM: the export unrolls the reference equations (the
    stabiliser included) and onnxruntime computes the same outputs; ``gradient_flow`` reads
    ‖∂L/∂h_t‖ and ‖∂L/∂c_t‖ of every step."""
    from lstmkit.inspect import gradient_flow
    torch.manual_seed(0)
    m = lstmkit.sLSTM(4, 8, num_layers=2).eval()
    x = torch.randn(5, 2, 4)
    flow = gradient_flow(m, x)
    assert [f.cell for f in flow] == ["slstm", "slstm"] and flow[1].dh.shape == (5,)
    assert bool(torch.isfinite(flow[0].dc).all()) and float(flow[1].dh[-1]) > 0
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export
    path = export(m, (x,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x)[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


# -- NX-AI's vanilla sLSTM -----------------------------------------------------------------------
def test_equals_nx_ai_vanilla_slstm():
    """NX-AI's ``sLSTMCell_vanilla`` (``pip install xlstm``; only its pure-torch vanilla
    backend, no CUDA) with our weights computes our outputs, final states and (autograd
    through their step) the gradients of a loss on the outputs."""
    pytest.importorskip("xlstm")
    try:
        from xlstm.blocks.slstm.cell import sLSTMCell_vanilla, sLSTMCellConfig
    except Exception as e:                                # noqa: BLE001 - any import failure
        pytest.skip(f"xlstm's vanilla sLSTM does not import here: {e}")
    Hs, heads, B, T = 8, 2, 3, 9
    d = Hs // heads
    torch.manual_seed(0)
    theirs = sLSTMCell_vanilla(sLSTMCellConfig(hidden_size=Hs, num_heads=heads,
                                               input_shape="SBGNH", output_shape="SBH"),
                               skip_backend_init=True).double()      # float32 configs only
    with torch.no_grad():
        theirs._recurrent_kernel_.normal_(0, 0.5)
        theirs._bias_.normal_(0, 0.5)
    pre = torch.randn(T, B, 4 * Hs, dtype=F64,           # their input: W x_t, gates i|f|z|o
                      requires_grad=True)
    gy = torch.randn(T, B, Hs, dtype=F64)
    y_theirs, state_theirs = theirs(pre, torch.zeros(4, B, Hs, dtype=F64))
    g_theirs = torch.autograd.grad((y_theirs * gy).sum(), [pre, theirs._recurrent_kernel_])
    # their cell takes the input projection W x_t (gate-major i|f|z|o, as our rows): ours
    # reads it as x_t of width 4H through an identity weight_ih
    ours = lstmkit.sLSTM(4 * Hs, Hs, num_heads=heads, dtype=F64, backend="fused_cpp")
    with torch.no_grad():
        ours.weight_ih_l0.copy_(torch.eye(4 * Hs, dtype=F64))
        ours.weight_hh_l0.copy_(theirs._recurrent_kernel_.reshape(4 * Hs, d))
        ours.bias_ih_l0.copy_(theirs._bias_.reshape(4 * Hs))
        ours.bias_hh_l0.zero_()
    y, (h, c, n, mm) = ours(pre)
    torch.testing.assert_close(y, y_theirs, rtol=1e-10, atol=1e-12)
    g_ours = torch.autograd.grad((y * gy).sum(), [pre, ours.weight_hh_l0])   # loss on h
    torch.testing.assert_close(g_ours[0], g_theirs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours[1], g_theirs[1].reshape(4 * Hs, d), rtol=1e-10,
                               atol=1e-12)
    for k, s in enumerate((h, c, n, mm)):
        torch.testing.assert_close(s[0], state_theirs[k], rtol=1e-10, atol=1e-12)


# -- the command lines ---------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmkit.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_train_and_experiment_cell_slstm(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 400)
    small = ["--hidden", "16", "--embed", "16", "--seq-len", "10", "--batch", "4", "--steps",
             "3", "--eval-every", "3", "--sample-length", "5", "--quiet", "--warmup", "1"]
    r = _cli("train", "--data", str(text), "--cell", "slstm", *small,
             "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run/config.json").read_text())["cell"] == "slstm"
    from lstmkit.train.sample import load_run
    run = load_run(tmp_path / "run", "last")
    assert isinstance(run.model.rnn, lstmkit.sLSTM)
    r = _cli("inspect", str(tmp_path / "run"), "--text", "def f(x):", "--checkpoint", "last",
             "--out", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
    r = _cli("experiment", "adding2016", "--T", "10", "--budget", "64", "--cell", "slstm",
             "lstm", "--hidden", "8", "--out", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "exp/results.json").read_text())
    assert [row["cell"] for row in data["summary"]] == ["slstm", "lstm"]


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_float32_kernels_equal_the_reference(forget_gate):
    """The float C++ step uses its own exp and log (polynomials, vectorised): float32 outputs,
    states and gradients match the float32 reference to float32 accuracy, with
    pre-activations large enough to exercise the stabiliser (|f̃|, |ĩ| up to ≈ 20)."""
    results = {}
    for backend in BACKENDS:
        torch.manual_seed(0)
        m = lstmkit.sLSTM(I, 8, num_heads=2, backend=backend, forget_gate=forget_gate)
        with torch.no_grad():
            m.weight_ih_l0.mul_(20)
        x = torch.randn(30, 4, I, generator=torch.Generator().manual_seed(8), requires_grad=True)
        out, state = m(x)
        backward_with_random_grads(out, state, seed=4)
        results[backend] = (out, state, x.grad, {n: p.grad for n, p in m.named_parameters()})
    want = results.pop("reference")
    for backend, got in results.items():
        assert_close(got[0], want[0], f"{backend} float32 output", 2e-5)
        for k in range(4):
            assert_close(got[1][k], want[1][k], f"{backend} float32 state {k}", 2e-5)
        assert_close(got[2], want[2], f"{backend} float32 grad x", 1e-4)
        for name, grad in want[3].items():
            assert_close(got[3][name], grad, f"{backend} float32 grad {name}", 1e-4)
