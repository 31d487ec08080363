r"""Sequence classification with a recurrent network: ``lstmkit classify``.

    from lstmkit.train.classify import ClassifyConfig, ClassifyTrainer
    result = ClassifyTrainer(ClassifyConfig(dataset="GunPoint"), "runs/gp").fit()

Each case is a sequence (L_i, C) — any length, one or more channels. The cases of a batch
go through the recurrent stack as one ``PackedSequence`` (no padding enters the
computation), and the class scores come from the final hidden state::

    h = [h_n of the last layer, forward ‖ backward]     (pool="last", the default)
    h = mean_t of the last layer's outputs              (pool="mean")
    logits = W h + b,    loss = cross-entropy

Channels are standardised with the mean and standard deviation of the training cases.
The best checkpoint is chosen on a stratified validation part held out from the training
file (``val_fraction``); the test file is scored once, with that checkpoint, at the end —
never used to pick anything.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

from ..data.ucr import (
    BUILTIN_SETS,
    SequenceDataError,
    SequenceSet,
    Standardizer,
    builtin_set,
    read_sequences,
    stratified_split,
)
from .checkpoint import CheckpointError, load_checkpoint
from .config import SequenceTaskConfig
from .loop import TrainerBase, load_run, resume_run_config
from .model import build_recurrent
from .progress import Progress

POOLS = ("last", "mean")
RESUMABLE = ("steps", "eval_every", "log_every", "quiet")


@dataclass
class ClassifyConfig(SequenceTaskConfig):
    """Everything that decides a classification run (saved as ``config.json``)."""

    # data
    train: str | None = None               # training file (.ts, .csv, .tsv)
    test: str | None = None                # test file
    dataset: str = "GunPoint"              # built-in set when no files are given
    val_fraction: float = 0.2              # of the training cases, stratified, for checkpoints
    bidirectional: bool = False
    pool: str = "last"                     # class scores from the last state or the mean

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid classify configuration: {what}")

        self._check_common(need)
        need(self.pool in POOLS, f"pool must be one of {POOLS}, got {self.pool!r}")
        need((self.train is None) == (self.test is None), "give both --train and --test")
        need(self.train is not None or self.dataset.lower() in {k.lower() for k in BUILTIN_SETS},
             f"dataset must be one of {', '.join(BUILTIN_SETS)}, got {self.dataset!r}")
        need(0 < self.val_fraction < 0.5, "val_fraction must be in (0, 0.5): the best "
                                          "checkpoint is chosen on held-out training cases")
        for name in ("layers", "hidden", "steps", "batch", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def name(self) -> str:
        return Path(self.train).stem if self.train else self.dataset


def load_sets(cfg: ClassifyConfig) -> tuple[SequenceSet, SequenceSet]:
    if cfg.train is None:
        return builtin_set(cfg.dataset, "train"), builtin_set(cfg.dataset, "test")
    return read_sequences(cfg.train), read_sequences(cfg.test)


class SequenceClassifier(nn.Module):
    """A list of (L_i, C) tensors or a PackedSequence → class scores (B, K)."""

    def __init__(self, channels: int, classes: int, cfg: ClassifyConfig):
        super().__init__()
        self.pool = cfg.pool
        self.rnn = build_recurrent(cfg.cell, channels, cfg.hidden, cfg.layers,
                                   dropout=cfg.dropout, bidirectional=cfg.bidirectional,
                                   peephole=cfg.peephole, coupled=cfg.coupled,
                                   backend=cfg.backend)
        self.directions = 2 if cfg.bidirectional else 1
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.directions * cfg.hidden, classes)

    def forward(self, x: list[Tensor] | PackedSequence) -> Tensor:
        if not isinstance(x, PackedSequence):
            x = pack_sequence(list(x), enforce_sorted=False)
        out, state = self.rnn(x)
        if self.pool == "mean":
            padded, lengths = pad_packed_sequence(out, batch_first=True)   # (B, T, D·H)
            h = padded.sum(1) / lengths[:, None].to(padded.dtype)
        else:
            h_n = state[0] if isinstance(state, tuple) else state          # (layers·D, B, H)
            h = torch.cat(list(h_n[-self.directions:]), dim=1)             # (B, D·H)
        return self.head(self.drop(h))


@dataclass
class ClassifyResult:
    run_dir: Path
    best_step: int
    best_val_loss: float
    val_accuracy: float
    test_accuracy: float
    confusion: np.ndarray                  # rows: true class, columns: predicted
    classes: list[str]


def _sha256(*sets: SequenceSet) -> str:
    h = hashlib.sha256()
    for s in sets:
        for seq, label in zip(s.sequences, s.labels):
            h.update(np.ascontiguousarray(seq).tobytes())
            h.update(label.encode())
    return h.hexdigest()


@torch.no_grad()
def predict_logits(model: nn.Module, sequences: list[Tensor], batch: int = 256) -> Tensor:
    """Class scores of every sequence, in eval mode, ``batch`` sequences at a time."""
    was = model.training
    model.eval()
    out = torch.cat([model(sequences[i:i + batch]) for i in range(0, len(sequences), batch)])
    model.train(was)
    return out


def confusion_matrix(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


class ClassifyTrainer(TrainerBase):
    """Train a sequence classifier into ``run_dir``, then score the test set once."""

    unit, rate_key, command = "seq", "sequences_per_s", "lstmkit classify"

    def __init__(self, config: ClassifyConfig, run_dir: str | Path, *, resume: bool = False):
        super().__init__(config, run_dir, resume=resume)
        train, test = load_sets(config)
        if train.channels != test.channels:
            raise SequenceDataError(f"the training cases have {train.channels} channels, the "
                                    f"test cases {test.channels}")
        self.classes = sorted(set(train.labels))
        unknown = sorted(set(test.labels) - set(self.classes))
        if unknown:
            raise SequenceDataError(f"the test set has classes the training set lacks: "
                                    f"{unknown}")
        if len(self.classes) < 2:
            raise SequenceDataError(f"the training set has one class ({self.classes}); "
                                    "classification needs two or more")
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} sequences) must be divisible by the "
                             f"number of processes ({self.world})")
        self.data_sha256 = _sha256(train, test)
        if self.payload is not None and self.payload.get("data_sha256") != self.data_sha256:
            raise SequenceDataError("the data differs from the data the run was started on; "
                                    "resume needs the same files")
        fit_idx, val_idx = stratified_split(train.labels, config.val_fraction, config.seed)
        fit = SequenceSet([train.sequences[i] for i in fit_idx],
                          [train.labels[i] for i in fit_idx])
        self.scaler = Standardizer.fit(fit)
        index = {c: k for k, c in enumerate(self.classes)}

        def tensors(seqs: list[np.ndarray]) -> list[Tensor]:
            return [torch.from_numpy(s) for s in seqs]
        scaled = tensors(self.scaler.apply(train))
        self.x_fit = [scaled[i] for i in fit_idx]
        self.y_fit = torch.tensor([index[train.labels[i]] for i in fit_idx])
        self.x_val = [scaled[i] for i in val_idx]
        self.y_val = torch.tensor([index[train.labels[i]] for i in val_idx])
        self.x_test = tensors(self.scaler.apply(test))
        self.y_test = torch.tensor([index[v] for v in test.labels])
        self.train_set, self.test_set = train, test
        torch.manual_seed(config.seed)
        model = SequenceClassifier(train.channels, len(self.classes), config)
        self._start(model, config.steps, config.eval_every or max(1, config.steps // 20))

    def _batch_loss(self) -> tuple[Tensor, int]:
        share = self.cfg.batch // self.world
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        idx = torch.randint(len(self.x_fit), (self.cfg.batch,), generator=g)
        idx = idx[self.rank * share:(self.rank + 1) * share].tolist()
        logits = self.ddp([self.x_fit[i] for i in idx])
        return nn.functional.cross_entropy(logits, self.y_fit[idx]), share

    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        logits = predict_logits(self.model, self.x_val)
        loss = nn.functional.cross_entropy(logits, self.y_val).item()
        acc = (logits.argmax(1) == self.y_val).double().mean().item()
        return loss, {"accuracy": acc}

    def _payload_extra(self) -> dict:
        return {"classes": json.dumps(self.classes), "data_sha256": self.data_sha256,
                "scaler": json.dumps(self.scaler.to_dict())}

    def _run_files(self) -> dict[str, str]:
        about = {"classes": self.classes, "channels": self.train_set.channels,
                 "train_cases": len(self.train_set), "fit_cases": len(self.x_fit),
                 "val_cases": len(self.x_val), "test_cases": len(self.test_set),
                 "lengths": [min(self.train_set.lengths), max(self.train_set.lengths)],
                 "train_source": self.train_set.source, "test_source": self.test_set.source}
        return {"data.json": json.dumps(about, indent=1) + "\n"}

    def _intro(self) -> str:
        cfg = self.cfg
        n = sum(p.numel() for p in self.model.parameters())
        lo, hi = min(self.train_set.lengths), max(self.train_set.lengths)
        kind = ("bidirectional " if cfg.bidirectional else "") + cfg.cell
        return (f"{'resuming' if self.resume else 'training'} {kind} {cfg.layers}×"
                f"{cfg.hidden} ({n:,} parameters) on {cfg.name}: "
                f"{len(self.classes)} classes, {self.train_set.channels} channel(s), length "
                f"{lo if lo == hi else f'{lo}–{hi}'}; {len(self.x_fit)} training and "
                f"{len(self.x_val)} validation cases, {len(self.x_test)} test cases scored "
                f"at the end; {self.total_steps} steps of {cfg.batch}; run {self.run_dir}")

    def plot_title(self) -> str:
        return f"{self.cfg.name}: {self.cfg.cell} {self.cfg.layers}×{self.cfg.hidden}"

    def _result(self, progress: Progress) -> ClassifyResult:
        model = SequenceClassifier(self.train_set.channels, len(self.classes), self.cfg)
        best = load_checkpoint(self.ckpt_dir / "best.pt")
        model.load_state_dict(best["model"])
        val_logits = predict_logits(model, self.x_val)
        val_acc = (val_logits.argmax(1) == self.y_val).double().mean().item()
        pred = predict_logits(model, self.x_test).argmax(1)
        test_acc = (pred == self.y_test).double().mean().item()
        matrix = confusion_matrix(self.y_test.numpy(), pred.numpy(), len(self.classes))
        result = ClassifyResult(self.run_dir, self.best_step, self.best_val, val_acc, test_acc,
                                matrix, self.classes)
        if self.rank == 0:
            write_classify_report(self.run_dir, result, self.cfg, self.test_set.labels,
                                  [self.classes[k] for k in pred.tolist()])
            progress.write(f"test accuracy {test_acc:.4f} ({int((pred == self.y_test).sum())}"
                           f"/{len(pred)}) with the checkpoint of step {self.best_step} "
                           f"(validation accuracy {val_acc:.4f})\n"
                           + format_confusion(matrix, self.classes)
                           + f"\nreport: {self.run_dir / 'report.md'}")
        self._log({"step": self.step, "checkpoint_step": self.best_step,
                   "test_accuracy": test_acc})
        return result


def format_confusion(matrix: np.ndarray, classes: list[str]) -> str:
    w = max(6, *(len(c) for c in classes)) + 1
    lines = ["confusion matrix (rows: true, columns: predicted):",
             " " * w + "".join(f"{c:>{w}}" for c in classes)]
    for c, row in zip(classes, matrix):
        lines.append(f"{c:>{w}}" + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)


def write_classify_report(run_dir: Path, result: ClassifyResult, cfg: ClassifyConfig,
                          true: list[str], pred: list[str]) -> None:
    """report.json, report.md and predictions.csv (``confusion.png``:
    :func:`lstmkit.viz.runs.confusion_png`)."""
    run_dir = Path(run_dir)
    summary = {"dataset": cfg.name, "config": asdict(cfg), "classes": result.classes,
               "checkpoint_step": result.best_step, "val_accuracy": result.val_accuracy,
               "test_accuracy": result.test_accuracy, "confusion": result.confusion.tolist()}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [f"# Classification of {cfg.name}", "",
          f"Test accuracy **{result.test_accuracy:.4f}** with the checkpoint of step "
          f"{result.best_step}, chosen by validation loss (validation accuracy "
          f"{result.val_accuracy:.4f}).", "", "Confusion matrix (rows: true class, columns: "
          "predicted):", "", "| true \\ predicted | " + " | ".join(result.classes) + " |",
          "|---" * (len(result.classes) + 1) + "|"]
    for c, row in zip(result.classes, result.confusion):
        md.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "true", "predicted"])
        w.writerows((i, t, p) for i, (t, p) in enumerate(zip(true, pred)))


def load_classifier(run_dir: str | Path, which: str = "best") -> tuple[SequenceClassifier,
                                                                       ClassifyConfig,
                                                                       Standardizer, list[str]]:
    """(model, configuration, standardiser, classes) of a ``classify`` run."""
    cfg, payload = load_run(run_dir, ClassifyConfig, "classify", which)
    try:
        classes = json.loads(payload["classes"])
        scaler = Standardizer.from_dict(json.loads(payload["scaler"]))
        model = SequenceClassifier(len(scaler.mean), len(classes), cfg)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint of {run_dir} is not a classify run's: "
                              f"{e}") from None
    return model.eval(), cfg, scaler, classes


def resume_classify_config(run_dir: str | Path, overrides: dict) -> ClassifyConfig:
    """The configuration of the run in ``run_dir``, with the fields of ``overrides`` that
    may change on resume (see :data:`RESUMABLE`)."""
    return resume_run_config(run_dir, overrides, ClassifyConfig, RESUMABLE)
