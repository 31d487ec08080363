"""lstmkit.mLSTM (the matrix-memory LSTM of xLSTM, Beck et al. 2024): the paper's equations
by hand in NumPy (unstabilised), gradcheck of every form, the recurrent, parallel and
chunkwise forms equal in float64 (outputs, final states and every gradient — padded,
packed, both directions, two layers, and T = 2,000 with gate pre-activations large enough
that exp overflows without the stabiliser), padded vs packed vs one sequence at a time,
step-by-step inference, record, summary, NX-AI's own functions (when ``xlstm`` is
installed) and the errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_close, backward_with_random_grads, output_tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit
from lstmkit.ops import mlstm as forms

F64 = torch.float64
FORMS = ["reference", "parallel", "chunkwise"]


def _module(I=3, H=4, heads=2, backend="reference", seed=0, scale=0.8, **kw):
    torch.manual_seed(seed)
    m = lstmkit.mLSTM(I, H, num_heads=heads, dtype=F64, backend=backend, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-scale, scale)
    return m


def _random_state(m, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, dtype=F64, generator=g).requires_grad_()
                 for s in m.state_shapes(B))


# -- the equations by hand ------------------------------------------------------------------
def _numpy_forward(m, x, forget_gate):
    """Beck et al. 2024, eqs. (19)–(27), unstabilised, one layer, for x (T, B, I): the
    weights read from the documented layout (rows q|k|v|o of H, then i|f of one per head)."""
    W, b = m.weight_ih_l0.detach().numpy(), m.bias_ih_l0.detach().numpy()
    H, NH = m.hidden_size, m.num_heads
    d = H // NH
    sig = lambda a: 1 / (1 + np.exp(-a))                   # noqa: E731
    T, B, _ = x.shape
    out = np.zeros((T, B, H))
    C_T, n_T = np.zeros((B, NH, d, d)), np.zeros((B, NH, d))
    for bb in range(B):
        for h in range(NH):
            C, n = np.zeros((d, d)), np.zeros(d)
            rows = slice(h * d, (h + 1) * d)
            for t in range(T):
                xt = x[t, bb]
                q = W[0:H][rows] @ xt + b[0:H][rows]
                k = W[H:2 * H][rows] @ xt / math.sqrt(d) + b[H:2 * H][rows]
                v = W[2 * H:3 * H][rows] @ xt + b[2 * H:3 * H][rows]
                o = sig(W[3 * H:4 * H][rows] @ xt + b[3 * H:4 * H][rows])
                i_t = np.exp(W[4 * H + h] @ xt + b[4 * H + h])
                f_pre = W[4 * H + NH + h] @ xt + b[4 * H + NH + h]
                f_t = sig(f_pre) if forget_gate == "sigmoid" else np.exp(f_pre)
                C = f_t * C + i_t * np.outer(v, k)
                n = f_t * n + i_t * k
                out[t, bb, rows] = o * (C @ q) / max(abs(n @ q), 1.0)
            C_T[bb, h], n_T[bb, h] = C, n
    return out, C_T, n_T


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("backend", FORMS)
def test_equations_by_hand(backend, forget_gate):
    m = _module(I=3, H=6, heads=2, backend=backend, forget_gate=forget_gate, chunk_size=3,
                scale=0.5)
    x = torch.randn(7, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    out, (C, n, mm) = m(x)
    ref, C_ref, n_ref = _numpy_forward(m, x.numpy(), forget_gate)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    scale = torch.exp(mm[0]).detach()                      # the true state is C' e^m
    np.testing.assert_allclose((C[0] * scale[..., None, None]).detach().numpy(), C_ref,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose((n[0] * scale[..., None]).detach().numpy(), n_ref,
                               rtol=1e-10, atol=1e-12)


def test_normaliser_lower_bound_is_one():
    """max(|n_tᵀq_t|, 1): with tiny input gates |nᵀq| < 1, so h̃_t = C_t q_t exactly."""
    m = _module(I=2, H=2, heads=1, backend="parallel")
    with torch.no_grad():
        m.bias_ih_l0[8] = -30.0                            # ĩ ≈ −30: i_t ≈ 1e-13
    x = torch.randn(5, 1, 2, dtype=F64)
    with lstmkit.record(m) as rec:
        m(x)
    assert torch.equal(rec.layers[0]["n"], torch.ones(5, 1, 1, dtype=F64))


# -- gradcheck ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", FORMS)
def test_gradcheck(backend):
    m = _module(I=2, H=4, heads=2, backend=backend, chunk_size=2)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    x = torch.randn(5, 2, 2, dtype=F64, requires_grad=True)
    state = _random_state(m, 2)

    def f(x, C, n, mm, *ps):
        out, s = torch.func.functional_call(m, dict(zip(names, ps)), (x, (C, n, mm)))
        return out, *s

    assert torch.autograd.gradcheck(f, (x, *state, *params))


# -- the three forms are one function -------------------------------------------------------
def _run(m, backend, x, feed, state):
    m.backend = backend
    for t in (x, *state, *m.parameters()):
        t.grad = None
    out, s = m(feed(), state)                    # packed anew: a fresh graph each run
    backward_with_random_grads(out, s, seed=7)
    return (output_tensor(out).detach(), [t.detach() for t in s],
            [t.grad.clone() for t in (x, *state, *m.parameters())])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True)])
def test_forms_equal(packed, config):
    m = _module(I=3, H=6, heads=3, chunk_size=4, **config)
    T, B = 11, 3
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    def feed():
        return pack_padded_sequence(x, torch.tensor([9, 11, 2]), enforce_sorted=False) \
            if packed else x
    state = _random_state(m, B)
    ref = _run(m, "reference", x, feed, state)
    for backend in ("parallel", "chunkwise"):
        got = _run(m, backend, x, feed, state)
        assert_close(got[0], ref[0], f"{backend} output", 1e-10)
        for a, b, what in zip(got[1], ref[1], "Cnm"):
            assert_close(a, b, f"{backend} final {what}", 1e-10)
        for a, b, what in zip(got[2], ref[2], ["x", "C_0", "n_0", "m_0",
                                              *dict(m.named_parameters())]):
            assert_close(a, b, f"{backend} grad {what}", 1e-10)


def _long_inputs(forget_gate, T=2000, B=1, NH=3, d=3):
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(B, NH, T, d, dtype=F64, generator=g) for _ in range(3))
    if forget_gate == "sigmoid":      # ĩ ≈ 750: exp(ĩ) overflows float64 at every step
        i_pre = 750 + 5 * torch.randn(B, NH, T, dtype=F64, generator=g)
        f_pre = 2 + 4 * torch.randn(B, NH, T, dtype=F64, generator=g)
    else:                             # exp forget gate, log f ≈ 1 per step: Σ log f ≈ 2,000
        i_pre = 5 * torch.randn(B, NH, T, dtype=F64, generator=g)
        f_pre = 1 + torch.randn(B, NH, T, dtype=F64, generator=g)
    state = (torch.randn(B, NH, d, d, dtype=F64, generator=g),
             torch.randn(B, NH, d, dtype=F64, generator=g),
             torch.full((B, NH), 50.0, dtype=F64))
    return [t.requires_grad_() for t in (q, k, v, i_pre, f_pre, *state)]


def _long_run(form, leaves, forget_gate, **kw):
    q, k, v, i_pre, f_pre, C0, n0, m0 = leaves
    for t in leaves:
        t.grad = None
    log_f = torch.nn.functional.logsigmoid(f_pre) if forget_gate == "sigmoid" else f_pre
    h, (C, n, m), _, _ = form(q, k, v, i_pre, log_f, (C0, n0, m0), **kw)
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, dtype=F64, generator=g)).sum() for t in (h, C, n, m))
    loss.backward()
    return [t.detach() for t in (h, C, n, m)], [t.grad.clone() for t in leaves]


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_forms_equal_long_sequences_large_gates(forget_gate):
    leaves = _long_inputs(forget_gate)
    i_pre, f_pre = leaves[3], leaves[4]
    log_f = torch.nn.functional.logsigmoid(f_pre) if forget_gate == "sigmoid" else f_pre
    gate = torch.exp(i_pre) if forget_gate == "sigmoid" else torch.exp(torch.cumsum(log_f, -1))
    assert torch.isinf(gate).any()       # i_t, or Π f_t: unstabilised, float64 overflows
    ref = _long_run(forms.mlstm_recurrent, leaves, forget_gate)
    assert all(torch.isfinite(t).all() for t in (*ref[0], *ref[1]))
    for name, form, kw in (("parallel", forms.mlstm_parallel, {}),
                           ("chunkwise", forms.mlstm_chunkwise, {"chunk_size": 64})):
        got = _long_run(form, leaves, forget_gate, **kw)
        for a, b, what in zip(got[0], ref[0], ["h", "C", "n", "m"]):
            assert_close(a, b, f"{name} {what}", 1e-8)
        for a, b, what in zip(got[1], ref[1], ["q", "k", "v", "i", "f", "C_0", "n_0", "m_0"]):
            # the gradients reach 1e6–1e9 over 2,000 steps: rounding of that size lands on
            # every element, so the absolute tolerance scales with the tensor's largest
            # (10⁻¹⁰ of it; the element-wise relative one stays 10⁻⁸). With a fixed 1e-8, an
            # element of 0.2 beside 3.7e6 differed by 1.2e-8 on one machine (float64 BLAS)
            scale = b.abs().max().item()
            torch.testing.assert_close(a, b, rtol=1e-8, atol=max(1e-10 * scale, 1e-300),
                                       msg=lambda m, w=f"{name} grad {what}": f"{w}: {m}")


# -- padded, packed, one at a time; inference step by step ---------------------------------
@pytest.mark.parametrize("backend", FORMS)
def test_packed_equals_one_sequence_at_a_time(backend):
    m = _module(I=3, H=4, heads=2, num_layers=2, bidirectional=True, backend=backend,
                chunk_size=3)
    lengths = [6, 9, 1, 4]
    x = torch.randn(9, 4, 3, dtype=F64)
    state = _random_state(m, 4)
    out, s = m(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False), state)
    padded, _ = pad_packed_sequence(out)
    for b, L in enumerate(lengths):
        one, s1 = m(x[:L, b], tuple(t[:, b] for t in state))             # unbatched
        assert_close(padded[:L, b], one, f"output of sequence {b}", 1e-10)
        for a, c, what in zip(s, s1, "Cnm"):
            assert_close(a[:, b], c, f"final {what} of sequence {b}", 1e-10)
    full, s_full = m(x, state)                  # all length 9: sequence 1 as padded input
    assert_close(padded[:, 1], full[:, 1], "padded output", 1e-10)


def test_step_by_step_inference_and_chained_calls():
    m = _module(I=3, H=8, heads=2, backend="auto", chunk_size=4, batch_first=True)
    x = torch.randn(2, 13, 3, dtype=F64)
    whole, s_whole = m(x)                        # chunkwise (T = 13 > 4)
    state, steps = None, []
    for t in range(13):                          # T = 1: the recurrent step
        y, state = m(x[:, t:t + 1], state)
        steps.append(y)
    assert_close(torch.cat(steps, 1), whole, "step by step", 1e-10)
    y1, s1 = m(x[:, :4])                         # parallel
    y2, s2 = m(x[:, 4:], s1)                     # chunkwise, from the parallel form's state
    assert_close(torch.cat([y1, y2], 1), whole, "chained calls", 1e-10)
    for a, b, what in zip(s2, s_whole, "Cnm"):
        assert_close(a, b, f"chained final {what}", 1e-10)


# -- NX-AI's reference functions ------------------------------------------------------------
def test_equals_nx_ai_xlstm_backends():
    backends = pytest.importorskip("xlstm.blocks.mlstm.backends")
    g = torch.Generator().manual_seed(2)
    B, NH, T, d = 2, 3, 32, 4
    q, k_raw, v = (torch.randn(B, NH, T, d, dtype=F64, generator=g) for _ in range(3))
    i_pre = 4 * torch.randn(B, NH, T, dtype=F64, generator=g)
    f_pre = 3 * torch.randn(B, NH, T, dtype=F64, generator=g)
    k = k_raw / math.sqrt(d)               # theirs scale keys (or queries) inside
    log_f = torch.nn.functional.logsigmoid(f_pre)
    ours, (C, n, m), _, _ = forms.mlstm_recurrent(q, k, v, i_pre, log_f)
    theirs = backends.parallel_stabilized_simple(q, k_raw, v, i_pre[..., None],
                                                 f_pre[..., None], eps=0.0)
    assert_close(theirs, ours, "parallel_stabilized_simple", 1e-10)
    C_x, n_x, m_x = (torch.zeros(B, NH, d, d, dtype=F64), torch.zeros(B, NH, d, 1, dtype=F64),
                     torch.zeros(B, NH, 1, 1, dtype=F64))
    for t in range(T):
        h, (C_x, n_x, m_x) = backends.recurrent_step_stabilized_simple(
            C_x, n_x, m_x, q[:, :, t:t + 1].clone(), k_raw[:, :, t:t + 1].clone(),
            v[:, :, t:t + 1].clone(), i_pre[:, :, t, None, None], f_pre[:, :, t, None, None],
            eps=0.0)
        assert_close(h[:, :, 0], ours[:, :, t], f"recurrent step {t}", 1e-10)
    assert_close(C_x.transpose(-1, -2), C, "their C = our Cᵀ", 1e-10)
    assert_close(n_x[..., 0], n, "n", 1e-10)
    assert_close(m_x[..., 0, 0], m, "m", 1e-10)
    # chunkwise_simple scales q (not k) by 1/√d: the same h̃, states √d times ours
    h, (C_c, n_c, m_c) = backends.chunkwise_simple(q, k_raw, v, i_pre, f_pre, chunk_size=8,
                                                   return_last_state=True, eps=0.0)
    assert_close(h, ours, "chunkwise_simple", 1e-10)
    assert_close(C_c.transpose(-1, -2) / math.sqrt(d), C, "chunkwise_simple C", 1e-10)
    assert_close(m_c[..., 0, 0], m, "chunkwise_simple m", 1e-10)


# -- front end --------------------------------------------------------------------------------
def test_record_and_summary():
    m = _module(I=3, H=4, heads=2, backend="chunkwise", bidirectional=True, chunk_size=2)
    x = torch.randn(5, 3, 3, dtype=F64)
    lengths = torch.tensor([5, 2, 4])
    with lstmkit.record(m) as rec:
        out, _ = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert [(r.layer, r.direction, r.cell) for r in rec.layers] == [(0, 0, "mlstm"),
                                                                   (0, 1, "mlstm")]
    fwd, rev = rec.layers
    assert fwd.keys() == ["i", "f", "o", "n", "h"]
    assert fwd["i"].shape == (5, 3, 2) and fwd["h"].shape == (5, 3, 4)
    padded, _ = pad_packed_sequence(out)
    assert_close(fwd["h"][:2, 1], padded[:2, 1, :4], "recorded h (forward)", 1e-12)
    assert_close(rev["h"][:4, 2], padded[:4, 2, 4:], "recorded h (reverse)", 1e-12)
    assert torch.isnan(fwd["h"][2:, 1]).all() and not fwd.mask[2:, 1].any()
    W, b = m.weight_ih_l0.detach(), m.bias_ih_l0.detach()     # f_t = σ(w_fᵀ x_t + b_f)
    assert_close(fwd["f"][:, 0, 1], torch.sigmoid(x[:, 0] @ W[4 * 4 + 3] + b[4 * 4 + 3]),
                 "recorded f", 1e-12)
    assert (fwd["n"][fwd.mask] >= 1 - 1e-12).all()          # max(|n_tᵀq_t|, 1)
    text = lstmkit.summary(m)
    assert "f (forget)" in text and f"{lstmkit.count_parameters(m):,}" in text
    assert lstmkit.count_parameters(m) == 2 * (4 * 4 + 2 * 2) * (3 + 1)


def test_parameters_layout_and_init():
    m = lstmkit.mLSTM(5, 8, num_layers=2, bidirectional=True, num_heads=4)
    assert m.weight_ih_l1_reverse.shape == (4 * 8 + 2 * 4, 16)
    assert torch.equal(m.bias_ih_l0[32 + 4:], torch.linspace(3, 6, 4))
    assert not any("weight_hh" in n for n, _ in m.named_parameters())
    no_bias = lstmkit.mLSTM(5, 8, bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight_ih_l0"]


def test_batch_first_unbatched_and_dtype():
    m = _module(I=3, H=4, heads=2, backend="parallel", batch_first=True)
    x = torch.randn(2, 6, 3, dtype=F64)
    out, (C, n, mm) = m(x)
    assert out.shape == (2, 6, 4) and C.shape == (1, 2, 2, 2, 2) and mm.shape == (1, 2, 2)
    one, (C1, _, _) = m(x[1])
    assert one.shape == (6, 4) and C1.shape == (1, 2, 2, 2)
    assert_close(one, out[1], "unbatched", 1e-12)
    m32 = lstmkit.mLSTM(3, 4, num_heads=2)
    assert m32(torch.randn(4, 2, 3))[0].dtype == torch.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=10, num_heads=4), "divisible by num_heads=4"),
    (dict(num_heads=0), "num_heads must be a positive int"),
    (dict(backend="fused"), "backend must be one of"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(forget_gate="tanh"), "forget_gate must be one of"),
    (dict(dropout=1.5), "dropout must be a number in"),
])
def test_construction_errors(kwargs, match):
    args = {"input_size": 3, "hidden_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        lstmkit.mLSTM(**args)


def test_call_errors():
    m = lstmkit.mLSTM(3, 4, num_heads=2)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(5))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(TypeError, match=r"tuple \(C_0, n_0, m_0\)"):
        m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    good = [torch.zeros(s) for s in m.state_shapes(2)]
    with pytest.raises(ValueError, match=r"Expected n_0 of shape \(1, 2, 2, 2\)"):
        m(torch.randn(5, 2, 3), (good[0], torch.zeros(1, 2, 4), good[2]))


# -- the command lines ----------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "8", "--embed", "6", "--seq-len", "10", "--batch", "4", "--steps",
         "3", "--eval-every", "3", "--sample-length", "5", "--quiet", "--warmup", "1"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmkit.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_train_cell_mlstm_runs_and_resumes(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 300)
    run = tmp_path / "run"
    r = _cli("train", "--data", str(text), "--cell", "mlstm", *SMALL, "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["cell"] == "mlstm"
    from lstmkit.train.config import TrainConfig
    from lstmkit.train.model import state_from_tensors, state_tensors
    from lstmkit.train.sample import load_run
    loaded = load_run(run, "last")
    assert isinstance(loaded.model.rnn, lstmkit.mLSTM) and loaded.model.rnn.num_heads == 4
    _, state = loaded.model(torch.zeros(2, 3, dtype=torch.long))
    back = state_from_tensors(state_tensors(state), "mlstm")   # how a resumed run restores it
    assert len(back) == 3 and all(a is b for a, b in zip(back, state))
    with pytest.raises(ValueError, match="divisible by 4"):
        TrainConfig(cell="mlstm", hidden=10)


def test_experiment_cell_mlstm():
    """``lstmkit experiment ... --cell mlstm``: the parser takes it (the CLI reads
    :data:`CELLS`), and a run trains and tests an mLSTM (in process: the train test above
    covers the subprocess)."""
    import argparse

    from lstmkit.cli.experiment import add_parsers
    from lstmkit.train.experiment import ExperimentConfig, SequenceModel, run_experiment
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    assert parser.parse_args(["experiment", "adding2016", "--cell", "mlstm"]).cell == ["mlstm"]
    result = run_experiment(ExperimentConfig("adding2016", T=10, cell="mlstm", hidden=8,
                                             budget=64, val_size=32, test_size=32))
    assert result["config"]["cell"] == "mlstm" and "test" in result
    from lstmkit.data.synthetic import make_task
    assert isinstance(SequenceModel(make_task("adding2016", 10), "mlstm", 8).rnn, lstmkit.mLSTM)


@pytest.mark.parametrize("backend", FORMS)
def test_empty_batch(backend):
    m = lstmkit.mLSTM(3, 4, num_heads=2, num_layers=2, backend=backend)
    out, (C, n, mm) = m(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 4) and C.shape == (2, 0, 2, 2, 2) and mm.shape == (2, 0, 2)


def test_pickles_for_the_safe_loader(tmp_path):
    m = _module(I=3, H=4, heads=2, num_layers=2, backend="chunkwise", forget_gate="exp")
    torch.save(m, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt", weights_only=True)
    assert isinstance(back, lstmkit.mLSTM) and back.forget_gate == "exp"
    x = torch.randn(6, 2, 3, dtype=F64)
    assert torch.equal(back(x)[0], m(x)[0])


def test_dropout_between_layers_only_in_training():
    m = _module(I=3, H=4, heads=2, num_layers=2, backend="parallel", dropout=0.5)
    x = torch.randn(6, 2, 3, dtype=F64)
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, m(x)[0])
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


def test_forms_equal_float32_where_exp_overflows():
    """float32: i_t = exp(ĩ_t) overflows beyond ĩ ≈ 88; with ĩ ≈ 100 every form must still
    give finite, equal outputs, states and gradients (at float32's tolerance)."""
    g = torch.Generator().manual_seed(4)
    B, NH, T, d = 2, 2, 300, 4
    # positive q, k: |n_tᵀq_t| stays away from 0, so h̃ is well conditioned in float32
    q, k = (0.5 + torch.rand(B, NH, T, d, generator=g) for _ in range(2))
    v = torch.randn(B, NH, T, d, generator=g)
    i_pre = 100 + 5 * torch.randn(B, NH, T, generator=g)
    f_pre = 3 + 2 * torch.randn(B, NH, T, generator=g)
    assert torch.isinf(torch.exp(i_pre)).float().mean() > 0.9
    results = []
    for form, kw in ((forms.mlstm_recurrent, {}), (forms.mlstm_parallel, {}),
                     (forms.mlstm_chunkwise, {"chunk_size": 32})):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, i_pre, f_pre)]
        h, (C, n, m), _, _ = form(*leaves[:4], torch.nn.functional.logsigmoid(leaves[4]),
                                  **kw)
        (h.sum() + C.sum() + n.sum()).backward()
        results.append([h, C, n, m] + [t.grad for t in leaves])
    for got in results[1:]:
        for a, b, what in zip(got, results[0], ["h", "C", "n", "m", "dq", "dk", "dv", "dĩ",
                                                 "df̃"]):
            assert torch.isfinite(a).all(), what
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=what)


def test_compiles_without_graph_breaks():
    """torch.compile sees one graph (the chunkwise form calls the parallel form inside)."""
    import torch._dynamo as dynamo
    dynamo.reset()
    m = lstmkit.mLSTM(3, 4, num_heads=2, backend="chunkwise", chunk_size=4)
    explained = dynamo.explain(m)(torch.randn(10, 2, 3))
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("gate", ["sigmoid", "exp"])
def test_initial_forget_factor_keeps_the_memory_for_both_gates(gate):
    """NX-AI starts the sigmoid gate at f = σ(linspace(3, 6)); the exp gate must start at the
    same f (≤ 1), not at exp(3…6) per step, which would blow the memory up."""
    torch.manual_seed(0)
    m = lstmkit.mLSTM(6, 8, num_heads=2, forget_gate=gate)
    H, NH = 8, 2
    f_tilde = m.bias_ih_l0[4 * H + NH:].detach()
    f = torch.sigmoid(f_tilde) if gate == "sigmoid" else torch.exp(f_tilde)
    assert torch.allclose(f, torch.sigmoid(torch.linspace(3.0, 6.0, NH)), atol=1e-6)
    assert bool((f < 1).all())
    x = torch.randn(300, 2, 6)
    with lstmkit.record(m) as rec:
        m(x)
    assert bool(torch.isfinite(rec.layers[0]["n"]).all())
