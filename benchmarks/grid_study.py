"""A small Grid LSTM study on the tasks of Kalchbrenner, Danihelka & Graves (2015, §4.1–4.2),
at a scale that runs on one CPU core in about 30 minutes:

* k-bit parity (the whole string at once) for k = 8, 16, 50: the 1-D Grid LSTM with tied
  weights (``grid1d``, 4 layers) against a tanh feed-forward net of the same depth
  (``ffnet``, the paper's baseline) and a 2-layer stacked LSTM reading the string as one
  step (``lstm``);
* addition of two 3-digit numbers, digit by digit: the 2-D Grid LSTM tied along depth
  against a stacked LSTM of the same depth (3 layers).

    OMP_NUM_THREADS=1 python benchmarks/grid_study.py [--quick]

Writes ``benchmarks/results/grid_study.json`` after every run (configurations, learning
curves, test scores, times) and prints a table. Times are wall-clock on a shared, noisy
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lstmkit import count_parameters
from lstmkit.data.synthetic import make_task
from lstmkit.train.experiment import ExperimentConfig, SequenceModel, run_experiment

OUT = Path(__file__).parent / "results" / "grid_study.json"

# (task, k or digits, cell, layers, budget, seeds); hidden 64, Adam lr 0.01, batch 32
PLAN = [("parity", 8, "grid1d", 4, 300_000, (0, 1)),
        ("parity", 8, "ffnet", 4, 300_000, (0, 1)),
        ("parity", 8, "lstm", 2, 300_000, (0, 1)),
        ("parity", 16, "grid1d", 4, 300_000, (0,)),
        ("parity", 16, "ffnet", 4, 300_000, (0,)),
        ("parity", 50, "grid1d", 4, 200_000, (0,)),
        ("addition", 3, "grid-tied", 3, 60_000, (0,)),
        ("addition", 3, "lstm", 3, 60_000, (0,))]

# a follow-up with larger budgets, one seed: where the first plan ran out of budget
FOLLOWUP = [("addition", 3, "grid-tied", 3, 200_000, (0,)),
            ("addition", 3, "lstm", 3, 200_000, (0,)),
            ("parity", 16, "grid1d", 4, 1_000_000, (0,))]


def plan(quick: bool, followup: bool = False) -> list[ExperimentConfig]:
    scale = 0.02 if quick else 1.0
    return [ExperimentConfig(task, T=T, cell=cell, hidden=64, layers=layers, lr=1e-2,
                             budget=max(64, int(budget * scale)), seed=seed)
            for task, T, cell, layers, budget, seeds in (FOLLOWUP if followup else PLAN)
            for seed in (seeds[:1] if quick else seeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 2 % of the budgets (a smoke test)")
    ap.add_argument("--followup", action="store_true",
                    help="the follow-up plan (larger budgets, one seed); writes "
                         "grid_study_followup.json unless --out is given")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    name = "grid_study" + ("_followup" if args.followup else "") + ("_quick" if args.quick else "")
    args.out = args.out or OUT.with_name(name + ".json")
    torch.set_num_threads(1)
    results = []
    started = time.perf_counter()
    for cfg in plan(args.quick, args.followup):
        task = make_task(cfg.task, cfg.T)
        torch.manual_seed(cfg.seed)
        params = count_parameters(SequenceModel(task, cfg.cell, cfg.hidden, cfg.layers))
        r = run_experiment(cfg)
        r["parameters"] = params
        results.append(r)
        t = r["test"]
        print(f"{cfg.task:8s} T={cfg.T:<3d} {cfg.cell:9s} seed {cfg.seed}  params {params:7,d}  "
              f"seen {r['sequences']:7,d}  solved_at {r['solved_at']}  test wrong "
              f"{t['wrong']:.4f}  {r['seconds']:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread "
                       "(shared, noisy machine)",
            "total_seconds": time.perf_counter() - started, "runs": results},
            separators=(",", ":")) + "\n")                      # compact: curves included


if __name__ == "__main__":
    main()
