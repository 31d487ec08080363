"""Every fused backend against the reference loop, as pairs: every variant, input form and
gradient (float64, 1e-10), plus the edge cases of the fused path."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import as_tuple, assert_close, backward_with_random_grads, make_input, output_tensor

import lstmkit
from lstmkit import ops

I, H, P = 4, 5, 3

VARIANTS = {
    "lstm": lambda **kw: lstmkit.LSTM(I, H, **kw),
    "lstm_peephole": lambda **kw: lstmkit.LSTM(I, H, peephole=True, **kw),
    "lstm_coupled": lambda **kw: lstmkit.LSTM(I, H, coupled=True, **kw),
    "lstm_coupled_peephole": lambda **kw: lstmkit.LSTM(I, H, coupled=True, peephole=True, **kw),
    "lstm_proj": lambda **kw: lstmkit.LSTM(I, H, proj_size=P, **kw),
    "lstm_proj_peephole_nobias": lambda **kw: lstmkit.LSTM(I, H, proj_size=P, peephole=True,
                                                           bias=False, **kw),
    "gru": lambda **kw: lstmkit.GRU(I, H, **kw),
    "gru_reset_before": lambda **kw: lstmkit.GRU(I, H, reset_after=False, **kw),
    "gru_reset_before_nobias": lambda **kw: lstmkit.GRU(I, H, reset_after=False, bias=False,
                                                        **kw),
    "rnn_tanh": lambda **kw: lstmkit.RNN(I, H, **kw),
    "rnn_relu": lambda **kw: lstmkit.RNN(I, H, nonlinearity="relu", **kw),
}
FUSED = ["fused_py", "fused_cpp"]
FORMS = list(itertools.product((False, True), (False, True), (False, True)))   # bi, packed, hx


def _run(model, packed, given_hx, dtype, T=6, B=3):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(T, B, I, dtype, batch_first=model.batch_first, packed=packed,
                         generator=g)
    n = model.num_layers * model.num_directions
    hx = tuple(torch.randn(n, B, size, dtype=dtype, generator=g).requires_grad_()
               for _, size in model._state_shapes()) if given_hx else ()
    out, state = model(feed, (hx if len(hx) == 2 else hx[0]) if hx else None)
    state = as_tuple(state)
    backward_with_random_grads(out, state, seed=2)
    return x, hx, out, state


def _twins(variant, backend, dtype, **kw):
    torch.manual_seed(0)
    ref = VARIANTS[variant](dtype=dtype, backend="reference", **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.7, 0.7)                # peepholes away from zero
    fused = VARIANTS[variant](dtype=dtype, backend=backend, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _compare(ref_run, fused_run, ref, fused, tol):
    (x1, hx1, out1, st1), (x2, hx2, out2, st2) = ref_run, fused_run
    assert_close(output_tensor(out2), output_tensor(out1), "output", tol)
    for a, b in zip(st2, st1, strict=True):
        assert_close(a, b, "final state", tol)
    assert_close(x2.grad, x1.grad, "grad input", tol)
    for a, b in zip(hx2, hx1, strict=True):
        assert_close(a.grad, b.grad, "grad initial state", tol)
    mine = dict(fused.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(mine[name].grad, p.grad, f"grad {name}", tol)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(
    n for n, on in zip(("bi", "packed", "hx"), f) if on) or "plain")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_equals_reference_float64(variant, form, backend):
    bidirectional, packed, given_hx = form
    ref, fused = _twins(variant, backend, torch.float64, num_layers=2,
                        bidirectional=bidirectional)
    _compare(_run(ref, packed, given_hx, torch.float64),
             _run(fused, packed, given_hx, torch.float64), ref, fused, 1e-10)


def test_backward_chunks_cover_every_row_once():
    from lstmkit.ops.fused import backward_chunks
    sizes = [5, 5, 4, 4, 4, 2, 1] * 100                  # N = 2500 rows
    sizes.sort(reverse=True)
    for reverse in (False, True):
        chunks = backward_chunks(sizes, reverse)
        ordered = sorted(chunks)
        assert chunks == (ordered if reverse else ordered[::-1])
        assert 2 <= len(chunks) <= 8
        assert [c[0] for c in ordered] == [0] + [c[1] for c in ordered[:-1]]
        assert ordered[-1][1] == len(sizes) and ordered[-1][3] == sum(sizes)
        for t0, t1, r0, r1 in ordered:
            assert r1 - r0 == sum(sizes[t0:t1]) and r0 == sum(sizes[:t0])
    assert backward_chunks([3] * 10, False) == [(0, 10, 0, 30)]     # small: one chunk


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("form", [(False, False, False), (True, True, True)],
                         ids=["plain", "bi-packed-hx"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_backward_equals_reference(variant, form, backend, monkeypatch):
    """Backward in up to 8 time chunks (forced here by a 1-row minimum) gives the same
    gradients: the carried dh/dc cross the chunk boundaries, packed batches shrink inside
    and across chunks, and the reverse direction visits the chunks in the other order."""
    monkeypatch.setattr("lstmkit.ops.fused.MIN_CHUNK_ROWS", 1)
    bidirectional, packed, given_hx = form
    ref, fused = _twins(variant, backend, torch.float64, num_layers=2,
                        bidirectional=bidirectional)
    _compare(_run(ref, packed, given_hx, torch.float64, T=13, B=4),
             _run(fused, packed, given_hx, torch.float64, T=13, B=4), ref, fused, 1e-10)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("variant", ["lstm_peephole", "lstm_coupled", "gru_reset_before"])
def test_fused_equals_reference_float32(variant, backend):
    ref, fused = _twins(variant, backend, torch.float32, num_layers=2, bidirectional=True)
    _compare(_run(ref, True, True, torch.float32), _run(fused, True, True, torch.float32),
             ref, fused, 1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fused(backend):
    torch.manual_seed(0)
    for variant in ("lstm_coupled_peephole", "lstm_proj_peephole_nobias", "gru_reset_before"):
        m = VARIANTS[variant](dtype=torch.float64, backend=backend, bidirectional=True)
        x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, m=m: m(x)[0], (x,))


@pytest.mark.parametrize("backend", FUSED)
def test_long_sequence_and_smallest_sizes(backend):
    torch.manual_seed(0)
    ref = lstmkit.LSTM(3, 8, peephole=True, dtype=torch.float64, backend="reference")
    fused = lstmkit.LSTM(3, 8, peephole=True, dtype=torch.float64, backend=backend)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2000, 2, 3, dtype=torch.float64)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), fused(x)
    assert_close(o2, o1, "T=2000 output", 1e-10)
    assert_close(c2, c1, "T=2000 cell state", 1e-10)
    assert_close(h2, h1, "T=2000 final h", 1e-10)
    tiny = lstmkit.GRU(1, 1, backend=backend, dtype=torch.float64)
    ref_tiny = lstmkit.GRU(1, 1, backend="reference", dtype=torch.float64)
    ref_tiny.load_state_dict(tiny.state_dict())
    x1 = torch.randn(1, 1, 1, dtype=torch.float64)
    assert_close(tiny(x1)[0], ref_tiny(x1)[0], "T=1 B=1 H=1", 1e-12)


def test_bfloat16_forward_python_fused():
    torch.manual_seed(0)
    ref = lstmkit.LSTM(I, 16, peephole=True, dtype=torch.float64, backend="reference")
    low = lstmkit.LSTM(I, 16, peephole=True, dtype=torch.bfloat16, backend="fused")
    low.load_state_dict(ref.state_dict())
    x = torch.randn(20, 3, I, dtype=torch.float64)
    out = low(x.to(torch.bfloat16))[0]
    assert out.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: errors of a few 1e-2 over 20 steps are expected.
    assert (out.double() - ref(x)[0]).abs().max() < 5e-2
    with pytest.raises(ValueError, match="fused_cpp.*float32/float64.*bfloat16"):
        lstmkit.LSTM(I, 16, dtype=torch.bfloat16, backend="fused_cpp")(x.to(torch.bfloat16))


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_equals_the_reference(backend):
    """create_graph=True: the fused backward differentiates the reference loop again, so the
    second derivative is the reference's (the refusal this replaced is gone)."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(I, H, backend=backend, dtype=torch.float64)
    ref = lstmkit.LSTM(I, H, backend="reference", dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    second = []
    for net in (m, ref):
        (g,) = torch.autograd.grad(net(x)[0].pow(2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad(g.pow(2).sum(), x)[0])
    torch.testing.assert_close(second[0], second[1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "fused_py", "fused_cpp"])
def test_record_with_every_backend(backend):
    torch.manual_seed(0)
    m = lstmkit.LSTM(I, H, 2, bidirectional=True, coupled=True, backend=backend)
    ref = lstmkit.LSTM(I, H, 2, bidirectional=True, coupled=True, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 3, I)
    with lstmkit.record(m) as rec, lstmkit.record(ref) as rec_ref:
        m(x)
        ref(x)
    assert len(rec.layers) == len(rec_ref.layers) == 4
    for a, b in zip(rec.layers, rec_ref.layers, strict=True):
        assert (a.layer, a.direction) == (b.layer, b.direction)
        assert a.keys() == b.keys() == ["i", "f", "g", "o", "c", "h"]
        for key in a.keys():
            assert_close(a[key], b[key], f"recorded {key}", 1e-5)
        assert_close(a["f"], 1 - a["i"], "coupled f", 0)


def test_dispatch():
    x, padded, packed = torch.randn(6, 2), [3, 3], [2, 2, 1, 1]
    plain, peephole = lstmkit.LSTM(2, 3).cell, lstmkit.LSTM(2, 3, peephole=True).cell
    gru = lstmkit.GRU(2, 3).cell
    select = ops.select_backend
    assert select("reference", plain, x, padded) is ops.reference.run_layer
    assert select("auto", plain, x, padded) is ops.native.run_layer        # torch's oneDNN
    cpp = ops.cpp_kernels(required=True)
    for args, kw in [((plain, x, packed), {}), ((plain, x, padded), {"projected": True}),
                     ((plain, x, padded), {"recording": True}), ((peephole, x, padded), {}),
                     ((gru, x, padded), {}), ((plain, x.double(), padded), {})]:
        assert select("auto", *args, **kw).keywords["kernels"] is cpp, (args, kw)
    assert select("fused", plain, x, padded).keywords["kernels"] is cpp
    assert select("auto", gru, x.to(torch.bfloat16), padded).keywords["kernels"] is ops.loops


@pytest.mark.parametrize("bidirectional", [False, True])
def test_auto_with_torch_kernel_matches_reference(bidirectional):
    torch.manual_seed(0)
    ref = lstmkit.LSTM(I, H, 2, bidirectional=bidirectional, backend="reference")
    auto = lstmkit.LSTM(I, H, 2, bidirectional=bidirectional)
    auto.load_state_dict(ref.state_dict())
    _compare(_run(ref, False, True, torch.float32), _run(auto, False, True, torch.float32),
             ref, auto, 1e-5)


def test_extension_disabled_by_environment(monkeypatch):
    from lstmkit.ops import extension
    monkeypatch.setenv(extension.ENV_DISABLE, "1")
    monkeypatch.setattr(extension, "_states", {})
    assert extension.cpp_kernels(required=False) is None
    with pytest.raises(extension.ExtensionUnavailable, match="LSTMKIT_NO_EXTENSION"):
        extension.cpp_kernels(required=True)
    m = lstmkit.LSTM(I, H)                      # auto falls back to the torch loops
    chosen = ops.select_backend("auto", m.cell, torch.randn(2, I).double(), [2])
    assert chosen.keywords["kernels"] is ops.loops
    m(torch.randn(3, 2, I))


def test_extension_build_failure_warns_once_and_falls_back(monkeypatch):
    from lstmkit.ops import extension
    monkeypatch.delenv(extension.ENV_DISABLE, raising=False)
    monkeypatch.setattr(extension, "_states", {})

    def broken(name):
        raise OSError("no C++ compiler found")
    monkeypatch.setattr(extension, "_build", broken)
    with pytest.warns(RuntimeWarning, match="could not be built.*no C\\+\\+ compiler"):
        assert extension.cpp_kernels(required=False) is None
    assert extension.cpp_kernels(required=False) is None          # no second attempt
    with pytest.raises(extension.ExtensionUnavailable, match="no C\\+\\+ compiler"):
        extension.cpp_kernels(required=True)
