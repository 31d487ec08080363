"""Speed of the 2-D Grid LSTM: the fused step on the engine's torch loop (``fused_py``)
against the autograd loop over the block equations (``reference``), and a stacked
lstmkit.LSTM of the same depth and width as the baseline, forward + backward, in one process.

    OMP_NUM_THREADS=1 python benchmarks/grid_speed.py [--T 50 --B 32 --H 128 --L 3]

Prints milliseconds per forward+backward and ratios to the stacked LSTM; writes
``benchmarks/results/grid_speed.json``. Measured on a shared machine: rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import lstmkit


def timed(model, x, repeats: int) -> float:
    def once():
        out, _ = model(x)
        out.sum().backward()
    once()                                           # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("T", 50), ("B", 32), ("H", 128), ("L", 3), ("repeats", 5)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.T, args.B, args.H)
    rows = {"lstm (stacked, fused C++)": timed(lstmkit.LSTM(args.H, args.H, args.L,
                                                            backend="fused"), x, args.repeats)}
    for backend in ("reference", "fused_py"):
        for kw in ({}, {"priority": "depth"}):
            m = lstmkit.GridLSTM(args.H, args.H, args.L, backend=backend, **kw)
            label = f"grid 2-D {backend}" + (" priority=depth" if kw else "")
            rows[label] = timed(m, x, args.repeats)
    base = rows["lstm (stacked, fused C++)"]
    print(f"T={args.T} B={args.B} H={args.H} L={args.L}, 1 thread, best of {args.repeats} "
          "(shared, noisy machine)")
    for label, ms in rows.items():
        print(f"  {label:34s} {ms:8.1f} ms   ×{ms / base:5.2f} of the stacked LSTM")
    out = Path(__file__).parent / "results" / "grid_speed.json"
    out.write_text(json.dumps({"config": vars(args), "ms": rows,
                               "note": "shared, noisy machine"}, indent=1) + "\n")


if __name__ == "__main__":
    main()
