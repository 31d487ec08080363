"""lstmkit.minGRU and lstmkit.minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): the
paper's equations by hand in NumPy (plain and log-space forms), the scans (torch's
logcumsumexp and the C++ kernel) against the sequential reference in float64 for outputs,
final states and every gradient (padded, packed, both directions, two layers,
``batch_first``, unbatched), T = 2,000 with saturated gates (the stability of the log-space
scan), gradcheck of both scans, streaming (h_n fed back as hx continues the sequence),
record, summary, pickling, torch.compile, clear errors, and the command lines."""

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
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit
from lstmkit.cells import minrnn as cell
from lstmkit.ops import scan as scan_ops

F64 = torch.float64
I, H = 3, 4
CLASSES = {"mingru": lstmkit.minGRU, "minlstm": lstmkit.minLSTM}
SCANS = ("fused_py", "fused_cpp")
ROOT = Path(__file__).resolve().parents[1]


def _module(family: str, backend: str = "reference", *, scale: float = 0.8, **kw):
    torch.manual_seed(0)
    m = CLASSES[family](kw.pop("input_size", I), H, dtype=F64, backend=backend, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-scale, scale)
    return m


# -- the paper's equations, by hand -------------------------------------------------------------
def _numpy_layer(family: str, log_space: bool, W: np.ndarray, b: np.ndarray, x: np.ndarray,
                 h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feng et al. §3.1.2 (minGRU) and §3.2.3 (minLSTM) for (T, B, I) inputs; the rows of
    W and b are z|h̃ (minGRU) or f|i|h̃ (minLSTM); log_space applies the paper's g to h̃."""
    sig = lambda a: 1 / (1 + np.exp(-a))                   # noqa: E731
    g = lambda a: np.where(a >= 0, a + 0.5, sig(a))         # noqa: E731
    blocks = [(W[k * H:(k + 1) * H], b[k * H:(k + 1) * H]) for k in range(W.shape[0] // H)]
    h, outs = h0.copy(), []
    for x_t in x:
        lin = [x_t @ Wk.T + bk for Wk, bk in blocks]
        h_tilde = g(lin[-1]) if log_space else lin[-1]
        if family == "mingru":
            z = sig(lin[0])
            h = (1 - z) * h + z * h_tilde
        else:
            f, i = sig(lin[0]), sig(lin[1])
            h = f / (f + i) * h + i / (f + i) * h_tilde
        outs.append(h)
    return np.stack(outs), h


@pytest.mark.parametrize("backend", ["reference", *SCANS, "auto"])
@pytest.mark.parametrize("log_space", [False, True], ids=["plain", "log-space"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_the_papers_equations_by_hand(family, log_space, backend):
    m = _module(family, backend, log_space=log_space)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, I, dtype=F64, generator=g)
    h0 = torch.randn(1, 2, H, dtype=F64, generator=g)
    out, h_n = m(x, h0)
    want, want_n = _numpy_layer(family, log_space, m.weight_ih_l0.detach().numpy(),
                                m.bias_ih_l0.detach().numpy(), x.numpy(), h0[0].numpy())
    assert_close(out, torch.from_numpy(want), "output", TOL[F64])
    assert_close(h_n[0], torch.from_numpy(want_n), "h_n", TOL[F64])


def test_parameter_layout_and_the_papers_g():
    """One weight and one bias per layer and direction (the paper's Linear maps), no
    weight_hh; g and log g as the paper defines them."""
    m = lstmkit.minLSTM(5, 7, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["weight_ih_l0"] == (21, 5) and shapes["bias_ih_l0"] == (21,)
    assert shapes["weight_ih_l1_reverse"] == (21, 14)
    assert not any("hh" in n for n in shapes)
    assert lstmkit.count_parameters(m) == 2 * (21 * 5 + 21) + 2 * (21 * 14 + 21)
    assert lstmkit.count_parameters(lstmkit.minGRU(5, 7, bias=False)) == 2 * 7 * 5
    x = torch.tensor([-30.0, -2.0, -1e-3, 0.0, 1e-3, 3.0], dtype=F64)
    want = np.where(x.numpy() >= 0, x.numpy() + 0.5, 1 / (1 + np.exp(-x.numpy())))
    assert_close(cell.g_pos(x), torch.from_numpy(want), "g", 1e-15)
    assert_close(cell.log_g(x), torch.from_numpy(np.log(want)), "log g", 1e-14)


def test_the_log_space_form_differs_from_the_plain_form_by_g_only():
    """With every candidate pre-activation ≥ 0 (W_h = 0, b_h ≥ 0), g(k) = k + ½: the
    log-space module equals the plain one with b_h + ½; with negative ones it does not."""
    for family, rows in (("mingru", 2), ("minlstm", 3)):
        plain = _module(family, "fused_cpp")
        logs = _module(family, "fused_py", log_space=True)
        with torch.no_grad():
            for m, shift in ((plain, 0.5), (logs, 0.0)):
                m.weight_ih_l0[(rows - 1) * H:] = 0
                m.bias_ih_l0[(rows - 1) * H:] = torch.linspace(0, 2, H, dtype=F64) + shift
        x = torch.randn(9, 3, I, dtype=F64)
        assert_close(logs(x)[0], plain(x)[0], f"{family}: log-space vs plain", TOL[F64])
        with torch.no_grad():
            logs.bias_ih_l0[(rows - 1) * H:] = -1.0
            plain.bias_ih_l0[(rows - 1) * H:] = -1.0
        assert (logs(x)[0] - plain(x)[0]).abs().max() > 0.1


# -- every scan against the sequential reference ------------------------------------------------
SHAPES = {
    "padded-1-layer": dict(packed=False),
    "padded-2-layers-bidirectional-batch-first": dict(packed=False, num_layers=2,
                                                      bidirectional=True, batch_first=True),
    "packed-2-layers-bidirectional": dict(packed=True, num_layers=2, bidirectional=True),
    "packed-reverse-1-layer": dict(packed=True, bidirectional=True),
}


def _run(m, packed: bool):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(7, 3, m.input_size, F64, batch_first=m.batch_first, packed=packed,
                         generator=g)
    hx = torch.randn(m.num_layers * m.num_directions, 3, H, dtype=F64,
                     generator=g).requires_grad_()
    out, h_n = m(feed, hx)
    backward_with_random_grads(out, (h_n,), seed=2)
    return (output_tensor(out), h_n, x.grad, hx.grad,
            {n: p.grad for n, p in m.named_parameters()})


def _compare(got, want, what: str, tol: float = TOL[F64]) -> None:
    for name, a, b in zip(("output", "h_n", "grad input", "grad hx"), got[:4], want[:4]):
        assert_close(a, b, f"{what}: {name}", tol)
    assert got[4].keys() == want[4].keys()
    for name in want[4]:
        assert want[4][name] is not None and got[4][name] is not None, name
        assert_close(got[4][name], want[4][name], f"{what}: grad {name}", tol)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("log_space", [False, True], ids=["plain", "log-space"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_every_scan_equals_the_sequential_reference(family, log_space, shape):
    kw = dict(SHAPES[shape])
    packed = kw.pop("packed")
    results = {b: _run(_module(family, b, log_space=log_space, **kw), packed)
               for b in ("reference", *SCANS)}
    for backend in SCANS:
        _compare(results[backend], results["reference"], f"{family} {shape} {backend}")


def test_unbatched_and_dropout_between_layers():
    x = torch.randn(5, I, dtype=F64)
    for family in CLASSES:
        ref = _module(family, "reference", num_layers=2)
        for backend in SCANS:
            m = _module(family, backend, num_layers=2)
            out, h_n = m(x)
            assert out.shape == (5, H) and h_n.shape == (2, H)
            assert_close(out, ref(x)[0], f"{family} {backend} unbatched", TOL[F64])
        drop = _module(family, "fused_cpp", num_layers=2, dropout=0.5).train()
        torch.manual_seed(4)
        a = drop(x)[0]
        torch.manual_seed(4)
        drop.backend = "reference"
        assert_close(drop(x)[0], a, f"{family}: the same dropout on both backends", TOL[F64])
        assert (a - ref(x)[0]).abs().max() > 1e-3        # dropout did act


@pytest.mark.parametrize("family", list(CLASSES))
def test_long_sequence_with_saturated_gates(family):
    """T = 2,000 with pre-activations up to ±60: Σ log a_t reaches −10⁴ and below, where a
    scan without logarithms would underflow and an unshifted one overflow. Both scans equal
    the sequential reference in float64 (outputs, h_n, every gradient); the C++ kernel in
    float32 stays within float32's rounding of the
    pre-activations (it needs no logarithms)."""
    T = 2000
    results = {}
    for backend in ("reference", *SCANS):
        m = _module(family, backend, scale=20.0)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(T, 2, I, dtype=F64, generator=g).requires_grad_()
        out, h_n = m(x)
        backward_with_random_grads(out, (h_n,), seed=6)
        results[backend] = (out, h_n, x.grad, None, {n: p.grad for n, p in m.named_parameters()})
        k = torch.nn.functional.linear(x.detach(), m.weight_ih_l0, m.bias_ih_l0)
    log_a = cell.log_coefficients(family, k.detach())[0]
    assert log_a.sum(0).min() < -1e4 and k.abs().max() > 40          # the test is extreme
    for backend in SCANS:
        got, want = results[backend], results["reference"]
        # the torch scan's autograd backward differentiates through A_t = Σ log a_s and
        # cancels terms of size |A_t| (up to ~4·10³ within a chunk of 64 steps here)
        grad_tol = 1e-9 if backend == "fused_cpp" else 1e-6
        for name, a, b in zip(("output", "h_n", "grad input"), got[:3], want[:3]):
            assert torch.isfinite(a).all(), f"{backend}: {name} not finite"
            tol = grad_tol if name.startswith("grad") else 1e-9
            assert_close(a, b, f"{family} T=2000 {backend}: {name}", tol)
        for name in want[4]:
            assert_close(got[4][name], want[4][name], f"{backend}: grad {name}", grad_tol)
    m32 = _module(family, "fused_cpp", scale=20.0).float()
    x32 = torch.randn(T, 2, I, dtype=F64, generator=torch.Generator().manual_seed(5)).float()
    want = results["reference"][0].detach()
    err = (m32(x32)[0].double() - want).abs().max()
    assert err < 1e-6 * want.abs().max(), err      # float32 rounding of |k| ~ 60, no more


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kernel", scan_ops.KERNELS)
def test_minlstm_with_both_gates_underflowing(kernel, dtype):
    """k_f = k_i = −200: f and i underflow to 0 (the equation as written gives 0/0), but
    f' = i' = ½ exactly since f = i; both scans give h_t = (h_{t-1} + h̃_t) / 2. With
    k_f = −200, k_i = +200: i' = 1 to within e^{−200}, h_t = h̃_t."""
    T, B = 5, 2
    k_h = torch.randn(T, B, H, dtype=dtype)
    h0 = torch.randn(B, H, dtype=dtype)
    for k_f, k_i in ((-200.0, -200.0), (-200.0, 200.0)):
        k = torch.cat([torch.full((T, B, H), k_f, dtype=dtype),
                       torch.full((T, B, H), k_i, dtype=dtype), k_h], dim=-1)
        h = scan_ops.scan("minlstm", k, h0, False, kernel)
        want, prev = [], h0
        for t in range(T):
            prev = (prev + k_h[t]) / 2 if k_i < 0 else k_h[t]
            want.append(prev)
        # the torch scan in float32 keeps |A_t| · 2⁻²⁴ (A_t = −200 t here): ~1e-4
        tol = 2e-4 if (kernel, dtype) == ("torch", torch.float32) else TOL[dtype]
        assert_close(h, torch.stack(want), f"{kernel} k_f={k_f} k_i={k_i}", tol)


@pytest.mark.parametrize("family", list(CLASSES))
def test_float32_torch_scan_keeps_its_precision_in_chunks(family):
    """At T = 2,000 in float32 the torch scan runs in chunks of 64 steps, which bounds the
    precision it loses to |A_t| (unchunked: ~1e-4 of max|h| here; chunked: ~5e-6)."""
    m = _module(family, "reference")
    x = torch.randn(2000, 2, I, dtype=F64, generator=torch.Generator().manual_seed(5))
    want = m(x)[0].detach()
    m32 = m.float()
    m32.backend = "fused_py"
    err = (m32(x.float())[0].double() - want).abs().max()
    assert err < 2e-5 * want.abs().max(), err


@pytest.mark.parametrize("kernel", scan_ops.KERNELS)
@pytest.mark.parametrize("log_space", [False, True], ids=["plain", "log-space"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_gradcheck_of_the_scans(family, log_space, kernel):
    """gradcheck of the whole layer function (packed rows, reverse direction) in the
    pre-activations, h_0, W_ih and b_ih."""
    m = _module(family, "reference", log_space=log_space)
    g = torch.Generator().manual_seed(0)
    bs = [3, 3, 2, 1]
    x = torch.randn(sum(bs), I, dtype=F64, generator=g).requires_grad_()
    h0 = torch.randn(3, H, dtype=F64, generator=g).requires_grad_()
    w = m.layer_weights(0, 0)
    W, b = (t.detach().clone().requires_grad_() for t in (w.w_ih, w.b_ih))

    def f(x, h0, W, b):
        lw = w._replace(w_ih=W, b_ih=b)
        out, (h_n,), _ = scan_ops.run_layer(m.cell, x, bs, (h0,), lw, reverse=True,
                                            family=family, log_space=log_space, kernel=kernel)
        return out, h_n
    assert torch.autograd.gradcheck(f, (x, h0, W, b))


@pytest.mark.parametrize("backend", ["reference", *SCANS])
@pytest.mark.parametrize("log_space", [False, True], ids=["plain", "log-space"])
def test_streaming_continues_the_sequence(log_space, backend):
    """Inference step by step: h_n fed back as hx continues a sequence exactly (the reason
    h_0 is not passed through g in the log-space form)."""
    for family in CLASSES:
        m = _module(family, backend, log_space=log_space, num_layers=2)
        x = torch.randn(8, 2, I, dtype=F64)
        whole, h_whole = m(x)
        h, outs = None, []
        for t in range(8):
            out, h = m(x[t:t + 1], h)
            outs.append(out)
        assert_close(torch.cat(outs), whole, f"{family} {backend} step by step", TOL[F64])
        assert_close(h, h_whole, f"{family} {backend} h_n", TOL[F64])


# -- the module front end -----------------------------------------------------------------------
def test_record_summary_repr_and_pickle(tmp_path):
    m = lstmkit.minLSTM(I, H, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, I)
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    with lstmkit.record(m) as rec:
        m(packed)
    assert len(rec.layers) == 4 and rec.layers[0].keys() == ["f", "i", "g", "h"]
    f = rec.layers[1]["f"]
    assert f.shape == (5, 3, H) and rec.layers[1].mask[:, 1].tolist() == [1, 1, 0, 0, 0]
    assert bool(((f > 0) & (f < 1))[:2].all()) and torch.isnan(f[2:, 1]).all()
    with lstmkit.record(lstmkit.minGRU(I, H, backend="reference")) as ref_rec:
        pass
    gru = lstmkit.minGRU(I, H)
    for backend in ("reference", "fused_cpp"):
        gru.backend = backend
        with lstmkit.record(gru) as ref_rec:
            out, _ = gru(x)
        assert ref_rec.layers[0].keys() == ["z", "g", "h"]
        torch.testing.assert_close(ref_rec.layers[0]["h"], out)
    text = lstmkit.summary(m)
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text
    assert "f (forget)" in text and "g (candidate)" in text and "G_h=0" in text
    assert repr(m) == "minLSTM(3, 4, num_layers=2, bidirectional=True)"
    assert repr(lstmkit.minGRU(3, 4, log_space=True)) == "minGRU(3, 4, log_space=True)"
    path = tmp_path / "m.pt"
    torch.save(m, path)
    again = torch.load(path, weights_only=True)
    torch.testing.assert_close(again(x)[0], m(x)[0])
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        m.to_torch()


def test_compile_and_export_keep_the_cpp_kernel_in_one_graph():
    """The C++ kernel is the custom op lstmkit::minrnn_scan: torch.compile sees no graph
    break and equals eager (outputs and gradients); torch.export keeps the op."""
    torch.manual_seed(0)
    for cls in CLASSES.values():
        m = cls(I, H, bidirectional=True, num_layers=2)
        x = torch.randn(6, 2, I)
        dynamo.reset()
        explained = dynamo.explain(m)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        used = {str(n.target) for gm in explained.graphs for n in gm.graph.nodes
                if n.op == "call_function"}
        assert any("minrnn_scan" in op for op in used), used
        compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
        xg = x.clone().requires_grad_()
        compiled(xg)[0].square().sum().backward()
        want = x.clone().requires_grad_()
        out = m(want)[0]
        torch.testing.assert_close(compiled(x)[0], out, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        torch.testing.assert_close(xg.grad, want.grad, rtol=1e-5, atol=1e-5)
        exported = torch.export.export(m.eval(), (x,))
        targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert any("minrnn_scan" in t for t in targets), targets
        torch.testing.assert_close(exported.module()(x)[0], m(x)[0], rtol=1e-6, atol=1e-6)


def test_clear_errors():
    with pytest.raises(TypeError, match="log_space must be True or False"):
        lstmkit.minGRU(3, 4, log_space="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        lstmkit.minLSTM(3, 4, backend="scan")
    with pytest.raises(TypeError, match="zoneout"):
        lstmkit.minGRU(3, 4, zoneout=0.1)
    m = lstmkit.minGRU(3, 4)
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(5, 2, 6))
    with pytest.raises((ValueError, RuntimeError), match="h_0"):
        m(torch.randn(5, 2, 3), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match=r"fused_cpp.*float32/float64"):
        lstmkit.minGRU(3, 4, backend="fused_cpp", dtype=torch.bfloat16)(
            torch.randn(2, 1, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="hidden_size"):
        lstmkit.minLSTM(3, 0)
    with pytest.raises(ValueError, match="from_torch is not supported"):
        lstmkit.minGRU.from_torch(torch.nn.GRU(3, 4))


# -- the command lines ---------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmkit.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_train_and_inspect_cell_mingru(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("def f(x):\n    return x + 1\n" * 200)
    r = _cli("train", "--data", str(data), "--cell", "mingru", "--hidden", "16", "--embed",
             "8", "--seq-len", "10", "--batch", "4", "--steps", "3", "--eval-every", "3",
             "--sample-length", "5", "--quiet", "--warmup", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["cell"] == "mingru"
    from lstmkit.train.sample import load_run
    run = load_run(tmp_path / "run", "last")
    assert isinstance(run.model.rnn, lstmkit.minGRU)
    r = _cli("inspect", str(tmp_path / "run"), "--text", "def f(x):\n    return x",
             "--checkpoint", "last", "--out", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "report.html").read_text()
    assert '"z"' in html and "mingru" in html.lower()          # the update gate is reported


def test_experiment_cells_mingru_minlstm(tmp_path):
    from lstmkit.train.experiment import CELLS
    assert {"mingru", "minlstm"} <= set(CELLS)
    r = _cli("experiment", "adding2016", "--T", "10", "--budget", "64", "--cell", "mingru",
             "minlstm", "--hidden", "6", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert [row["cell"] for row in data["summary"]] == ["mingru", "minlstm"]
