r"""Polyphonic music: a recurrent model of Bach chorales as 88-key piano rolls
(``lstmkit music train | evaluate | sample``).

    from lstmkit.train.music import MusicConfig, MusicTrainer
    result = MusicTrainer(MusicConfig(cell="gru", hidden=40), "runs/bach").fit()
    result.test_nll                     # nats per time step on the test pieces

The model reads frame x_{t−1} (an all-zero frame before the first) and gives each of the
88 keys an independent probability of sounding at step t::

    h_t = cell(P x_{t−1}, h_{t−1})      P: Linear(88 → H) for MUT1/MUT2 (or ``project``),
    p(x_t | x_{<t}) = ∏_k σ(W h_t + b)_k^{x_tk} (1 − σ(W h_t + b)_k)^{1 − x_tk}

— the multi-label (sigmoid) output layer Chung, Gulcehre, Cho & Bengio (2014) use for music,
as in Boulanger-Lewandowski, Bengio & Vincent (2012)'s RNN baseline. MUT1 and MUT2 add
their input to an H-vector (Jozefowicz et al. 2015), so they need an input of size H:
a linear projection 88 → H (with bias) goes in front of them; the other cells read the
88-key frame directly unless ``project`` asks for the projection too.

**The score**, NLL per time step: for every predicted frame, the sum over the 88 keys of
the Bernoulli negative log-likelihood (nats), averaged over all frames of the split's
pieces pooled (a long piece weighs by its length). Every frame is predicted, the first one
from the zero frame, so a piece of T steps contributes T terms. This is the quantity
Boulanger-Lewandowski et al. report as "log-likelihood" per time step and Chung et al. as
negative log-likelihood (their Table 2); whether their averages pool frames or
average per sequence first is not stated in what we could read, so compare the figures as
the same unit, not to the last digit.

Training: minibatches of ``batch`` whole pieces drawn at random (seeded by step, so a
resumed run draws the same ones), padded to the longest and masked; the loss is the batch's
NLL per step. The best checkpoint is chosen by validation NLL/step; the test pieces are
scored once, with it, at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.music import KEYS, ChoraleSet, MusicDataError, grid_of, load_chorales, split_pieces
from .checkpoint import CheckpointError, load_checkpoint
from .config import SequenceTaskConfig
from .loop import TrainerBase, load_run, resume_run_config
from .model import add_forget_bias, build_recurrent
from .progress import Progress

RESUMABLE = ("steps", "eval_every", "log_every", "quiet")


@dataclass
class MusicConfig(SequenceTaskConfig):
    """Everything that decides a music run (saved as ``config.json``)."""

    # data
    grid: float = 1.0                      # quarter notes per step: 1.0 (default) or 0.5
    select: str | None = None              # shell pattern over corpus names; None = all
    valid_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0                    # the split; `seed` is the model's
    # model
    hidden: int = 64
    forget_bias: float = 0.0               # LSTM: added to the forget-gate biases at init
    project: bool = False                  # Linear(88 → H) in front (always for mut1/mut2)
    # optimisation
    steps: int = 2000
    batch: int = 16                        # pieces per step

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid music configuration: {what}")

        self._check_common(need)
        try:
            self.grid = grid_of(self.grid)
        except MusicDataError as e:
            need(False, str(e))
        need(not self.forget_bias or (self.cell == "lstm" and not self.coupled),
             f"forget_bias needs an LSTM with a forget gate (not coupled); got "
             f"cell={self.cell!r}, coupled={self.coupled}")
        for name in ("layers", "hidden", "steps", "batch", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(0 < self.valid_fraction < 0.5 and 0 < self.test_fraction < 0.5,
             "valid_fraction and test_fraction must be in (0, 0.5)")

    @property
    def projected(self) -> bool:
        return self.project or self.cell in ("mut1", "mut2")


class MusicModel(nn.Module):
    """Frames (B, T, 88) → logits (B, T, 88) of the next frames; see the module docstring."""

    def __init__(self, cfg: MusicConfig):
        super().__init__()
        self.proj = nn.Linear(KEYS, cfg.hidden) if cfg.projected else None
        width = cfg.hidden if cfg.projected else KEYS
        self.rnn = build_recurrent(cfg.cell, width, cfg.hidden, cfg.layers,
                                   dropout=cfg.dropout, peephole=cfg.peephole,
                                   coupled=cfg.coupled, backend=cfg.backend)
        if cfg.forget_bias:
            add_forget_bias(self.rnn, cfg.forget_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, KEYS)

    def forward(self, x: Tensor, state=None):
        if self.proj is not None:
            x = self.proj(x)
        h, state = self.rnn(x, state)
        return self.out(self.drop(h)), state


def batch_tensors(rolls: list[np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask) for whole pieces: targets (B, T, 88) the rolls padded with
    zeros to the longest, inputs the targets shifted one step right (a zero frame first),
    mask (B, T) True on real frames."""
    if not rolls:
        raise MusicDataError("a batch needs at least one piece")
    T = max(len(r) for r in rolls)
    y = torch.zeros(len(rolls), T, KEYS)
    mask = torch.zeros(len(rolls), T, dtype=torch.bool)
    for i, r in enumerate(rolls):
        y[i, :len(r)] = torch.from_numpy(np.asarray(r, dtype=np.float32))
        mask[i, :len(r)] = True
    x = torch.cat([torch.zeros(len(rolls), 1, KEYS), y[:, :-1]], dim=1)
    return x, y, mask


def frame_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, int]:
    """(summed NLL in nats over the masked frames — Bernoulli NLL summed over the keys —,
    number of frames); their quotient is the NLL per time step."""
    per_key = nn.functional.binary_cross_entropy_with_logits(logits, targets,
                                                             reduction="none")
    per_frame = per_key.sum(-1)
    return per_frame[mask].sum(), int(mask.sum())


@torch.no_grad()
def nll_per_step(model: nn.Module, rolls: list[np.ndarray], batch: int = 64) -> float:
    """NLL per time step (nats) of ``model`` over all frames of ``rolls``, pooled."""
    was = model.training
    model.eval()
    total, frames = 0.0, 0
    for i in range(0, len(rolls), batch):
        x, y, mask = batch_tensors(rolls[i:i + batch])
        logits, _ = model(x)
        s, n = frame_nll(logits, y, mask)
        total, frames = total + s.item(), frames + n
    model.train(was)
    if frames == 0:
        raise MusicDataError("no frames to score")
    return total / frames


def base_rate_nll(train: list[np.ndarray], rolls: list[np.ndarray]) -> float:
    """NLL per time step of the model with no memory: key k on with its frequency in the
    ``train`` frames (clipped to [1e-4, 1 − 1e-4]) at every step, independently — the
    floor a recurrent model has to beat."""
    q = np.concatenate(train).mean(0).clip(1e-4, 1 - 1e-4)
    x = np.concatenate(rolls).astype(np.float64)
    return float(-(x * np.log(q) + (1 - x) * np.log(1 - q)).sum(1).mean())


@dataclass
class MusicResult:
    run_dir: Path
    best_step: int
    valid_nll: float
    test_nll: float
    parameters: int


def load_split(cfg: MusicConfig) -> tuple[ChoraleSet, ChoraleSet, ChoraleSet]:
    data = load_chorales(cfg.grid, select=cfg.select)
    tr, va, te = split_pieces(len(data), cfg.valid_fraction, cfg.test_fraction,
                              cfg.split_seed)
    return data.subset(tr), data.subset(va), data.subset(te)


class MusicTrainer(TrainerBase):
    """Train a piano-roll model into ``run_dir``, then score the test pieces once."""

    unit, rate_key, command = "frames", "frames_per_s", "lstmkit music train"

    def __init__(self, config: MusicConfig, run_dir: str | Path, *, resume: bool = False,
                 data: tuple[ChoraleSet, ChoraleSet, ChoraleSet] | None = None):
        """``data``: (train, valid, test) sets to use instead of :func:`load_split`'s."""
        super().__init__(config, run_dir, resume=resume)
        self.train_set, self.valid_set, self.test_set = data or load_split(config)
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} pieces) must be divisible by the "
                             f"number of processes ({self.world})")
        self.data_sha256 = ChoraleSet(
            [*self.train_set.names, "|", *self.valid_set.names, "|", *self.test_set.names],
            [*self.train_set.rolls, np.zeros((0, KEYS)), *self.valid_set.rolls,
             np.zeros((0, KEYS)), *self.test_set.rolls], config.grid).sha256()
        if self.payload is not None and self.payload.get("data_sha256") != self.data_sha256:
            raise MusicDataError("the chorale data or split differs from the one the run was "
                                 "started on; resume needs the same data")
        torch.manual_seed(config.seed)
        self._start(MusicModel(config), config.steps,
                    config.eval_every or max(1, config.steps // 20))

    def _batch_loss(self) -> tuple[Tensor, int]:
        share = self.cfg.batch // self.world
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        idx = torch.randint(len(self.train_set), (self.cfg.batch,), generator=g)
        idx = idx[self.rank * share:(self.rank + 1) * share].tolist()
        x, y, mask = batch_tensors([self.train_set.rolls[i] for i in idx])
        logits, _ = self.ddp(x)
        total, frames = frame_nll(logits, y, mask)
        return total / frames, frames

    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        return nll_per_step(self.model, self.valid_set.rolls), {}

    def _payload_extra(self) -> dict:
        return {"data_sha256": self.data_sha256}

    def _run_files(self) -> dict[str, str]:
        about = {"grid": self.cfg.grid, "keys": KEYS,
                 "pieces": {"train": len(self.train_set), "valid": len(self.valid_set),
                            "test": len(self.test_set)},
                 "frames": {"train": self.train_set.frames, "valid": self.valid_set.frames,
                            "test": self.test_set.frames},
                 "test_pieces": self.test_set.names, "valid_pieces": self.valid_set.names}
        return {"data.json": json.dumps(about, indent=1) + "\n"}

    def _intro(self) -> str:
        cfg = self.cfg
        n = sum(p.numel() for p in self.model.parameters())
        proj = " after a 88→H projection" if cfg.projected else ""
        fb = f", forget bias {cfg.forget_bias:g}" if cfg.forget_bias else ""
        return (f"{'resuming' if self.resume else 'training'} {cfg.cell} {cfg.layers}×"
                f"{cfg.hidden}{proj}{fb} ({n:,} parameters) on Bach chorales "
                f"(grid {cfg.grid:g} quarter): {len(self.train_set)} training, "
                f"{len(self.valid_set)} validation pieces, {len(self.test_set)} test pieces "
                f"scored at the end; {self.total_steps} steps of {cfg.batch} pieces; "
                f"run {self.run_dir}")

    def plot_title(self) -> str:
        return f"Bach chorales: {self.cfg.cell} {self.cfg.layers}×{self.cfg.hidden}"

    def _result(self, progress: Progress) -> MusicResult:
        model = MusicModel(self.cfg)
        model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt")["model"])
        valid = nll_per_step(model, self.valid_set.rolls)
        test = nll_per_step(model, self.test_set.rolls)
        n = sum(p.numel() for p in model.parameters())
        result = MusicResult(self.run_dir, self.best_step, valid, test, n)
        if self.rank == 0:
            report = {"config": asdict(self.cfg), "checkpoint_step": self.best_step,
                      "valid_nll_per_step": valid, "test_nll_per_step": test,
                      "parameters": n, "test_pieces": len(self.test_set),
                      "test_frames": self.test_set.frames}
            (self.run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            progress.write(f"test NLL {test:.4f} nats per time step ({self.test_set.frames} "
                           f"frames of {len(self.test_set)} pieces) with the checkpoint of "
                           f"step {self.best_step} (validation {valid:.4f})")
        self._log({"step": self.step, "checkpoint_step": self.best_step,
                   "test_nll": test, "valid_nll": valid})
        return result


def load_music_run(run_dir: str | Path, which: str = "best") -> tuple[MusicModel, MusicConfig]:
    """(model in eval mode, configuration) of a ``music train`` run."""
    cfg, payload = load_run(run_dir, MusicConfig, "music", which)
    try:
        model = MusicModel(cfg)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint of {run_dir} is not a music run's: "
                              f"{e}") from None
    return model.eval(), cfg


def evaluate_run(run_dir: str | Path, split: str = "test",
                 which: str = "best") -> tuple[float, int, int]:
    """(NLL per time step, pieces, frames) of a run's checkpoint on its own ``split``
    (``train``, ``valid`` or ``test``)."""
    model, cfg = load_music_run(run_dir, which)
    parts = dict(zip(("train", "valid", "test"), load_split(cfg)))
    if split not in parts:
        raise ValueError(f"split must be one of {tuple(parts)}, got {split!r}")
    data = parts[split]
    return nll_per_step(model, data.rolls), len(data), data.frames


@torch.no_grad()
def sample_roll(model: MusicModel, steps: int, *, temperature: float = 1.0,
                seed: int = 0) -> np.ndarray:
    """A (steps, 88) roll drawn from the model frame by frame: each key an independent
    Bernoulli draw with probability σ(logit / temperature), fed back as the next input."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    g = torch.Generator().manual_seed(seed)
    x, state, frames = torch.zeros(1, 1, KEYS), None, []
    for _ in range(steps):
        logits, state = model(x, state)
        p = torch.sigmoid(logits[0, -1] / temperature)
        frame = (torch.rand(KEYS, generator=g) < p).float()
        frames.append(frame)
        x = frame.view(1, 1, KEYS)
    return torch.stack(frames).numpy().astype(np.uint8)


def resume_music_config(run_dir: str | Path, overrides: dict) -> MusicConfig:
    """The configuration of the run in ``run_dir`` with the fields of ``overrides`` that may
    change on resume (see :data:`RESUMABLE`)."""
    return resume_run_config(run_dir, overrides, MusicConfig, RESUMABLE)


def n_parameters(cfg: MusicConfig) -> int:
    return sum(p.numel() for p in MusicModel(cfg).parameters())


def match_hidden(cfg: MusicConfig, target: int) -> int:
    """The hidden size whose model has the parameter count closest to ``target``."""
    from dataclasses import replace

    def count(h: int) -> int:
        return n_parameters(replace(cfg, hidden=h))
    h = 1
    while count(h) < target:
        h += 1
    return h if h == 1 or count(h) - target <= target - count(h - 1) else h - 1


__all__ = ["MusicConfig", "MusicModel", "MusicTrainer", "MusicResult", "batch_tensors",
           "frame_nll", "nll_per_step", "sample_roll", "load_music_run", "evaluate_run",
           "resume_music_config", "match_hidden", "n_parameters", "base_rate_nll"]
