"""Polyphonic music: tanh RNN, LSTM, LSTM with forget-gate bias 1, GRU and MUT1–3 on the
Bach chorales of music21's corpus (``lstmkit music``), at about equal parameter count,
with the same hyperparameters and step budget for every cell.

    OMP_NUM_THREADS=1 python benchmarks/music_study.py [--seeds 2] [--steps 4000]

Equal parameters: each cell gets the hidden size whose whole model (MUT1/MUT2's 88 → H
input projection, the recurrent layer, the 88-way sigmoid output layer) comes closest to
the LSTM's at ``--hidden`` (36: 21,400 parameters, near the ~20k of Chung et al. 2014).
Every run: grid of a quarter note, the default split (seed 0: 210 / 70 / 70 pieces),
AdamW at ``--lr`` with 20 warm-up steps and cosine decay, clip 1, batches of 16 whole
pieces, ``--steps`` steps, validation every ``--steps``/20 steps, the test pieces scored
once with the best-validation checkpoint. One thread per run.

Writes ``<out>/<name>.json`` (default benchmarks/results/music-study.json) after every run,
so a study cut short keeps what it finished; run directories go to ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from lstmkit.data.music import load_chorales
from lstmkit.train.music import (
    MusicConfig,
    MusicTrainer,
    base_rate_nll,
    load_split,
    match_hidden,
    n_parameters,
)

# name → (cell, forget-gate bias)
CELLS = {"tanh RNN": ("rnn", 0.0), "LSTM": ("lstm", 0.0), "LSTM fb=1": ("lstm", 1.0),
         "GRU": ("gru", 0.0), "MUT1": ("mut1", 0.0), "MUT2": ("mut2", 0.0),
         "MUT3": ("mut3", 0.0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--hidden", type=int, default=36, help="the LSTM's hidden size (36)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="music-study")
    p.add_argument("--runs", type=Path, default=Path("/tmp/lstmkit-music-study"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.time()
    load_chorales(1.0)                          # parse once (or read the cache)
    base = MusicConfig(cell="lstm", hidden=args.hidden, steps=args.steps, lr=args.lr,
                       quiet=True, eval_every=max(1, args.steps // 20), log_every=100)
    data = load_split(base)
    target = n_parameters(base)
    sizes = {}
    for name in args.cells:
        cell, fb = CELLS[name]
        cfg = replace(base, cell=cell, forget_bias=fb)
        h = args.hidden if cell == "lstm" else match_hidden(cfg, target)
        sizes[name] = {"hidden": h, "params": n_parameters(replace(cfg, hidden=h))}
    out = {"study": "Bach chorales (music21 corpus), NLL per time step (nats)",
           "config": {k: v for k, v in asdict(base).items() if k not in ("cell", "hidden")},
           "pieces": {"train": len(data[0]), "valid": len(data[1]), "test": len(data[2])},
           "frames": {"train": data[0].frames, "valid": data[1].frames,
                      "test": data[2].frames},
           "sizes": sizes, "target_params": target, "runs": [],
           "base_rate_test_nll": base_rate_nll(data[0].rolls, data[2].rolls),
           "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread; noisy, "
                      "shared machine (other jobs on the second core)",
           "argv": sys.argv[1:]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"

    def save() -> None:
        summary = {}
        for name in args.cells:
            rows = [r for r in out["runs"] if r["name"] == name]
            if rows:
                tests = [r["test_nll"] for r in rows]
                summary[name] = {"test_nll_mean": statistics.mean(tests),
                                 "test_nll_sd": statistics.stdev(tests) if len(tests) > 1
                                 else None,
                                 "valid_nll_mean": statistics.mean(r["valid_nll"]
                                                                   for r in rows),
                                 "seconds_mean": statistics.mean(r["seconds"] for r in rows),
                                 "cpu_seconds_mean": statistics.mean(r["cpu_seconds"]
                                                                     for r in rows),
                                 "seeds": [r["seed"] for r in rows]}
        out["summary"] = summary
        out["total_minutes"] = (time.time() - t0) / 60
        path.write_text(json.dumps(out, indent=1) + "\n")

    for seed in range(args.seeds):             # seed-major: a cut-short study has every cell
        for name in args.cells:
            cell, fb = CELLS[name]
            cfg = replace(base, cell=cell, forget_bias=fb, hidden=sizes[name]["hidden"],
                          seed=seed)
            slug = name.lower().replace(" ", "").replace("=", "")
            run_dir = args.runs / f"{slug}-s{seed}"
            started, cpu = time.time(), time.process_time()
            result = MusicTrainer(cfg, run_dir, data=data).fit()
            seconds, cpu = time.time() - started, time.process_time() - cpu
            out["runs"].append({"name": name, "cell": cell, "forget_bias": fb, "seed": seed,
                                "hidden": cfg.hidden, "params": result.parameters,
                                "best_step": result.best_step,
                                "valid_nll": result.valid_nll, "test_nll": result.test_nll,
                                "seconds": seconds, "cpu_seconds": cpu})
            print(f"{name:10s} seed {seed}: H={cfg.hidden} ({result.parameters:,} params) "
                  f"valid {result.valid_nll:.3f} test {result.test_nll:.3f} (best step "
                  f"{result.best_step}) {seconds:.0f} s ({cpu:.0f} s CPU)", flush=True)
            save()
    save()
    print(f"wrote {path} ({out['total_minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
