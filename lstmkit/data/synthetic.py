"""The long-time-lag tasks of the LSTM literature, generated on the fly.

Each task draws batches from a ``torch.Generator`` (so a seed fixes every sequence, and
nothing larger than one batch is ever held in memory), scores a model's outputs, and states
the score of a baseline that ignores the long-range information.

========================  =========================================================  =====
task                      source                                                     out
========================  =========================================================  =====
``adding``                Hochreiter & Schmidhuber 1997, Exp. 4                       last
``adding2016``            Arjovsky, Shah & Bengio 2016 (unitary RNN), adding problem  last
``copy``                  Arjovsky, Shah & Bengio 2016, copying memory problem        every
``reber``                 Hochreiter & Schmidhuber 1997, Exp. 1 (embedded Reber)      every
``temporal_order``        Hochreiter & Schmidhuber 1997, Exp. 6a (two symbols)        last
========================  =========================================================  =====

Inputs are batch-first ``x`` (B, L, I), padded with zeros past each sequence's length
``lengths`` (B,). A model reads them and produces either one output per sequence (at its
last step) or one per step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class Batch:
    x: Tensor                    # (B, L, I) inputs, zero past each length
    lengths: Tensor              # (B,) int64
    y: Tensor                    # targets: (B,) / (B, K) per sequence, (B, L[, K]) per step

    def __len__(self) -> int:
        return self.x.shape[0]


class Task(ABC):
    """A sequence task: ``sample(n, gen)`` draws a batch; ``loss`` trains on the model's
    outputs; ``score`` gives the reported metrics, among them ``metric`` (lower is better)
    and ``solved`` (the paper's success criterion, where it has one)."""

    name = ""
    input_size = 0
    output_size = 0
    per_step = False             # outputs at every step (True) or at the last step only
    metric = "loss"
    baseline: dict = {}

    def __init__(self, T: int):
        if T < self.min_T:
            raise ValueError(f"{self.name}: T must be ≥ {self.min_T}, got {T}")
        self.T = T

    min_T = 2

    @abstractmethod
    def sample(self, n: int, gen: torch.Generator) -> Batch:
        """``n`` sequences drawn from ``gen``."""

    @abstractmethod
    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        """The training loss of the model's outputs."""

    @abstractmethod
    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        """The reported metrics, ``metric`` and ``solved`` among them."""

    def stream(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Fresh batches forever; the same ``seed`` gives the same batches."""
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield self.sample(batch_size, gen)

    def describe(self) -> str:
        """The first line of the task's docstring: its one-line description."""
        return (self.__doc__ or "").strip().split("\n")[0]


def _randint(low: int, high: int, shape, gen: torch.Generator) -> Tensor:
    """Integers uniform in [low, high] (both included)."""
    return torch.randint(low, high + 1, shape, generator=gen)


class Adding1997(Task):
    """Adding problem (Hochreiter & Schmidhuber 1997, Exp. 4): sum of two marked values.

    Each step is a pair (value, marker). Values are uniform in [−1, 1]. The length is uniform
    in [T, T + T/10]. One of the first ten pairs is marked (marker 1.0; its value is X1),
    then one of the first T/2 − 1 pairs not yet marked (X2). The first and the last pair
    have marker −1.0 unless marked, all others 0.0; if the first pair is marked, its value
    is set to 0. Target at the sequence end: 0.5 + (X1 + X2)/4. A sequence is processed
    correctly if the absolute error at the end is below 0.04; the paper reports 1 wrong
    sequence in 2560 after 74,000 training sequences at T = 100.

    Baseline: always answering 0.5 gives MSE ≈ 0.039 (E[(X1 + X2)²]/16, X1 being 0 in about
    a tenth of the sequences) and about 85 % of sequences wrong.
    """

    name, input_size, output_size, metric = "adding", 2, 1, "wrong"
    baseline = {"mse": 0.039, "wrong": 0.85, "predictor": "always 0.5"}
    min_T = 20

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        T = self.T
        lengths = _randint(T, T + T // 10, (n,), gen)
        L = int(lengths.max())
        rows = torch.arange(n)
        values = torch.rand(n, L, generator=gen) * 2 - 1
        marker = torch.zeros(n, L)
        marker[:, 0] = -1.0
        marker[rows, lengths - 1] = -1.0
        i1 = _randint(0, 9, (n,), gen)
        j = _randint(0, T // 2 - 3, (n,), gen)             # one of T/2 − 2 other pairs
        i2 = j + (j >= i1).long()                          # … of the first T/2 − 1, not i1
        marker[rows, i1] = 1.0
        marker[rows, i2] = 1.0
        values[:, 0] = torch.where(marker[:, 0] == 1.0, 0.0, values[:, 0])
        past = torch.arange(L)[None] >= lengths[:, None]
        values[past], marker[past] = 0.0, 0.0
        y = 0.5 + (values[rows, i1] + values[rows, i2]) / 4
        return Batch(torch.stack([values, marker], -1), lengths, y)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(out.squeeze(-1), batch.y)

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        err = (out.squeeze(-1) - batch.y).abs()
        wrong = (err >= 0.04).float().mean().item()
        return {"mse": err.pow(2).mean().item(), "wrong": wrong, "solved": wrong < 0.01}


class Adding2016(Task):
    """Adding problem as in Arjovsky, Shah & Bengio 2016: sum of two marked values.

    Length T; values uniform in [0, 1]; markers all 0 except one 1 at a random step of the
    first half and one at a random step of the second half. Target: the sum of the two
    marked values. Baseline: always answering 1 gives MSE = Var(X1 + X2) = 1/6 ≈ 0.167.
    Counted as solved here at MSE < 0.01.
    """

    name, input_size, output_size, metric = "adding2016", 2, 1, "mse"
    baseline = {"mse": 1 / 6, "predictor": "always 1"}

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        T, rows = self.T, torch.arange(n)
        values = torch.rand(n, T, generator=gen)
        i1 = _randint(0, T // 2 - 1, (n,), gen)
        i2 = _randint(T // 2, T - 1, (n,), gen)
        marker = torch.zeros(n, T)
        marker[rows, i1] = 1.0
        marker[rows, i2] = 1.0
        y = values[rows, i1] + values[rows, i2]
        return Batch(torch.stack([values, marker], -1), torch.full((n,), T), y)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(out.squeeze(-1), batch.y)

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        mse = (out.squeeze(-1) - batch.y).pow(2).mean().item()
        return {"mse": mse, "solved": mse < 0.01}


class Copy(Task):
    """Copying memory problem (Arjovsky, Shah & Bengio 2016).

    Alphabet of 10 symbols: 0 blank, 1–8 data, 9 delimiter. Input of length T + 20: ten data
    symbols drawn uniformly from 1–8, T − 1 blanks, the delimiter, ten blanks. Target: T + 10
    blanks, then the ten data symbols. Loss: cross-entropy averaged over all T + 20 steps.
    Baseline: blanks, then a uniform guess among the 8 data symbols:
    10 ln 8 / (T + 20) nats per step.
    """

    name, input_size, output_size, per_step, metric = "copy", 10, 10, True, "ce"

    @property
    def baseline(self) -> dict:
        return {"ce": 10 * math.log(8) / (self.T + 20), "predictor": "blanks, then uniform"}

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        T = self.T
        data = _randint(1, 8, (n, 10), gen)
        ids = torch.zeros(n, T + 20, dtype=torch.long)
        ids[:, :10] = data
        ids[:, T + 9] = 9
        y = torch.zeros(n, T + 20, dtype=torch.long)
        y[:, -10:] = data
        return Batch(F.one_hot(ids, 10).float(), torch.full((n,), T + 20), y)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(out.flatten(0, 1), batch.y.flatten())

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        ce = self.loss(out, batch).item()
        recalled = (out[:, -10:].argmax(-1) == batch.y[:, -10:]).float().mean().item()
        return {"ce": ce, "recall_accuracy": recalled, "solved": ce < 0.1 * self.baseline["ce"]}


REBER_SYMBOLS = "BTPSXVE"
# Reber's grammar: state → [(symbol, next state)], each branch with probability 1/2
_REBER = {0: [("B", 1)], 1: [("T", 2), ("P", 3)], 2: [("S", 2), ("X", 4)],
          3: [("T", 3), ("V", 5)], 4: [("X", 3), ("S", 6)], 5: [("P", 4), ("V", 6)],
          6: [("E", None)]}


def reber_string(gen: torch.Generator) -> tuple[str, list[str]]:
    """One string of Reber's grammar and, after each prefix, the legal next symbols."""
    state, text, legal = 0, "", []
    while state is not None:
        options = _REBER[state]
        legal.append("".join(s for s, _ in options))
        symbol, state = options[int(torch.randint(len(options), (), generator=gen))]
        text += symbol
    return text, legal[1:] + [""]


def embedded_reber_string(gen: torch.Generator) -> tuple[str, list[str]]:
    """B, then T or P, a Reber string, the same T or P again, E; and after each prefix the
    legal next symbols (after the inner string only the T or P chosen at the start)."""
    branch = "TP"[int(torch.randint(2, (), generator=gen))]
    inner, inner_legal = reber_string(gen)
    text = "B" + branch + inner + branch + "E"
    legal = ["TP", "B"] + inner_legal[:-1] + [branch, "E", ""]
    return text, legal


class EmbeddedReber(Task):
    """Embedded Reber grammar (Hochreiter & Schmidhuber 1997, Exp. 1; Reber 1967).

    Symbols B T P S X V E, one-hot. At each step the model predicts the set of legal next
    symbols (one sigmoid output per symbol, trained with binary cross-entropy). A string is
    processed correctly when at every step exactly the legal next symbols have output > 0.5.
    The hard step is the second-to-last: it must recall the T or P seen right after the first
    B, across the whole inner string. Baseline: a model that knows the inner grammar but not
    that symbol can only guess there, so gets at most 50 % of strings right.
    ``T`` is unused (string lengths follow the grammar).
    """

    name, input_size, output_size, per_step, metric = "reber", 7, 7, True, "wrong"
    baseline = {"wrong": 0.5, "predictor": "inner grammar known, outer T/P guessed"}
    min_T = 0

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        strings = [embedded_reber_string(gen) for _ in range(n)]
        lengths = torch.tensor([len(s) - 1 for s, _ in strings])   # inputs: all but the E
        L = int(lengths.max())
        x = torch.zeros(n, L, 7)
        y = torch.zeros(n, L, 7)
        for b, (text, legal) in enumerate(strings):
            for t, ch in enumerate(text[:-1]):
                x[b, t, REBER_SYMBOLS.index(ch)] = 1.0
                for nxt in legal[t]:
                    y[b, t, REBER_SYMBOLS.index(nxt)] = 1.0
        return Batch(x, lengths, y)

    @staticmethod
    def _mask(out: Tensor, batch: Batch) -> Tensor:
        return torch.arange(out.shape[1])[None] < batch.lengths[:, None]       # (B, L)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        mask = self._mask(out, batch)
        return F.binary_cross_entropy_with_logits(out[mask], batch.y[mask])

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        mask = self._mask(out, batch)
        step_ok = ((out > 0).float() == batch.y).all(-1) | ~mask                 # (B, L)
        wrong = (~step_ok.all(1)).float().mean().item()
        return {"bce": self.loss(out, batch).item(), "wrong": wrong, "solved": wrong == 0.0}


class TemporalOrder(Task):
    """Temporal order, two relevant symbols (Hochreiter & Schmidhuber 1997, Exp. 6a).

    Length uniform in [100, 110] (``T`` scales it: [T, T + T/10]); a begin marker B first,
    an end marker E last, and between them symbols drawn uniformly from a, b, c, d except at
    two steps, t1 in [10, 20] and t2 in [50, 60] (scaled with T), which hold X or Y. The
    class at the end is the order of the two: XX, XY, YX or YY. Inputs one-hot over
    a b c d X Y B E. The paper counts a sequence correct when every output is within 0.3 of
    its target; here: softmax probability of the right class > 0.7. Baseline: guessing,
    75 % wrong.
    """

    name, input_size, output_size, metric = "temporal_order", 8, 4, "wrong"
    baseline = {"wrong": 0.75, "predictor": "uniform guess"}
    min_T = 20

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        T, rows = self.T, torch.arange(n)
        lengths = _randint(T, T + T // 10, (n,), gen)
        L = int(lengths.max())
        ids = _randint(0, 3, (n, L), gen)                                # a, b, c, d
        t1 = _randint(T // 10, T // 5, (n,), gen)
        t2 = _randint(T // 2, T * 6 // 10, (n,), gen)
        s1, s2 = _randint(0, 1, (n,), gen), _randint(0, 1, (n,), gen)    # 0 = X, 1 = Y
        ids[rows, t1], ids[rows, t2] = 4 + s1, 4 + s2
        ids[:, 0] = 6
        ids[rows, lengths - 1] = 7
        x = F.one_hot(ids, 8).float()
        x[torch.arange(L)[None] >= lengths[:, None]] = 0.0
        return Batch(x, lengths, 2 * s1 + s2)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(out, batch.y)

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        p = torch.softmax(out, -1)[torch.arange(len(batch)), batch.y]
        wrong = (p <= 0.7).float().mean().item()
        return {"ce": self.loss(out, batch).item(), "wrong": wrong,
                "accuracy": (out.argmax(-1) == batch.y).float().mean().item(),
                "solved": wrong < 0.01}


TASKS: dict[str, type[Task]] = {t.name: t for t in (Adding1997, Adding2016, Copy,
                                                      EmbeddedReber, TemporalOrder)}


def make_task(name: str, T: int) -> Task:
    """The task registered as ``name`` (see ``TASKS``) with sequence length ``T``; an unknown name
    raises ValueError listing the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name](T)
