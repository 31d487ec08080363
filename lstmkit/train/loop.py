"""The training loop every ``lstmkit`` job shares: language models (``train``), forecasters
(``forecast``) and sequence classifiers (``classify``).

:class:`TrainerBase` owns what does not depend on the task: the run directory
(``config.json``, ``metrics.jsonl``, ``checkpoints/last.pt`` and ``best.pt`` in the format
of :mod:`lstmkit.train.checkpoint`), the learning-rate schedule, gradient clipping, the
progress bar, validation every ``eval_every`` steps with the best checkpoint kept by
validation loss, SIGINT/SIGTERM (save, then raise :class:`TrainingInterrupted`), a
non-finite loss (raise :class:`TrainingDiverged`, keeping the last good checkpoint), exact
resume, and data parallelism under ``torchrun`` (DDP over gloo, rank 0 writes).

A task subclass builds ``self.model`` and supplies the batches, the validation and what
else its checkpoints carry (see the hooks marked *task* below).

Plots are not drawn here: a trainer calls the callables in ``on_checkpoint`` (with the
trainer) after each validation's checkpoint, and those in ``after_run`` (with the trainer
and the result) when :meth:`TrainerBase.fit` is done, on rank 0. The ``lstmkit`` command
fills them from :func:`lstmkit.viz.runs.with_plots` (``loss.png``, ``forecast.png``,
``confusion.png``); a trainer used directly writes no PNG unless it is passed to
``with_plots`` too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .progress import Progress


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first."""

    def __init__(self, signame: str, step: int, path: Path, command: str = "lstmkit train"):
        super().__init__(f"{signame} at step {step}: saved {path}; continue with "
                         f"`{command} --resume {path.parent.parent}`")
        self.signame, self.step, self.path = signame, step, path


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


def learning_rate(cfg: Any, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of ``total``; ``cfg`` has
    ``lr``, ``warmup``, ``lr_schedule`` and ``min_lr_ratio``."""
    if cfg.warmup and step <= cfg.warmup:                # linear warm-up from lr/warmup
        return cfg.lr * step / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    # cosine: from lr at the end of warm-up down to lr·min_lr_ratio at the last step
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio)
                     * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


_OWNED_GROUP = []                 # the process group this module started, if any


def dist_setup() -> tuple[int, int]:
    """(rank, world size), starting a gloo process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        _OWNED_GROUP.append(True)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown_distributed() -> None:
    """Tear down the process group that training started (all processes wait for each
    other first), so that no communication thread outlives the interpreter."""
    if _OWNED_GROUP and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
            _OWNED_GROUP.clear()


def resume_run_config(run_dir: str | Path, overrides: dict, config_class: Any,
                      resumable: tuple[str, ...]) -> Any:
    """The configuration saved in ``run_dir``, with the fields of ``overrides`` that may
    change on resume (``resumable``); a different value of any other field is an error.
    A field the saved file lacks takes ``config_class.ABSENT_MEANS[field]`` if given (what
    runs saved before the field existed did), else the field's default."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an lstmkit run directory (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    for k, v in getattr(config_class, "ABSENT_MEANS", {}).items():
        cfg.setdefault(k, v)          # what the run did before the field existed
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)
                if f.default is not dataclasses.MISSING}   # a field newer than the run's file
    fixed = sorted(k for k, v in overrides.items()
                   if k not in resumable and cfg.get(k, defaults.get(k)) != v)
    if fixed:
        raise ValueError(f"cannot change {', '.join(fixed)} when resuming; a resumed run "
                         f"keeps its configuration (only {', '.join(resumable)} may change)")
    cfg.update({k: v for k, v in overrides.items() if k in resumable})
    return config_class.from_dict(cfg)


def load_run(run_dir: str | Path, config_class: Any, kind: str,
             which: str = "best") -> tuple[Any, dict]:
    """(configuration, checkpoint payload) of a finished ``kind`` run (``lstmkit forecast``,
    ``classify``, …): clear errors if ``run_dir`` is not one."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an lstmkit {kind} run (no config.json)")
    try:
        cfg = config_class.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a {kind} configuration: {e}") from None
    return cfg, load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")


class TrainerBase:
    """The shared loop. ``cfg`` is a dataclass with ``lr``, ``lr_schedule``, ``warmup``,
    ``min_lr_ratio``, ``weight_decay``, ``clip``, ``seed``, ``log_every``, ``quiet`` and a
    ``to_json()``; a subclass calls :meth:`_start` once it has built ``self.model``."""

    unit = "items"                        # what the progress bar counts per second
    rate_key = "items_per_s"              # … and its name in metrics.jsonl
    command = "lstmkit train"             # how to resume, for the interruption message

    def __init__(self, config: Any, run_dir: str | Path, *, resume: bool = False):
        self.cfg, self.run_dir, self.resume = config, Path(run_dir), resume
        self.rank, self.world = dist_setup()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.payload = load_checkpoint(self.ckpt_dir / "last.pt") if resume else None
        self._signal: int | None = None
        self._saved = False
        self.on_checkpoint: list[Callable[[TrainerBase], None]] = []
        self.after_run: list[Callable[[TrainerBase, Any], None]] = []

    def _start(self, model: nn.Module, total_steps: int, eval_every: int | None) -> None:
        """Set up model, optimizer, counters and the random state, then restore a resumed
        run's checkpoint."""
        cfg = self.cfg
        self.model = model
        self.ddp = (nn.parallel.DistributedDataParallel(model) if self.world > 1 else model)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.total_steps = total_steps
        self.eval_every = eval_every or max(1, total_steps // 10)
        torch.manual_seed(cfg.seed + 1 + self.rank)                     # dropout, per process
        self.step, self.best_step, self.best_val = 0, 0, math.inf
        if self.payload is not None:
            self._restore(self.payload)

    # -- task hooks -------------------------------------------------------------------------
    def _batch_loss(self) -> tuple[Tensor, int]:
        """*task*: the loss of the next training batch (through ``self.ddp``) and how many
        items (tokens, windows, sequences) it holds."""
        raise TypeError(f"{type(self).__name__} must define _batch_loss")

    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        """*task*: validation loss (lower is better; picks the best checkpoint) and other
        validation metrics to log."""
        raise TypeError(f"{type(self).__name__} must define _validate_loss")

    def _selection(self, val_loss: float, metrics: dict[str, float]) -> float:
        """*task*: what picks the best checkpoint, lower is better (default: the validation
        loss; a tagger uses −F1). ``best_val_loss`` in a checkpoint holds this value."""
        return val_loss

    def _after_step(self) -> None:
        """*task*: after each optimizer step (e.g. detach a carried hidden state)."""

    def _train_metrics(self, loss: float) -> dict[str, float]:
        """*task*: metrics derived from the mean training loss, for the log and the bar."""
        return {}

    def _payload_extra(self) -> dict:
        """*task*: what else a checkpoint holds (tensors, numbers, strings)."""
        return {}

    def _restore_extra(self, payload: dict) -> None:
        """*task*: restore what :meth:`_payload_extra` saved (KeyError etc. = misfit)."""

    def _run_files(self) -> dict[str, str]:
        """*task*: files beside config.json written when the run starts (name → text)."""
        return {}

    def _intro(self) -> str:
        return f"training {type(self.model).__name__}; run {self.run_dir}"

    def _after_validation(self, progress: Progress, improved: bool) -> None:
        """*task*: e.g. print a sample."""

    def plot_title(self) -> str:
        """*task*: the title of the run's loss curve."""
        return type(self.model).__name__

    def plot_metric(self) -> str:
        """*task*: the logged metric the loss curve shows (``train_<m>`` and ``val_<m>``)."""
        return "loss"

    # -- resume and saving -----------------------------------------------------------------
    def _restore(self, payload: dict) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.step, self.best_step = int(payload["step"]), int(payload["best_step"])
            self.best_val = float(payload["best_val_loss"])
            self._restore_extra(payload)
            rng = payload["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint in {self.ckpt_dir} does not fit this "
                                  f"run: {e}") from None
        if len(rng) == self.world:
            torch.set_rng_state(rng[self.rank])
        else:                     # another number of processes: continue, reseeded per step
            torch.manual_seed(self.cfg.seed + 1 + self.rank + self.step)

    def _gather(self, t: Tensor, dim: int) -> Tensor:
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim)

    def _payload(self) -> dict:
        rng = self._gather(torch.get_rng_state()[None], 0)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "best_step": self.best_step,
                "best_val_loss": self.best_val, "rng": list(rng),
                "config": self.cfg.to_json(), "world_size": self.world,
                **self._payload_extra()}

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
        for name, text in self._run_files().items():
            (self.run_dir / name).write_text(text)
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

    def _train_step(self) -> tuple[float, float, int, bool]:
        """One optimizer step; returns the global mean loss, the gradient norm, the items
        in this process's batch, and whether any process was asked to stop."""
        cfg = self.cfg
        lr = learning_rate(cfg, self.step + 1, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, items = self._batch_loss()
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
        self._after_step()
        self.step += 1
        return mean_loss, norm.item(), items, stop > 0

    def _validate(self, progress: Progress) -> None:
        val_loss, metrics = self._validate_loss()
        score = self._selection(val_loss, metrics)
        improved = score < self.best_val
        if improved:
            self.best_val, self.best_step = score, self.step
        self._log({"step": self.step, "val_loss": val_loss,
                   **{f"val_{k}": v for k, v in metrics.items()}})
        self.save("last", "best") if improved else self.save("last")
        self._saved = True
        if self.rank == 0:
            for hook in self.on_checkpoint:
                hook(self)
            shown = "".join(f", {k} {v:.4f}" for k, v in metrics.items())
            progress.write(f"step {self.step}: validation loss {val_loss:.4f}{shown}"
                           f"{' (best)' if improved else ''}")
        self._after_validation(progress, improved)

    def fit(self) -> Any:
        """Train to ``total_steps``; raises :class:`TrainingInterrupted` after saving on
        SIGINT/SIGTERM and :class:`TrainingDiverged` on a non-finite loss."""
        cfg = self.cfg
        self._write_run_files()
        self._saved = self.payload is not None
        progress = Progress(self.total_steps, start=self.step,
                            quiet=cfg.quiet or self.rank != 0, unit=self.unit)
        if self.rank == 0:
            progress.write(self._intro())
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM)}
        window_loss, window_steps, window_items = 0.0, 0, 0
        t0 = time.perf_counter()
        try:
            while self.step < self.total_steps:
                loss, norm, items, stop = self._train_step()
                window_loss, window_steps = window_loss + loss, window_steps + 1
                window_items += items * self.world
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    rate = window_items / (time.perf_counter() - t0)
                    mean = window_loss / window_steps
                    metrics = self._train_metrics(mean)
                    self._log({"step": self.step, "train_loss": mean,
                               **{f"train_{k}": v for k, v in metrics.items()},
                               "lr": learning_rate(cfg, self.step, self.total_steps),
                               "grad_norm": norm, self.rate_key: rate})
                    progress.update(self.step, rate, loss=mean, **metrics)
                    window_loss, window_steps, window_items = 0.0, 0, 0
                    t0 = time.perf_counter()
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    started = time.perf_counter()
                    self._validate(progress)
                    t0 += time.perf_counter() - started    # the rate counts training only
                if stop:
                    name = signal.Signals(self._signal or signal.SIGTERM).name
                    path = self.save("last")
                    progress.close()
                    raise TrainingInterrupted(name, self.step, path, self.command)
        finally:
            progress.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        result = self._result(progress)
        if self.rank == 0:
            for hook in self.after_run:
                hook(self, result)
        return result

    def _result(self, progress: Progress) -> Any:
        """*task*: the outcome, e.g. the test score of the best checkpoint."""
        return None
