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


def save(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _finish(fig, ax, path: str | Path, title: str) -> Path:
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save(fig, path)


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
    return _finish(fig, ax, path, title)


def plot_learning_curves(results: Sequence[dict], path: str | Path, *, metric: str,
                         baseline: float | None = None, title: str = "") -> Path:
    """Validation ``metric`` against training sequences for experiment results
    (:func:`lstmkit.train.experiment.run_experiment`), one colour per cell, one line per
    seed, with the task's baseline dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colours: dict[str, str] = {}
    for r in results:
        cell = r["config"]["cell"]
        xs = [p["sequences"] for p in r["curve"]]
        ys = [p[f"val_{metric}"] for p in r["curve"]]
        line, = ax.plot(xs, ys, color=colours.get(cell), alpha=0.8,
                        label=None if cell in colours else cell)
        colours.setdefault(cell, line.get_color())
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="baseline")
    ax.set_xlabel("training sequences")
    ax.set_ylabel(f"validation {metric}")
    if metric in ("mse", "ce", "bce"):
        ax.set_yscale("log")
    return _finish(fig, ax, path, title)


def plot_gradient_flow(study: dict, path: str | Path) -> Path:
    """‖∂L/∂h_t‖ against t, log scale, per cell, at initialisation and after training
    (:func:`lstmkit.train.experiment.gradient_flow_study`); a cell whose ``"trained"`` (or
    ``"init"``) entry is None is left out of that panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for ax, when in zip(axes, ("init", "trained")):
        for k, (cell, entry) in enumerate(study["cells"].items()):
            if entry.get(when) is None:                     # e.g. not trained
                continue
            dh = entry[when]["dh"]
            line, = ax.semilogy(range(len(dh)), [max(v, 1e-30) for v in dh], label=f"{cell} h",
                                color=f"C{k}")              # one colour per cell in both panels
            if entry[when]["dc"] is not None:
                ax.semilogy(range(len(dh)), [max(v, 1e-30) for v in entry[when]["dc"]], "--",
                            color=line.get_color(), label=f"{cell} c")
        ax.set_title(f"{'at initialisation' if when == 'init' else 'after training'}")
        ax.set_xlabel("step t")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("‖∂L/∂state_t‖")
    axes[1].legend()
    if any(entry.get("trained") is None for entry in study["cells"].values()):
        axes[0].legend()                                    # cells the right panel lacks
    fig.suptitle(f"gradient flow: {study['task']}, T = {study['T']}, loss at the last step")
    return save(fig, path)
