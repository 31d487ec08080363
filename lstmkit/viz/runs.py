"""The PNGs of a training run, drawn from outside the trainer.

The trainers of :mod:`lstmkit.train` draw nothing; they call hooks (``on_checkpoint``,
``after_run``: see :mod:`lstmkit.train.loop`). The ``lstmkit`` command passes each trainer
to :func:`with_plots`, and a library user may do the same::

    from lstmkit.viz.runs import with_plots
    with_plots(ForecastTrainer(cfg, "runs/air")).fit()   # loss.png, then forecast.png

Without matplotlib a run goes on without its PNGs and says so (once for ``loss.png``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .curves import plot_learning_curves, plot_loss_curve
from .forecast import plot_confusion, plot_forecast


class LossCurve:
    """An ``on_checkpoint`` hook: redraw ``RUN_DIR/loss.png`` from ``metrics.jsonl``."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, trainer: Any) -> None:
        path = trainer.run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        try:
            plot_loss_curve(records, trainer.run_dir / "loss.png", metric=trainer.plot_metric(),
                            title=trainer.plot_title())
        except ImportError as e:                   # matplotlib missing: no PNG, say so once
            if not self.warned:
                print(f"note: no loss.png ({e})")
                self.warned = True


def forecast_png(trainer: Any, result: Any) -> None:
    """An ``after_run`` hook of a :class:`~lstmkit.train.forecast.ForecastTrainer`:
    ``forecast.png``, the series with the backtest and the forecast past its end."""
    try:
        plot_forecast(trainer.run_dir / "forecast.png", trainer.series, trainer.backtest,
                      trainer.cfg)
    except ImportError as e:
        print(f"note: no forecast.png ({e})")


def confusion_png(trainer: Any, result: Any) -> None:
    """An ``after_run`` hook of a :class:`~lstmkit.train.classify.ClassifyTrainer`:
    ``confusion.png``, the test set's confusion matrix."""
    try:
        plot_confusion(trainer.run_dir / "confusion.png", result.confusion, result.classes,
                       f"{trainer.cfg.name}: test accuracy {result.test_accuracy:.3f}")
    except ImportError as e:
        print(f"note: no confusion.png ({e})")


def attention_png(trainer: Any, result: Any) -> None:
    """An ``after_run`` hook of a :class:`~lstmkit.train.seq2seq.Seq2SeqTrainer`:
    ``attention.png``, the alignments of the first test sources by the best checkpoint."""
    from ..train.seq2seq import load_seq2seq
    from .attention import plot_alignments

    run = load_seq2seq(trainer.run_dir)
    texts = [e.source for e in trainer.test_set.entries[:6]]
    try:
        plot_alignments(run.translate(texts, attention=True), trainer.run_dir / "attention.png",
                        title=f"{trainer.plot_title()}, step {run.step}")
    except ImportError as e:
        print(f"note: no attention.png ({e})")


def with_plots(trainer: Any) -> Any:
    """``trainer``, drawing ``loss.png`` at every checkpoint and, for a forecast, a
    classification or a seq2seq run, ``forecast.png``, ``confusion.png`` or
    ``attention.png`` at the end."""
    from ..train.classify import ClassifyTrainer
    from ..train.forecast import ForecastTrainer
    from ..train.seq2seq import Seq2SeqTrainer

    trainer.on_checkpoint.append(LossCurve())
    if isinstance(trainer, ForecastTrainer):
        trainer.after_run.append(forecast_png)
    elif isinstance(trainer, Seq2SeqTrainer):
        trainer.after_run.append(attention_png)
    elif isinstance(trainer, ClassifyTrainer):
        trainer.after_run.append(confusion_png)
    return trainer


def plot_experiment(out: str | Path) -> Path:
    """``curves.png`` beside the ``results.json`` of
    :func:`lstmkit.train.experiment.run_table`: validation metric against training
    sequences per cell and seed, the task's baseline dashed."""
    out = Path(out)
    runs = json.loads((out / "results.json").read_text())["runs"]
    cfg, metric = runs[0]["config"], runs[0]["metric"]
    return plot_learning_curves(runs, out / "curves.png", metric=metric,
                                baseline=runs[0]["baseline"][metric],
                                title=f"{cfg['task']}, T = {cfg['T']}")
