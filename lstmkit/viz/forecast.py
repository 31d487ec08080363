"""Plots of forecasts and of classification results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .curves import _finish, _pyplot, save


def plot_forecast(path: str | Path, series, report: dict, cfg) -> Path:
    """The series, the backtest forecasts of the model from every H-th origin (so they do
    not overlap), the seasonal-naive forecasts from the same origins, and the forecast
    past the end."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    y = series.target
    t = np.arange(len(y))
    ax.plot(t, y, color="black", linewidth=1, label="observed")
    model = next(iter(report["forecasts"]))
    shown = range(0, len(report["origins"]), cfg.horizon)
    for n, i in enumerate(shown):
        o = report["origins"][i]
        steps = np.arange(o, o + cfg.horizon)
        ax.plot(steps, report["forecasts"][model][i], color="tab:blue",
                label=f"{model} backtest" if n == 0 else None)
        ax.plot(steps, report["forecasts"]["seasonal_naive"][i], color="tab:gray",
                linestyle=":", label="seasonal naive" if n == 0 else None)
    if len(report["forecast"]):
        ax.plot(np.arange(len(y), len(y) + cfg.horizon), report["forecast"], color="tab:red",
                label=f"{model} forecast")
    ax.axvline(report["origins"][0], color="tab:green", linestyle="--", linewidth=1,
               label="first backtest origin")
    if series.times:
        ticks = np.linspace(0, len(y) - 1, 8).astype(int)
        ax.set_xticks(ticks, [series.times[k] for k in ticks])
    ax.set_ylabel(series.columns[0])
    return _finish(fig, ax, path, f"{series.name}: {cfg.horizon}-step forecasts")


def plot_confusion(path: str | Path, matrix: np.ndarray, classes: list[str],
                   title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with the counts written."""
    plt = _pyplot()
    n = len(classes)
    size = min(12, 2 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return save(fig, path)
