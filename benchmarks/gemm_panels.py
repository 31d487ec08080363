"""The per-step GEMM of the fused C++ loop alone, as the loop runs it (the engine's
``WeightGemm``, through its ``gemm_probe`` binding): brgemm with the weight packed in column
panels of several sizes — one panel of all n columns is the layout before panels, a
row-major (k×n) copy of the weight — against MKL, in one process.

    PYTHONPATH=<checkout> python benchmarks/gemm_panels.py [--threads N] [--json PATH]

Shapes (m, n, k, transposed) are the recurrent products of an LSTM layer: forward
``ĥ W_hhᵀ`` (B, 4H, H) and backward ``dA W_hh`` (B, H, 4H) at the bench's sizes. Each
configuration is timed ``--rounds`` times, the configurations interleaved, and the least time
counts; prints GFLOP/s and each panel size's time over MKL's. brgemm shares the panels out
over torch's threads from 2¹⁸ multiply-adds on (a single panel cannot be shared). Wall clock:
run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform

import torch

SHAPES = ((1, 256, 64, True), (1, 64, 256, False), (16, 512, 128, True),
          (16, 128, 512, False), (64, 1024, 256, True), (64, 256, 1024, False),
          (64, 2048, 512, True), (64, 512, 2048, False), (32, 4096, 1024, True),
          (32, 1024, 4096, False))
PANELS = (1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 40)   # floats; 2⁴⁰: one panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lstmkit.ops import extension
    engine = extension.cpp_module(extension.ENGINE, required=True)
    names = [*(f"{p}" if p < 1 << 40 else "one panel" for p in PANELS), "MKL"]
    rows = []
    print(f"{torch.get_num_threads()} threads; GFLOP/s of one per-step product, least of "
          f"{args.rounds} interleaved rounds; panel sizes in floats per K block")
    print(f"{'m×k·k×n':>22} " + " ".join(f"{n:>10}" for n in names)
          + "   time/MKL's: 8192 (the loop's), one panel")
    for m, n, k, transposed in SHAPES:
        reps = int(min(2000, max(5, 2e7 // (m * n * k))))
        best = [math.inf] * len(names)
        for _ in range(args.rounds):
            for i, panel in enumerate(PANELS):
                best[i] = min(best[i], engine.gemm_probe(True, m, n, k, transposed, reps, panel))
            best[-1] = min(best[-1], engine.gemm_probe(False, m, n, k, transposed, reps))
        gflops = [2 * m * n * k / t / 1e9 for t in best]
        default = PANELS.index(1 << 13)
        print(f"{f'{m}×{k}·{k}×{n}':>22} " + " ".join(f"{g:10.1f}" for g in gflops)
              + f"   {best[default] / best[-1]:.2f} (8192), {best[-2] / best[-1]:.2f} (one)")
        rows.append({"m": m, "n": n, "k": k, "transposed": transposed,
                     "seconds": dict(zip(names, best)), "gflops": dict(zip(names, gflops))})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "cpu": platform.processor(),
                       "torch": torch.__version__, "rows": rows}, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
