"""Training a language model by truncated BPTT, on one process or many (torchrun).

    from lstmkit.train import Trainer, TrainConfig
    result = Trainer(TrainConfig(hidden=128, steps=500), "runs/demo").fit()

The run directory holds ``config.json`` (the resolved configuration), ``vocab.json``,
``metrics.jsonl`` (one JSON object per logged step and per validation), and
``checkpoints/last.pt`` and ``checkpoints/best.pt`` (best validation loss so far);
``lstmkit train`` adds ``loss.png``, redrawn at every checkpoint (a trainer used directly
does so once passed to :func:`lstmkit.viz.runs.with_plots`).

Each optimizer step takes the next window of the B continuous streams (see
:mod:`lstmkit.data.text`); the hidden state is carried from one window to the next and
detached (Zaremba et al. 2014), and reset to zero when a pass over the data starts again.
Because the window, the learning rate and the reset all follow from the step number alone,
and a checkpoint holds the model, optimizer, hidden state and random state, a resumed run
continues exactly where the checkpoint was taken — bit for bit on the same machine.

Under ``torchrun --nproc_per_node=N`` the B streams are shared out, B/N to each process,
the model is wrapped in DistributedDataParallel (gloo on the CPU), gradients are averaged,
and only rank 0 writes the run directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.text import (
    CorpusError,
    Vocabulary,
    batches_per_pass,
    eval_rows,
    read_corpus,
    split_by_position,
    stream_rows,
    window,
)
from .checkpoint import load_checkpoint
from .config import RESUMABLE, TrainConfig
from .loop import (  # noqa: F401  (re-exported)
    TrainerBase,
    TrainingDiverged,
    TrainingInterrupted,
    learning_rate,
    resume_run_config,
    shutdown_distributed,
)
from .model import (
    LanguageModel,
    detach_state,
    evaluate_loss,
    state_from_tensors,
    state_tensors,
)
from .progress import Progress
from .sample import generate, metric_of


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_step: int
    best_val_loss: float
    metric: str                                  # "bpc" or "ppl"
    best_val_metric: float
    test_loss: float | None
    test_metric: float | None


class Trainer(TrainerBase):
    """Train ``config`` into ``run_dir``; ``resume=True`` continues the run found there."""

    unit, rate_key = "tok", "tokens_per_s"

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, resume: bool = False):
        super().__init__(config, run_dir, resume=resume)
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} streams) must be divisible by the "
                             f"number of processes ({self.world})")
        self.corpus = read_corpus(config.data, max_chars=config.max_chars)
        self.vocab = self._vocabulary()
        ids = self.vocab.encode(self.corpus.text)
        train, val, test = split_by_position(ids, config.val_fraction, config.test_fraction)
        rows = stream_rows(train, config.batch)                        # (B, n) global
        self.batches_per_epoch = batches_per_pass(rows, config.seq_len)
        share = config.batch // self.world
        self.rows = rows[self.rank * share:(self.rank + 1) * share]     # this process's streams
        self.val_rows = eval_rows(val, config.batch, config.seq_len)
        self.test_rows = eval_rows(test, config.batch, config.seq_len) if len(test) else None
        total = (config.steps if config.steps is not None
                 else max(1, math.ceil(config.epochs * self.batches_per_epoch)))
        self.metric = "bpc" if self.vocab.kind == "char" else "ppl"
        self.state = None
        torch.manual_seed(config.seed)
        self._start(LanguageModel(len(self.vocab), config), total, config.eval_every)

    # -- setup ------------------------------------------------------------------------------
    def _vocabulary(self) -> Vocabulary:
        if self.payload is None:
            return Vocabulary.build(self.corpus.text, self.cfg.tokens, self.cfg.vocab_size)
        vocab = Vocabulary.from_json(self.payload["vocab"])
        missing = vocab.unknown(self.corpus.text)
        if missing:
            shown = ", ".join(repr(t) for t in missing[:10]) + (", …" if len(missing) > 10 else "")
            raise CorpusError(f"vocabulary mismatch: the data has {len(missing)} tokens that "
                              f"the run's vocabulary lacks ({shown}); "
                              "resume with the data the run was started on")
        if self.payload["corpus_sha256"] != self.corpus.sha256:
            raise CorpusError("the data differs from the data the run was started on "
                              f"(sha256 {self.corpus.sha256[:12]}… vs "
                              f"{self.payload['corpus_sha256'][:12]}…); resume needs the same "
                              "files in the same order")
        return vocab

    def _restore_extra(self, payload: dict) -> None:
        share = self.cfg.batch // self.world
        hidden = [h[:, self.rank * share:(self.rank + 1) * share].clone()
                  for h in payload["hidden"]]
        self.state = state_from_tensors(hidden, self.cfg.cell)

    def _payload_extra(self) -> dict:
        hidden = [self._gather(h, 1) for h in state_tensors(self.state)]
        return {"hidden": hidden, "vocab": self.vocab.to_json(),
                "corpus_sha256": self.corpus.sha256}

    def _run_files(self) -> dict[str, str]:
        return {"vocab.json": self.vocab.to_json() + "\n"}

    def plot_title(self) -> str:
        return f"{self.cfg.cell} {self.cfg.layers}×{self.cfg.hidden}"

    def plot_metric(self) -> str:
        return self.metric

    def _intro(self) -> str:
        cfg = self.cfg
        n = sum(p.numel() for p in self.model.parameters())
        return (f"{'resuming' if self.resume else 'training'} {cfg.cell} "
                f"{cfg.layers}×{cfg.hidden} ({n:,} parameters) on {len(self.corpus.text):,} "
                f"characters from {len(self.corpus.sources)} file(s), vocabulary "
                f"{len(self.vocab):,} {self.vocab.kind}s; {self.total_steps} steps of "
                f"{cfg.batch}×{cfg.seq_len} tokens ({self.batches_per_epoch} per pass)"
                f"{f' on {self.world} processes' if self.world > 1 else ''}; run {self.run_dir}")

    # -- the task ---------------------------------------------------------------------------
    def _batch_loss(self) -> tuple[Tensor, int]:
        k = self.step % self.batches_per_epoch
        if k == 0:
            self.state = None                      # a new pass over the data
        x, y = window(self.rows, k, self.cfg.seq_len)
        logits, self._next_state = self.ddp(x, self.state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        return loss, y.numel()

    def _after_step(self) -> None:
        self.state = detach_state(self._next_state)

    def _train_metrics(self, loss: float) -> dict[str, float]:
        name, value = metric_of(loss, self.vocab.kind)
        return {name: value}

    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        val_loss, _ = evaluate_loss(self.model, self.val_rows, self.cfg.seq_len)
        return val_loss, self._train_metrics(val_loss)

    def _after_validation(self, progress: Progress, improved: bool) -> None:
        if self.rank == 0 and (not self.cfg.quiet or self.step == self.total_steps):
            text = "".join(generate(self.model, self.vocab, length=self.cfg.sample_length,
                                    temperature=0.8, seed=self.cfg.seed + self.step))
            progress.write(f"--- sample at step {self.step} ---\n{text}\n---")

    def _result(self, progress: Progress) -> TrainResult:
        test_loss = test_metric = None
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.test_rows is not None and self.rank == 0 and best.exists():
            model = LanguageModel(len(self.vocab), self.cfg)
            model.load_state_dict(load_checkpoint(best)["model"])
            test_loss, _ = evaluate_loss(model, self.test_rows, self.cfg.seq_len)
            test_metric = metric_of(test_loss, self.vocab.kind)[1]
            self._log({"step": self.step, "test_loss": test_loss,
                       f"test_{self.metric}": test_metric, "checkpoint_step": self.best_step})
        result = TrainResult(self.run_dir, self.step, self.best_step, self.best_val, self.metric,
                             metric_of(self.best_val, self.vocab.kind)[1], test_loss, test_metric)
        if self.rank == 0:
            test = (f"; test {self.metric} {test_metric:.4f} (best checkpoint)"
                    if test_metric is not None else "")
            progress.write(f"done: best validation {self.metric} {result.best_val_metric:.4f} "
                           f"at step {self.best_step}{test}. Sample more with "
                           f"`lstmkit sample {self.run_dir}`")
        return result


def resume_config(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The configuration of the run in ``run_dir`` with the fields of ``overrides`` that
    may change on resume (steps, epochs, eval_every, log_every, sample_length, quiet);
    --steps and --epochs replace each other."""
    cfg = resume_run_config(run_dir, overrides, TrainConfig, RESUMABLE)
    if "steps" in overrides or "epochs" in overrides:
        cfg.steps, cfg.epochs = overrides.get("steps"), overrides.get("epochs")
        cfg.validate()
    return cfg
