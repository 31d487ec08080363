"""Drop-in for code written for torch.nn: the cells, torch.nn's class hierarchy and attributes,
weights read through attribute access (parametrizations, weight norm, weight drop), whole
modules saved and loaded with torch's safe loader, and torch.nn's edge semantics. Every
number is checked against torch.nn or against the module of the same family."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, assert_close
from torch import nn
from torch.nn.utils import parametrize

import lstmkit
from lstmkit.nn.checks import ShapeError

F64 = torch.float64
I, H, B = 3, 5, 4


# -- class hierarchy, attributes, repr ---------------------------------------------------
@pytest.mark.parametrize("make", [lambda: lstmkit.LSTM(4, 4), lambda: lstmkit.GRU(4, 4),
                                  lambda: lstmkit.RNN(4, 4),
                                  lambda: lstmkit.ClockworkRNN(4, 4, num_modules=2),
                                  lambda: lstmkit.DepthGatedLSTM(4, 4),
                                  lambda: lstmkit.LSTM1997(4, 4)])
def test_modules_are_rnnbase(make):
    assert isinstance(make(), nn.RNNBase)


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True},
                                {"proj_size": 3, "num_layers": 2}, {"bias": False}])
def test_flat_weights_and_mode_as_torch(kw):
    ours, ref = lstmkit.LSTM(I, H, **kw), nn.LSTM(I, H, **kw)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert [t.shape for t in ours._flat_weights] == [t.shape for t in ref._flat_weights]
    assert ours.mode == ref.mode == "LSTM"
    assert lstmkit.GRU(I, H).mode == "GRU"
    assert lstmkit.RNN(I, H, nonlinearity="relu").mode == nn.RNN(I, H, nonlinearity="relu").mode


@pytest.mark.parametrize("name, kw", [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.5,
              "bidirectional": True, "proj_size": 2}),
    ("GRU", {"num_layers": 3, "dropout": 0.25}),
    ("RNN", {"bidirectional": True}),
    ("LSTMCell", {}), ("GRUCell", {"bias": False}), ("RNNCell", {}),
])
def test_repr_equals_torch(name, kw):
    assert repr(getattr(lstmkit, name)(I, H, **kw)) == repr(getattr(nn, name)(I, H, **kw))


# -- the cells ---------------------------------------------------------------------------------
CELLS = [(lstmkit.LSTMCell, nn.LSTMCell, {}), (lstmkit.GRUCell, nn.GRUCell, {}),
         (lstmkit.RNNCell, nn.RNNCell, {}), (lstmkit.RNNCell, nn.RNNCell,
                                             {"nonlinearity": "relu"}),
         (lstmkit.LSTMCell, nn.LSTMCell, {"bias": False})]


@pytest.mark.parametrize("ours_cls, torch_cls, kw", CELLS)
@pytest.mark.parametrize("backend", ["auto", "reference", "fused_py", "fused_cpp"])
def test_cell_equals_torch_cell(ours_cls, torch_cls, kw, backend):
    """Same seed, same weights (torch.nn's initialisation); outputs and every gradient equal
    over a few steps, batched and unbatched, with and without hx."""
    torch.manual_seed(0)
    ref = torch_cls(I, H, dtype=F64, **kw)
    torch.manual_seed(0)
    ours = ours_cls(I, H, dtype=F64, backend=backend, **kw)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert n1 == n2
        assert torch.equal(p1, p2)
    assert isinstance(ours, nn.RNNCellBase)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(3, B, I, dtype=F64, generator=g)
    for batched in (True, False):
        results = []
        for m in (ours, ref):
            m.zero_grad()
            x = (xs if batched else xs[:, 0]).clone().requires_grad_()
            state, outs = None, []
            for t in range(3):
                state = m(x[t], state)
                outs.append(state[0] if isinstance(state, tuple) else state)
            torch.stack(outs).pow(2).sum().backward()
            results.append((torch.stack(outs), x.grad,
                            [p.grad for p in m.parameters()]))
        (o1, dx1, g1), (o2, dx2, g2) = results
        assert_close(o1, o2, "output", TOL[F64])
        assert_close(dx1, dx2, "grad input", TOL[F64])
        for a, b in zip(g1, g2, strict=True):
            assert_close(a, b, "grad weights", TOL[F64])


VARIANT_CELLS = [
    (lstmkit.LSTMCell, lstmkit.LSTM, {"peephole": True}),
    (lstmkit.LSTMCell, lstmkit.LSTM, {"coupled": True, "peephole": True}),
    (lstmkit.LSTMCell, lstmkit.LSTM, {"input_gate": False}),
    (lstmkit.LSTMCell, lstmkit.LSTM, {"cell_activation": None, "output_gate": False}),
    (lstmkit.LSTMCell, lstmkit.LSTM, {"layer_norm": True}),
    (lstmkit.GRUCell, lstmkit.GRU, {"reset_after": False}),
    (lstmkit.GRUCell, lstmkit.GRU, {"layer_norm": True}),
    (lstmkit.RNNCell, lstmkit.RNN, {"nonlinearity": "relu"}),
]


@pytest.mark.parametrize("cell_cls, module_cls, kw", VARIANT_CELLS)
@pytest.mark.parametrize("backend", ["auto", "reference", "fused_py", "fused_cpp"])
def test_cell_equals_one_layer_module_step_by_step(cell_cls, module_cls, kw, backend):
    torch.manual_seed(0)
    module = module_cls(I, H, dtype=F64, backend="reference", **kw)
    cell = cell_cls(I, H, dtype=F64, backend=backend, **kw)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.7, 0.7)
        for name, p in cell.named_parameters():
            p.copy_(getattr(module, name + "_l0"))
    x = torch.randn(6, B, I, dtype=F64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, _ = module(x1)
    state, outs = None, []
    for t in range(6):
        state = cell(x2[t], state)
        outs.append(state[0] if isinstance(state, tuple) else state)
    assert_close(torch.stack(outs), out, "cell vs module", TOL[F64])
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (torch.stack(outs) * w).sum().backward()
    assert_close(x2.grad, x1.grad, "grad input", TOL[F64])
    for name, p in cell.named_parameters():
        assert_close(p.grad, getattr(module, name + "_l0").grad, f"grad {name}", TOL[F64])


@pytest.mark.parametrize("cell_cls, kw", [(lstmkit.LSTMCell, {}),
                                          (lstmkit.LSTMCell, {"peephole": True}),
                                          (lstmkit.GRUCell, {}), (lstmkit.RNNCell, {})])
def test_cell_masks_every_backend_the_same(cell_cls, kw):
    """Recurrent dropout and zoneout masks given per step: the engine's fused step equals the
    equations (and a mask of ones with zoneout zeros is the plain step)."""
    torch.manual_seed(0)
    cell = cell_cls(I, H, dtype=F64, **kw)
    x = torch.randn(B, I, dtype=F64)
    drop = cell.dropout_mask(B, 0.4)
    zone = cell.zoneout_mask(B, 0.3)
    hx = (torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64))
    hx = hx if cell_cls is lstmkit.LSTMCell else hx[0]
    results = {}
    for backend in ("reference", "fused_py", "fused_cpp"):
        cell.backend = backend
        cell.zero_grad()
        out = cell(x, hx, dropout_mask=drop, zoneout_mask=zone)
        h = out[0] if isinstance(out, tuple) else out
        h.pow(2).sum().backward()
        results[backend] = (h.detach(), [p.grad.clone() for p in cell.parameters()])
    for backend in ("fused_py", "fused_cpp"):
        assert_close(results[backend][0], results["reference"][0], backend, TOL[F64])
        for a, b in zip(results[backend][1], results["reference"][1], strict=True):
            assert_close(a, b, f"{backend} grads", TOL[F64])
    cell.backend = "reference"
    plain = cell(x, hx)
    same = cell(x, hx, dropout_mask=torch.ones(B, H, dtype=F64),
                zoneout_mask=torch.zeros(B, H, dtype=F64))
    for a, b in zip(plain if isinstance(plain, tuple) else (plain,),
                    same if isinstance(same, tuple) else (same,)):
        assert_close(a, b, "neutral masks", TOL[F64])
    h_prev = hx[0] if isinstance(hx, tuple) else hx
    held = cell(x, hx, zoneout_mask=torch.ones(B, H, dtype=F64))
    assert torch.equal(held[0] if isinstance(held, tuple) else held, h_prev)


def test_cell_errors():
    cell = lstmkit.LSTMCell(I, H)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 4 expected 3"):
        cell(torch.randn(2, 4))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(1, 2, I))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 5\) for h "):
        cell(torch.randn(2, I), (torch.zeros(3, H), torch.zeros(3, H)))
    with pytest.raises(ValueError, match="gate_recurrence"):
        lstmkit.LSTMCell(I, H, gate_recurrence=True)
    with pytest.raises(ShapeError, match="dropout_mask must be a tensor of shape"):
        cell(torch.randn(2, I), dropout_mask=torch.ones(3, H))
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        lstmkit.LSTMCell(I, H, peephole=True).to_torch()


def test_cell_from_and_to_torch():
    for torch_cls, ours in ((nn.LSTMCell, lstmkit.LSTMCell), (nn.GRUCell, lstmkit.GRUCell),
                            (nn.RNNCell, lstmkit.RNNCell)):
        ref = torch_cls(I, H)
        x = torch.randn(B, I)
        converted = ours.from_torch(ref)
        back = converted.to_torch()
        for m in (converted, back):
            a, b = m(x), ref(x)
            for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple)
                            else (b,)):
                assert_close(u, v, torch_cls.__name__, TOL[torch.float32])


def test_summary_covers_cells():
    cell = lstmkit.LSTMCell(I, H, peephole=True)
    text = lstmkit.summary(cell)
    assert f"total parameters: {lstmkit.count_parameters(cell):,}" in text
    assert f"4·(H·I + H·H + 2H) + 3H = {lstmkit.count_parameters(cell):,}" in text


# -- weights through attribute access ------------------------------------------------------
def _twins(**kw):
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, dtype=F64, **kw)
    ours = lstmkit.LSTM.from_torch(ref)
    return ours, ref


def _same_run(ours, ref, x):
    out1, (h1, _) = ours(x)
    out2, (h2, _) = ref(x)
    assert_close(out1, out2, "output", TOL[F64])
    (out1.sum() + h1.sum()).backward()
    (out2.sum() + h2.sum()).backward()
    g1 = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(g1[name].grad, p.grad, f"grad {name}", TOL[F64])


@pytest.mark.parametrize("how", ["orthogonal", "weight_norm", "custom"])
def test_parametrizations_act_as_on_torch(how):
    ours, ref = _twins(num_layers=2)

    class Symmetric(nn.Module):                    # torch's parametrization tutorial's example
        def forward(self, X):
            return X.triu() + X.triu(1).transpose(-1, -2)

    for m in (ours, ref):
        if how == "orthogonal":
            torch.manual_seed(3)
            nn.utils.parametrizations.orthogonal(m, "weight_hh_l0")
        elif how == "weight_norm":
            nn.utils.parametrizations.weight_norm(m, "weight_ih_l1")
        else:
            parametrize.register_parametrization(m, "weight_hh_l1", _RowBlocks(Symmetric()))
    with torch.no_grad():                          # the same underlying parameters
        for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters(),
                                      strict=True):
            assert n1 == n2
            p1.copy_(p2)
    _same_run(ours, ref, torch.randn(5, B, I, dtype=F64))
    if how == "orthogonal":
        w = ours.weight_hh_l0
        assert_close(w.T @ w, torch.eye(H, dtype=F64), "orthogonal", 1e-8)


class _RowBlocks(nn.Module):
    """Applies a square parametrization to each (H, H) row block of a (4H, H) weight."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, X):
        return torch.cat([self.inner(b) for b in X.split(X.shape[1])])


class WeightDrop(nn.Module):
    """An AWD-LSTM-style weight-drop wrapper (Merity et al. 2018), written here: the raw
    ``weight_hh_l0`` becomes ``weight_hh_l0_raw`` and each forward sets the module's
    ``weight_hh_l0`` to a dropped copy as a plain tensor attribute."""

    def __init__(self, module: nn.Module, p: float):
        super().__init__()
        self.module, self.p = module, p
        w = module.weight_hh_l0
        del module._parameters["weight_hh_l0"]
        module.register_parameter("weight_hh_l0_raw", nn.Parameter(w.data))

    def forward(self, *args):
        raw = self.module.weight_hh_l0_raw
        w = F.dropout(raw, p=self.p, training=self.training)
        self.module.weight_hh_l0 = w * 1 if w is raw else w   # never the Parameter
        return self.module(*args)


def test_weight_drop_wrapper_acts_as_on_torch():
    ours, ref = _twins()
    a, b = WeightDrop(ours, 0.5), WeightDrop(ref, 0.5)
    x = torch.randn(5, B, I, dtype=F64)
    with torch.no_grad():
        a.eval(), b.eval()
        assert_close(a(x)[0], b(x)[0], "eval", TOL[F64])
        a.train(), b.train()
        torch.manual_seed(7)
        out1 = a(x)[0]
        torch.manual_seed(7)
        out2 = b(x)[0]
    assert_close(out1, out2, "train, same dropped weights", TOL[F64])
    assert not torch.allclose(out1, a.eval()(x)[0])          # the weights were dropped


# -- whole modules through torch's safe loader ---------------------------------------------
MODULES = [
    lambda: lstmkit.LSTM(I, H, 2, bidirectional=True, proj_size=2),
    lambda: lstmkit.LSTM(I, H, peephole=True, input_gate=False, zoneout=0.1),
    lambda: lstmkit.LSTM(I, H, gate_recurrence=True, recurrent_dropout=0.2),
    lambda: lstmkit.LSTM(I, H, layer_norm=True),
    lambda: lstmkit.GRU(I, H, reset_after=False),
    lambda: lstmkit.RNN(I, H, nonlinearity="relu"),
    lambda: lstmkit.ClockworkRNN(I, 6, periods=(1, 3, 9)),
    lambda: lstmkit.DepthGatedLSTM(I, H, 2),
    lambda: lstmkit.LSTM1997(I, H, truncate=True),
    lambda: lstmkit.LSTMCell(I, H, coupled=True),
    lambda: lstmkit.GRUCell(I, H, layer_norm=True),
    lambda: lstmkit.RNNCell(I, H),
]


class Holder(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(rnn.hidden_size, 2)


@pytest.mark.parametrize("make", MODULES, ids=range(len(MODULES)))
def test_whole_module_loads_with_weights_only(make):
    torch.manual_seed(0)
    model = Holder(make()).eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([Holder, nn.Linear]):
        loaded = torch.load(buf, weights_only=True)
    assert type(loaded.rnn) is type(model.rnn)
    assert repr(loaded) == repr(model)
    x = torch.randn(4, I) if isinstance(model.rnn, nn.RNNCellBase) else torch.randn(5, 2, I)
    a, b = model.rnn(x), loaded.rnn(x)
    a, b = (a[0] if isinstance(a, tuple) else a), (b[0] if isinstance(b, tuple) else b)
    assert torch.equal(a, b)


# -- torch.nn's edge semantics ---------------------------------------------------------------
@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN])
def test_shape_errors_are_runtime_errors_too(cls):
    m = cls(I, H)
    for bad in (lambda: m(torch.randn(5, 2, I + 1)),
                lambda: m(torch.randn(5, 2, I), _bad_hx(m))):
        for exc in (RuntimeError, ValueError):
            with pytest.raises(exc):
                bad()


def _bad_hx(m):
    h = torch.zeros(1, 3, H)
    return (h, h) if isinstance(m, lstmkit.LSTM) else h


@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN])
def test_empty_batch_gives_empty_outputs(cls):
    m = getattr(nn, cls.__name__)(I, H, 2, bidirectional=True)
    ours = cls.from_torch(m)
    x = torch.randn(4, 0, I, requires_grad=True)
    out, state = ours(x)
    ref_out, ref_state = m(x)
    assert out.shape == ref_out.shape
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,)):
        assert a.shape == b.shape


def test_dropout_one_as_torch():
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, 2, dropout=1.0)
    ours = lstmkit.LSTM.from_torch(ref)
    x = torch.randn(5, 2, I)
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(1)
    b = ref(x)[0]
    assert_close(a, b, "dropout=1: the second layer sees zeros", TOL[torch.float32])


@pytest.mark.parametrize("kw", [{"bias": "False"}, {"batch_first": "False"}])
def test_non_bool_flags_raise_type_error_as_torch(kw):
    with pytest.raises(TypeError):
        nn.LSTM(I, H, **kw)
    with pytest.raises(TypeError, match="must be a bool"):
        lstmkit.LSTM(I, H, **kw)


# -- higher-order and batched gradients, autocast, tracing, ONNX --------------------------------
@pytest.mark.parametrize("backend", ["auto", "fused_py", "fused_cpp", "reference"])
@pytest.mark.parametrize("kw", [{}, {"peephole": True, "zoneout": 0.2}])
def test_double_backward_every_backend(backend, kw):
    """A gradient penalty: ∂/∂W of ‖∂L/∂x‖², equal on every backend to the reference's, and
    gradcheck-able (gradgradcheck) on the fused path."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(I, H, dtype=F64, backend=backend, **kw).eval()
    ref = lstmkit.LSTM(I, H, dtype=F64, backend="reference", **kw).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    results = []
    for net in (m, ref):
        out, _ = net(x)
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        penalty = gx.pow(2).sum()
        results.append(torch.autograd.grad(penalty, list(net.parameters())))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, "grad of the gradient penalty", TOL[F64])
    if backend in ("fused_py", "fused_cpp"):
        small = lstmkit.LSTM(2, 2, dtype=F64, backend=backend)
        x2 = torch.randn(3, 1, 2, dtype=F64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda t: small(t)[0], (x2,))


@pytest.mark.parametrize("backend", ["auto", "fused_cpp"])
def test_batched_grads_and_vmap(backend):
    torch.manual_seed(0)
    m = lstmkit.GRU(I, H, dtype=F64, backend=backend)
    ref = nn.GRU(I, H, dtype=F64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, I, dtype=F64, requires_grad=True)
    eye = torch.eye(5 * 2 * H, dtype=F64).view(-1, 5, 2, H)[:7]
    jac = []
    for net in (m, ref):
        out, _ = net(x)
        (j,) = torch.autograd.grad(out, x, eye, is_grads_batched=True)
        jac.append(j)
    assert_close(jac[0], jac[1], "batched grads", TOL[F64])
    # per-sample gradients with torch.func, as in torch's own tutorial on them
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, sample):
        out, _ = torch.func.functional_call(m, p, (sample.unsqueeze(1),))
        return out.pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(params, x.detach())
    for b in range(2):
        ref.zero_grad()
        ref(x.detach()[:, b:b + 1])[0].pow(2).sum().backward()
        for name, p in ref.named_parameters():
            assert_close(per_sample[name][b], p.grad, f"per-sample grad {name}", TOL[F64])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_cpu_autocast_as_torch(cls):
    torch.manual_seed(0)
    ref = cls(I, H, 2)
    ours = getattr(lstmkit, cls.__name__).from_torch(ref)
    x = torch.randn(6, 3, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            b = ref(x)
        except RuntimeError as e:
            # torch.nn.LSTM's bfloat16 path is oneDNN's primitive, which some CPUs lack
            # (seen on an AVX2-only EPYC): a drop-in then fails the same way
            with pytest.raises(RuntimeError) as ours_error:
                ours(x)
            assert str(ours_error.value) == str(e)
            pytest.skip(f"torch.nn.{cls.__name__} cannot run under bfloat16 autocast on "
                        f"this CPU: {str(e)[:120]}")
        a = ours(x)
    for u, v in zip(_tensors(a), _tensors(b), strict=True):
        assert u.dtype == v.dtype
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def test_cpu_autocast_variant_runs_its_equations():
    torch.manual_seed(0)
    m = lstmkit.LSTM(I, H, peephole=True)
    x = torch.randn(6, 3, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x)
    want, _ = m(x)                                  # float32, autocast off
    assert out.dtype in (torch.bfloat16, torch.float32)
    torch.testing.assert_close(out.float(), want, atol=3e-2, rtol=0)   # bfloat16's precision


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)]


@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN])
def test_trace_runs_on_other_lengths_and_batches(cls):
    torch.manual_seed(0)
    m = cls(I, H, 2, bidirectional=True).eval()
    traced = torch.jit.trace(m, (torch.randn(5, 2, I),))
    for shape in ((9, 3, I), (2, 1, I)):
        x = torch.randn(*shape)
        for u, v in zip(_tensors(traced(x)), _tensors(m(x)), strict=True):
            torch.testing.assert_close(u, v)


_TRACED_VARIANTS = {
    "peephole-bi-2": lambda: lstmkit.LSTM(I, H, 2, peephole=True, bidirectional=True),
    "coupled-batch-first": lambda: lstmkit.LSTM(I, H, coupled=True, batch_first=True),
    "proj-peephole": lambda: lstmkit.LSTM(I, H, proj_size=2, peephole=True),
    "ln-gru": lambda: lstmkit.GRU(I, H, layer_norm=True),
    "clockwork": lambda: lstmkit.ClockworkRNN(I, 4, num_modules=2),
    "depth-gated": lambda: lstmkit.DepthGatedLSTM(I, H, num_layers=2),
    "lstm-recording-backend": lambda: lstmkit.LSTM(I, H, backend="fused_py"),
}


def _saved_and_loaded(traced):
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", list(_TRACED_VARIANTS))
def test_trace_of_a_variant_runs_on_other_shapes_and_saves(name):
    """A variant has no aten op: it traces as one ``lstmkit::<family>_layer`` node per layer,
    which runs on any length and batch size and survives torch.jit.save/load."""
    torch.manual_seed(0)
    m = _TRACED_VARIANTS[name]().eval()
    first = (5, 2, I) if not m.batch_first else (2, 5, I)
    traced = torch.jit.trace(m, (torch.randn(*first),))
    assert any(n.kind().startswith("lstmkit::") or n.kind().startswith("aten::lstm")
               for n in traced.graph.nodes())
    assert not any(n.kind() == "prim::PythonOp" for n in traced.graph.nodes())
    loaded = _saved_and_loaded(traced)
    for shape in ((9, 3, I), (1, 1, I), (3, 6, I)):
        x = torch.randn(*shape, requires_grad=True)
        want = m(x)
        got = loaded(x)
        for u, v in zip(_tensors(got), _tensors(want), strict=True):
            torch.testing.assert_close(u, v)
        (gx_want,) = torch.autograd.grad(_tensors(want)[0].sum(), x)
        (gx_got,) = torch.autograd.grad(_tensors(got)[0].sum(), x)
        torch.testing.assert_close(gx_got, gx_want)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("make", [
    lambda: lstmkit.LSTMCell(I, H, peephole=True),
    lambda: lstmkit.GRUCell(I, H, layer_norm=True),
    lambda: lstmkit.RNNCell(I, H, nonlinearity="relu"),
], ids=["lstm-peephole", "gru-ln", "rnn-relu"])
def test_trace_of_a_cell_runs_on_other_batches(make):
    torch.manual_seed(0)
    cell = make()
    loaded = _saved_and_loaded(torch.jit.trace(cell, (torch.randn(3, I),)))
    for batch in (1, 7):
        x = torch.randn(batch, I)
        for u, v in zip(_tensors(loaded(x)), _tensors(cell(x)), strict=True):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize("make", [
    lambda: lstmkit.LSTM(I, H, 2),
    lambda: lstmkit.GRU(I, H, bidirectional=True),
    lambda: lstmkit.LSTM(I, H, proj_size=2, peephole=True),
    lambda: lstmkit.LSTM(I, H, layer_norm=True),
    lambda: lstmkit.ClockworkRNN(I, 4, num_modules=2),
], ids=["lstm", "gru-bi", "lstm-proj-peephole", "ln-lstm", "clockwork"])
def test_plain_torch_onnx_export(make, tmp_path):
    """torch.onnx.export on a model with lstmkit layers, as torch.nn users call it."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = make()

        def forward(self, x):
            return self.rnn(x)[0].sum(-1)

    model = Model().eval()
    x = torch.randn(6, 2, I)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path))
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), atol=1e-5,
                               rtol=1e-5)


def test_record_covers_cells():
    """Each call of a recorded cell is one step; ``Recording.steps`` joins them, and they
    equal the one-layer module's record of the same sequence."""
    torch.manual_seed(0)
    module = lstmkit.LSTM(I, H, peephole=True)
    cell = lstmkit.LSTMCell(I, H, peephole=True)
    cell.load_state_dict({k[:-3]: v for k, v in module.state_dict().items()})
    x = torch.randn(5, B, I)
    with lstmkit.record(module) as want:
        module(x)
    with lstmkit.record(cell) as got:
        state = None
        for t in range(5):
            state = cell(x[t], state)
    steps = got.steps()
    assert set(steps.keys()) == set(want.layers[0].keys()) == {"i", "f", "g", "o", "c", "h"}
    for key in steps.keys():
        torch.testing.assert_close(steps[key], want.layers[0][key])
    plain = lstmkit.LSTMCell(I, H)                # torch's cell function when not recording
    with lstmkit.record(plain) as rec:
        plain(x[0])
    assert rec.steps()["f"].shape == (1, B, H)
