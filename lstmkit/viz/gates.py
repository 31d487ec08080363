"""PNG plots of recorded gates and states (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .curves import _pyplot, save
from .report import SATURATED


def plot_gate_heatmaps(layer, path: str | Path, *, batch_index: int = 0,
                       steps: int = 500) -> Path:
    """Heatmaps, units × steps, of every gate, tanh(c) and h of one recorded layer
    (:class:`lstmkit.inspect.LayerRecord`) for one sequence, the first ``steps`` steps."""
    plt = _pyplot()
    T = int(layer.mask[:, batch_index].sum())
    S = min(T, steps)
    keys = list(layer.tensors)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.6 * len(keys)), dpi=100,
                             squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        v = layer.tensors[key][:S, batch_index].double().numpy()
        if key == "c":
            v, key = np.tanh(v), "tanh(c)"
        gate = key in ("i", "f", "o", "r", "z")
        ax.imshow(v.T, aspect="auto", interpolation="nearest",
                  cmap="Greys" if gate else "bwr", vmin=0 if gate else -1, vmax=1)
        ax.set_ylabel(key)
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{layer.cell.upper()} layer {layer.layer}: units × steps")
    return save(fig, path)


def plot_saturation(layer, path: str | Path, *, batch_index: int = 0) -> Path:
    """Per gate, each unit's fraction of steps left-saturated (< 0.1) against
    right-saturated (> 0.9), as in Karpathy, Johnson & Fei-Fei 2015."""
    plt = _pyplot()
    T = int(layer.mask[:, batch_index].sum())
    gates = [k for k in layer.tensors if k in ("i", "f", "o", "r", "z")]
    if not gates:
        raise ValueError(f"a {layer.cell} layer has no sigmoid gates to plot")
    fig, axes = plt.subplots(1, len(gates), figsize=(3.2 * len(gates), 3.2), dpi=100,
                             squeeze=False)
    for ax, g in zip(axes[0], gates):
        v = layer.tensors[g][:T, batch_index].double().numpy()
        ax.scatter((v < SATURATED).mean(0), (v > 1 - SATURATED).mean(0), s=6, alpha=0.6)
        ax.plot([0, 1], [1, 0], color="grey", linewidth=0.5)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"gate {g}", xlabel="left-saturated")
    axes[0, 0].set_ylabel("right-saturated")
    return save(fig, path)


def char_label(token: str) -> str:
    """A token as a tick label: newline as ``\\n``, space as ``·``, tab as ``\\t``."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")


def plot_unit_over_text(tokens, series: dict, path: str | Path, *, marks=(),
                        focus: int | None = None, title: str = "") -> Path:
    """One panel per entry of ``series`` (name → values, one per token), the characters read
    as the x-axis labels: a unit's gates and states over a text. Gates (i, f, o, r, z) are
    drawn on [0, 1], g, h and tanh(c) on [−1, 1]; ``marks`` (token indices) are shaded,
    ``focus`` is outlined."""
    plt = _pyplot()
    n = len(tokens)
    fig, axes = plt.subplots(len(series), 1, figsize=(min(22, 2 + 0.16 * n), 1.5 * len(series)
                                                      + 0.9), dpi=100, sharex=True,
                             squeeze=False)
    xs = np.arange(n)
    for ax, (name, values) in zip(axes[:, 0], series.items()):
        v = np.asarray(values, dtype=float)
        for m in marks:
            ax.axvspan(m - 0.5, m + 0.5, color="#f4a6a6", alpha=0.6, linewidth=0)
        if focus is not None:
            ax.axvspan(focus - 0.5, focus + 0.5, fill=False, edgecolor="black", linewidth=1.2)
        ax.plot(xs, v, "-o", markersize=2.5, linewidth=1)
        base = name.split("_")[0]
        if base in ("i", "f", "o", "r", "z"):
            ax.set_ylim(-0.05, 1.05)
        elif base in ("g", "h") or name.startswith("tanh"):
            ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.grid(alpha=0.25, axis="y")
    ax = axes[-1, 0]
    ax.set_xticks(xs)
    ax.set_xticklabels([char_label(t) for t in tokens], fontsize=7, family="monospace")
    ax.set_xlim(-0.6, n - 0.4)
    if title:
        fig.suptitle(title)
    return save(fig, path)
