"""Training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_loss_curve(records: Sequence[dict], path: str | Path, *, metric: str = "bpc",
                    title: str = "") -> Path:
    """A PNG of the training and validation ``metric`` ("bpc", "ppl" or "loss") against
    the optimizer step, from ``metrics.jsonl`` records (``{"step", "train_<m>"}`` and
    ``{"step", "val_<m>"}`` lines)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for split, style in (("train", "-"), ("val", "o-")):
        key = f"{split}_{metric}"
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=split, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel({"bpc": "bits per character", "ppl": "perplexity"}.get(metric, metric))
    if metric == "ppl":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
