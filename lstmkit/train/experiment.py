"""Long-time-lag experiments: train a cell on a task of :mod:`lstmkit.data.synthetic`, test
it on sequences it never saw, and tabulate cells and seeds against the task's baseline.

    from lstmkit.train.experiment import ExperimentConfig, run_experiment
    result = run_experiment(ExperimentConfig("adding", T=100, cell="lstm"))

Training sequences are drawn fresh for every step from the seed (none is seen twice); a
fixed validation set (drawn from another seed) gives the learning curve and decides when
the task counts as solved; the test set (a third seed, 2560 sequences as in Hochreiter &
Schmidhuber 1997) is scored once at the end. Budgets count training sequences.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit

from ..cells.mut import needs_equal_sizes
from ..data.synthetic import Batch, Task, make_task
from .config import MUT_CELLS
from .model import add_forget_bias
from .variants import GREFF_VARIANTS

CELLS = {"lstm": (lstmkit.LSTM, {}), "peephole": (lstmkit.LSTM, {"peephole": True}),
         "coupled": (lstmkit.LSTM, {"coupled": True}), "gru": (lstmkit.GRU, {}),
         "rnn": (lstmkit.RNN, {}),
         **{f"lstm-{k}": (lstmkit.LSTM, kw) for k, kw in GREFF_VARIANTS.items()},  # Greff 2015
         **{name: (lstmkit.MUT, {"variant": v}) for name, v in MUT_CELLS.items()}}  # Jozefowicz
CELLS["mlstm"] = (lstmkit.mLSTM, {})                # xLSTM's mLSTM (Beck et al. 2024)
GRID_CELLS = {"grid": (lstmkit.GridLSTM, {}),                     # 2-D, time × depth
              "grid-tied": (lstmkit.GridLSTM, {"tied": True}),
              "grid1d": (lstmkit.GridLSTM, {"dims": "depth", "tied": True}),   # 1-D, parity
              "ffnet": (lstmkit.GridLSTM, {"dims": "depth", "non_lstm": "depth"})}  # tanh net
CELLS.update(GRID_CELLS)                            # Kalchbrenner et al. 2015
CELLS.update({"mingru": (lstmkit.minGRU, {}), "minlstm": (lstmkit.minLSTM, {})})  # Feng 2024
CELLS["slstm"] = (lstmkit.sLSTM, {})                # xLSTM's sLSTM (Beck et al. 2024)
VAL_SEED, TEST_SEED = 1_000_003, 2_000_003          # offsets: validation/test never = train


class SequenceModel(nn.Module):
    """A recurrent stack and a linear read-out, at the last step or at every step.

    MUT1 and MUT2 add x_t to an H-vector, so their input must be ``hidden`` wide: when the
    task's is not, a linear input layer (``self.input_layer``, task.input_size → hidden) comes
    first; every other cell reads the task's inputs directly (``self.input_layer`` is None)."""

    def __init__(self, task: Task, cell: str, hidden: int, layers: int = 1,
                 forget_bias: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; the cells are {', '.join(CELLS)}")
        module, kw = CELLS[cell]
        self.per_step = task.per_step
        width = task.input_size
        self.input_layer = None
        if module is lstmkit.MUT and needs_equal_sizes(kw["variant"]) and width != hidden:
            self.input_layer = nn.Linear(width, hidden)
            width = hidden
        self.rnn = module(width, hidden, layers, batch_first=True, **kw)
        self.head = nn.Linear(hidden, task.output_size)
        if forget_bias and module is lstmkit.LSTM and "f" in self.rnn.cell.gate_rows:
            add_forget_bias(self.rnn, forget_bias)

    def forward(self, batch: Batch) -> Tensor:
        x, lengths = batch.x, batch.lengths
        if self.input_layer is not None:
            x = self.input_layer(x)                              # (B, L, hidden)
        if bool((lengths != lengths[0]).any()):              # variable length: packed
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            out, _ = self.rnn(x)                             # (B, L, H)
        if self.per_step:
            return self.head(out)                            # (B, L, K)
        return self.head(out[torch.arange(len(batch)), lengths - 1])   # (B, K)


@dataclass
class ExperimentConfig:
    task: str
    T: int = 100
    cell: str = "lstm"
    hidden: int = 64
    layers: int = 1
    batch: int = 32
    budget: int = 100_000             # training sequences
    lr: float = 1e-2                  # Adam; these tasks have long plateaus (see docs)
    clip: float = 1.0                 # gradient-norm clip (0 = off)
    forget_bias: float = 0.0          # added to the LSTM forget-gate bias at initialisation
    seed: int = 0
    eval_every: int | None = None     # sequences between validations (default budget / 40)
    val_size: int = 512
    test_size: int = 2560
    stop_when_solved: bool = True

    def __post_init__(self) -> None:
        make_task(self.task, self.T)                         # checks task and T
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; the cells are {', '.join(CELLS)}")
        for name in ("hidden", "layers", "batch", "budget", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch: Batch) -> dict[str, float]:
    was = model.training
    model.eval()
    scores = task.score(model(batch), batch)
    model.train(was)
    return scores


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] | None = None) -> dict:
    """Train, validate along the way, test once. Returns the configuration, the learning
    curve, the sequences seen until the validation set was solved (None if never), the test
    scores and the time taken."""
    return train_model(cfg, log)[1]


def train_model(cfg: ExperimentConfig, log: Callable[[str], None] | None = None,
                ) -> tuple[SequenceModel, dict]:
    """:func:`run_experiment`, also returning the trained model."""
    task = make_task(cfg.task, cfg.T)
    torch.manual_seed(cfg.seed)
    model = SequenceModel(task, cfg.cell, cfg.hidden, cfg.layers, cfg.forget_bias)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    val = task.sample(cfg.val_size, torch.Generator().manual_seed(VAL_SEED + cfg.seed))
    eval_every = cfg.eval_every or max(cfg.batch, cfg.budget // 40)
    curve, seen, solved_at, next_eval, losses = [], 0, None, eval_every, []
    diverged = False
    start = time.perf_counter()
    for batch in task.stream(cfg.batch, cfg.seed):
        loss = task.loss(model(batch), batch)
        if not math.isfinite(loss.item()):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        seen += len(batch)
        losses.append(loss.item())
        if seen >= next_eval or seen >= cfg.budget:
            next_eval += eval_every
            scores = evaluate(model, task, val)
            curve.append({"sequences": seen, "train_loss": statistics.fmean(losses),
                          **{f"val_{k}": float(v) for k, v in scores.items()}})
            losses = []
            if log:
                log(f"{cfg.task} T={cfg.T} {cfg.cell} seed {cfg.seed}: {seen:,} sequences, "
                    f"validation {task.metric} {scores[task.metric]:.4f}"
                    + (" (solved)" if scores["solved"] else ""))
            if scores["solved"] and solved_at is None:
                solved_at = seen
                if cfg.stop_when_solved:
                    break
        if seen >= cfg.budget:
            break
    train_seconds = time.perf_counter() - start
    test = evaluate(model, task, task.sample(cfg.test_size,
                                             torch.Generator().manual_seed(TEST_SEED + cfg.seed)))
    return model, {"config": asdict(cfg), "sequences": seen, "solved_at": solved_at,
                   "diverged": diverged, "seconds": train_seconds,
                   "test": {k: float(v) for k, v in test.items()}, "curve": curve,
                   "baseline": task.baseline, "metric": task.metric}


def summarize(results: list[dict]) -> list[dict]:
    """One row per cell: the test metric's mean and spread over seeds, how many seeds
    solved the task, and the median number of training sequences they needed."""
    rows = []
    for cell in dict.fromkeys(r["config"]["cell"] for r in results):
        rs = [r for r in results if r["config"]["cell"] == cell]
        metric = rs[0]["metric"]
        values = [r["test"][metric] for r in rs]
        solved = [r["solved_at"] for r in rs if r["solved_at"] is not None]
        rows.append({"cell": cell, "seeds": len(rs), "metric": metric,
                     "test_mean": statistics.fmean(values),
                     "test_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "test_solved": sum(bool(r["test"]["solved"]) for r in rs),
                     "sequences_to_solve": statistics.median(solved) if solved else None,
                     "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return rows


def markdown_table(task: Task, rows: list[dict], budget: int) -> str:
    metric = rows[0]["metric"]
    base = task.baseline[metric]
    lines = [f"{task.name}, T = {task.T}: test {metric} on {rows[0]['seeds']} seed(s), "
             f"budget {budget:,} training sequences; baseline {metric} {base:.4g} "
             f"({task.baseline['predictor']})", "",
             f"| cell | test {metric} (mean ± sd) | solved on test | sequences to solve "
             "(median) | train time |", "|---|---|---|---|---|"]
    for r in rows:
        seqs = f"{r['sequences_to_solve']:,.0f}" if r["sequences_to_solve"] else "—"
        lines.append(f"| {r['cell']} | {r['test_mean']:.4g} ± {r['test_std']:.2g} | "
                     f"{r['test_solved']}/{r['seeds']} | {seqs} | {r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def run_table(task_name: str, T: int, cells: list[str], seeds: int, out: Path,
              log: Callable[[str], None] | None = print, **kw) -> list[dict]:
    """Every cell × seed; writes ``results.json`` and ``results.md`` (``curves.png``:
    :func:`lstmkit.viz.runs.plot_experiment`, as ``lstmkit experiment`` does)."""
    task = make_task(task_name, T)
    results = [run_experiment(ExperimentConfig(task_name, T=T, cell=cell, seed=seed, **kw), log)
               for cell in cells for seed in range(seeds)]
    rows = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summary": rows, "runs": results}, indent=1)
                                      + "\n")
    budget = results[0]["config"]["budget"]
    (out / "results.md").write_text(markdown_table(task, rows, budget))
    return rows


def gradient_flow_study(task_name: str = "adding2016", T: int = 100,
                        cells: tuple[str, ...] = ("rnn", "gru", "lstm"), *, budget: int = 20_000,
                        hidden: int = 64, seed: int = 0, out: Path | None = None,
                        log: Callable[[str], None] | None = print, **kw) -> dict:
    """‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖) over t for each cell on one test sequence of the task,
    at initialisation and after training on ``budget`` sequences (computed in float64);
    with ``out``, writes ``gradient_flow.json`` there (``gradient_flow.png``:
    :func:`lstmkit.viz.curves.plot_gradient_flow`, as ``lstmkit gradient-flow`` does).
    ``kw``: further :class:`ExperimentConfig` fields."""
    from ..inspect import gradient_flow

    task = make_task(task_name, T)
    probe = task.sample(1, torch.Generator().manual_seed(TEST_SEED + seed))
    probe64 = Batch(probe.x.double(), probe.lengths, probe.y.double())
    study: dict = {"task": task_name, "T": T, "budget": budget, "hidden": hidden, "cells": {}}
    for cell in cells:
        cfg = ExperimentConfig(task_name, T=T, cell=cell, hidden=hidden, budget=budget,
                               seed=seed, stop_when_solved=False, **kw)
        torch.manual_seed(seed)
        untrained = SequenceModel(task, cell, hidden, forget_bias=cfg.forget_bias)
        model, result = train_model(cfg, log)
        entry = {"test": result["test"]}
        for when, m in (("init", untrained), ("trained", model)):
            m = m.double()                     # float64: the small norms do not underflow
            g = gradient_flow(m, probe64, lambda out: task.loss(out, probe64))[0]
            entry[when] = {"dh": g.dh.tolist(), "dc": None if g.dc is None else g.dc.tolist()}
        study["cells"][cell] = entry
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gradient_flow.json").write_text(json.dumps(study, indent=1) + "\n")
    return study


def flow_table(study: dict) -> str:
    """Markdown: ‖∂L/∂h_t‖ (÷ its value at the last step) at a few t, per cell, before and
    after training."""
    T = len(next(iter(study["cells"].values()))["init"]["dh"])
    ts = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
    head = " | ".join(f"t={t}" for t in ts)
    lines = [f"‖∂L/∂h_t‖ ÷ ‖∂L/∂h_{T - 1}‖, {study['task']} T = {study['T']}, one test "
             f"sequence, loss at the end; trained on {study['budget']:,} sequences", "",
             f"| cell | when | {head} | test |", "|---|---|" + "---|" * len(ts) + "---|"]
    for cell, e in study["cells"].items():
        for when in ("init", "trained"):
            dh = e[when]["dh"]
            ratios = " | ".join(f"{dh[t] / dh[-1]:.2e}" for t in ts)
            test = ", ".join(f"{k} {v:.4g}" for k, v in e["test"].items() if k != "solved")
            lines.append(f"| {cell} | {when} | {ratios} | {test if when == 'trained' else ''} |")
    return "\n".join(lines) + "\n"
