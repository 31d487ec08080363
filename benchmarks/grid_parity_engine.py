"""k-bit parity (Kalchbrenner, Danihelka & Graves 2015, §4.1) beyond 8 bits with a wider and
deeper tied 1-D Grid LSTM than the earlier study (benchmarks/grid_study.py), on the engine
(the tied 1-D grid is one engine call: ``grid_lstm`` with ``dims=1``).

    OMP_NUM_THREADS=1 python benchmarks/grid_parity_engine.py --bits 10 --hidden 256 \\
        --layers 10 --lr 1e-3 --budget 6000000 --until 07:58

A run stops at its budget, when all 512 validation strings are right, or at the UTC time
``--until``; the test set (2,560 strings) is scored either way. Writes
``benchmarks/results/grid_parity_engine.json`` after every validation. Times are wall-clock
on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch
from grid_addition15 import run

from lstmkit import count_parameters
from lstmkit.data.synthetic import make_task
from lstmkit.train.experiment import ExperimentConfig, SequenceModel

OUT = Path(__file__).parent / "results" / "grid_parity_engine.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=int, default=6_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--until", default=None, help="UTC HH:MM at which the run stops")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    start_utc = dt.datetime.now(dt.timezone.utc)
    if args.until:
        hh, mm = map(int, args.until.split(":"))
        deadline = start_utc.replace(hour=hh, minute=mm, second=0).timestamp()
    else:
        deadline = time.time() + 60 * args.minutes
    cfg = ExperimentConfig("parity", T=args.bits, cell="grid1d", hidden=args.hidden,
                           layers=args.layers, lr=args.lr, batch=args.batch,
                           budget=args.budget, seed=args.seed)

    def write(result: dict | None = None, partial: dict | None = None) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread "
                       "(shared, noisy machine; before 08:00 UTC under nice -n 19)",
            "started_utc": start_utc.isoformat(timespec="seconds"),
            "total_seconds": time.perf_counter() - started,
            "backend": "auto (the tied 1-D grid as one engine call, C++ step)",
            "runs": [result] if result else [], "running": partial},
            separators=(",", ":")) + "\n")

    task = make_task("parity", args.bits)
    torch.manual_seed(cfg.seed)
    params = count_parameters(SequenceModel(task, cfg.cell, cfg.hidden, cfg.layers))
    r = run(cfg, deadline, lambda partial: write(None, partial))
    r["parameters"] = params
    write(r)
    t = r["test"]
    print(f"parity k={args.bits} grid1d d={args.hidden} L={args.layers} lr={args.lr} "
          f"params {params:,d} seen {r['sequences']:,d} ({r['stopped_by']}) solved_at "
          f"{r['solved_at']} test wrong {t['wrong']:.4f}  {r['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
