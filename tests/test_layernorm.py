"""layer_norm=True (LN-LSTM, LN-GRU; Ba, Kiros & Hinton 2016): the reference cell against an
independent computation (torch.nn.LayerNorm + the LSTMCell/GRUCell equations, and NumPy) and
torch.autograd.gradcheck; every fused backend against the reference as a pair (float64,
1e-10, every gradient, gains and LN biases included); init, record, to_torch, dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import as_tuple, assert_close, backward_with_random_grads, make_input, output_tensor
from torch import nn

import lstmkit
from lstmkit import ops

I, H = 4, 5
FUSED = ["fused_py", "fused_cpp"]
FAMILIES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU}
LN_NAMES = {"lstm": ["ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight",
                     "ln_c_bias"],
            "gru": ["ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias"]}


def _model(family, dtype=torch.float64, backend="reference", randomise=True, hidden=H, **kw):
    m = FAMILIES[family](I, hidden, layer_norm=True, dtype=dtype, backend=backend, **kw)
    if randomise:                     # gains away from 1 and LN biases away from 0
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(-0.8, 0.8)
    return m


# -- the reference against an outside computation -------------------------------------------
def _torch_nn_ln_lstm(m, x, h, c):
    """Ba et al.'s LN-LSTM with torch.nn.LayerNorm modules and LSTMCell-style equations."""
    p = dict(m.named_parameters())

    def ln(name, D):
        mod = nn.LayerNorm(D, eps=1e-5, dtype=x.dtype)
        with torch.no_grad():
            mod.weight.copy_(p[f"ln_{name}_weight_l0"])
            mod.bias.copy_(p[f"ln_{name}_bias_l0"])
        return mod
    ln_x, ln_h, ln_c = ln("ih", 4 * H), ln("hh", 4 * H), ln("c", H)
    b = p["bias_ih_l0"] + p["bias_hh_l0"]
    outs = []
    for x_t in x:
        gates = ln_x(x_t @ p["weight_ih_l0"].T) + ln_h(h @ p["weight_hh_l0"].T) + b
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln_c(c))
        outs.append(h)
    return torch.stack(outs), h, c


def _numpy_ln_gru(m, x, h):
    """The authors' LN-GRU in NumPy: r|z normalised together, n apart, reset after the LN."""
    p = {k: v.detach().numpy() for k, v in m.named_parameters()}

    def ln(v, g, b):
        mu = v.mean(1, keepdims=True)
        return g * (v - mu) / np.sqrt(v.var(1, keepdims=True) + 1e-5) + b
    sig = lambda v: 1 / (1 + np.exp(-v))                        # noqa: E731
    W, U = p["weight_ih_l0"], p["weight_hh_l0"]
    gi, bi, gh, bh = (p[f"ln_{k}_l0"] for k in ("ih_weight", "ih_bias", "hh_weight", "hh_bias"))
    b_ih, b_hh = p["bias_ih_l0"], p["bias_hh_l0"]
    rz, nn_ = slice(0, 2 * H), slice(2 * H, 3 * H)
    outs = []
    for x_t in x.numpy():
        a_rz = (ln(x_t @ W[rz].T, gi[rz], bi[rz]) + ln(h @ U[rz].T, gh[rz], bh[rz])
                + b_ih[rz] + b_hh[rz])
        r, z = np.split(sig(a_rz), 2, axis=1)
        n = np.tanh(ln(x_t @ W[nn_].T, gi[nn_], bi[nn_]) + b_ih[nn_]
                    + r * (ln(h @ U[nn_].T, gh[nn_], bh[nn_]) + b_hh[nn_]))
        h = (1 - z) * n + z * h
        outs.append(h)
    return np.stack(outs), h


def test_reference_lstm_equals_torch_nn_layernorm_equations():
    torch.manual_seed(0)
    m = _model("lstm")
    x = torch.randn(5, 3, I, dtype=torch.float64)
    h0, c0 = torch.randn(1, 3, H, dtype=torch.float64), torch.randn(1, 3, H, dtype=torch.float64)
    out, (h_n, c_n) = m(x, (h0, c0))
    with torch.no_grad():
        want_out, want_h, want_c = _torch_nn_ln_lstm(m, x, h0[0], c0[0])
    assert_close(out, want_out, "output", 1e-12)
    assert_close(h_n[0], want_h, "h_n", 1e-12)
    assert_close(c_n[0], want_c, "c_n", 1e-12)


def test_reference_gru_equals_numpy_equations():
    torch.manual_seed(0)
    m = _model("gru")
    x = torch.randn(5, 3, I, dtype=torch.float64)
    h0 = torch.randn(1, 3, H, dtype=torch.float64)
    out, h_n = m(x, h0)
    want_out, want_h = _numpy_ln_gru(m, x, h0[0].numpy())
    assert_close(out.detach(), torch.from_numpy(want_out), "output", 1e-12)
    assert_close(h_n[0].detach(), torch.from_numpy(want_h), "h_n", 1e-12)


def test_layer_norm_changes_the_function():
    """A check that can fail: with the LN parameters at their init the module still differs
    from the plain one with the same weights (the normalisation itself acts)."""
    torch.manual_seed(0)
    for family in FAMILIES:
        ln = FAMILIES[family](I, H, layer_norm=True, dtype=torch.float64)
        plain = FAMILIES[family](I, H, dtype=torch.float64)
        plain.load_state_dict({k: v for k, v in ln.state_dict().items() if "ln_" not in k})
        x = torch.randn(4, 2, I, dtype=torch.float64)
        assert (ln(x)[0] - plain(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradcheck_reference(family):
    torch.manual_seed(0)
    m = _model(family, hidden=4)            # (MKL's float64 GEMM is very slow at k=5, B=2)
    x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]
    # over x and every parameter, LN gains and biases included
    assert torch.autograd.gradcheck(f, (x, *params))


# -- fused backends against the reference --------------------------------------------------
def _twins(family, backend, **kw):
    torch.manual_seed(0)
    ref = _model(family, **kw)
    fused = _model(family, backend=backend, randomise=False, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _run(model, packed, given_hx, T=6, B=3):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(T, B, I, torch.float64, batch_first=model.batch_first, packed=packed,
                         generator=g)
    n = model.num_layers * model.num_directions
    hx = tuple(torch.randn(n, B, size, dtype=torch.float64, generator=g).requires_grad_()
               for _, size in model._state_shapes()) if given_hx else ()
    out, state = model(feed, (hx if len(hx) == 2 else hx[0]) if hx else None)
    state = as_tuple(state)
    backward_with_random_grads(out, state, seed=2)
    return x, hx, out, state


def _compare(ref_run, fused_run, ref, fused, tol=1e-10):
    (x1, hx1, out1, st1), (x2, hx2, out2, st2) = ref_run, fused_run
    assert_close(output_tensor(out2), output_tensor(out1), "output", tol)
    for a, b in zip(st2, st1, strict=True):
        assert_close(a, b, "final state", tol)
    assert_close(x2.grad, x1.grad, "grad input", tol)
    for a, b in zip(hx2, hx1, strict=True):
        assert_close(a.grad, b.grad, "grad initial state", tol)
    mine = dict(fused.named_parameters())
    names = [n for n, _ in ref.named_parameters()]
    assert any(n.startswith("ln_c_weight") or n.startswith("ln_hh_weight") for n in names)
    for name, p in ref.named_parameters():
        assert p.grad is not None and mine[name].grad is not None, name
        assert_close(mine[name].grad, p.grad, f"grad {name}", tol)


FORMS = [(False, False, False), (True, False, True), (False, True, True), (True, True, False)]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(
    n for n, on in zip(("bi", "packed", "hx"), f) if on) or "plain")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_equals_reference_float64(family, form, backend):
    bidirectional, packed, given_hx = form
    ref, fused = _twins(family, backend, num_layers=2, bidirectional=bidirectional)
    _compare(_run(ref, packed, given_hx), _run(fused, packed, given_hx), ref, fused)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunked_backward_equals_reference(family, backend, monkeypatch):
    """Backward in several time chunks (forced by a 1-row minimum): dh/dc cross chunk
    boundaries, packed batches shrink inside chunks, both directions."""
    monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)
    from lstmkit.ops.fused import backward_chunks
    assert len(backward_chunks([4] * 13, False)) > 2
    ref, fused = _twins(family, backend, num_layers=2, bidirectional=True)
    _compare(_run(ref, True, True, T=13, B=4), _run(fused, True, True, T=13, B=4), ref, fused)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_without_bias_and_batch_first(family, backend):
    ref, fused = _twins(family, backend, bias=False, batch_first=True)
    _compare(_run(ref, False, True), _run(fused, False, True), ref, fused)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_float32_close_to_reference(family, backend):
    ref, fused = _twins(family, backend, num_layers=2, bidirectional=True)
    ref32, fused32 = ref.float(), fused.float()
    x = torch.randn(7, 3, I)
    assert_close(fused32(x)[0], ref32(x)[0], "float32 output", 1e-5)


# -- init, record, to_torch, dispatch, errors ------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gains_one_biases_zero_at_init(family):
    m = FAMILIES[family](I, H, num_layers=2, bidirectional=True, layer_norm=True)
    G = 4 if family == "lstm" else 3
    p = dict(m.named_parameters())
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        for name in LN_NAMES[family]:
            t = p[name + sfx]
            assert t.shape == ((H,) if name.startswith("ln_c") else (G * H,))
            assert torch.equal(t, torch.full_like(t, 1.0 if name.endswith("weight") else 0.0))
        assert p["weight_ih" + sfx].shape == (G * H, I if sfx.startswith("_l0") else 2 * H)
    m.reset_parameters()
    assert torch.equal(m.ln_ih_weight_l1, torch.ones(G * H))


@pytest.mark.parametrize("backend", ["reference", "fused_py", "fused_cpp"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_record(family, backend):
    torch.manual_seed(0)
    m = _model(family, dtype=torch.float32, backend=backend, bidirectional=True)
    ref = _model(family, dtype=torch.float32, randomise=False, bidirectional=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, I)
    with lstmkit.record(m) as rec, lstmkit.record(ref) as rec_ref:
        m(x)
        ref(x)
    assert len(rec.layers) == len(rec_ref.layers) == 2
    keys = ["i", "f", "g", "o", "c", "h"] if family == "lstm" else ["r", "z", "n", "h"]
    for a, b in zip(rec.layers, rec_ref.layers, strict=True):
        assert a.keys() == b.keys() == keys
        for key in keys:
            assert_close(a[key], b[key], f"recorded {key}", 1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_to_torch_refuses(family):
    m = FAMILIES[family](I, H, layer_norm=True)
    with pytest.raises(ValueError, match="layer_norm.*no torch.nn equivalent"):
        m.to_torch()


def test_auto_never_picks_torch_lstm():
    m = lstmkit.LSTM(I, H, layer_norm=True)
    x = torch.randn(6, I)
    chosen = ops.select_backend("auto", m.cell, x, [2, 2, 2])
    assert chosen is not ops.native.run_layer
    assert chosen.func is ops.fused.run_layer
    plain = lstmkit.LSTM(I, H)
    assert ops.select_backend("auto", plain.cell, x, [2, 2, 2]) is ops.native.run_layer
    torch.manual_seed(0)
    ref = lstmkit.LSTM(I, H, layer_norm=True, backend="reference")
    ref.load_state_dict(m.state_dict())
    xs = torch.randn(5, 2, I)
    assert_close(m(xs)[0], ref(xs)[0], "auto output", 1e-5)


def test_unsupported_combinations_raise():
    for kw in ({"peephole": True}, {"coupled": True}, {"proj_size": 2}):
        with pytest.raises(ValueError, match="layer_norm=True.*expected False, False, 0"):
            lstmkit.LSTM(I, H, layer_norm=True, **kw)
    with pytest.raises(ValueError, match="reset_after=True, got reset_after=False"):
        lstmkit.GRU(I, H, layer_norm=True, reset_after=False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_compile_runs_the_layer_eagerly(family):
    """No custom op for the LN cells: under torch.compile the layer is a graph break and runs
    its fused eager path; outputs and gradients equal the uncompiled module's."""
    torch.manual_seed(0)
    m = _model(family, dtype=torch.float32, backend="auto", bidirectional=True)
    x = torch.randn(5, 2, I)
    want = m(x)[0]
    (want.sum()).backward()
    want_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    got = torch.compile(m, backend="eager")(x)[0]
    got.sum().backward()
    assert_close(got, want, "compiled output", 1e-6)
    for p, g in zip(m.parameters(), want_grads, strict=True):
        assert_close(p.grad, g, "compiled grad", 1e-6)


def test_fused_cpp_requires_the_layernorm_extension(monkeypatch):
    from lstmkit.ops import extension
    monkeypatch.setattr(extension, "_states", {"engine": {"error": "no compiler here"}})
    m = lstmkit.LSTM(I, H, layer_norm=True, backend="fused_cpp")
    with pytest.raises(extension.ExtensionUnavailable, match="engine.cpp.*no compiler here"):
        m(torch.randn(3, 2, I))
    fused = lstmkit.LSTM(I, H, layer_norm=True, backend="fused")      # falls back to torch loops
    fused.load_state_dict(m.state_dict())
    ref = lstmkit.LSTM(I, H, layer_norm=True, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 2, I)
    assert_close(fused(x)[0], ref(x)[0], "fallback output", 1e-5)


def test_onnx_export_module_refuses(tmp_path):
    pytest.importorskip("onnx")
    from lstmkit.interop.onnx import export_module
    with pytest.raises(ValueError, match="no layer normalisation.*layer_norm=True"):
        export_module(lstmkit.GRU(I, H, layer_norm=True), tmp_path / "m.onnx")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_whole_model_onnx_export_runs_in_onnxruntime(family, tmp_path):
    """torch.onnx.export traces the reference equations (unrolled; ONNX has no LN-LSTM
    operator); onnxruntime, an outside implementation, computes the same outputs."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export
    torch.manual_seed(0)
    m = _model(family, dtype=torch.float32, backend="auto", bidirectional=True).eval()
    x = torch.randn(4, 2, I)
    path = export(m, (x,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x)[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)
