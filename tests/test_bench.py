"""The benchmark (lstmkit.bench): structure of its results on tiny configurations.

No timing limits or speed assertions: only that every number is there and sensible.
"""

from __future__ import annotations

import json

import pytest

from lstmkit import bench, ops
from lstmkit.cli import main

TINY = bench.Config("lstm", 5, 2, 8)


@pytest.fixture(scope="module")
def tiny_result():
    return bench.bench_config(TINY, repeats=1, warmup=1)


def test_result_structure(tiny_result):
    r = tiny_result
    assert r["name"] == "LSTM (5,2,8)" and r["config"]["T"] == 5 and r["rows"] == 10
    extra = {"onednn"} if "onednn" in ops.BACKENDS else set()    # its column, by name
    assert set(r["impls"]) == {"lstmkit", "torch", "reference"} | extra
    for impl in r["impls"].values():
        if impl.get("skipped"):
            continue
        assert len(impl["fwd_ms_runs"]) == len(impl["fb_ms_runs"]) == 1
        assert impl["fwd_ms"] > 0 and impl["fb_ms"] > 0 and impl["peak_mb"] > 0
    assert r["impls"]["torch"]["same_function"] is True
    assert r["gemm"]["ms"] > 0 and r["gemm"]["share"] > 0
    assert all(v > 0 for v in r["ratios"].values())
    json.dumps(r)                                           # JSON-ready


def test_errors_against_float64_reference(tiny_result):
    for name, impl in tiny_result["impls"].items():
        assert impl["max_err"] < 1e-5, name


@pytest.mark.parametrize("cfg", [
    bench.Config("gru", 6, 3, 8, packed=True),
    bench.Config("lstm", 4, 2, 8, proj=4),
    bench.Config("lstm", 4, 2, 8, variant="coupled"),
    bench.Config("rnn", 4, 2, 8),
], ids=lambda c: c.name)
def test_variants_and_packed(cfg):
    r = bench.bench_config(cfg, backend="fused_py", repeats=1, warmup=0, reference=False)
    assert r["impls"]["reference"]["skipped"] and r["ratios"]["lstmkit_over_reference_fb"] is None
    assert r["impls"]["lstmkit"]["max_err"] < 1e-5
    if cfg.variant:                      # torch.nn.LSTM of the same size, not comparable
        assert r["impls"]["torch"]["max_err"] is None
        assert not r["impls"]["torch"]["same_function"]
    else:
        assert r["impls"]["torch"]["max_err"] < 1e-5
    assert "skipped" in bench.format_row(r)


def test_peak_memory_grows_with_sequence_length():
    peaks = []
    for T in (10, 40):
        cfg = bench.Config("lstm", T, 4, 32)
        ours, _ = bench.build_models(cfg, "fused_cpp")
        inp = bench.make_inputs(cfg)
        # a warm-up step: the engine's first use in a process may measure its GEMM routes
        # (ops/gemm.py; a fresh routes file per test session), allocating ~30 MB through
        # torch, which would count as the step's peak when this test runs first
        bench.train_step(ours, inp)
        peaks.append(bench.train_step_peak_mb(ours, inp))
    assert 0 < peaks[0] < peaks[1]


def test_peak_memory_does_not_depend_on_earlier_steps():
    # gradients left by an earlier (profiled) step must not be counted as freed
    cfg = bench.Config("rnn", 12, 3, 16)
    ours, baseline = bench.build_models(cfg, "fused_cpp")
    inp = bench.make_inputs(cfg)
    for module in (ours, baseline):
        first = bench.train_step_peak_mb(module, inp)
        bench.train_step(module, inp)
        assert bench.train_step_peak_mb(module, inp) == pytest.approx(first, rel=0.01)
        assert bench.train_step_peak_mb(module, inp) == pytest.approx(first, rel=0.01)


def test_peak_bytes_is_the_running_maximum():
    assert bench.peak_bytes([(0, 100), (1, 50), (2, -120), (3, 60), (4, -90)]) == 150
    assert bench.peak_bytes([(0, -10)]) == 0


def test_matrix_selection():
    assert len(bench.select_configs()) == len(bench.MATRIX) == 18
    assert 3 <= len(bench.select_configs(quick=True)) <= 4
    assert [c.name for c in bench.select_configs(only="packed")] == [
        "LSTM packed (100,32,256)", "GRU packed (100,32,256)"]
    assert bench.select_configs(only="nothing like this") == []


def test_cli_bench(capsys, monkeypatch, tmp_path):
    assert main(["bench", "--only", "no such config"]) == 2
    assert "no configuration matches" in capsys.readouterr().out
    monkeypatch.setattr(bench, "QUICK", (TINY,))
    path = tmp_path / "out.json"
    assert main(["bench", "--quick", "--repeats", "1", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LSTM (5,2,8)" in text and "gemm share" in text
    data = json.loads(path.read_text())
    assert data["meta"]["threads"] >= 1 and data["meta"]["torch"]
    assert data["results"][0]["impls"]["lstmkit"]["max_err"] < 1e-5


def test_variant_rows_time_each_variant_against_the_plain_lstm():
    from lstmkit import bench_variants as bv
    rows = bv.bench_variants(sizes=((6, 2, 8),), backend="fused_py", repeats=1,
                             only="depth-gated")
    assert [r["variant"] for r in rows] == ["Depth-Gated LSTM (2 layers)"]
    r = rows[0]
    assert r["layers"] == 2 and r["fb_ms"] > 0 and r["plain_fb_ms"] > 0
    assert r["ratio"] == pytest.approx(r["fb_ms"] / r["plain_fb_ms"])
    assert "Depth-Gated" in bv.format_row(r)


def test_scan_rows_time_the_scan_against_its_loop_and_torch_nn(tmp_path, capsys, monkeypatch):
    from lstmkit import bench_scans as bs
    from lstmkit.cli import main
    rows = bs.bench_scans(sizes=((6, 2, 8),), repeats=1, only="mingru")
    assert [(r["cell"], r["kind"]) for r in rows] == [
        ("minGRU", "forward+backward"), ("minGRU", "forward (inference)")]
    for r in rows:
        assert r["scan_ms"] > 0 and r["loop_ms"] > 0 and r["torch_ms"] > 0
        assert r["loop_over_scan"] == pytest.approx(r["loop_ms"] / r["scan_ms"])
        assert r["torch_over_scan"] == pytest.approx(r["torch_ms"] / r["scan_ms"])
        assert r["gemm_ms"] > 0 and r["loop_over_gemm"] == pytest.approx(
            r["loop_ms"] / r["gemm_ms"])
    path = tmp_path / "scans.json"
    monkeypatch.setattr(bs, "SIZES", ((5, 2, 8),))
    assert main(["bench", "--scans", "--only", "minlstm", "--repeats", "1",
                 "--json", str(path)]) == 0
    assert "minLSTM" in capsys.readouterr().out
    assert {r["cell"] for r in json.loads(path.read_text())["scans"]} == {"minLSTM"}


# -- % of peak, memory ratio, inference, extra backends -----------------------------------
@pytest.fixture(scope="module")
def small_peak():
    return bench.sgemm_peak(n=128, repeats=1)


def test_sgemm_peak_is_the_rate_of_its_fastest_run():
    p = bench.sgemm_peak(n=64, repeats=2)
    assert p["n"] == 64 and len(p["ms_runs"]) == 2 and p["ms"] == min(p["ms_runs"])
    assert p["gflop_per_s"] == pytest.approx(2 * 64 ** 3 / (p["ms"] / 1e3) / 1e9)
    assert p["threads"] >= 1
    assert bench.sgemm_peak(n=64, cached=True) is bench.sgemm_peak(n=64, cached=True)
    with pytest.raises(ValueError, match="n >= 1"):
        bench.sgemm_peak(n=0)


def test_percent_of_peak_from_time_and_flops(small_peak):
    cfg = bench.Config("lstm", 5, 2, 8, variant="coupled")
    r = bench.bench_config(cfg, repeats=1, warmup=0, reference=False, peak=small_peak)
    rate = small_peak["gflop_per_s"]
    assert r["sgemm_peak_gflop_per_s"] == rate
    # 3 · 2·T·B·G·H·(I + H): lstmkit's coupled LSTM has G = 3, torch.nn's plain LSTM G = 4
    assert r["impls"]["lstmkit"]["train_gflop"] == pytest.approx(3 * 2 * 10 * 3 * 8 * 16 / 1e9)
    assert r["impls"]["torch"]["train_gflop"] == pytest.approx(3 * 2 * 10 * 4 * 8 * 16 / 1e9)
    for name in ("lstmkit", "torch"):
        impl = r["impls"][name]
        expected = 100 * impl["train_gflop"] / (impl["fb_ms"] / 1e3) / rate
        assert impl["pct_of_peak"] == pytest.approx(expected)
    shown = _cells(bench.format_row(r), bench.columns())
    assert float(shown["lk %pk"].rstrip("%")) == pytest.approx(
        r["impls"]["lstmkit"]["pct_of_peak"], abs=0.51)
    assert float(shown["torch %pk"].rstrip("%")) == pytest.approx(
        r["impls"]["torch"]["pct_of_peak"], abs=0.51)


def _cells(line: str, cols) -> dict[str, str]:
    """A table line cut into its fixed-width columns (two spaces apart)."""
    cells, pos = {}, 0
    for name, width, _ in cols:
        cells[name] = line[pos:pos + width].strip()
        pos += width + 2
    return cells


def test_memory_ratio_column(tiny_result):
    r = tiny_result
    ours, theirs = r["impls"]["lstmkit"], r["impls"]["torch"]
    assert r["ratios"]["lstmkit_over_torch_peak_mb"] == pytest.approx(
        ours["peak_mb"] / theirs["peak_mb"])
    shown = _cells(bench.format_row(r), bench.columns())
    assert float(shown["mem lk/torch"]) == pytest.approx(
        r["ratios"]["lstmkit_over_torch_peak_mb"], abs=0.006)
    assert "mem lk/torch" in bench.format_header()


INFER = [bench.Config("lstm", 5, 2, 8), bench.Config("lstm", 5, 2, 8, variant="peephole"),
         bench.Config("gru", 5, 2, 8), bench.Config("rnn", 4, 3, 8)]


@pytest.mark.parametrize("cfg", INFER, ids=lambda c: c.name)
def test_inference_rows_against_torch_and_onnxruntime(cfg, small_peak):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    r = bench.bench_inference_config(cfg, repeats=2, warmup=0, peak=small_peak)
    assert r["kind"] == "inference" and r["name"] == cfg.name
    impls = r["impls"]
    assert {"lstmkit", "torch", "onnxruntime"} <= set(impls)
    # every implementation's output against the float64 reference loop
    assert impls["lstmkit"]["max_err"] < 1e-5
    assert impls["onnxruntime"]["max_err"] < 1e-5
    if cfg.variant:
        assert impls["torch"]["max_err"] is None and not impls["torch"]["same_function"]
    else:
        assert impls["torch"]["max_err"] < 1e-5
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.cell]
    gflop = 2 * cfg.T * cfg.B * G * cfg.H * 2 * cfg.H / 1e9
    assert r["infer_gflop"] == pytest.approx(gflop)
    for name in ("lstmkit", "torch", "onnxruntime"):
        impl = impls[name]
        assert len(impl["fwd_ms_runs"]) == 2 and impl["fwd_ms"] > 0
        assert impl["pct_of_peak"] == pytest.approx(
            100 * impl["infer_gflop"] / (impl["fwd_ms"] / 1e3) / small_peak["gflop_per_s"])
    assert r["ratios"]["lstmkit_over_onnxruntime"] == pytest.approx(
        impls["lstmkit"]["fwd_ms"] / impls["onnxruntime"]["fwd_ms"])
    assert r["ratios"]["lstmkit_over_torch"] == pytest.approx(
        impls["lstmkit"]["fwd_ms"] / impls["torch"]["fwd_ms"])
    line = bench.format_row(r)
    assert line.startswith(cfg.name) and f"{impls['onnxruntime']['fwd_ms']:.2f}" in line
    json.dumps(r)


def test_inference_without_an_onnx_operator_skips_onnxruntime(small_peak):
    pytest.importorskip("onnxruntime")
    cfg = bench.Config("lstm", 4, 2, 8, proj=4)
    r = bench.bench_inference_config(cfg, repeats=1, warmup=0, peak=small_peak)
    assert r["impls"]["onnxruntime"]["skipped"]
    assert "proj" in r["impls"]["onnxruntime"]["reason"]
    assert r["ratios"]["lstmkit_over_onnxruntime"] is None
    assert r["impls"]["lstmkit"]["max_err"] < 1e-5
    assert "skipped" in bench.format_row(r)


def test_inference_refuses_packed_input():
    with pytest.raises(ValueError, match="padded"):
        bench.bench_inference_config(bench.Config("gru", 4, 2, 8, packed=True), repeats=1)


def test_an_extra_backend_becomes_a_column(monkeypatch, small_peak):
    # "onednn" is not in this lstmkit: pretend it is (the name passes check_backend and then
    # runs the fused path), and see it timed, checked and printed by name
    from lstmkit import ops
    monkeypatch.setattr(ops, "BACKENDS", (*ops.BACKENDS, "onednn"))
    assert bench.extra_backends() == ["onednn"]
    r = bench.bench_config(TINY, repeats=1, warmup=0, reference=False, peak=small_peak)
    e = r["impls"]["onednn"]
    assert "backend='onednn'" in e["module"] and e["max_err"] < 1e-5 and e["fb_ms"] > 0
    assert r["ratios"]["onednn_over_torch_fb"] == pytest.approx(
        e["fb_ms"] / r["impls"]["torch"]["fb_ms"])
    assert "onednn f+b ms" in bench.format_header() and "onednn/torch" in bench.format_header()
    assert f"{e['fb_ms']:.2f}" in bench.format_row(r)
    ri = bench.bench_inference_config(TINY, repeats=1, warmup=0, peak=small_peak)
    assert ri["impls"]["onednn"]["max_err"] < 1e-5 and "onednn ms" in bench.format_header(True)


def test_an_extra_backend_that_cannot_run_a_row_is_skipped(monkeypatch, small_peak):
    from lstmkit import ops
    monkeypatch.setattr(ops, "BACKENDS", (*ops.BACKENDS, "onednn"))
    select = ops.select_backend

    def no_onednn(backend, *args, **kwargs):
        if backend == "onednn":
            raise ValueError("backend 'onednn' has no RNN with relu")
        return select(backend, *args, **kwargs)
    monkeypatch.setattr(ops, "select_backend", no_onednn)
    r = bench.bench_config(bench.Config("rnn", 4, 2, 8), repeats=1, warmup=0, reference=False,
                           peak=small_peak)
    assert r["impls"]["onednn"]["skipped"] and "relu" in r["impls"]["onednn"]["reason"]
    assert r["ratios"]["onednn_over_torch_fb"] is None
    assert "skipped" in bench.format_row(r)


def test_cli_bench_inference(capsys, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(bench, "INFERENCE_QUICK", (TINY,))
    monkeypatch.setattr(bench, "PEAK_N", 128)
    assert main(["bench", "--inference", "--only", "nothing", "--quick"]) == 2
    assert "LSTM (5,2,8)" in capsys.readouterr().out
    path = tmp_path / "inf.json"
    assert main(["bench", "--inference", "--quick", "--repeats", "1", "--json",
                 str(path)]) == 0
    text = capsys.readouterr().out
    assert "ort ms" in text and "sgemm peak (128³" in text and "LSTM (5,2,8)" in text
    data = json.loads(path.read_text())
    assert data["meta"]["kind"] == "inference" and data["meta"]["sgemm_peak"]["n"] == 128
    assert data["meta"]["sgemm_peak_after"]["gflop_per_s"] > 0
    row = data["results"][0]
    assert row["impls"]["onnxruntime"]["max_err"] < 1e-5


def test_cpu_clock(small_peak):
    with pytest.raises(ValueError, match="clock must be one of"):
        with bench.using_clock("sundial"):
            pass
    data = bench.run_benchmark([TINY], repeats=1, reference=False, peak=small_peak,
                               clock="cpu")
    assert data["meta"]["clock"] == "cpu" and "cpu clock" in bench.format_meta(data["meta"])
    assert data["results"][0]["impls"]["lstmkit"]["fb_ms"] > 0
    assert bench._clock["name"] == "wall"                   # restored afterwards


def test_short_calls_are_repeated_within_a_run(monkeypatch):
    """A call shorter than MIN_RUN_MS is made several times per timed run and the run
    reports the mean per call; a long call is made once. Timed with a fake clock that
    advances 0.5 ms per call of the fast function and 20 ms per call of the slow one."""
    now = [0.0]
    monkeypatch.setitem(bench.CLOCKS, "wall", lambda: now[0])
    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1
        now[0] += 0.0005

    def slow():
        counts["slow"] += 1
        now[0] += 0.020
    assert bench.calls_per_run(fast) == 10 and bench.calls_per_run(slow) == 1
    counts.update(fast=0, slow=0)
    times = bench.measure_times({"a": {"fwd": fast}, "b": {"fwd": slow}}, repeats=3, warmup=1)
    assert times["a"]["fwd"] == pytest.approx([0.5] * 3)
    assert times["b"]["fwd"] == pytest.approx([20.0] * 3)
    # warm-up, the calibrating run (an untimed call, then one), then 3 runs of an untimed
    # call and 10 calls (fast) or one call (slow)
    assert counts == {"fast": 1 + 2 + 3 * 11, "slow": 1 + 2 + 3 * 2}
