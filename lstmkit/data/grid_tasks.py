"""The algorithmic tasks of Kalchbrenner, Danihelka & Graves (2015, "Grid Long Short-Term
Memory", §4.1–4.2), in the :class:`lstmkit.data.synthetic.Task` form.

``parity`` (T = k bits): a string of k random bits is given *at once*, as one input vector
of size k (a sequence of one step); the target is its parity (1 if the number of ones is
odd). Two classes, cross-entropy; the paper's measure is accuracy, solved = every validation
string right. Baseline: 50 % (no function of fewer than all k bits does better).

``addition`` (T = number of digits): two T-digit numbers (leading zeros allowed) are read
one digit per step, then the network writes their sum one digit per step (as in Zaremba &
Sutskever 2014, with no curriculum; the paper's exact presentation could not be checked
here). Layout, with
"-" the delimiter, padding and end symbol::

    input:   a_0 … a_{T−1}  -  b_0 … b_{T−1}  -  - … -  (T + 2 times)
    target:  - … -                            -  s_0 … s_T  -

digits least-significant first (our reading: the paper's order could not be checked here);
one-hot over 11 symbols (0–9 and "-"), outputs over the same 11 at every step. The loss is
the cross-entropy over the T + 2 answer steps (sum digits and end symbol); the metric is the
fraction of sums with a wrong digit (the paper's accuracy is 1 − that); solved = every
validation sum right.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from .synthetic import TASKS, Batch, Task

DELIM = 10


class Parity(Task):
    """k-bit parity, the whole string at once (Kalchbrenner et al. 2015, §4.1)."""

    name, output_size, per_step, metric = "parity", 2, False, "wrong"
    min_T = 1

    @property
    def input_size(self) -> int:
        return self.T

    @property
    def baseline(self) -> dict:
        return {"wrong": 0.5, "ce": float(torch.log(torch.tensor(2.0))),
                "predictor": "a constant guess"}

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (n, self.T), generator=gen)
        return Batch(bits.float().unsqueeze(1), torch.ones(n, dtype=torch.long),
                     bits.sum(1) % 2)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(out, batch.y)

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        wrong = (out.argmax(-1) != batch.y).float().mean().item()
        return {"ce": self.loss(out, batch).item(), "wrong": wrong,
                "accuracy": 1.0 - wrong, "solved": wrong == 0.0}


class Addition(Task):
    """Addition of two T-digit numbers, digit by digit (Kalchbrenner et al. 2015, §4.2)."""

    name, input_size, output_size, per_step, metric = "addition", 11, 11, True, "wrong"
    min_T = 1

    @property
    def baseline(self) -> dict:
        return {"wrong": 1.0, "predictor": "any guess (a T+1-digit sum is right by chance "
                                           "with probability ≈ 10^-T)"}

    @property
    def answer(self) -> slice:
        """The steps whose targets count: the T + 1 sum digits and the end symbol."""
        return slice(2 * self.T + 1, 3 * self.T + 3)

    def sample(self, n: int, gen: torch.Generator) -> Batch:
        T = self.T
        a = torch.randint(0, 10, (n, T), generator=gen)             # least significant first
        b = torch.randint(0, 10, (n, T), generator=gen)
        digits, carry = [], torch.zeros(n, dtype=torch.long)
        for j in range(T):
            s = a[:, j] + b[:, j] + carry
            digits.append(s % 10)
            carry = s // 10
        digits.append(carry)
        L = 3 * T + 4
        ids = torch.full((n, L), DELIM, dtype=torch.long)
        ids[:, :T], ids[:, T + 1:2 * T + 1] = a, b
        y = torch.full((n, L), DELIM, dtype=torch.long)
        y[:, 2 * T + 1:3 * T + 2] = torch.stack(digits, 1)
        return Batch(F.one_hot(ids, 11).float(), torch.full((n,), L), y)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        a = self.answer
        return F.cross_entropy(out[:, a].flatten(0, 1), batch.y[:, a].flatten())

    def score(self, out: Tensor, batch: Batch) -> dict[str, float]:
        a = self.answer
        right = out[:, a].argmax(-1) == batch.y[:, a]               # (B, T + 2)
        wrong = 1.0 - right.all(1).float().mean().item()
        return {"ce": self.loss(out, batch).item(), "wrong": wrong, "accuracy": 1.0 - wrong,
                "digit_accuracy": right.float().mean().item(), "solved": wrong == 0.0}


TASKS.update({t.name: t for t in (Parity, Addition)})     # lstmkit experiment parity|addition
