"""Time series for forecasting: CSV reading, built-in series, scaling, windows, scores.

A :class:`Series` holds the values of one series as a (T, F) float64 array whose column 0
is the target and the other columns are features known up to each time step. Everything
that learns from the data — the scaler, the model, the classical baselines — sees only
the part before the first forecast origin; see :func:`backtest_origins`.

Scores (Hyndman & Koehler 2006, "Another look at measures of forecast accuracy"):

    MAE   = mean |y − ŷ|                 RMSE = sqrt(mean (y − ŷ)²)
    sMAPE = mean 200 |y − ŷ| / (|y| + |ŷ|)   (in %, the M3/M4 form; 0 where both are 0)
    MASE  = MAE / mean_t |y_t − y_{t−m}|   the denominator over the training part only,
            m the seasonal period (m = 1: the in-sample naive forecast)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .packaged import package_file


class SeriesError(ValueError):
    """A CSV or series that cannot be used as given (the message says why)."""


@dataclass
class Series:
    """One series: ``values`` (T, F), column 0 the target; ``times`` the time column's
    text (or None); ``season`` the seasonal period m used by seasonal-naive and MASE."""

    name: str
    values: np.ndarray
    columns: list[str]
    times: list[str] | None = None
    season: int = 1
    source: str = ""

    @property
    def target(self) -> np.ndarray:
        """The target column (column 0 of ``values``), shape (T,)."""
        return self.values[:, 0]

    def __len__(self) -> int:
        return self.values.shape[0]


@dataclass(frozen=True)
class Builtin:
    package: str
    path: str
    target: str
    time: str
    season: int
    about: str


# Real series shipped inside installed wheels (read from disk; nothing is fetched).
BUILTIN_SERIES = {
    "airline": Builtin("aeon", "datasets/data/Airline/Airline.csv", "Passengers", "Date", 12,
                       "monthly international airline passengers (thousands), 1949–1960, "
                       "Box & Jenkins series G"),
    "sunspots": Builtin("statsmodels", "datasets/sunspots/sunspots.csv", "SUNACTIVITY", "YEAR",
                        11, "yearly sunspot numbers, 1700–2008 (the ≈11-year cycle as season)"),
    "elec_equip": Builtin("statsmodels", "datasets/elec_equip/elec_equip.csv",
                          "STS.M.I7.W.TOVT.NS0016.4.000", "DATE", 12,
                          "monthly euro-area electrical equipment orders (index), 1995–2016"),
}
DEFAULT_SERIES = "airline"


def builtin_series(name: str) -> Series:
    """A built-in series by name (see :data:`BUILTIN_SERIES`)."""
    if name not in BUILTIN_SERIES:
        raise SeriesError(f"unknown built-in series {name!r}; choose one of "
                          f"{', '.join(sorted(BUILTIN_SERIES))}")
    b = BUILTIN_SERIES[name]
    path = package_file(b.package, b.path, f"series {name!r}")
    series = read_csv_series(path, b.target, time=b.time, season=b.season)
    series.name, series.source = name, f"{b.about} ({b.package}: {b.path})"
    return series


def _parse_number(text: str, row: int, column: str, path: Path) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("na", "nan", "null", "none", "?"):
        raise SeriesError(f"{path}: missing value in column {column!r} at data row {row} "
                          f"(line {row + 1}); fill or drop missing values first "
                          "(lstmkit does not guess them)")
    try:
        value = float(text)
    except ValueError:
        raise SeriesError(f"{path}: column {column!r} is not numeric: {text!r} at data row "
                          f"{row} (line {row + 1})") from None
    if not math.isfinite(value):
        raise SeriesError(f"{path}: non-finite value {text!r} in column {column!r} at data "
                          f"row {row} (line {row + 1})")
    return value


def read_csv_series(path: str | Path, target: str, *, time: str | None = None,
                    features: list[str] | tuple[str, ...] = (), season: int = 1) -> Series:
    """Read ``target`` (and ``features``) from a CSV file with a header row; ``time``
    names an optional time column (kept as text for reports). The delimiter is sniffed
    (comma, semicolon or tab)."""
    path = Path(path)
    if not path.is_file():
        raise SeriesError(f"CSV file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SeriesError(f"{path} is not a UTF-8 text file ({e.reason} at byte "
                          f"{e.start}); is it really a CSV?") from None
    if not text.strip():
        raise SeriesError(f"{path} is empty")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    wanted = [target, *features] + ([time] if time else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise SeriesError(f"{path}: no column {', '.join(repr(c) for c in missing)}; the "
                          f"columns are {', '.join(repr(h) for h in header)}")
    if len(set(wanted)) != len(wanted):
        raise SeriesError(f"{path}: a column is named twice among target/features/time: "
                          f"{wanted}")
    index = [header.index(c) for c in (target, *features)]
    values, times = [], []
    for n, row in enumerate(rows[1:], start=1):
        if len(row) < len(header):
            raise SeriesError(f"{path}: data row {n} (line {n + 1}) has {len(row)} fields, "
                              f"the header has {len(header)}")
        values.append([_parse_number(row[i], n, header[i], path) for i in index])
        if time:
            times.append(row[header.index(time)].strip())
    if not values:
        raise SeriesError(f"{path} has a header but no data rows")
    return Series(path.stem, np.asarray(values, dtype=np.float64), [target, *features],
                  times if time else None, season, str(path))


# -- scaling and windows --------------------------------------------------------------------
@dataclass
class Scaler:
    """Per-column standardisation, fitted on the training part only."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.ones(0))

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """Per-column mean and standard deviation of ``values`` (T, F); a constant column gets a
        standard deviation of 1."""
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardise ``values`` (…, F) with the fitted statistics: (x − mean) / std per column."""
        return (values - self.mean) / self.std

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        """Undo the standardisation of the target (column 0) for ``y`` of any shape."""
        return y * self.std[0] + self.mean[0]

    def to_dict(self) -> dict:
        """The statistics as plain lists, for JSON; :meth:`from_dict` reads them back."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        """The scaler that :meth:`to_dict` wrote."""
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], np.float64))


def windows(values: np.ndarray, origins: np.ndarray | list[int], lookback: int,
            horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, L, F) = ``values[o−L:o]`` and targets (n, H) = target column
    ``values[o:o+H, 0]`` for each origin o (the index of the first forecast step).
    An input never contains a value at or after its origin."""
    origins = np.asarray(origins, dtype=np.int64)
    if len(origins) and (origins.min() < lookback or origins.max() + horizon > len(values)):
        raise SeriesError(f"window origins must lie in [{lookback}, {len(values) - horizon}]")
    steps = np.arange(-lookback, 0)
    x = values[origins[:, None] + steps[None, :]]                        # (n, L, F)
    y = values[origins[:, None] + np.arange(horizon)[None, :], 0]        # (n, H)
    return x, y


@dataclass(frozen=True)
class Split:
    """Where the parts of a series lie (all indices are forecast origins or lengths).

    ``train_end``: the first backtest origin; the model, the scaler and the baselines see
    only ``values[:train_end]``. Training windows have their targets inside
    ``[0, val_start)``, validation windows inside ``[val_start, train_end)``; the backtest
    forecasts from each origin in ``backtest`` using the observed history before it.
    """

    train_origins: tuple[int, ...]
    val_origins: tuple[int, ...]
    backtest: tuple[int, ...]
    train_end: int
    val_start: int


def backtest_origins(n: int, lookback: int, horizon: int, origins: int, stride: int,
                     val_windows: int) -> Split:
    """A rolling-origin split of a series of length ``n``: ``origins`` backtest origins
    ``stride`` apart ending with the last one that leaves a full horizon, ``val_windows``
    validation origins just before them, and every earlier origin for training."""
    last = n - horizon
    backtest = tuple(range(last - (origins - 1) * stride, last + 1, stride))
    train_end = backtest[0]
    val_origins = tuple(range(train_end - horizon - val_windows + 1, train_end - horizon + 1))
    val_start = val_origins[0] if val_origins else train_end
    train_origins = tuple(range(lookback, val_start - horizon + 1))
    need = lookback + horizon + val_windows + (origins - 1) * stride + horizon + 9
    if len(train_origins) < 10 or (val_origins and val_origins[0] < lookback):
        raise SeriesError(
            f"the series is too short: {n} values, but lookback {lookback} + horizon "
            f"{horizon} with {val_windows} validation windows and {origins} backtest origins "
            f"{stride} apart need at least {need} (for 10 training windows); use a shorter "
            "--lookback, fewer --backtest origins or a longer series")
    return Split(train_origins, val_origins, backtest, train_end, val_start)


# -- scores and baselines ---------------------------------------------------------------
def mase_scale(history: np.ndarray, season: int) -> float:
    """Mean |y_t − y_{t−m}| over ``history`` (the training part): MASE's denominator."""
    m = season if len(history) > season else 1
    diffs = np.abs(history[m:] - history[:-m])
    scale = float(diffs.mean()) if len(diffs) else 0.0
    if scale == 0:
        raise SeriesError("MASE is undefined: the training part is constant at lag "
                          f"{m} (mean |y_t − y_t−{m}| = 0)")
    return scale


def scores(y: np.ndarray, yhat: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE, sMAPE (%) and MASE of forecasts ``yhat`` against ``y`` (any shape)."""
    err = np.abs(y - yhat)
    denom = np.abs(y) + np.abs(yhat)
    smape = np.where(denom > 0, 200 * err / np.where(denom > 0, denom, 1), 0.0)
    mae = float(err.mean())
    return {"mae": mae, "rmse": float(np.sqrt(((y - yhat) ** 2).mean())),
            "smape": float(smape.mean()), "mase": mae / scale}


def naive_forecast(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last observed value, repeated."""
    return np.full(horizon, history[-1], dtype=np.float64)


def seasonal_naive_forecast(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """ŷ_{T+h} = y_{T+h−m·⌈h/m⌉}: the value of the same season in the last observed cycle."""
    if season <= 1 or len(history) < season:
        return naive_forecast(history, horizon)
    h = np.arange(1, horizon + 1)
    return history[len(history) + h - season * np.ceil(h / season).astype(np.int64) - 1]
