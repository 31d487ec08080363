"""Cost of the regularisers: fused_cpp LSTM forward+backward with each one on, as a ratio
to the plain fused_cpp LSTM of the same size, measured in one process, runs interleaved.

    python benchmarks/regularizers.py [--repeats N] [--sizes T,B,H ...] [--threads N] [--cpu]

``--cpu`` times with the process CPU clock instead of the wall clock: on a machine shared
with other jobs it counts the work done rather than the time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lstmkit

VARIANTS = {
    "plain": {},
    "zoneout": {"zoneout": 0.1},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "input_dropout": {"input_dropout": 0.25},
    "weight_dropout": {"weight_dropout": 0.25},
    "all": {"zoneout": 0.1, "recurrent_dropout": 0.25, "input_dropout": 0.25,
            "weight_dropout": 0.25},
}


CLOCK = time.perf_counter


def _step(module: torch.nn.Module, x: torch.Tensor) -> float:
    start = CLOCK()
    out, (h, c) = module(x)
    (out.sum() + h.sum() + c.sum()).backward()
    return CLOCK() - start


def measure(T: int, B: int, H: int, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward of each variant (training mode)."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H, requires_grad=True)
    modules = {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        modules[name] = lstmkit.LSTM(H, H, backend="fused_cpp", **kw)
    for m in modules.values():                                  # warm-up (and build)
        _step(m, x)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, m in modules.items():                        # interleaved
            times[name].append(_step(m, x))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", nargs="*", default=["100,16,128", "150,64,256"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cpu", action="store_true", help="process CPU time, not wall time")
    args = parser.parse_args()
    global CLOCK
    if args.cpu:
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    for size in args.sizes:
        T, B, H = (int(v) for v in size.split(","))
        med = measure(T, B, H, args.repeats)
        base = med["plain"]
        print(f"(T, B, H) = ({T}, {B}, {H}): plain fused_cpp {base * 1e3:.1f} ms")
        for name, t in med.items():
            if name != "plain":
                print(f"  {name:18s} {t * 1e3:8.1f} ms   {t / base:5.2f}x")


if __name__ == "__main__":
    main()
