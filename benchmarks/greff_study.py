"""A small rerun of Greff et al.'s comparison ("LSTM: A Search Space Odyssey", 2015/2017):
their vanilla LSTM (with peepholes) and its eight one-change variants, several seeds, on
one long-time-lag task (the embedded Reber grammar) and one language model (characters of
the Python standard library), each variant with the same hyperparameters.

    python benchmarks/greff_study.py [--seeds 3] [--text-seeds 2] [--out docs/...]

Writes greff-study.json and greff-study.md to ``--out`` (run directories to ``--runs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lstmkit.train import TrainConfig, Trainer
from lstmkit.train.experiment import ExperimentConfig, run_experiment
from lstmkit.viz.runs import with_plots

VARIANTS = ("vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr")


def reber(seeds: int, budget: int) -> dict:
    out = {}
    for v in VARIANTS:
        runs = []
        for seed in range(seeds):
            cfg = ExperimentConfig(task="reber", cell=f"lstm-{v}", seed=seed, budget=budget)
            t0 = time.perf_counter()
            r = run_experiment(cfg)
            runs.append({"seed": seed, "test": r["test"], "sequences": r["sequences"],
                         "solved_at": r["solved_at"], "seconds": time.perf_counter() - t0})
            print(f"reber {v} seed {seed}: {r['test']} after {r['sequences']}", flush=True)
        out[v] = runs
    return out


def text(seeds: int, steps: int, runs_dir: Path) -> dict:
    out = {}
    for v in VARIANTS:
        runs = []
        for seed in range(seeds):
            cfg = TrainConfig(variant=v, hidden=128, steps=steps, max_chars=1_000_000,
                              seed=seed, quiet=True, eval_every=steps)
            t0 = time.perf_counter()
            r = with_plots(Trainer(cfg, runs_dir / f"text-{v}-seed{seed}")).fit()
            runs.append({"seed": seed, "val_bpc": r.best_val_metric, "test_bpc": r.test_metric,
                         "seconds": time.perf_counter() - t0})
            print(f"text {v} seed {seed}: val BPC {r.best_val_metric:.4f}", flush=True)
        out[v] = runs
    return out


def markdown(study: dict) -> str:
    lines = ["| variant | Reber: test strings wrong, % (per seed) | Reber: seeds solved | "
             "Reber: sequences to solve (mean of solved) | text: validation BPC (mean ± sd) |",
             "|---|---|---|---|---|"]
    for v in VARIANTS:
        rb = study["reber"][v]
        wrong = ", ".join(f"{100 * r['test']['wrong']:.2f}" for r in rb)
        solved = [r["solved_at"] for r in rb if r["solved_at"] is not None]
        seqs = f"{statistics.mean(solved):,.0f}" if solved else "—"
        bpc = [r["val_bpc"] for r in study["text"][v]]
        sd = statistics.stdev(bpc) if len(bpc) > 1 else 0.0
        lines.append(f"| {v.upper()} | {wrong} | {len(solved)}/{len(rb)} | {seqs} | "
                     f"{statistics.mean(bpc):.3f} ± {sd:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=20_000)
    parser.add_argument("--text-seeds", type=int, default=2)
    parser.add_argument("--text-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/lstmkit-greff-study"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    study = {"reber": reber(args.seeds, args.budget),
             "text": text(args.text_seeds, args.text_steps, args.runs),
             "settings": vars(args) | {"out": str(args.out), "runs": str(args.runs)}}
    (args.out / "greff-study.json").write_text(json.dumps(study, indent=1, default=str) + "\n")
    (args.out / "greff-study.md").write_text(markdown(study))
    print(markdown(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
