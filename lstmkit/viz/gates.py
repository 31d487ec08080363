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
