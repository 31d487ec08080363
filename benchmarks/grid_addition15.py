"""15-digit addition (Kalchbrenner, Danihelka & Graves 2015, §4.2) at a scale that runs on
one CPU core: the 2-D Grid LSTM tied along depth (``grid-tied``) against a stacked LSTM of the
same depth and width (``lstm``), fresh training sums every step, as ``lstmkit experiment
addition --T 15`` runs them.

    OMP_NUM_THREADS=1 python benchmarks/grid_addition15.py [--budget 300000]
        [--minutes-lstm 12] [--until 08:40] [--quick]

Each run stops at its budget, when every validation sum is right, or at its time limit
(``--minutes-<cell>``, or the UTC wall-clock time ``--until`` for the grid), whichever comes
first; the test set (2,560 sums) is scored either way. Writes
``benchmarks/results/grid_addition15.json`` after every validation (configurations,
learning curves so far, test scores, times, why each run stopped). Times are wall-clock on a
shared, noisy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch

from lstmkit import count_parameters
from lstmkit.data.synthetic import make_task
from lstmkit.train import experiment
from lstmkit.train.experiment import ExperimentConfig, SequenceModel

OUT = Path(__file__).parent / "results" / "grid_addition15.json"


class TimeLimited:
    """A task whose training stream ends at a deadline (time.time() seconds)."""

    def __init__(self, task, deadline: float):
        self.task, self.deadline, self.hit = task, deadline, False

    def __getattr__(self, name):
        return getattr(self.task, name)

    def stream(self, batch: int, seed: int):
        for b in self.task.stream(batch, seed):
            if time.time() >= self.deadline:
                self.hit = True
                return
            yield b


def run(cfg: ExperimentConfig, deadline: float, write) -> dict:
    limited = TimeLimited(make_task(cfg.task, cfg.T), deadline)
    original = experiment.make_task
    experiment.make_task = lambda name, T: limited
    partial: dict = {"config": vars(cfg), "curve_so_far": []}

    def log(line: str) -> None:
        print(line, flush=True)
        partial["curve_so_far"].append(line)
        write(partial)
    try:
        result = experiment.run_experiment(cfg, log)
    finally:
        experiment.make_task = original
    result["stopped_by"] = ("time limit" if limited.hit else
                            "solved" if result["solved_at"] is not None else "budget")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--digits", type=int, default=15)
    ap.add_argument("--budget", type=int, default=300_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes-lstm", type=float, default=12.0)
    ap.add_argument("--until", default=None, help="UTC HH:MM at which the grid run stops")
    ap.add_argument("--minutes-grid", type=float, default=60.0,
                    help="time limit of the grid run when --until is not given")
    ap.add_argument("--cells", nargs="+", default=["lstm", "grid-tied"])
    ap.add_argument("--keep", action="store_true",
                    help="keep the finished runs already in --out (add the new ones)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (T = 3, tiny budget)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.quick:
        args.digits, args.budget, args.minutes_lstm, args.minutes_grid = 3, 640, 1, 1
        args.until = None
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    torch.set_num_threads(1)
    results: list[dict] = []
    if args.keep and args.out.exists():
        results = json.loads(args.out.read_text())["runs"]
    started = time.perf_counter()

    def write(partial: dict | None = None) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread "
                       "(shared, noisy machine; until 08:00 UTC under nice -n 19)",
            "started_utc": START, "total_seconds": time.perf_counter() - started,
            "runs": results, "running": partial}, separators=(",", ":")) + "\n")

    for cell in args.cells:
        cfg = ExperimentConfig("addition", T=args.digits, cell=cell, hidden=args.hidden,
                               layers=args.layers, lr=args.lr, budget=args.budget,
                               seed=args.seed)
        if cell == "lstm":
            deadline = time.time() + 60 * args.minutes_lstm
        elif args.until:
            hh, mm = map(int, args.until.split(":"))
            now = dt.datetime.now(dt.timezone.utc)
            deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
        else:
            deadline = time.time() + 60 * args.minutes_grid
        task = make_task(cfg.task, cfg.T)
        torch.manual_seed(cfg.seed)
        params = count_parameters(SequenceModel(task, cfg.cell, cfg.hidden, cfg.layers))
        r = run(cfg, deadline, write)
        r["parameters"] = params
        r["lstmkit_backend"] = "auto (the C++ step of grid_lstm; LSTM: torch's oneDNN kernel)"
        results.append(r)
        t = r["test"]
        print(f"addition T={cfg.T} {cell:9s} seed {cfg.seed} params {params:,d} seen "
              f"{r['sequences']:,d} ({r['stopped_by']}) test: sums wrong {t['wrong']:.4f}, "
              f"digits right {t['digit_accuracy']:.4f}  {r['seconds']:.0f} s", flush=True)
        write()


START = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

if __name__ == "__main__":
    main()
