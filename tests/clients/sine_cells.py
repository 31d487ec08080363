"""Sine-wave prediction with two stacked ``nn.LSTMCell``, written against torch.nn in the way
pytorch/examples' ``time_sequence_prediction`` uses the cells (written here; it reproduces
that client's use of the API, not its code): float64 cells stepped one input at a time,
zero initial states built by hand, a linear read-out, full-batch LBFGS with a closure, and a
free-running prediction of future values under ``torch.no_grad``.

    python sine_cells.py [--steps N] [--future N]

Prints ``loss`` (every closure call) and ``test loss`` lines.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn


class TwoCells(nn.Module):
    def __init__(self, hidden: int = 51) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell1 = nn.LSTMCell(1, hidden)
        self.cell2 = nn.LSTMCell(hidden, hidden)
        self.read = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, future: int = 0) -> torch.Tensor:
        B = x.shape[0]
        h1, c1, h2, c2 = (torch.zeros(B, self.hidden, dtype=torch.float64) for _ in range(4))
        outputs = []
        y = None
        for x_t in x.split(1, dim=1):
            h1, c1 = self.cell1(x_t, (h1, c1))
            h2, c2 = self.cell2(h1, (h2, c2))
            y = self.read(h2)
            outputs.append(y)
        for _ in range(future):
            h1, c1 = self.cell1(y, (h1, c1))
            h2, c2 = self.cell2(h1, (h2, c2))
            y = self.read(h2)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--future", type=int, default=100)
    p.add_argument("--length", type=int, default=300)
    args = p.parse_args()
    g = torch.Generator().manual_seed(2)
    shift = torch.randint(-80, 80, (40, 1), generator=g)
    waves = torch.sin((torch.arange(args.length) + shift) / 20.0).double()
    x, y = waves[3:, :-1], waves[3:, 1:]
    test_x, test_y = waves[:3, :-1], waves[:3, 1:]
    torch.manual_seed(0)
    model = TwoCells().double()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=8)
    for _ in range(args.steps):
        def closure():
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            print(f"loss {loss.item():.12e}")
            loss.backward()
            return loss
        optimizer.step(closure)
        with torch.no_grad():
            pred = model(test_x, future=args.future)
            loss = nn.functional.mse_loss(pred[:, :-args.future], test_y)
            print(f"test loss {loss.item():.12e}")


if __name__ == "__main__":
    main()
