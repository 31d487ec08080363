"""The benchmark (lstmkit.bench): structure of its results on tiny configurations.

No timing limits or speed assertions: only that every number is there and sensible.
"""

from __future__ import annotations

import json

import pytest

from lstmkit import bench
from lstmkit.cli import main

TINY = bench.Config("lstm", 5, 2, 8)


@pytest.fixture(scope="module")
def tiny_result():
    return bench.bench_config(TINY, repeats=1, warmup=1)


def test_result_structure(tiny_result):
    r = tiny_result
    assert r["name"] == "LSTM (5,2,8)" and r["config"]["T"] == 5 and r["rows"] == 10
    assert set(r["impls"]) == {"lstmkit", "torch", "reference"}
    for impl in r["impls"].values():
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
    assert len(bench.select_configs()) == len(bench.MATRIX) == 16
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
