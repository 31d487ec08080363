"""Where a fused C++ layer's training step goes: the time loop's forward and backward
calls against the large GEMMs of the backward (``chunk_grads``: dW_hh, dW_ih, dx), for
each route of those large GEMMs, each route in its own process.

    PYTHONPATH=<checkout> python benchmarks/backward_split.py [--sizes 9,128,64,256 ...]
        [--reps N] [--threads K]

Routes: ``auto`` (the default: each class of GEMM on the route measured faster on this
machine, :mod:`lstmkit.ops.gemm`), ``brgemm`` (``LSTMKIT_GEMM=brgemm``: per-step and large
GEMMs on the engine's brgemm), ``blas`` (``LSTMKIT_GEMM=blas``: everything on MKL) and
``hybrid`` (per-step GEMMs on brgemm, the large GEMMs on torch's ``mm``, i.e. MKL:
:func:`lstmkit.ops.gemm._engine` made to decline).
Sizes are (T, B, I, H) of a one-layer ``lstmkit.LSTM(backend="fused")``, float32, loss
``out.sum()``. Prints, per route and size, the median wall time of a step and the mean time
inside each part (wall clock: run it on a quiet machine). Which route is fastest was
found to differ between two machines of the same kind (docs/performance.md, issue 21).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

from lstmkit import bench

ROUTES = ("auto", "brgemm", "blas", "hybrid")


def measure(sizes: list[tuple[int, int, int, int]], reps: int) -> list[dict]:
    import torch

    import lstmkit
    from lstmkit.cells import base
    from lstmkit.ops import extension, gemm

    if os.environ.get("BACKWARD_SPLIT_ROUTE") == "hybrid":
        gemm._engine = lambda *tensors: None          # the large GEMMs on torch.mm
    parts: collections.Counter = collections.Counter()

    def timed(name, f):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                parts[name] += time.perf_counter() - t0
        return run

    base.FusedCell.chunk_grads = timed("large GEMMs (chunk_grads)", base.FusedCell.chunk_grads)
    extension.CppKernels.forward = timed("loop forward", extension.CppKernels.forward)
    extension.CppKernels.backward = timed("loop backward", extension.CppKernels.backward)
    rows = []
    for T, B, I, H in sizes:
        torch.manual_seed(0)
        m = lstmkit.LSTM(I, H, backend="fused")
        x = torch.randn(T, B, I, requires_grad=True)

        def step(m=m, x=x):
            out, _ = m(x)
            out.sum().backward()

        task = {"step": {"lk": step}}
        bench.measure_times(task, 0)                  # warm-up only
        parts.clear()
        steps = bench.measure_times(task, reps, warmup=0)["step"]["lk"]
        rows.append({"size": [T, B, I, H], "step_ms": statistics.median(steps),
                     **{k: 1e3 * v / reps for k, v in parts.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["9,128,64,256", "100,16,128,128",
                                                  "150,64,256,256"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    if any(len(s) != 4 or min(s) < 1 for s in sizes):
        p.error("--sizes takes T,B,I,H with four positive integers each")
    if args.route:                                    # the child: one route, JSON out
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(measure(sizes, args.reps)))
        return
    for route in ROUTES:
        env = {**os.environ, "BACKWARD_SPLIT_ROUTE": route}
        env.pop("LSTMKIT_GEMM", None)
        if route != "auto":
            env["LSTMKIT_GEMM"] = "blas" if route == "blas" else "brgemm"
        done = subprocess.run([sys.executable, __file__, "--route", route, "--reps",
                               str(args.reps), "--threads", str(args.threads), "--sizes",
                               *args.sizes], env=env, check=True, capture_output=True,
                              text=True)
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            T, B, I, H = row.pop("size")
            step = row.pop("step_ms")
            detail = ", ".join(f"{k} {v:.2f}" for k, v in row.items())
            print(f"{route:8s} ({T},{B},{I}→{H}): step {step:.2f} ms; {detail}", flush=True)


if __name__ == "__main__":
    main()
