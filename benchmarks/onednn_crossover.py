"""Where oneDNN's RNN primitive overtakes auto's previous choice, two threads, fwd+bwd:
the tanh RNN against the engine's C++ loop and the plain LSTM against torch.nn.LSTM (torch's
own oneDNN kernel), at sizes between the bench's rows. Best of two rounds of medians of 5.
Run on a quiet machine: ``python benchmarks/onednn_crossover.py``. Results of 2026-12-02 are
in docs/onednn.md ("Between the bench's sizes")."""

from __future__ import annotations

import statistics
import time

import torch

import lstmkit

SIZES = [(100, 32, 128), (100, 32, 256), (100, 64, 256), (50, 64, 512), (50, 16, 512),
         (25, 32, 512)]


def step_ms(module, x, n: int = 5) -> float:
    for _ in range(2):
        module(x)[0].sum().backward()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        module(x)[0].sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(2)
    for name in ("rnn", "lstm"):
        for T, B, H in SIZES:
            x = torch.randn(T, B, H, requires_grad=True)
            torch.manual_seed(0)
            if name == "rnn":
                ours, base = (lstmkit.RNN(H, H, backend="onednn"),
                              lstmkit.RNN(H, H, backend="fused_cpp"))
            else:
                ours, base = lstmkit.LSTM(H, H, backend="onednn"), torch.nn.LSTM(H, H)
            rounds = [(step_ms(ours, x), step_ms(base, x)) for _ in range(2)]
            a, b = min(r[0] for r in rounds), min(r[1] for r in rounds)
            print(f"{name} (T,B,H)=({T},{B},{H}) B·H={B * H}: onednn {a:.1f} ms, "
                  f"before {b:.1f} ms, ratio {a / b:.2f}", flush=True)


if __name__ == "__main__":
    main()
