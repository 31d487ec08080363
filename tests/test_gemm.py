"""The engine's GEMMs (lstmkit/ops/gemm.py, csrc/common.h): brgemm against torch's matmul,
the MKL switch, and a layer on each path against the float64 reference loop."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lstmkit
from lstmkit.ops import cpp_kernels, gemm

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def engine():
    kernels = cpp_kernels(required=False)
    if kernels is None:
        pytest.skip("the C++ extension is unavailable")
    return kernels.module


@pytest.mark.parametrize("shape", [(5, 7, 9), (130, 300, 520), (3, 2500, 70)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_mm_into_equals_matmul(engine, shape, ta, tb):
    M, K, N = shape
    g = torch.Generator().manual_seed(M + K + N)
    a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    A = a.t().contiguous().t() if ta else a                      # column-major views
    B = b.t().contiguous().t() if tb else b
    expected = (a.double() @ b.double())
    out = torch.full((M, N), 7.0)
    engine.mm_into(out, A, B, False)
    tol = 2e-6 * K ** 0.5 * expected.abs().max().item()
    assert (out.double() - expected).abs().max().item() < tol
    engine.mm_into(out, A, B, True)                              # accumulate
    assert (out.double() - 2 * expected).abs().max().item() < 2 * tol


def test_mm_into_writes_into_a_row_block(engine):
    out = torch.zeros(10, 6)
    a, b = torch.randn(4, 3), torch.randn(3, 6)
    engine.mm_into(out[3:7], a, b, False)
    assert torch.allclose(out[3:7], a @ b, atol=1e-5)
    assert out[:3].abs().sum() == 0 and out[7:].abs().sum() == 0


def test_mm_into_checks(engine):
    with pytest.raises(RuntimeError, match="float32"):
        engine.mm_into(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2),
                       torch.zeros(2, 2), False)
    with pytest.raises(RuntimeError, match="shapes"):
        engine.mm_into(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, 2), False)
    with pytest.raises(RuntimeError, match="row- or column-major"):
        engine.mm_into(torch.zeros(2, 2), torch.zeros(4, 4)[::2, ::2], torch.zeros(2, 2), False)


def test_matmul_into_takes_torch_outside_a_layer_or_for_float64(engine, monkeypatch):
    monkeypatch.setenv("LSTMKIT_GEMM", "brgemm")                # the engine's path in a layer
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    out = torch.empty(3, 5, dtype=torch.float64)
    with gemm.using_engine(engine):                              # float64: torch
        gemm.matmul_into(out, a, b)
    assert torch.equal(out, a @ b)
    x, w, bias = torch.randn(6, 4), torch.randn(8, 4), torch.randn(8)
    torch.testing.assert_close(gemm.addmm(bias, x, w.t()), torch.addmm(bias, x, w.t()))
    with gemm.using_engine(engine):
        torch.testing.assert_close(gemm.addmm(bias, x, w.t()), torch.addmm(bias, x, w.t()))
        torch.testing.assert_close(gemm.addmm(None, x, w.t()), x @ w.t())


def test_a_bad_lstmkit_gemm_value_is_refused(engine, monkeypatch):
    monkeypatch.setenv("LSTMKIT_GEMM", "fastest")
    m = lstmkit.LSTM(8, 8, backend="fused_cpp")
    with pytest.raises(RuntimeError, match="LSTMKIT_GEMM must be auto, blas or brgemm"):
        m(torch.randn(3, 2, 8))


@pytest.mark.parametrize("mode", ["blas", "brgemm"])
@pytest.mark.parametrize("make", [
    lambda: lstmkit.LSTM(24, 40, proj_size=16, backend="fused_cpp"),
    lambda: lstmkit.GRU(24, 40, bidirectional=True, backend="fused_cpp"),
    lambda: lstmkit.LSTM(24, 40, num_layers=2, peephole=True, backend="fused_cpp"),
], ids=["lstm-proj", "gru-bi", "lstm-peephole-2"])
def test_both_gemm_paths_match_the_float64_reference(engine, monkeypatch, mode, make):
    monkeypatch.setenv("LSTMKIT_GEMM", mode)
    torch.manual_seed(0)
    m = make()
    ref = copy.deepcopy(m).double()
    ref.backend = "reference"
    x = torch.randn(30, 33, 24, requires_grad=True)             # 990 rows: several chunks
    y = m(x)[0]
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    xr = x.detach().double().requires_grad_()
    yr = ref(xr)[0]
    (yr * torch.linspace(-1, 1, yr.shape[-1], dtype=torch.float64)).sum().backward()
    assert (y.double() - yr).abs().max() < 1e-5
    assert (x.grad.double() - xr.grad).abs().max() < 1e-5
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert (p.grad.double() - q.grad).abs().max() < 1e-4, name


@pytest.mark.parametrize("mode", ["blas", "brgemm"])
def test_addmm_of_one_row_leaves_the_bias_alone(engine, monkeypatch, mode):
    """A one-row input once made ``bias.expand(1, n).contiguous()`` — the bias itself — the
    output, so the GEMM accumulated into the parameter (GRU's b_ih at T = B = 1)."""
    monkeypatch.setenv("LSTMKIT_GEMM", mode)
    x, w, bias = torch.randn(1, 4), torch.randn(8, 4), torch.randn(8)
    before = bias.clone()
    with gemm.using_engine(engine):
        out = gemm.addmm(bias, x, w.t())
    torch.testing.assert_close(out, torch.addmm(before, x, w.t()))
    assert torch.equal(bias, before)


@pytest.mark.parametrize("make", [lambda: lstmkit.GRU(16, 8, backend="fused_cpp"),
                                  lambda: lstmkit.LSTM(16, 8, backend="fused_cpp"),
                                  lambda: lstmkit.RNN(16, 8, backend="fused_cpp")],
                         ids=["gru", "lstm", "rnn"])
@pytest.mark.parametrize("mode", ["blas", "brgemm"])
def test_one_row_calls_repeat_and_keep_the_parameters(engine, monkeypatch, make, mode):
    """T = B = 1, called three times: the same output each time, equal to the float64
    reference, and no parameter changed."""
    monkeypatch.setenv("LSTMKIT_GEMM", mode)
    torch.manual_seed(0)
    m = make()
    saved = copy.deepcopy(m.state_dict())
    ref = copy.deepcopy(m).double()
    ref.backend = "reference"
    x = torch.randn(1, 1, 16)
    want = ref(x.double())[0]
    for _ in range(3):
        assert (m(x)[0].double() - want).abs().max() < 1e-6
    for name, value in m.state_dict().items():
        assert torch.equal(value, saved[name]), name


# -- the measured routes (LSTMKIT_GEMM=auto) ---------------------------------------------
def _standin(engine, folder, monkeypatch):
    """The engine's functions under a stand-in module whose file lies in ``folder``: its
    routes file is then ``folder/gemm-routes.json`` (the session's override unset)."""
    monkeypatch.delenv(gemm.ROUTES_ENV, raising=False)
    import types
    return types.SimpleNamespace(__file__=str(folder / "engine.so"), mm_into=engine.mm_into,
                                 gemm_probe=engine.gemm_probe,
                                 set_gemm_routes=engine.set_gemm_routes)


@pytest.mark.parametrize("brgemm", [True, False])
def test_gemm_probe_times_the_product(engine, brgemm):
    import time
    t0 = time.perf_counter()
    seconds = engine.gemm_probe(brgemm, 16, 64, 32, True, 200)
    outside = time.perf_counter() - t0
    assert 0 < seconds and 200 * seconds <= outside         # seconds per call, not in total
    with pytest.raises(RuntimeError, match="must be positive"):
        engine.gemm_probe(brgemm, 0, 64, 32, True, 5)
    # a product a row-parallel step runs in parts (step_class 3 with two threads): timed in
    # parts, one per thread, still per call
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t0 = time.perf_counter()
        seconds = engine.gemm_probe(brgemm, 16, 512, 128, True, 100)
        outside = time.perf_counter() - t0
        assert engine.step_class(16, 512, 128) == 3
        assert 0 < seconds and 100 * seconds <= outside
    finally:
        torch.set_num_threads(before)


def test_set_gemm_routes_round_trips(engine):
    before = engine.gemm_routes()
    try:
        engine.set_gemm_routes([False, True, False, True])
        assert engine.gemm_routes() == [False, True, False, True]
        engine.set_gemm_routes([True, False, True, False])
        assert engine.gemm_routes() == [True, False, True, False]
        with pytest.raises(RuntimeError, match="one route per size class"):
            engine.set_gemm_routes([True, False, True])
    finally:
        engine.set_gemm_routes(before)


def test_calibration_is_stored_and_read_back(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(gemm, "ROUNDS", 1)
    monkeypatch.setattr(gemm, "_routes", {})
    module = _standin(engine, tmp_path, monkeypatch)
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    found = gemm.routes(module)
    assert torch.equal(torch.get_rng_state(), rng)               # global RNG untouched
    assert torch.get_num_threads() == threads
    assert found["threads"] == threads
    for c in gemm.CLASSES:
        assert found[c] == ("brgemm" if found["ratios"][c] < gemm.BRGEMM_MARGIN else "blas")
        assert found["ratios"][c] > 0
    stored = json.loads((tmp_path / gemm.ROUTES_FILE).read_text())
    assert stored[gemm._entry(threads)] == found
    assert gemm._entry(threads).endswith(f"/{threads}")
    # another process (here: the in-process memo forgotten) reads the file, measures nothing
    gemm._routes.clear()
    monkeypatch.setattr(gemm, "calibrate", lambda *a, **k: pytest.fail("measured again"))
    assert gemm.routes(module) == found


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "old", ""])
def test_a_corrupt_routes_file_is_measured_again_and_replaced(engine, tmp_path, monkeypatch,
                                                              content):
    monkeypatch.setattr(gemm, "ROUNDS", 1)
    monkeypatch.setattr(gemm, "_routes", {})
    if content == "old":                                       # an older format's entry
        content = json.dumps({gemm._entry(2): {"format": 1, "step_split": "blas"}})
    (tmp_path / gemm.ROUTES_FILE).write_text(content)
    found = gemm.routes(_standin(engine, tmp_path, monkeypatch), threads=2)
    assert found["threads"] == 2 and all(found[c] in ("brgemm", "blas") for c in gemm.CLASSES)
    assert json.loads((tmp_path / gemm.ROUTES_FILE).read_text())[gemm._entry(2)] == found


def test_an_unwritable_folder_keeps_the_routes_in_memory(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(gemm, "ROUNDS", 1)
    monkeypatch.setattr(gemm, "_routes", {})
    (tmp_path / "file").write_text("")                         # a file where a folder should be
    module = _standin(engine, tmp_path / "file", monkeypatch)
    found = gemm.routes(module)
    assert (tmp_path / "file").read_text() == ""
    assert gemm.routes(module) is found


def test_the_routes_file_can_be_named_by_the_environment(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(gemm, "ROUNDS", 1)
    monkeypatch.setattr(gemm, "_routes", {})
    module = _standin(engine, tmp_path / "build", monkeypatch)
    monkeypatch.setenv(gemm.ROUTES_ENV, str(tmp_path / "mine.json"))
    assert gemm.routes_file(module) == tmp_path / "mine.json"
    found = gemm.routes(module, threads=1)
    assert json.loads((tmp_path / "mine.json").read_text())[gemm._entry(1)] == found
    assert not (tmp_path / "build").exists()


def test_a_new_calibration_reaches_the_engine(engine, tmp_path, monkeypatch):
    """calibrate(save=True) replaces the routes in use: the next layer call gives the
    engine the new ones."""
    monkeypatch.delenv("LSTMKIT_GEMM", raising=False)
    monkeypatch.setenv(gemm.ROUTES_ENV, str(tmp_path / "routes.json"))
    threads = torch.get_num_threads()
    key = (gemm._key(engine), threads)
    monkeypatch.setattr(gemm, "_routes", {key: {"format": gemm.FORMAT, "threads": threads,
                                                **dict.fromkeys(gemm.CLASSES, "blas")}})
    monkeypatch.setattr(gemm, "_step_ratio", lambda module, shapes: 0.5)   # brgemm "wins"
    monkeypatch.setattr(gemm, "_large_ratio", lambda module, transposed: 2.0)
    before = engine.gemm_routes()
    try:
        with gemm.using_engine(engine):
            assert engine.gemm_routes() == [False] * 4
        gemm.calibrate(engine, save=True)
        with gemm.using_engine(engine):
            assert engine.gemm_routes() == [True] * 4
            assert gemm._engine(torch.zeros(2, 2)) is None          # large GEMMs: MKL
            assert gemm._engine(torch.zeros(2, 2), transposed=True) is None
    finally:
        engine.set_gemm_routes(before)


def test_the_step_classes_agree_with_the_engine(engine):
    """Every shape calibrated for a per-step class falls in that class of the C++ loop, with
    two threads; with one, nothing runs in parts of rows: the "parts" shapes are small or
    large products then."""
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            if torch.get_num_threads() != threads:
                continue
            for index, name in enumerate(gemm.STEP_CLASSES):
                for m, n, k, _ in gemm.STEP_SHAPES[name]:
                    got = engine.step_class(m, n, k)
                    if name == "step_parts" and threads == 1:
                        assert got in (1, 2), (name, m, n, k)
                    else:
                        assert got == index, (threads, name, m, n, k)
            # the class follows the loop's row_parts: 4 rows per thread, weights <= 2^18
            assert engine.step_class(8, 512, 128) == (3 if threads == 2 else 1)
            assert engine.step_class(6, 512, 128) == 1
            assert engine.step_class(64, 2048, 512) == 2
    finally:
        torch.set_num_threads(before)


def test_a_near_tie_is_measured_again_and_the_median_counts(monkeypatch):
    ratios = iter([0.9, 1.2, 0.7])
    assert gemm._measured(lambda: next(ratios)) == 0.9
    ratios = iter([0.5, 2.0])
    assert gemm._measured(lambda: next(ratios)) == 0.5                 # far from the margin


def test_calibration_runs_real_tensors_under_fake_tensor_mode(engine, tmp_path, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setattr(gemm, "ROUNDS", 1)
    with FakeTensorMode():
        found = gemm.calibrate(_standin(engine, tmp_path, monkeypatch), threads=1)
    assert all(found[c] in ("brgemm", "blas") for c in gemm.CLASSES)


# routes of gemm.CLASSES: step_tiny, step_small, step_large, step_parts, large, large_t
ROUTE_SETS = [("brgemm",) * 6, ("blas",) * 6, ("brgemm", "blas", "blas", "blas", "blas", "blas"),
              ("blas", "brgemm", "blas", "blas", "brgemm", "blas"),
              ("blas", "blas", "brgemm", "blas", "blas", "brgemm"),
              ("blas", "blas", "blas", "brgemm", "blas", "blas"),
              ("brgemm", "brgemm", "brgemm", "blas", "brgemm", "blas")]


@pytest.mark.parametrize("chosen", ROUTE_SETS, ids="-".join)
def test_each_measured_route_set_runs_and_matches_the_float64_reference(engine, monkeypatch,
                                                                        chosen):
    """With LSTMKIT_GEMM unset, a layer runs the routes stored for the machine: the engine
    is given the per-step ones, the large GEMMs go to the engine only on brgemm, and the
    result matches the float64 reference either way."""
    monkeypatch.delenv("LSTMKIT_GEMM", raising=False)
    threads = torch.get_num_threads()
    entry = {"format": gemm.FORMAT, "threads": threads, **dict(zip(gemm.CLASSES, chosen))}
    monkeypatch.setattr(gemm, "_routes", {(gemm._key(engine), threads): entry})
    before = engine.gemm_routes()
    try:
        with gemm.using_engine(engine):
            assert engine.gemm_routes() == [c == "brgemm" for c in chosen[:4]]
            assert (gemm._engine(torch.zeros(2, 2)) is engine) == (chosen[4] == "brgemm")
            assert ((gemm._engine(torch.zeros(2, 2), transposed=True) is engine)
                    == (chosen[5] == "brgemm"))
        # per-step products of each size class: (B, H) = (2, 16) tiny, (5, 128) small,
        # (8, 512) large (4H·H·B multiply-adds against 2¹⁸ and 2²²; W_hh over 2¹⁸ floats),
        # (33, 64) in parts of rows with two threads (small without)
        for B, H in ((2, 16), (5, 128), (8, 512), (33, 64)):
            torch.manual_seed(0)
            m = lstmkit.LSTM(24, H, num_layers=2, peephole=True, backend="fused_cpp")
            ref = copy.deepcopy(m).double()
            ref.backend = "reference"
            x = torch.randn(6, B, 24, requires_grad=True)
            y = m(x)[0]
            y.sum().backward()
            xr = x.detach().double().requires_grad_()
            yr = ref(xr)[0]
            yr.sum().backward()
            pairs = [("output", y, yr), ("input grad", x.grad, xr.grad)] + [
                (name, p.grad, q.grad) for (name, p), q in zip(m.named_parameters(),
                                                                ref.parameters())]
            for name, got, want in pairs:
                scale = max(1.0, want.abs().max().item())
                assert (got.double() - want).abs().max() < 2e-6 * scale, (B, H, name)
    finally:
        engine.set_gemm_routes(before)


@pytest.mark.parametrize("mode", ["blas", "brgemm"])
@pytest.mark.parametrize("B,H,I", [(2, 150, 11), (9, 93, 20), (2, 520, 8)],
                         ids=["ragged-panels", "ragged-split", "k-blocks"])
def test_per_step_products_in_panels_match_the_float64_reference(engine, monkeypatch, mode, B,
                                                                 H, I):
    """The per-step products with W_hh packed in column panels: at H = 150 (B = 2, on one
    thread) and H = 93 (B = 9: 311k multiply-adds, shared out over the threads from 2¹⁸ on)
    the last panel is narrower than the others, forward (4H columns) and backward (H);
    H = 520 has K = 4H = 2080 > 2048 in the backward's dA·W_hh (two K blocks). Outputs and
    every gradient against the float64 reference loop."""
    monkeypatch.setenv("LSTMKIT_GEMM", mode)
    torch.manual_seed(1)
    m = lstmkit.LSTM(I, H, peephole=True, backend="fused_cpp")
    ref = copy.deepcopy(m).double()
    ref.backend = "reference"
    x = torch.randn(4, B, I, requires_grad=True)
    y = m(x)[0]
    weight = torch.linspace(-1, 1, H)
    (y * weight).sum().backward()
    xr = x.detach().double().requires_grad_()
    yr = ref(xr)[0]
    (yr * weight.double()).sum().backward()
    pairs = [("output", y, yr), ("input grad", x.grad, xr.grad)] + [
        (name, p.grad, q.grad) for (name, p), q in zip(m.named_parameters(), ref.parameters())]
    for name, got, want in pairs:
        scale = max(1.0, want.abs().max().item())
        assert (got.double() - want).abs().max() < 5e-6 * scale, name
