"""Speed of the 2-D Grid LSTM on the engine: the family's C++ step (``fused_cpp``, what
"auto" runs) and its torch step on the engine's torch loop (``fused_py``, the path before the
C++ step existed) against the autograd loop over the block equations (``reference``), and a
stacked lstmkit.LSTM of the same depth and width as the baseline, forward + backward, in one
process.

    OMP_NUM_THREADS=1 python benchmarks/grid_speed.py [--T 50 --B 32 --H 128 --L 3]

Prints CPU milliseconds (one thread) per forward+backward and ratios to the stacked LSTM; writes
``benchmarks/results/grid_speed.json``. Measured on a shared machine: rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import lstmkit


def once(model, x) -> float:
    """CPU seconds of this process for one forward+backward: with one thread this is the
    work done, whatever share of the shared machine the process got (wall-clock time on a
    loaded machine counts the time others ran too)."""
    start = time.process_time()
    out, _ = model(x)
    out.sum().backward()
    return time.process_time() - start


def timed(models: dict, x, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` forward+backward times (ms) per model, the models taking turns
    round by round, so that a burst of load on the shared machine hits them all alike."""
    for m in models.values():
        once(m, x)                                   # warm-up (and the C++ build)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(repeats):
        for label, m in models.items():
            best[label] = min(best[label], once(m, x))
    return {label: t * 1e3 for label, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("T", 50), ("B", 32), ("H", 128), ("L", 3), ("repeats", 7),
                          ("bits", 10), ("depth", 8)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", help="file name under benchmarks/results (grid_speed.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.T, args.B, args.H)
    models = {"lstm (stacked, fused C++)": lstmkit.LSTM(args.H, args.H, args.L,
                                                         backend="fused")}
    for backend in ("reference", "fused_py", "fused_cpp"):
        for kw in ({}, {"priority": "depth"}):
            label = f"grid 2-D {backend}" + (" priority=depth" if kw else "")
            models[label] = lstmkit.GridLSTM(args.H, args.H, args.L, backend=backend, **kw)
    rows = timed(models, x, args.repeats)
    base = rows["lstm (stacked, fused C++)"]
    print(f"T={args.T} B={args.B} H={args.H} L={args.L}, 1 thread, best of {args.repeats} "
          "rounds, models taking turns, CPU time of one thread (shared, noisy machine)")
    for label, ms in rows.items():
        print(f"  {label:34s} {ms:8.1f} ms   ×{ms / base:5.2f} of the stacked LSTM")
    for kw in ("", " priority=depth"):
        py, cpp = rows[f"grid 2-D fused_py{kw}"], rows[f"grid 2-D fused_cpp{kw}"]
        print(f"  C++ step{kw}: {py / cpp:.2f}× faster than the torch loop (fused_py)")
    one_d = parity_speed(args)
    out = Path(__file__).parent / "results" / (args.out or "grid_speed.json")
    out.write_text(json.dumps({"config": vars(args), "ms": rows, "ms_1d_parity": one_d,
                               "note": "CPU ms of one thread; shared, noisy machine (load average "
                                       f"{os.getloadavg()[0]:.1f} at the end)"},
                              indent=1) + "\n")


def parity_speed(args) -> dict[str, float]:
    """The tied 1-D grid (the parity network: k bits at once, --bits, --depth layers,
    width --H, batch --B): one engine call over depth (C++ or torch loop) against the
    autograd loop over the block equations."""
    torch.manual_seed(0)
    x = torch.randint(0, 2, (1, args.B, args.bits)).float()
    models = {f"grid 1-D tied {b}": lstmkit.GridLSTM(args.bits, args.H, args.depth,
                                                      dims="depth", tied=True, backend=b)
              for b in ("reference", "fused_py", "fused_cpp")}
    rows = timed(models, x, args.repeats)
    base = rows["grid 1-D tied reference"]
    print(f"1-D tied grid, k={args.bits} bits, B={args.B}, H={args.H}, {args.depth} layers:")
    for label, ms in rows.items():
        print(f"  {label:34s} {ms:8.2f} ms   ×{base / ms:5.2f} faster than the reference")
    return rows


if __name__ == "__main__":
    main()
