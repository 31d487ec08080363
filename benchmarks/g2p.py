"""Grapheme-to-phoneme on CMUdict with `lstmkit seq2seq`: train, then score the test split
greedily and with a beam, with and without stress digits.

    python benchmarks/g2p.py [--run DIR] [--steps N] [--threads K] [--json PATH]
                             [-- extra options for lstmkit seq2seq train]

Trains ``lstmkit seq2seq train --steps N --eval-every 1000`` into ``--run`` unless that
directory already holds a finished run (then only scores it), and writes one JSON record:
the configuration, the training wall time (from the run's files: config.json written at the
start, the last checkpoint at the end), the best checkpoint's step, and for beam 1 and
beam 5 the word and phoneme (token) error rates on the test split with stress digits kept
and removed. ``docs/seq2seq.md`` shows the numbers beside the published ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def lstmkit(*args: str, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "lstmkit.cli", *args], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/g2p-cmudict"))
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/g2p-cmudict.json"))
    p.add_argument("extra", nargs="*", help="more options for lstmkit seq2seq train")
    args = p.parse_args()

    if not (args.run / "test.json").exists():
        lstmkit("seq2seq", "train", "--steps", str(args.steps), "--eval-every", "1000",
                "--quiet", "--out", str(args.run), *args.extra, threads=args.threads)
    config = json.loads((args.run / "config.json").read_text())
    started = (args.run / "config.json").stat().st_mtime
    ended = (args.run / "checkpoints" / "last.pt").stat().st_mtime
    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().split("\n")
               if line.strip()]
    record = {"run": str(args.run), "config": config,
              "train_minutes": round((ended - started) / 60, 1),
              "best_step": max(m.get("checkpoint_step", 0) for m in metrics),
              "validation": [{k: m[k] for k in ("step", "val_loss", "val_wer", "val_ter")}
                             for m in metrics if "val_wer" in m],
              "test": []}
    for beam in (1, 5):
        for stress in (True, False):
            t0 = time.perf_counter()
            out = lstmkit("seq2seq", "evaluate", str(args.run), "--beam", str(beam),
                          *([] if stress else ["--no-stress"]), threads=args.threads)
            scores = json.loads(out)
            scores["decode_seconds"] = round(time.perf_counter() - t0, 1)
            record["test"].append(scores)
            print(f"beam {beam}, stress {'kept' if stress else 'removed'}: WER "
                  f"{scores['word_error_rate']:.4f}, PER {scores['token_error_rate']:.4f} "
                  f"({scores['sources']} words, {scores['decode_seconds']} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
