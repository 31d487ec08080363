"""Classical forecasting baselines from statsmodels: ARIMA and ETS, over the same backtest.

Each model is fitted once, on the training part only (the values before the first
backtest origin), with its order chosen there by AIC over a small grid. For each origin
the fitted parameters are then applied to the observed history up to that origin
(``results.apply(history)``: the Kalman filter runs over the new data, the parameters
stay) and the next ``horizon`` values are forecast — the same information the LSTM gets:
weights fixed on the training part, the history up to the origin as input.

* ARIMA: SARIMAX(p, d, q)(P, D, Q)_m with p ∈ {0, 1, 2}, d ∈ {0, 1}, q ∈ {0, 1}, and for
  m > 1 the seasonal part (0,0,0) or (0,1,1) — the "airline model" family of Box &
  Jenkins when m = 12; a constant term when d = D = 0.
* ETS: the state-space exponential smoothing of statsmodels (additive errors), with or
  without a (damped) trend and, for m > 1, an additive seasonal component.

statsmodels is an optional dependency (``pip install 'lstmkit[datasets]'``).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from ..data.packaged import EXTRA


def _statsmodels():
    """(SARIMAX, ExponentialSmoothing) from statsmodels' state-space models."""
    try:
        from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing
        from statsmodels.tsa.statespace.sarimax import SARIMAX
    except ImportError:
        raise ImportError(f"the ARIMA/ETS baselines need statsmodels: pip install '{EXTRA}' "
                          "(or leave out --classical)") from None
    return SARIMAX, ExponentialSmoothing


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # convergence chatter of the order search
        yield


def _arima_candidates(season: int) -> list[dict]:
    seasonal = [(0, 0, 0, 0)] + ([(0, 1, 1, season)] if season > 1 else [])
    out = []
    for p, d, q, s in itertools.product(range(3), (0, 1), (0, 1), seasonal):
        if p == q == 0 and d == 0 and s[1] == 0:
            continue
        trend = "c" if d == 0 and s[1] == 0 else "n"
        out.append({"order": (p, d, q), "seasonal_order": s, "trend": trend})
    return out


def _ets_candidates(season: int) -> list[dict]:
    out = []
    for trend, damped in ((False, False), (True, False), (True, True)):
        out.append({"trend": trend, "damped_trend": damped,
                    "seasonal": season if season > 1 else None})
    return out


def _best_fit(build: Callable[[dict], object], candidates: list[dict]) -> tuple[object, dict]:
    best, best_aic, best_kw = None, np.inf, {}
    with _quiet():
        for kw in candidates:
            try:
                res = build(kw).fit(disp=False)
            except (ValueError, np.linalg.LinAlgError):
                continue                          # a candidate the data cannot support
            if np.isfinite(res.aic) and res.aic < best_aic:
                best, best_aic, best_kw = res, res.aic, kw
    if best is None:
        raise ValueError("no candidate model could be fitted to the training part")
    return best, best_kw


def _rolling(res, y: np.ndarray, origins: list[int], horizon: int) -> np.ndarray:
    with _quiet():
        return np.stack([np.asarray(res.apply(y[:o]).forecast(horizon)) for o in origins])


def arima_backtest(y: np.ndarray, train_end: int, origins: list[int], horizon: int,
                   season: int) -> tuple[np.ndarray, str]:
    """(forecasts (len(origins), horizon), description of the chosen model)."""
    sarimax, _ = _statsmodels()
    res, kw = _best_fit(lambda kw: sarimax(y[:train_end], **kw),
                        _arima_candidates(season))
    p, d, q = kw["order"]
    P, D, Q, m = kw["seasonal_order"]
    name = f"ARIMA({p},{d},{q})" + (f"({P},{D},{Q})_{m}" if m else "")
    return _rolling(res, y, origins, horizon), name


def ets_backtest(y: np.ndarray, train_end: int, origins: list[int], horizon: int,
                 season: int) -> tuple[np.ndarray, str]:
    """(forecasts (len(origins), horizon), description of the chosen model)."""
    _, exponential_smoothing = _statsmodels()
    if train_end < 2 * max(season, 1) + 2:
        raise ValueError(f"ETS needs at least two seasons ({2 * season + 2} values) in the "
                         f"training part, which has {train_end}")
    res, kw = _best_fit(lambda kw: exponential_smoothing(y[:train_end], **kw),
                        _ets_candidates(season))
    trend = "N" if not kw["trend"] else ("Ad" if kw["damped_trend"] else "A")
    name = f"ETS(A,{trend},{'A' if kw['seasonal'] else 'N'})"
    return _rolling(res, y, origins, horizon), name
