"""`lstmkit forecast | predict`: data checks, no look-ahead, scores, saved runs."""

from __future__ import annotations

import csv
import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from lstmkit.cli import main
from lstmkit.data import packaged
from lstmkit.data.series import (
    SeriesError,
    backtest_origins,
    builtin_series,
    mase_scale,
    read_csv_series,
    scores,
    seasonal_naive_forecast,
    windows,
)
from lstmkit.train import TrainingInterrupted
from lstmkit.train.forecast import (
    ForecastConfig,
    Forecaster,
    ForecastTrainer,
    forecast_from,
    predict,
    prepare,
)
from lstmkit.viz.runs import with_plots


def series_values(n: int = 120, seed: int = 0) -> np.ndarray:
    """A positive seasonal series with trend and noise, period 12."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 0.3 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)


def write_csv(path, values, *, feature=None, header=("month", "sales", "promo")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header[:2] + ((header[2],) if feature is not None else ()))
        for k, v in enumerate(values):
            row = [f"{2000 + k // 12}-{k % 12 + 1:02d}", v]
            w.writerow(row + ([feature[k]] if feature is not None else []))
    return path


@pytest.fixture
def sales_csv(tmp_path):
    return write_csv(tmp_path / "sales.csv", series_values())


def small(csv_path, **kw) -> ForecastConfig:
    base = dict(csv=str(csv_path), target="sales", time="month", season=12, horizon=6,
                lookback=12, backtest=6, hidden=8, steps=12, batch=8, warmup=2,
                eval_every=4, log_every=4, quiet=True)
    return ForecastConfig(**{**base, **kw})


# -- windows, split, scaling: no look-ahead ---------------------------------------------
def test_windows_hold_only_the_past_as_input():
    values = np.arange(40.0).reshape(20, 2)
    x, y = windows(values, [5, 9], lookback=3, horizon=4)
    np.testing.assert_array_equal(x[0], values[2:5])
    np.testing.assert_array_equal(y[1], values[9:13, 0])
    assert (x[:, :, 0].max(axis=1) < y[:, 0]).all()        # increasing: past < future


def test_split_keeps_every_training_and_validation_target_before_the_backtest():
    sp = backtest_origins(120, lookback=12, horizon=6, origins=6, stride=1, val_windows=6)
    assert sp.backtest == tuple(range(109, 115)) and sp.backtest[-1] + 6 == 120
    assert max(sp.train_origins) + 6 <= sp.val_start            # train targets < val targets
    assert max(sp.val_origins) + 6 <= sp.train_end               # val targets < backtest
    assert min(sp.train_origins) == 12


def test_scaler_sees_only_the_training_part(sales_csv):
    cfg = small(sales_csv).resolved(read_csv_series(sales_csv, "sales", time="month"))
    series = read_csv_series(sales_csv, "sales", time="month")
    data = prepare(series, cfg)
    head = series.values[:data.split.train_end, 0]
    assert data.scaler.mean[0] == pytest.approx(head.mean())
    assert data.scaler.std[0] == pytest.approx(head.std())


def test_changing_the_future_changes_nothing_learned(tmp_path):
    """Leakage check: values after the first backtest origin are rewritten; the trained
    weights, the scaler and every backtest forecast from an origin before the change must
    be identical."""
    values = series_values()
    a = write_csv(tmp_path / "a.csv", values)
    cfg = small(a)
    sp = backtest_origins(len(values), 12, 6, 6, 1, 6)
    changed = values.copy()
    changed[sp.backtest[2]:] *= 3.0                          # the future of the 3rd origin
    b = write_csv(tmp_path / "b.csv", changed)
    ra = ForecastTrainer(cfg, tmp_path / "ra").fit()
    tb = ForecastTrainer(small(b), tmp_path / "rb")
    rb = tb.fit()
    wa = torch.load(tmp_path / "ra/checkpoints/best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "rb/checkpoints/best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra.best_step == rb.best_step
    ba = np.loadtxt(tmp_path / "ra/backtest.csv", delimiter=",", skiprows=1, usecols=(1, 4))
    bb = np.loadtxt(tmp_path / "rb/backtest.csv", delimiter=",", skiprows=1, usecols=(1, 4))
    np.testing.assert_array_equal(ba[:2 * 6], bb[:2 * 6])     # origins 0 and 1: same inputs
    assert not np.array_equal(ba[3 * 6:], bb[3 * 6:])        # later origins see the change


def test_forecast_uses_nothing_at_or_after_its_origin(sales_csv):
    series = read_csv_series(sales_csv, "sales", time="month")
    cfg = small(sales_csv).resolved(series)
    data = prepare(series, cfg)
    torch.manual_seed(0)
    model = Forecaster(1, cfg)
    o = data.split.backtest[0]
    before = forecast_from(model, data.values, data.scaler, [o], cfg)
    poked = data.values.copy()
    poked[o:] = 1e3
    after = forecast_from(model, poked, data.scaler, [o], cfg)
    np.testing.assert_array_equal(before, after)


# -- scores and baselines, by hand --------------------------------------------------------
def test_scores_by_hand():
    y, yhat = np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 3.0])
    s = scores(y, yhat, scale=0.5)
    assert s["mae"] == pytest.approx(2 / 3)
    assert s["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert s["smape"] == pytest.approx((200 * 1 / 3 + 0 + 200 * 1 / 7) / 3)
    assert s["mase"] == pytest.approx((2 / 3) / 0.5)


def test_mase_scale_and_seasonal_naive_by_hand():
    history = np.array([1.0, 5, 2, 6, 3, 7])
    assert mase_scale(history, 2) == pytest.approx(1.0)          # |2−1|, |6−5|, |3−2|, |7−6|
    assert mase_scale(history, 1) == pytest.approx((4 + 3 + 4 + 3 + 4) / 5)
    np.testing.assert_array_equal(seasonal_naive_forecast(history, 5, 2), [3, 7, 3, 7, 3])
    with pytest.raises(SeriesError, match="MASE is undefined"):
        mase_scale(np.ones(10), 1)


def test_builtin_series_are_the_published_values():
    air = builtin_series("airline")                 # Box & Jenkins series G
    assert len(air) == 144 and air.season == 12
    np.testing.assert_array_equal(air.target[:4], [112, 118, 132, 129])
    assert air.target[-1] == 432 and air.times[0] == "1949-01"
    sun = builtin_series("sunspots")
    assert len(sun) == 309 and sun.times[0] == "1700" and sun.target[0] == 5


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(packaged.DatasetUnavailable, match=r"lstmkit\[datasets\]"):
        builtin_series("airline")


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell, message", [
    ("", "missing value in column 'sales' at data row 3"),
    ("NA", "missing value in column 'sales' at data row 3"),
    ("abc", "column 'sales' is not numeric: 'abc' at data row 3"),
    ("inf", "non-finite value"),
])
def test_bad_cells_are_named(tmp_path, cell, message):
    values = [str(v) for v in series_values(40)]
    values[2] = cell
    path = tmp_path / "bad.csv"
    path.write_text("month,sales\n" + "".join(f"m{k},{v}\n" for k, v in enumerate(values)))
    with pytest.raises(SeriesError, match=message):
        read_csv_series(path, "sales")


def test_unknown_columns_list_the_columns(sales_csv):
    with pytest.raises(SeriesError, match=r"no column 'price'.*'month', 'sales'"):
        read_csv_series(sales_csv, "price")


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(SeriesError, match="not found"):
        read_csv_series(tmp_path / "nope.csv", "y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SeriesError, match="empty"):
        read_csv_series(tmp_path / "empty.csv", "y")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(SeriesError, match="not a UTF-8"):
        read_csv_series(tmp_path / "bin.csv", "y")
    (tmp_path / "head.csv").write_text("y\n")
    with pytest.raises(SeriesError, match="no data rows"):
        read_csv_series(tmp_path / "head.csv", "y")


def test_too_short_series_says_what_it_needs(tmp_path):
    path = write_csv(tmp_path / "short.csv", series_values(30))
    with pytest.raises(SeriesError, match="too short: 30 values.*need at least"):
        ForecastTrainer(small(path), tmp_path / "run")


def test_log_needs_a_positive_target(tmp_path):
    path = write_csv(tmp_path / "neg.csv", series_values() - 100)
    with pytest.raises(SeriesError, match="--log needs a positive target"):
        ForecastTrainer(small(path, log=True), tmp_path / "run")


# -- runs ----------------------------------------------------------------------------------
def test_saved_run_reloads_and_predicts_the_same_numbers(sales_csv, tmp_path):
    result = with_plots(ForecastTrainer(small(sales_csv), tmp_path / "run")).fit()
    again, labels = predict(tmp_path / "run")
    np.testing.assert_array_equal(again, result.forecast)
    from_file, _ = predict(tmp_path / "run", sales_csv)
    np.testing.assert_array_equal(from_file, result.forecast)
    assert labels[0] == "2010-01" and len(labels) == 6
    saved = np.loadtxt(tmp_path / "run/forecast.csv", delimiter=",", skiprows=1, usecols=2)
    np.testing.assert_allclose(saved, result.forecast, rtol=1e-12)
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert set(report["scores"]) == {"LSTM", "naive", "seasonal_naive"}
    for name in ("report.md", "backtest.csv", "forecast.png", "loss.png", "metrics.jsonl"):
        assert (tmp_path / "run" / name).is_file()


def test_features_are_inputs(tmp_path):
    values = series_values()
    promo = np.random.default_rng(1).integers(0, 2, len(values)).astype(float)
    path = write_csv(tmp_path / "f.csv", values, feature=promo)
    cfg = small(path, features=["promo"])
    trainer = ForecastTrainer(cfg, tmp_path / "run")
    assert trainer.x_train.shape[2] == 2
    assert trainer.model.rnn.input_size == 2


def test_interrupted_run_resumes_bit_for_bit(sales_csv, tmp_path):
    whole = ForecastTrainer(small(sales_csv), tmp_path / "whole")
    whole.fit()
    part = ForecastTrainer(small(sales_csv), tmp_path / "part")
    original = part._train_step

    def train_step():
        result = original()
        if part.step == 5:
            os.kill(os.getpid(), signal.SIGINT)            # a real Ctrl-C
        return result
    part._train_step = train_step
    with pytest.raises(TrainingInterrupted, match="lstmkit forecast --resume"):
        part.fit()
    resumed = ForecastTrainer(small(sales_csv), tmp_path / "part", resume=True)
    assert resumed.step in (5, 6)
    resumed.fit()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_forecast_and_predict(sales_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["forecast", "--csv", str(sales_csv), "--target", "sales", "--time", "month",
                 "--season", "12", "--horizon", "6", "--lookback", "12", "--backtest", "4",
                 "--hidden", "8", "--steps", "8", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MASE" in text and "seasonal_naive" in text
    assert (out / "loss.png").is_file() and (out / "forecast.png").is_file()
    assert main(["predict", str(out), "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "step_ahead,time,forecast" and len(rows) == 7
    assert main(["forecast", "--csv", str(sales_csv), "--target", "nope",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nowhere")]) == 2


def test_classical_baselines_follow_a_linear_trend():
    pytest.importorskip("statsmodels")
    from lstmkit.train.classical import arima_backtest, ets_backtest
    y = 3.0 + 0.5 * np.arange(60) + np.random.default_rng(0).normal(0, 0.05, 60)
    expected = np.stack([3.0 + 0.5 * np.arange(o, o + 4) for o in (50, 53)])
    f, _ = ets_backtest(y, 50, [50, 53], 4, 1)
    np.testing.assert_allclose(f, expected, atol=0.3)
    g, name = arima_backtest(y, 50, [50, 53], 4, 1)
    assert name.startswith("ARIMA(")
    np.testing.assert_allclose(g, expected, atol=0.3)
