"""The LSTM ablations of Greff et al., "LSTM: A Search Space Odyssey" (2015/2017).

Outside references: ``torch.autograd.gradcheck`` (finite differences) for the reference
loop and the fused backends; an independent NumPy float64 computation of the paper's
equations (its notation: block input z, gates i, f, o, output y) for outputs, final
states and recorded gates; the fused backends against the reference in float64 to 1e-10
for outputs, h_n, c_n and every gradient, with backward also cut into many time chunks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import backward_with_random_grads, compare_modules, make_input, output_tensor
from torch.func import functional_call

import lstmkit

FUSED = ["fused_py", "fused_cpp"]

# Greff's eight variants (NP = our default, CIFG = coupled) and a few combinations.
VARIANTS = {
    "nig": {"input_gate": False},
    "nfg": {"forget_gate": False},
    "nog": {"output_gate": False},
    "niaf": {"input_activation": None},
    "noaf": {"cell_activation": None},
    "np": {},
    "cifg": {"coupled": True},
    "fgr": {"gate_recurrence": True},
    "vanilla": {"peephole": True},
    "fgr_peephole": {"gate_recurrence": True, "peephole": True},
    "nig_peephole_noaf": {"input_gate": False, "peephole": True, "cell_activation": None},
    "nog_cifg_peephole": {"output_gate": False, "coupled": True, "peephole": True},
    "nfg_niaf_peephole": {"forget_gate": False, "input_activation": None, "peephole": True},
    "no_gates": {"input_gate": False, "forget_gate": False, "output_gate": False},
}
GREFF = [k for k in VARIANTS if k not in ("np", "cifg", "vanilla")]   # the new keywords


def build(variant: str, backend: str, **kw) -> lstmkit.LSTM:
    kw = {"dtype": torch.float64, **kw}
    return lstmkit.LSTM(kw.pop("input_size", 3), kw.pop("hidden_size", 4), **kw,
                        **VARIANTS[variant], backend=backend)


# -- gradcheck -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_every_input_and_parameter(variant, backend):
    """Finite differences for x, h_0, c_0 and every parameter, through outputs and states."""
    torch.manual_seed(0)
    m = build(variant, backend, input_size=2, hidden_size=3)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    h0, c0 = torch.randn(2, 1, 2, 3, dtype=torch.float64).unbind(0)

    def run(x, h0, c0, *params):
        out, (h_n, c_n) = functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        return out, h_n, c_n

    inputs = [t.clone().requires_grad_() for t in (x, h0, c0, *m.parameters())]
    assert torch.autograd.gradcheck(run, inputs)


# -- fused vs reference ----------------------------------------------------------------------
FORMS = {"plain": {}, "proj": {"proj_size": 2},
         "bi-2layers-packed-hx": {"num_layers": 2, "bidirectional": True}}


def _run(m: lstmkit.LSTM, packed: bool, given_hx: bool, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(7)
    x, feed = make_input(9, 3, 3, dtype, batch_first=False, packed=packed, generator=g)
    hx = None
    if given_hx:
        D, L = m.num_directions, m.num_layers
        hx = tuple(torch.randn(D * L, 3, s, dtype=dtype, generator=g).requires_grad_()
                   for s in (m.output_size, m.hidden_size))
    out, (h_n, c_n) = m(feed, hx)
    backward_with_random_grads(out, (h_n, c_n), seed=11)
    grads = [x.grad] + ([t.grad for t in hx] if hx else [])
    return [output_tensor(out), h_n, c_n], grads


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_equals_reference(variant, backend, form, chunked, monkeypatch):
    if chunked:                                     # backward in up to 8 time chunks
        monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)
    torch.manual_seed(1)
    ref = build(variant, "reference", **FORMS[form])
    fused = build(variant, backend, **FORMS[form])
    fused.load_state_dict(ref.state_dict())
    special = form.startswith("bi")
    values_r, grads_r = _run(ref, special, special)
    values_f, grads_f = _run(fused, special, special)
    for what, a, b in zip(("output", "h_n", "c_n"), values_f, values_r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=what)
    for a, b in zip(grads_f, grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    compare_modules(fused, ref, 1e-10)


@pytest.mark.parametrize("variant", ["nig", "nog_cifg_peephole", "niaf", "noaf", "fgr_peephole"])
def test_fused_cpp_float32(variant):
    """float32: the C++ kernel's fast exp against the reference's torch functions."""
    torch.manual_seed(2)
    kw = {"dtype": torch.float32, "num_layers": 2, "bidirectional": True}
    ref, fused = build(variant, "reference", **kw), build(variant, "fused_cpp", **kw)
    fused.load_state_dict(ref.state_dict())
    (values_r, grads_r), (values_f, grads_f) = (_run(m, True, True, torch.float32)
                                                for m in (ref, fused))
    for a, b in zip(values_f + grads_f, values_r + grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    compare_modules(fused, ref, 1e-5)


# -- NumPy: Greff et al.'s equations --------------------------------------------------------
def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def greff_numpy(x, y0, c0, blocks, variant, p=None, R_gg=None):
    """Greff et al. (2017), §II, with the variants of §III. ``blocks[k] = (W_k, R_k, b_k)``
    for the block input z and gates i, f, o that exist; ``p[k]`` peepholes; ``R_gg[(s, t)]``
    the FGR matrix from gate s at t−1 to gate t. Returns y of every step, c_T, gates."""
    opts = VARIANTS[variant]
    y, c = y0, c0
    prev = {k: np.zeros_like(c0) for k in "ifo"}
    ys, seen = [], []
    for x_t in x:
        bar = {k: x_t @ W.T + y @ R.T + b for k, (W, R, b) in blocks.items()}
        for k in "ifo" if R_gg is not None else "":  # FGR: + R_ik i' + R_fk f' + R_ok o'
            bar[k] = bar[k] + sum(prev[s] @ R_gg[(s, k)].T for s in "ifo")
        z = bar["z"] if opts.get("input_activation", "tanh") is None else np.tanh(bar["z"])
        i = sigmoid(bar["i"] + (p["i"] * c if p and "i" in p else 0)) if "i" in bar else 1.0
        if opts.get("coupled"):
            f = 1.0 - i
        else:
            f = sigmoid(bar["f"] + (p["f"] * c if p and "f" in p else 0)) if "f" in bar else 1.0
        c = z * i + c * f
        o = sigmoid(bar["o"] + (p["o"] * c if p and "o" in p else 0)) if "o" in bar else 1.0
        y = (c if opts.get("cell_activation", "tanh") is None else np.tanh(c)) * o
        prev = {"i": i, "f": f, "o": o}
        ones = np.ones_like(c)
        seen.append({"i": i * ones, "f": f * ones, "g": z, "o": o * ones})
        ys.append(y)
    return np.stack(ys), y, c, seen


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_numpy_equations(variant, backend):
    """Weights drawn in NumPy per block of Greff's equations, placed in the row layout the
    docstring names (the remaining of i, f, g, o; peephole over the remaining of i, f, o;
    weight_gg rows = target gate, columns = source gate)."""
    T, B, I, H = 4, 3, 5, 4
    rng = np.random.default_rng(3)
    opts = VARIANTS[variant]
    present = [k for k, key in (("i", "input_gate"), ("f", "forget_gate"), ("g", None),
                                ("o", "output_gate"))
               if (key is None or opts.get(key, True)) and not (k == "f" and opts.get("coupled"))]
    greff_name = {"i": "i", "f": "f", "g": "z", "o": "o"}
    blocks = {greff_name[k]: (rng.normal(size=(H, I)), rng.normal(size=(H, H)) * 0.5,
                              rng.normal(size=H)) for k in present}
    gated = [k for k in present if k != "g"]
    p = {k: rng.normal(size=H) for k in gated} if opts.get("peephole") else None
    R_gg = ({(s, t): rng.normal(size=(H, H)) * 0.3 for s in "ifo" for t in "ifo"}
            if opts.get("gate_recurrence") else None)
    x, y0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H))

    m = build(variant, backend, input_size=I, hidden_size=H)
    state = {"weight_ih_l0": np.concatenate([blocks[greff_name[k]][0] for k in present]),
             "weight_hh_l0": np.concatenate([blocks[greff_name[k]][1] for k in present]),
             "bias_ih_l0": np.concatenate([blocks[greff_name[k]][2] for k in present]),
             "bias_hh_l0": np.zeros(len(present) * H)}
    if p:
        state["peephole_l0"] = np.concatenate([p[k] for k in gated])
    if R_gg:
        state["weight_gg_l0"] = np.block([[R_gg[(s, t)] for s in "ifo"] for t in "ifo"])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    ys, y_T, c_T, gates = greff_numpy(x, y0, c0, blocks, variant, p, R_gg)
    with lstmkit.record(m) as rec:
        out, (h_n, c_n) = m(torch.from_numpy(x), (torch.from_numpy(y0)[None],
                                                  torch.from_numpy(c0)[None]))
    tol = {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out.detach().numpy(), ys, **tol)
    np.testing.assert_allclose(h_n[0].detach().numpy(), y_T, **tol)
    np.testing.assert_allclose(c_n[0].detach().numpy(), c_T, **tol)
    for k in "ifgo":
        np.testing.assert_allclose(rec.layers[0][k].numpy(), np.stack([g[k] for g in gates]),
                                   err_msg=f"recorded gate {k}", **tol)


# -- parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("proj", [0, 3])
def test_count_parameters(variant, proj):
    """G blocks of (H·I + H·R + 2H), a peephole per gate i, f, o that exists, 9H² for FGR,
    P·H for the projection; two layers, both directions."""
    I, H = 5, 6
    opts = VARIANTS[variant]
    gates = sum(opts.get(k, True) for k in ("input_gate", "forget_gate", "output_gate"))
    gates -= bool(opts.get("coupled"))
    G, R = gates + 1, proj or H
    expected = 0
    for layer_in in (I, 2 * R):
        per = G * (H * layer_in + H * R + 2 * H) + proj * H
        per += gates * H if opts.get("peephole") else 0
        per += 9 * H * H if opts.get("gate_recurrence") else 0
        expected += 2 * per
    m = build(variant, "reference", input_size=I, hidden_size=H, num_layers=2,
              bidirectional=True, proj_size=proj)
    assert lstmkit.count_parameters(m) == expected
    text = lstmkit.summary(m)
    assert f"this module: {expected:,} parameters" in text
    if opts.get("gate_recurrence"):
        assert "weight_gg" in text and f"{9 * H * H:,}" in text


def test_absent_gate_has_no_rows():
    m = lstmkit.LSTM(3, 4, input_gate=False, peephole=True)
    assert m.weight_ih_l0.shape == (12, 3) and m.peephole_l0.shape == (8,)     # f, g, o / f, o
    m = lstmkit.LSTM(3, 4, gate_recurrence=True)
    assert m.weight_gg_l0.shape == (12, 12)


# -- refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"coupled": True, "input_gate": False}, "needs the input gate"),
    ({"coupled": True, "forget_gate": False}, "contradicts"),
    ({"gate_recurrence": True, "coupled": True}, "gate_recurrence"),
    ({"gate_recurrence": True, "output_gate": False}, "gate_recurrence"),
    ({"peephole": True, "input_gate": False, "forget_gate": False, "output_gate": False},
     "at least one"),
    ({"input_activation": "relu"}, "'tanh' or None, got 'relu'"),
    ({"cell_activation": "sigmoid"}, "'tanh' or None, got 'sigmoid'"),
])
def test_bad_combinations_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        lstmkit.LSTM(3, 4, **kw)


@pytest.mark.parametrize("variant", GREFF)
def test_no_torch_or_onnx_equivalent(variant, tmp_path):
    m = build(variant, "auto", dtype=torch.float32)
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        m.to_torch()
    from lstmkit.interop import onnx as lstmkit_onnx
    with pytest.raises(ValueError, match="Greff"):
        lstmkit_onnx.export_module(m, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="Greff"):
        lstmkit_onnx.export(torch.nn.Sequential(m), (torch.randn(3, 1, 3),), tmp_path / "x.onnx")


def test_auto_backend_is_not_torch_kernel():
    """A float32 NIG layer under backend='auto' must not run torch's (standard) LSTM."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(3, 4, input_gate=False)
    ref = lstmkit.LSTM(3, 4, input_gate=False, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


# -- torch.compile -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["fused", "fused_py"])
@pytest.mark.parametrize("variant", ["nig", "noaf", "fgr_peephole", "nog_cifg_peephole"])
def test_compile_no_graph_breaks_same_outputs_and_gradients(variant, backend):
    """tests/test_compile.py's pattern: one custom op per layer, no graph break, and the
    compiled model equals the eager one, gradients included."""
    import torch._dynamo as dynamo
    torch.manual_seed(0)
    m = build(variant, backend, dtype=torch.float32, input_size=4, hidden_size=6,
              bidirectional=True)
    model = torch.nn.Sequential(m)

    def run(mod, x):
        return mod(x)[0].tanh().sum(-1)

    x, g = torch.randn(9, 3, 4), torch.randn(9, 3)
    dynamo.reset()
    explained = dynamo.explain(lambda x: run(model, x))(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(lambda x: run(model, x), backend="aot_eager", fullgraph=True)

    def grads(fn):
        model.zero_grad()
        xx = x.clone().requires_grad_()
        y = fn(xx)
        (y * g).sum().backward()
        return [y.detach(), xx.grad] + [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(compiled), grads(lambda x: run(model, x)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- the CLIs ------------------------------------------------------------------------------------
def test_experiment_cells_and_forget_bias():
    """``experiment --cell lstm-nig`` builds Greff's NIG (vanilla minus the input gate), and
    the forget bias lands on the f block, which is the first one without an input gate."""
    from lstmkit.train.experiment import CELLS, add_forget_bias
    module, kw = CELLS["lstm-nig"]
    m = module(3, 4, **kw)
    assert (m.peephole, m.input_gate) == (True, False)
    before = m.bias_ih_l0.detach().clone()
    add_forget_bias(m, 1.0)
    torch.testing.assert_close(m.bias_ih_l0.detach() - before,
                               torch.cat([torch.ones(4), torch.zeros(8)]))
    assert CELLS["lstm-fgr"][1] == {"peephole": True, "gate_recurrence": True}


def test_train_config_variant():
    from lstmkit.train.config import TrainConfig
    from lstmkit.train.model import make_rnn
    rnn = make_rnn(TrainConfig(variant="noaf", hidden=8, embed=4))
    assert (rnn.peephole, rnn.cell_activation) == (True, None)
    with pytest.raises(ValueError, match="variant must be one of"):
        TrainConfig(variant="nig", cell="gru")
    with pytest.raises(ValueError, match="variant must be one of"):
        TrainConfig(variant="xyz")
