"""Table 7 of Hochreiter & Schmidhuber (1997): the adding problem at T = 100, 500, 1000 with
the 1997 LSTM trained as the paper did (lstmkit.train.protocol1997, the C++ tiny trainer).

    OMP_NUM_THREADS=1 python benchmarks/table7.py [--T 100 500 1000] [--seeds 0 1 2]
                                                  [--row-seconds 3600] [--out PATH]

Rows run in the order given; within a row the seeds run one after another, each capped at
what is left of the row's wall-time budget (``--row-seconds``, one hour by default), and a
run that hits the cap is recorded with the sequences it saw. After every run the whole
result so far is written to ``--out`` (benchmarks/results/table7.json), so a long job can
be read while it runs. Times are wall clock on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from lstmkit.train.protocol1997 import PAPER_TABLE7, train_adding_1997

OUT = Path(__file__).resolve().parent / "results" / "table7.json"


def _commit() -> str | None:
    """The checkout's git commit (the kernel that ran), if there is one."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[100, 500, 1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--row-seconds", type=float, default=3600.0,
                   help="wall-time budget of each row (all its seeds), seconds")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    report = {
        "what": "Hochreiter & Schmidhuber 1997, Table 7 (adding problem), 1997 protocol",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared and noisy; "
                   f"torch {torch.__version__}, OMP_NUM_THREADS="
                   f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "commit": _commit(), "row_seconds": args.row_seconds, "paper": PAPER_TABLE7,
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.out)

    for T in args.T:
        row_start = time.perf_counter()
        for seed in args.seeds:
            left = args.row_seconds - (time.perf_counter() - row_start)
            if left <= 1:
                report["runs"].append({"T": T, "seed": seed, "skipped": "row budget spent"})
                save()
                continue
            r = train_adding_1997(T, seed, max_seconds=left,
                                  log=lambda s: print(s, flush=True), log_every=60)
            report["runs"].append(r)
            save()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    save()
    return report


if __name__ == "__main__":
    main()
