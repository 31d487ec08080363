"""Training a language model by truncated BPTT, on one process or many (torchrun).

    from lstmkit.train import Trainer, TrainConfig
    result = Trainer(TrainConfig(hidden=128, steps=500), "runs/demo").fit()

The run directory holds ``config.json`` (the resolved configuration), ``vocab.json``,
``metrics.jsonl`` (one JSON object per logged step and per validation), ``loss.png``, and
``checkpoints/last.pt`` and ``checkpoints/best.pt`` (best validation loss so far).

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

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
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
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RESUMABLE, TrainConfig
from .model import (
    LanguageModel,
    detach_state,
    evaluate_loss,
    state_from_tensors,
    state_tensors,
)
from .progress import Progress
from .sample import generate, metric_of


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first."""

    def __init__(self, signame: str, step: int, path: Path):
        super().__init__(f"{signame} at step {step}: saved {path}; continue with "
                         f"`lstmkit train --resume {path.parent.parent}`")
        self.signame, self.step, self.path = signame, step, path


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


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


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of ``total``."""
    if cfg.warmup and step <= cfg.warmup:                # linear warm-up from lr/warmup
        return cfg.lr * step / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    # cosine: from lr at the end of warm-up down to lr·min_lr_ratio at the last step
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio)
                     * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


_OWNED_GROUP = []                 # the process group this module started, if any


def _dist_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        _OWNED_GROUP.append(True)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Train ``config`` into ``run_dir``; ``resume=True`` continues the run found there."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, resume: bool = False):
        self.cfg, self.run_dir, self.resume = config, Path(run_dir), resume
        self.rank, self.world = _dist_setup()
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} streams) must be divisible by the "
                             f"number of processes ({self.world})")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.payload = load_checkpoint(self.ckpt_dir / "last.pt") if resume else None
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
        self.total_steps = (config.steps if config.steps is not None
                            else max(1, math.ceil(config.epochs * self.batches_per_epoch)))
        self.eval_every = config.eval_every or max(1, self.total_steps // 10)
        self.metric = "bpc" if self.vocab.kind == "char" else "ppl"

        torch.manual_seed(config.seed)
        self.model = LanguageModel(len(self.vocab), config)
        self.ddp = (nn.parallel.DistributedDataParallel(self.model) if self.world > 1
                    else self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        torch.manual_seed(config.seed + 1 + self.rank)                 # dropout, per process
        self.step, self.best_step, self.best_val = 0, 0, math.inf
        self.state = None
        self._signal: int | None = None
        if self.payload is not None:
            self._restore(self.payload)

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

    def _restore(self, payload: dict) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.step, self.best_step = int(payload["step"]), int(payload["best_step"])
            self.best_val = float(payload["best_val_loss"])
            hidden = [h[:, self.rank * self._share:(self.rank + 1) * self._share].clone()
                      for h in payload["hidden"]]
            rng = payload["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint in {self.ckpt_dir} does not fit this "
                                  f"run: {e}") from None
        self.state = state_from_tensors(hidden, self.cfg.cell)
        if len(rng) == self.world:
            torch.set_rng_state(rng[self.rank])
        else:                     # another number of processes: continue, reseeded per step
            torch.manual_seed(self.cfg.seed + 1 + self.rank + self.step)

    @property
    def _share(self) -> int:
        return self.cfg.batch // self.world

    # -- saving -----------------------------------------------------------------------------
    def _gather(self, t: Tensor, dim: int) -> Tensor:
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim)

    def _payload(self) -> dict:
        hidden = [self._gather(h, 1) for h in state_tensors(self.state)]
        rng = self._gather(torch.get_rng_state()[None], 0)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "best_step": self.best_step,
                "best_val_loss": self.best_val, "hidden": hidden, "rng": list(rng),
                "config": self.cfg.to_json(), "vocab": self.vocab.to_json(),
                "corpus_sha256": self.corpus.sha256, "world_size": self.world}

    def save(self, *names: str) -> Path:
        """Write the current state as ``checkpoints/<name>.pt`` for each name (rank 0)."""
        payload = self._payload()                   # every rank joins the gathers
        path = self.ckpt_dir / f"{names[0]}.pt"
        if self.rank == 0:
            for name in names:
                save_checkpoint(payload, self.ckpt_dir / f"{name}.pt")
        return path

    def _write_run_files(self) -> None:
        if self.rank:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(self.cfg.to_json() + "\n")
        (self.run_dir / "vocab.json").write_text(self.vocab.to_json() + "\n")
        metrics = self.run_dir / "metrics.jsonl"
        if self.resume and metrics.exists():        # drop lines logged after the checkpoint
            keep = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in keep))
        elif not self.resume:
            metrics.write_text("")

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _plot(self) -> None:
        if self.rank:
            return
        from ..viz.curves import plot_loss_curve
        path = self.run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        try:
            plot_loss_curve(records, self.run_dir / "loss.png", metric=self.metric,
                            title=f"{self.cfg.cell} {self.cfg.layers}×{self.cfg.hidden}")
        except ImportError as e:                   # matplotlib missing: no PNG, say so once
            if not getattr(self, "_warned_plot", False):
                print(f"note: no loss.png ({e})")
                self._warned_plot = True

    # -- the loop ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:               # asked twice: stop now, unsaved
            raise KeyboardInterrupt
        self._signal = signum

    def _allreduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def _train_step(self) -> tuple[float, float, bool]:
        """One optimizer step; returns the global mean loss, the gradient norm, and
        whether any process was asked to stop."""
        cfg = self.cfg
        k = self.step % self.batches_per_epoch
        if k == 0:
            self.state = None                      # a new pass over the data
        x, y = window(self.rows, k, cfg.seq_len)
        lr = learning_rate(cfg, self.step + 1, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, state = self.ddp(x, self.state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(),
                                        cfg.clip if cfg.clip > 0 else math.inf)
        loss_sum, stop = self._allreduce([loss.item(), float(self._signal is not None)])
        mean_loss = loss_sum / self.world
        if not (math.isfinite(mean_loss) and math.isfinite(norm.item())):
            raise TrainingDiverged(
                f"the loss became {mean_loss} (gradient norm {norm.item()}) at step "
                f"{self.step + 1}; stopped without saving it. The last good checkpoint is "
                f"{self.ckpt_dir / 'last.pt'} (step {self.step if self._saved else 'none'}); "
                "try a lower --lr or a tighter --clip")
        self.optimizer.step()
        self.state = detach_state(state)
        self.step += 1
        return mean_loss, norm.item(), stop > 0

    def _validate(self, progress: Progress) -> None:
        val_loss, _ = evaluate_loss(self.model, self.val_rows, self.cfg.seq_len)
        name, value = metric_of(val_loss, self.vocab.kind)
        improved = val_loss < self.best_val
        if improved:
            self.best_val, self.best_step = val_loss, self.step
        self._log({"step": self.step, "val_loss": val_loss, f"val_{name}": value})
        self.save("last", "best") if improved else self.save("last")
        self._saved = True
        self._plot()
        if self.rank == 0:
            mark = " (best)" if improved else ""
            progress.write(f"step {self.step}: validation loss {val_loss:.4f}, "
                           f"{name} {value:.4f}{mark}")
            if not self.cfg.quiet or self.step == self.total_steps:
                text = "".join(generate(self.model, self.vocab, length=self.cfg.sample_length,
                                        temperature=0.8, seed=self.cfg.seed + self.step))
                progress.write(f"--- sample at step {self.step} ---\n{text}\n---")

    def fit(self) -> TrainResult:
        """Train to ``total_steps``; raises :class:`TrainingInterrupted` after saving on
        SIGINT/SIGTERM and :class:`TrainingDiverged` on a non-finite loss."""
        cfg = self.cfg
        self._write_run_files()
        self._saved = self.payload is not None
        quiet = cfg.quiet or self.rank != 0
        progress = Progress(self.total_steps, start=self.step, quiet=quiet)
        if self.rank == 0:
            n = sum(p.numel() for p in self.model.parameters())
            progress.write(
                f"{'resuming' if self.resume else 'training'} {cfg.cell} "
                f"{cfg.layers}×{cfg.hidden} ({n:,} parameters) on {len(self.corpus.text):,} "
                f"characters from {len(self.corpus.sources)} file(s), vocabulary "
                f"{len(self.vocab):,} {self.vocab.kind}s; {self.total_steps} steps of "
                f"{cfg.batch}×{cfg.seq_len} tokens ({self.batches_per_epoch} per pass)"
                f"{f' on {self.world} processes' if self.world > 1 else ''}; run {self.run_dir}")
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM)}
        window_loss, window_steps, t0 = 0.0, 0, time.perf_counter()
        try:
            while self.step < self.total_steps:
                loss, norm, stop = self._train_step()
                window_loss, window_steps = window_loss + loss, window_steps + 1
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    tok_s = window_steps * cfg.batch * cfg.seq_len / elapsed
                    mean = window_loss / window_steps
                    name, value = metric_of(mean, self.vocab.kind)
                    self._log({"step": self.step, "train_loss": mean, f"train_{name}": value,
                               "lr": learning_rate(cfg, self.step, self.total_steps),
                               "grad_norm": norm, "tokens_per_s": tok_s})
                    progress.update(self.step, tok_s, loss=mean, **{name: value})
                    window_loss, window_steps, t0 = 0.0, 0, time.perf_counter()
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    started = time.perf_counter()
                    self._validate(progress)
                    t0 += time.perf_counter() - started    # tokens/s counts training only
                if stop:
                    name = signal.Signals(self._signal or signal.SIGTERM).name
                    path = self.save("last")
                    progress.close()
                    raise TrainingInterrupted(name, self.step, path)
        finally:
            progress.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return self._result(progress)

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


def shutdown_distributed() -> None:
    """Tear down the process group that training started (all processes wait for each
    other first), so that no communication thread outlives the interpreter."""
    if _OWNED_GROUP and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
            _OWNED_GROUP.clear()


def resume_config(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The configuration of the run in ``run_dir`` with the fields of ``overrides`` that
    may change on resume (steps, epochs, eval_every, log_every, sample_length, quiet)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an lstmkit run directory (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    fixed = sorted(k for k, v in overrides.items() if k not in RESUMABLE and cfg.get(k) != v)
    if fixed:
        raise ValueError(f"cannot change {', '.join(fixed)} when resuming; a resumed run "
                         f"keeps its configuration (only {', '.join(RESUMABLE)} may change)")
    if "steps" in overrides or "epochs" in overrides:
        cfg["steps"], cfg["epochs"] = overrides.get("steps"), overrides.get("epochs")
    cfg.update({k: v for k, v in overrides.items() if k in RESUMABLE and k not in
                ("steps", "epochs")})
    return TrainConfig.from_dict(cfg)
