"""lstmkit.MUT (MUT1–3 of Jozefowicz, Zaremba & Sutskever 2015): the paper's equations by
hand in NumPy, every backend against the reference (float64, gradients included, packed,
both directions, two layers, with every regulariser, the backward in many chunks),
gradcheck, the input-size rule, record, summary, torch.compile, and the command lines
(``--cell mut2``, ``--forget-bias``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from helpers import (
    TOL,
    as_tuple,
    assert_close,
    backward_with_random_grads,
    make_input,
    output_tensor,
)

import lstmkit

F64 = torch.float64
H = 4
VARIANTS = (1, 2, 3)
BACKENDS = ["reference", "fused_py", "fused_cpp"]
ROOT = Path(__file__).resolve().parents[1]


def _in(variant: int) -> int:
    return H if variant in (1, 2) else 3                   # MUT1/2: input size = hidden size


def _module(variant, backend, **kw):
    torch.manual_seed(0)
    m = lstmkit.MUT(_in(variant), H, variant=variant, dtype=F64, backend=backend, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    return m


def _numpy_forward(m, x, h0):
    """The paper's equations (§3.2) for one sequence, the weights read from the documented
    layout: weight_ih rows MUT1 z|r, MUT2 z|h, MUT3 z|r|h; weight_hh rows MUT1 r|h, MUT2 and
    MUT3 z|r|h; each bias vector follows the rows of its matrix."""
    sig = lambda a: 1 / (1 + np.exp(-a))                   # noqa: E731
    v = m.cell.option("variant")
    Wi, Wh = m.weight_ih_l0.detach().numpy(), m.weight_hh_l0.detach().numpy()
    bi, bh = m.bias_ih_l0.detach().numpy(), m.bias_hh_l0.detach().numpy()

    def blocks(t):
        return [t[k * H:(k + 1) * H] for k in range(t.shape[0] // H)]
    if v == 1:
        (W_xz, W_xr), (W_hr, W_hh) = blocks(Wi), blocks(Wh)
        (b_iz, b_ir), (b_hr, b_hh) = blocks(bi), blocks(bh)
    elif v == 2:
        (W_xz, W_xh), (W_hz, W_hr, W_hh) = blocks(Wi), blocks(Wh)
        (b_iz, b_ih), (b_hz, b_hr, b_hh) = blocks(bi), blocks(bh)
    else:
        (W_xz, W_xr, W_xh), (W_hz, W_hr, W_hh) = blocks(Wi), blocks(Wh)
        (b_iz, b_ir, b_ih), (b_hz, b_hr, b_hh) = blocks(bi), blocks(bh)
    outs, h = [], h0.copy()
    for x_t in x:
        if v == 1:
            z = sig(W_xz @ x_t + b_iz)
            r = sig(W_xr @ x_t + W_hr @ h + b_ir + b_hr)
            h = np.tanh(W_hh @ (r * h) + np.tanh(x_t) + b_hh) * z + h * (1 - z)
        elif v == 2:
            z = sig(W_xz @ x_t + W_hz @ h + b_iz + b_hz)
            r = sig(x_t + W_hr @ h + b_hr)
            h = np.tanh(W_hh @ (r * h) + W_xh @ x_t + b_ih + b_hh) * z + h * (1 - z)
        else:
            z = sig(W_xz @ x_t + W_hz @ np.tanh(h) + b_iz + b_hz)
            r = sig(W_xr @ x_t + W_hr @ h + b_ir + b_hr)
            h = np.tanh(W_hh @ (r * h) + W_xh @ x_t + b_ih + b_hh) * z + h * (1 - z)
        outs.append(h)
    return np.stack(outs), h


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_papers_equations_by_hand(variant, backend):
    m = _module(variant, backend)
    g = np.random.default_rng(variant)
    x, h0 = g.normal(size=(7, 2, _in(variant))), g.normal(size=(2, H))
    out, h_n = m(torch.from_numpy(x), torch.from_numpy(h0)[None])
    for b in range(2):
        want, h_last = _numpy_forward(m, x[:, b], h0[b])
        np.testing.assert_allclose(out[:, b].detach().numpy(), want, atol=1e-12)
        np.testing.assert_allclose(h_n[0, b].detach().numpy(), h_last, atol=1e-12)


def test_parameter_layout_and_counts():
    I3 = 3
    shapes = {1: ((2 * H, H), (2 * H, H)), 2: ((2 * H, H), (3 * H, H)),
              3: ((3 * H, I3), (3 * H, H))}
    for v, (ih, hh) in shapes.items():
        m = lstmkit.MUT(_in(v), H, variant=v)
        assert m.weight_ih_l0.shape == ih and m.weight_hh_l0.shape == hh
        assert m.bias_ih_l0.shape == ih[:1] and m.bias_hh_l0.shape == hh[:1]
        bound = 1 / H ** 0.5                               # torch.nn's U(−1/√H, 1/√H)
        assert all(float(p.detach().abs().max()) <= bound for p in m.parameters())
        n = ih[0] * (ih[1] + 1) + hh[0] * (hh[1] + 1)
        assert lstmkit.count_parameters(m) == n
        assert not hasattr(lstmkit.MUT(_in(v), H, variant=v, bias=False), "bias_ih_l0")


REGULARISERS = {"plain": {}, "regularised": {"zoneout": 0.3, "recurrent_dropout": 0.3,
                                             "input_dropout": 0.2, "weight_dropout": 0.2}}
# MUT1/2 cannot stack on a bidirectional layer (layer 1 would read 2H): two layers one way,
# and one layer both ways; MUT3 both at once.
SHAPES = {"2-layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True},
          "2-layers-bidirectional": {"num_layers": 2, "bidirectional": True}}


BACKEND_CASES = [(v, s) for v in VARIANTS for s in SHAPES
                 if v == 3 or s != "2-layers-bidirectional"]      # see test_input_size_rule


@pytest.mark.parametrize("regularisers", list(REGULARISERS))
@pytest.mark.parametrize("variant, shape", BACKEND_CASES)
def test_every_backend_equals_the_reference(variant, regularisers, shape, monkeypatch):
    monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)    # the backward in chunks
    results = {}
    for backend in ("reference", "fused_py", "fused_cpp", "fused", "auto"):
        m = _module(variant, backend, **SHAPES[shape], **REGULARISERS[regularisers]).train()
        g = torch.Generator().manual_seed(1)
        x, feed = make_input(6, 3, _in(variant), F64, batch_first=False, packed=True,
                             generator=g)
        h0 = torch.randn(m.num_layers * m.num_directions, 3, H, dtype=F64,
                         generator=g).requires_grad_()
        torch.manual_seed(7)                                 # the same masks everywhere
        out, h_n = m(feed, h0)
        backward_with_random_grads(out, as_tuple(h_n), seed=2)
        results[backend] = (output_tensor(out), h_n, x.grad, h0.grad,
                            {n: p.grad for n, p in m.named_parameters()})
    want = results.pop("reference")
    for backend, got in results.items():
        what = f"MUT{variant} {regularisers} {shape} {backend}"
        assert_close(got[0], want[0], f"{what} output", TOL[F64])
        assert_close(got[1], want[1], f"{what} final state", TOL[F64])
        assert_close(got[2], want[2], f"{what} grad input", TOL[F64])
        assert_close(got[3], want[3], f"{what} grad h_0", TOL[F64])
        assert got[4].keys() == want[4].keys()
        for name, grad in want[4].items():
            assert grad is not None, f"{what}: no gradient for {name}"
            assert_close(got[4][name], grad, f"{what} grad {name}", TOL[F64])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant, backend):
    m = _module(variant, backend, bidirectional=True)
    x = torch.randn(4, 2, _in(variant), dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, H, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: m(x, h0)[0], (x, h0))


def test_input_size_rule():
    with pytest.raises(ValueError, match=r"MUT1 .*input size 3.* hidden_size 4"):
        lstmkit.MUT(3, 4, variant=1)
    with pytest.raises(ValueError, match=r"MUT2 .*x_t to the reset gate.*input size 5"):
        lstmkit.MUT(5, 4, variant=2, num_layers=2)
    with pytest.raises(ValueError, match=r"MUT1 .*input size 8 \(2·hidden_size.*bidirectional"):
        lstmkit.MUT(4, 4, variant=1, num_layers=2, bidirectional=True)
    lstmkit.MUT(4, 4, variant=2, num_layers=3)              # upper layers read H: fine
    lstmkit.MUT(4, 4, variant=1, bidirectional=True)        # one layer both ways: fine
    lstmkit.MUT(3, 4, variant=3, num_layers=2, bidirectional=True)   # MUT3: any sizes
    with pytest.raises(ValueError, match="variant must be 1, 2 or 3"):
        lstmkit.MUT(4, 4, variant=4)
    with pytest.raises(TypeError, match="unexpected keyword"):
        lstmkit.MUT(4, 4, reset_after=False)


def test_record_summary_repr_and_pickle(tmp_path):
    m = lstmkit.MUT(4, H, variant=2, num_layers=2)
    with lstmkit.record(m) as rec:
        out, _ = m(torch.randn(5, 2, 4))
    assert rec.layers[0].keys() == ["z", "r", "n", "h"]
    z = rec.layers[1]["z"]
    assert bool(((z > 0) & (z < 1)).all())
    text = lstmkit.summary(m)
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text
    assert "W_hh rows z|r|n" in text and "r (reset)" in text
    assert repr(m) == "MUT(4, 4, num_layers=2, variant=2)"
    path = tmp_path / "m.pt"
    torch.save(m, path)
    again = torch.load(path, weights_only=True)
    x = torch.randn(3, 1, 4)
    torch.testing.assert_close(again(x)[0], m(x)[0])
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        m.to_torch()


def test_compile_has_no_graph_breaks():
    torch.manual_seed(0)
    m = lstmkit.MUT(4, H, variant=1)
    x = torch.randn(6, 2, 4)
    dynamo.reset()
    explained = dynamo.explain(m)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_export_unrolls_the_equations(variant, tmp_path):
    """No ONNX operator computes a MUT: the export unrolls its reference equations into
    plain ONNX operators, and onnxruntime computes the same outputs."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export
    torch.manual_seed(0)
    m = lstmkit.MUT(H, H, variant=variant, num_layers=2).eval()
    x = torch.randn(5, 2, H)
    path = export(m, (x,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x)[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


# -- the command lines ---------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmkit.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 400)
    return path


SMALL = ["--hidden", "16", "--embed", "16", "--seq-len", "10", "--batch", "4", "--steps",
         "3", "--eval-every", "3", "--sample-length", "5", "--quiet", "--warmup", "1"]


def test_train_cell_mut2_runs(text_file, tmp_path):
    r = _cli("train", "--data", str(text_file), "--cell", "mut2", *SMALL,
             "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["cell"] == "mut2"
    from lstmkit.train.sample import load_run
    run = load_run(tmp_path / "run", "last")
    assert isinstance(run.model.rnn, lstmkit.MUT) and run.model.rnn.cell.option("variant") == 2
    bad = _cli("train", "--data", str(text_file), "--cell", "mut1", "--hidden", "16",
               "--embed", "8", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "embed must equal hidden" in bad.stderr


def test_train_forget_bias_and_old_config_resumes(text_file, tmp_path):
    from lstmkit.train.config import TrainConfig
    from lstmkit.train.model import make_rnn
    r = _cli("train", "--data", str(text_file), "--forget-bias", "1", *SMALL,
             "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["forget_bias"] == 1.0
    base = dict(hidden=6, embed=5)
    torch.manual_seed(0)
    plain = make_rnn(TrainConfig(**base))
    torch.manual_seed(0)
    biased = make_rnn(TrainConfig(**base, forget_bias=1.0))
    a, b = plain.bias_ih_l0, biased.bias_ih_l0
    torch.testing.assert_close(b[6:12], a[6:12] + 1.0)
    assert torch.equal(b[:6], a[:6]) and torch.equal(b[12:], a[12:])
    with pytest.raises(ValueError, match="forget_bias needs an LSTM"):
        TrainConfig(cell="gru", forget_bias=1.0)
    with pytest.raises(ValueError, match="forget_bias needs an LSTM"):
        TrainConfig(coupled=True, forget_bias=1.0)
    # a run written before forget_bias existed: its config.json lacks the field
    old = tmp_path / "old"
    r = _cli("train", "--data", str(text_file), *SMALL, "--out", str(old))
    assert r.returncode == 0, r.stderr
    saved = json.loads((old / "config.json").read_text())
    del saved["forget_bias"]
    (old / "config.json").write_text(json.dumps(saved))
    assert TrainConfig.from_dict(saved).forget_bias == 0.0
    r = _cli("train", "--resume", str(old), "--steps", "4", "--forget-bias", "0")
    assert r.returncode == 0, r.stderr
    r = _cli("train", "--resume", str(old), "--steps", "5", "--forget-bias", "1")
    assert r.returncode != 0 and "cannot change forget_bias" in r.stderr


def test_experiment_cells_mut(tmp_path):
    from lstmkit.data.synthetic import make_task
    from lstmkit.train.experiment import CELLS, SequenceModel
    assert {"mut1", "mut2", "mut3"} <= set(CELLS)
    task = make_task("adding2016", 10)                       # 2 inputs
    m1, m3 = SequenceModel(task, "mut1", 6), SequenceModel(task, "mut3", 6)
    assert m1.input_layer.in_features == 2 and m1.rnn.input_size == 6   # x → H first
    assert m3.input_layer is None and m3.rnn.input_size == 2
    r = _cli("experiment", "adding2016", "--T", "10", "--budget", "64", "--cell", "mut1",
             "mut3", "--hidden", "6", "--forget-bias", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert [row["cell"] for row in data["summary"]] == ["mut1", "mut3"]
