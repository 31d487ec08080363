r"""Forecasting a series with a recurrent network: ``lstmkit forecast`` and ``predict``.

    from lstmkit.train.forecast import ForecastConfig, ForecastTrainer
    result = ForecastTrainer(ForecastConfig(series="airline", horizon=12), "runs/air").fit()

The model reads the last ``lookback`` values of the series (target and features, scaled)
and outputs all ``horizon`` future target values at once — the *direct* multi-step
strategy (one output per step ahead, no forecast fed back as input)::

    h_L = LSTM(x_{o−L}, …, x_{o−1})              x_t = scaled (target, features) at t
    ŷ_{o+k} = s(y_{o−1}) + W_k h_L + b_k,  k = 0…H−1   (``relative``; else W_k h_L + b_k)

with s the standardisation fitted on the training part. With ``relative`` (the default)
the network learns the change from the last observed value, which lets it follow a level
it never saw in training (a trending series); ``log`` models log y instead of y.

Evaluation is a rolling-origin backtest (Tashman 2000): origins o_1 < … < o_n at the end
of the series; the network, the scaler and every baseline are fitted on values before o_1
only, with the best checkpoint chosen on validation windows that also end before o_1;
then from each origin the next H values are forecast from the observed history before it.
Scores: MAE, RMSE, sMAPE and MASE (see :mod:`lstmkit.data.series`) of the network, the
naive and seasonal-naive forecasts, and (``classical``) ARIMA and ETS from statsmodels.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.series import (
    BUILTIN_SERIES,
    DEFAULT_SERIES,
    Scaler,
    Series,
    SeriesError,
    Split,
    backtest_origins,
    builtin_series,
    mase_scale,
    naive_forecast,
    read_csv_series,
    scores,
    seasonal_naive_forecast,
    windows,
)
from .checkpoint import CheckpointError, load_checkpoint
from .config import SequenceTaskConfig
from .loop import TrainerBase, load_run, resume_run_config
from .model import build_recurrent
from .progress import Progress

RESUMABLE = ("steps", "eval_every", "log_every", "quiet", "classical")


@dataclass
class ForecastConfig(SequenceTaskConfig):
    """Everything that decides a forecasting run (saved as ``config.json``). ``None``
    fields are resolved from the series by :meth:`resolved`."""

    # data
    csv: str | None = None                 # a CSV file; None = the built-in ``series``
    target: str | None = None              # CSV column to forecast
    time: str | None = None                # CSV time column (labels only)
    features: list[str] = field(default_factory=list)   # more CSV input columns
    series: str = DEFAULT_SERIES           # built-in series when no csv
    season: int | None = None              # seasonal period m (built-in: its own; CSV: 1)
    horizon: int | None = None             # H (default: m if m > 1, else 8)
    lookback: int | None = None            # L (default: max(2m, 2H))
    backtest: int = 12                     # rolling origins at the end of the series
    stride: int = 1                        # steps between origins
    val_windows: int | None = None         # validation origins before the backtest (H)
    relative: bool = True                  # predict the change from the last value
    log: bool = False                      # model log y (positive series only)
    classical: bool = False                # also ARIMA and ETS (statsmodels) in the report
    steps: int = 600                       # (the model and optimisation fields: see the base)

    def __post_init__(self) -> None:
        self.features = [str(f) for f in self.features]
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid forecast configuration: {what}")

        self._check_common(need)
        need(self.csv is not None or self.series in BUILTIN_SERIES,
             f"series must be one of {', '.join(sorted(BUILTIN_SERIES))}, got {self.series!r}")
        need(self.csv is None or self.target is not None, "a CSV needs --target COLUMN")
        need(self.csv is not None or (self.target is None and not self.features),
             "--target/--features name CSV columns; give --csv too")
        for name in ("season", "horizon", "lookback", "val_windows"):
            v = getattr(self, name)
            need(v is None or v >= 1, f"{name} must be ≥ 1, got {v}")
        for name in ("backtest", "stride", "layers", "hidden", "steps", "batch", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")

    def resolved(self, series: Series) -> ForecastConfig:
        """The configuration with every default that depends on the series filled in."""
        season = self.season or series.season
        horizon = self.horizon or (season if season > 1 else 8)
        lookback = self.lookback or max(2 * season, 2 * horizon)
        return replace(self, season=season, horizon=horizon, lookback=lookback,
                       val_windows=self.val_windows or horizon)


def load_series(cfg: ForecastConfig) -> Series:
    """The series a configuration names (its CSV, or the built-in)."""
    if cfg.csv is None:
        return builtin_series(cfg.series)
    return read_csv_series(cfg.csv, cfg.target, time=cfg.time, features=cfg.features,
                           season=cfg.season or 1)


def series_sha256(series: Series) -> str:
    return hashlib.sha256(np.ascontiguousarray(series.values).tobytes()).hexdigest()


# -- the transform: optional log, then standardisation ----------------------------------
def transform(values: np.ndarray, cfg: ForecastConfig, name: str) -> np.ndarray:
    if not cfg.log:
        return values
    if (values[:, 0] <= 0).any():
        raise SeriesError(f"--log needs a positive target; {name} has values ≤ 0")
    out = values.copy()
    out[:, 0] = np.log(out[:, 0])
    return out


def untransform(y: np.ndarray, cfg: ForecastConfig) -> np.ndarray:
    return np.exp(y) if cfg.log else y


# -- the model ------------------------------------------------------------------------------
class Forecaster(nn.Module):
    """(B, L, F) scaled windows → (B, H) scaled forecasts (direct strategy)."""

    def __init__(self, n_features: int, cfg: ForecastConfig):
        super().__init__()
        self.relative = cfg.relative
        self.rnn = build_recurrent(cfg.cell, n_features, cfg.hidden, cfg.layers,
                                   dropout=cfg.dropout, peephole=cfg.peephole,
                                   coupled=cfg.coupled, backend=cfg.backend)
        self.head = nn.Linear(cfg.hidden, cfg.horizon)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)                                   # (B, L, hidden)
        y = self.head(out[:, -1])                              # (B, H)
        return y + x[:, -1:, 0] if self.relative else y


@dataclass
class Prepared:
    """A series cut for training: scaled values and where each part lies."""

    series: Series
    values: np.ndarray          # transformed and scaled, (T, F)
    scaler: Scaler
    split: Split


def prepare(series: Series, cfg: ForecastConfig) -> Prepared:
    """Split (no look-ahead: the scaler sees only ``values[:train_end]``) and scale."""
    split = backtest_origins(len(series), cfg.lookback, cfg.horizon, cfg.backtest,
                             cfg.stride, cfg.val_windows)
    values = transform(series.values, cfg, series.name)
    scaler = Scaler.fit(values[:split.train_end])
    return Prepared(series, scaler.transform(values), scaler, split)


def _tensors(values: np.ndarray, origins, cfg: ForecastConfig) -> tuple[Tensor, Tensor]:
    x, y = windows(values, list(origins), cfg.lookback, cfg.horizon)
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


@torch.no_grad()
def forecast_from(model: nn.Module, values: np.ndarray, scaler: Scaler, origins,
                  cfg: ForecastConfig) -> np.ndarray:
    """Forecasts in the series' units, (len(origins), H), from the scaled ``values``
    before each origin."""
    was = model.training
    model.eval()
    x = torch.from_numpy(windows(values, list(origins), cfg.lookback, 0)[0]).float()
    y = model(x).double().numpy()
    model.train(was)
    return untransform(scaler.inverse_target(y), cfg)


@dataclass
class ForecastResult:
    run_dir: Path
    best_step: int
    best_val_loss: float
    scores: dict[str, dict[str, float]]     # model name → mae, rmse, smape, mase
    forecast: np.ndarray                    # the H values after the end of the series


class ForecastTrainer(TrainerBase):
    """Train a forecaster on a series into ``run_dir``, then backtest and report."""

    unit, rate_key, command = "win", "windows_per_s", "lstmkit forecast"

    def __init__(self, config: ForecastConfig, run_dir: str | Path, *, resume: bool = False):
        super().__init__(config, run_dir, resume=resume)
        self.series = load_series(config)
        self.cfg = config = config.resolved(self.series)
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} windows) must be divisible by the "
                             f"number of processes ({self.world})")
        if self.payload is not None and self.payload.get("series_sha256") != series_sha256(
                self.series):
            raise SeriesError("the series differs from the one the run was started on; "
                              "resume needs the same data")
        self.data = prepare(self.series, config)
        self.x_train, self.y_train = _tensors(self.data.values, self.data.split.train_origins,
                                              config)
        self.x_val, self.y_val = _tensors(self.data.values, self.data.split.val_origins, config)
        self.backtest: dict | None = None          # the report of backtest_report, at the end
        torch.manual_seed(config.seed)
        model = Forecaster(self.series.values.shape[1], config)
        self._start(model, config.steps, config.eval_every or max(1, config.steps // 20))

    def _batch_loss(self) -> tuple[Tensor, int]:
        share = self.cfg.batch // self.world
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        idx = torch.randint(len(self.x_train), (self.cfg.batch,), generator=g)
        idx = idx[self.rank * share:(self.rank + 1) * share]       # this process's share
        pred = self.ddp(self.x_train[idx])
        return nn.functional.mse_loss(pred, self.y_train[idx]), share

    @torch.no_grad()
    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        self.model.eval()
        pred = self.model(self.x_val)
        self.model.train()
        loss = nn.functional.mse_loss(pred, self.y_val).item()
        s = self.data.scaler
        mae = np.abs(untransform(s.inverse_target(pred.double().numpy()), self.cfg)
                     - untransform(s.inverse_target(self.y_val.double().numpy()), self.cfg))
        return loss, {"mae": float(mae.mean())}

    def _payload_extra(self) -> dict:
        return {"scaler": json.dumps(self.data.scaler.to_dict()),
                "series_sha256": series_sha256(self.series),
                "columns": json.dumps(self.series.columns)}

    def _run_files(self) -> dict[str, str]:
        s, sp = self.series, self.data.split
        about = {"name": s.name, "source": s.source, "length": len(s), "columns": s.columns,
                 "season": self.cfg.season, "train_end": sp.train_end,
                 "val_start": sp.val_start, "backtest_origins": list(sp.backtest),
                 "train_windows": len(sp.train_origins), "val_windows": len(sp.val_origins)}
        return {"series.json": json.dumps(about, indent=1) + "\n"}

    def _intro(self) -> str:
        cfg, sp = self.cfg, self.data.split
        n = sum(p.numel() for p in self.model.parameters())
        return (f"{'resuming' if self.resume else 'training'} {cfg.cell} {cfg.layers}×"
                f"{cfg.hidden} ({n:,} parameters) to forecast {cfg.horizon} steps of "
                f"{self.series.name!r} ({len(self.series)} values, m={cfg.season}) from "
                f"{cfg.lookback}; {len(sp.train_origins)} training and {len(sp.val_origins)} "
                f"validation windows before step {sp.train_end}, {len(sp.backtest)} backtest "
                f"origins after; {self.total_steps} steps of {cfg.batch} windows; "
                f"run {self.run_dir}")

    def plot_title(self) -> str:
        return f"{self.series.name}: {self.cfg.cell} {self.cfg.layers}×{self.cfg.hidden}"

    def _result(self, progress: Progress) -> ForecastResult:
        model = Forecaster(self.series.values.shape[1], self.cfg)
        model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt")["model"])
        report = backtest_report(model, self.data, self.cfg, progress.write)
        self.backtest = report
        if self.rank == 0:
            write_report(self.run_dir, report, self.series, self.cfg)
            progress.write(format_scores(report["scores"], self.cfg) + "\n"
                           f"report: {self.run_dir / 'report.md'}; forecast: "
                           f"{self.run_dir / 'forecast.csv'}")
        self._log({"step": self.step, "checkpoint_step": self.best_step,
                   **{f"backtest_{m}_{k}": v for m, s in report["scores"].items()
                      for k, v in s.items()}})
        return ForecastResult(self.run_dir, self.best_step, self.best_val, report["scores"],
                              report["forecast"])


def backtest_report(model: nn.Module, data: Prepared, cfg: ForecastConfig,
                    note=print) -> dict:
    """Forecasts of the model and the baselines at every backtest origin, their scores,
    and the model's forecast past the end of the series."""
    y = data.series.target
    origins = list(data.split.backtest)
    H, m = cfg.horizon, cfg.season
    actual = np.stack([y[o:o + H] for o in origins])
    forecasts = {
        cfg.cell.upper(): forecast_from(model, data.values, data.scaler, origins, cfg),
        "naive": np.stack([naive_forecast(y[:o], H) for o in origins]),
        "seasonal_naive": np.stack([seasonal_naive_forecast(y[:o], H, m) for o in origins]),
    }
    models = {}
    if cfg.classical:
        from .classical import arima_backtest, ets_backtest
        yt = transform(data.series.values, cfg, data.series.name)[:, 0]
        for key, fn in (("ARIMA", arima_backtest), ("ETS", ets_backtest)):
            try:
                f, models[key] = fn(yt, data.split.train_end, origins, H, m)
            except ValueError as e:
                note(f"note: no {key} baseline ({e})")
                continue
            forecasts[key] = untransform(f, cfg)
    scale = mase_scale(y[:data.split.train_end], m)
    end = forecast_from(model, data.values, data.scaler, [len(y)],
                        cfg) if len(y) >= cfg.lookback else None
    return {"origins": origins, "actual": actual, "forecasts": forecasts,
            "scores": {k: scores(actual, f, scale) for k, f in forecasts.items()},
            "mase_scale": scale, "classical_models": models,
            "forecast": end[0] if end is not None else np.zeros(0)}


def format_scores(table: dict[str, dict[str, float]], cfg: ForecastConfig) -> str:
    lines = [f"backtest ({cfg.backtest} origins, horizon {cfg.horizon}, m={cfg.season}):",
             f"  {'model':<16}{'MAE':>10}{'RMSE':>10}{'sMAPE %':>10}{'MASE':>8}"]
    for name, s in table.items():
        lines.append(f"  {name:<16}{s['mae']:>10.3f}{s['rmse']:>10.3f}{s['smape']:>10.2f}"
                     f"{s['mase']:>8.3f}")
    return "\n".join(lines)


def future_labels(times: list[str] | None, n: int) -> list[str]:
    """Labels of the n steps after the series: integers (years) and YYYY-MM months are
    continued; anything else is numbered +1, +2, …"""
    if times and len(times) >= 2:
        a, b = times[-2], times[-1]
        if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
            d = int(b) - int(a)
            return [str(int(b) + d * k) for k in range(1, n + 1)]
        parts = b.split("-")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            y, mo = int(parts[0]), int(parts[1])
            out = []
            for _ in range(n):
                y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
                out.append(f"{y:04d}-{mo:02d}")
            return out
    return [f"+{k}" for k in range(1, n + 1)]


def write_report(run_dir: Path, report: dict, series: Series, cfg: ForecastConfig) -> None:
    """report.json, report.md, backtest.csv and forecast.csv (``forecast.png``:
    :func:`lstmkit.viz.runs.forecast_png`)."""
    run_dir = Path(run_dir)
    names = list(report["forecasts"])
    times = series.times or [str(t) for t in range(len(series))]
    with open(run_dir / "backtest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["origin", "step_ahead", "time", "actual", *names])
        for i, o in enumerate(report["origins"]):
            for k in range(cfg.horizon):
                w.writerow([times[o], k + 1, times[o + k], report["actual"][i, k],
                            *(report["forecasts"][n][i, k] for n in names)])
    labels = future_labels(series.times, cfg.horizon)
    with open(run_dir / "forecast.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step_ahead", "time", "forecast"])
        for k, v in enumerate(report["forecast"]):
            w.writerow([k + 1, labels[k], float(v)])
    summary = {"series": series.name, "source": series.source, "config": asdict(cfg),
               "strategy": "direct multi-output", "mase_scale": report["mase_scale"],
               "scores": report["scores"], "classical_models": report["classical_models"],
               "forecast": [float(v) for v in report["forecast"]]}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [f"# Forecast of {series.name}", "", series.source, "",
          f"Direct {cfg.horizon}-step forecasts by a {cfg.cell.upper()} {cfg.layers}×"
          f"{cfg.hidden} from {cfg.lookback} steps; rolling-origin backtest over the last "
          f"{cfg.backtest} origins (stride {cfg.stride}); MASE scaled by the in-sample "
          f"seasonal-naive MAE (m={cfg.season}) of the training part.", "",
          "| model | MAE | RMSE | sMAPE % | MASE |", "|---|---|---|---|---|"]
    for name, s in report["scores"].items():
        label = report["classical_models"].get(name, name)
        md.append(f"| {label} | {s['mae']:.3f} | {s['rmse']:.3f} | {s['smape']:.2f} | "
                  f"{s['mase']:.3f} |")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")


# -- a saved run ------------------------------------------------------------------------
def load_forecast_run(run_dir: str | Path, which: str = "best") -> tuple[Forecaster,
                                                                         ForecastConfig,
                                                                         Scaler, list[str]]:
    """(model, configuration, scaler, column names) of a finished ``forecast`` run."""
    cfg, payload = load_run(run_dir, ForecastConfig, "forecast", which)
    try:
        scaler = Scaler.from_dict(json.loads(payload["scaler"]))
        columns = json.loads(payload["columns"])
        model = Forecaster(len(columns), cfg)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint of {run_dir} is not a forecast run's: "
                              f"{e}") from None
    return model.eval(), cfg, scaler, columns


def predict(run_dir: str | Path, csv_path: str | Path | None = None) -> tuple[np.ndarray,
                                                                                list[str]]:
    """The next H values after the series in ``csv_path`` (same columns as the run's
    data; default: the run's own series), and their time labels."""
    model, cfg, scaler, columns = load_forecast_run(run_dir)
    if csv_path is None:
        series = load_series(cfg)
    else:
        time = cfg.time if cfg.csv else BUILTIN_SERIES[cfg.series].time
        series = read_csv_series(csv_path, columns[0], time=time, features=columns[1:],
                                 season=cfg.season)
    if len(series) < cfg.lookback:
        raise SeriesError(f"the run forecasts from the last {cfg.lookback} values; "
                          f"{csv_path or series.name} has only {len(series)}")
    values = scaler.transform(transform(series.values, cfg, series.name))
    y = forecast_from(model, values, scaler, [len(series)], cfg)[0]
    if not np.isfinite(y).all():
        raise SeriesError("the forecast is not finite (values far outside the training range?)")
    return y, future_labels(series.times, cfg.horizon)


def resume_forecast_config(run_dir: str | Path, overrides: dict) -> ForecastConfig:
    """The configuration of the run in ``run_dir``, with the fields of ``overrides`` that
    may change on resume (see :data:`RESUMABLE`)."""
    return resume_run_config(run_dir, overrides, ForecastConfig, RESUMABLE)


__all__ = ["ForecastConfig", "ForecastTrainer", "ForecastResult", "Forecaster", "predict",
           "load_forecast_run", "backtest_report", "prepare"]
