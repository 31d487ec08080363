"""The client programs of tests/clients/ run with torch.nn and with lstmkit swapped in: the
numbers each prints, and the wall time of each run, side by side.

    python benchmarks/clients.py [--json PATH] [--markdown PATH] [--rounds N]

Each program runs ``--rounds`` times per side, alternating sides; the table gives the
numbers of the last run and the median time ratio lstmkit / torch.nn (wall time of the whole
program, interpreter start included). The word-level programs read a corpus written from
CPython's standard-library sources, as in tests/test_clients.py, and train with learning
rate 2: at the example's default of 20 the run is chaotic on this corpus (torch.nn's own GRU
runs end between test loss 6.2 and 7.8 over three seeds, and lstmkit's, whose float rounding
differs, between 6.2 and 9.8), so the two sides could not be compared number by number.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "clients"

RUNS = {
    "word_lm.py LSTM (pytorch/examples word_language_model)":
        ("word_lm.py", ["--model", "LSTM", "--epochs", "2", "--lr", "2"],
         ["valid loss", "test loss"]),
    "word_lm.py GRU": ("word_lm.py", ["--model", "GRU", "--epochs", "2", "--lr", "2"],
                       ["valid loss", "test loss"]),
    "sine_cells.py (pytorch/examples time_sequence_prediction)":
        ("sine_cells.py", ["--steps", "2"], ["test loss"]),
    "quantize_lm.py (dynamic quantization tutorial)":
        ("quantize_lm.py", [], ["size float", "size quantized", "loss float",
                                "loss quantized", "seconds float", "seconds quantized"]),
}


def corpus(root: Path) -> Path:
    import argparse as a
    import shlex
    import textwrap
    for name, module in (("train", a), ("valid", textwrap), ("test", shlex)):
        lines = [ln for ln in inspect.getsource(module).splitlines() if ln.strip()]
        (root / f"{name}.txt").write_text("\n".join(lines[:1500]) + "\n", encoding="utf8")
    return root


def run(which: str, script: str, args: list[str], data: Path, out: Path) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = ["--data", str(data), "--out", str(out)] if script != "sine_cells.py" else []
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(CLIENTS / "swap.py"), which,
                           str(CLIENTS / script), *extra, *args], cwd=out, env=env,
                          capture_output=True, text=True, check=True)
    return proc.stdout, time.perf_counter() - start


def last(text: str, label: str) -> str:
    found = re.findall(r"^" + label + r" (\S+)$", text, flags=re.M)
    return found[-1] if found else "—"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = corpus(Path(tmp))
        for title, (script, extra, labels) in RUNS.items():
            times: dict[str, list[float]] = {"torch": [], "lstmkit": []}
            texts = {}
            for _ in range(args.rounds):
                for which in ("torch", "lstmkit"):
                    out = Path(tempfile.mkdtemp(dir=tmp))
                    texts[which], seconds = run(which, script, extra, data, out)
                    times[which].append(seconds)
            ratio = statistics.median(a / b for a, b in zip(times["lstmkit"], times["torch"]))
            row = {"client": title, "numbers": {w: {lab: last(texts[w], lab) for lab in labels}
                                                for w in texts},
                   "seconds": times, "time_ratio": ratio}
            rows.append(row)
            print(f"{title}: time ratio {ratio:.2f}", flush=True)
            for lab in labels:
                print(f"  {lab:<18} torch {row['numbers']['torch'][lab]:>14}   "
                      f"lstmkit {row['numbers']['lstmkit'][lab]:>14}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        lines = ["| client | number | torch.nn | lstmkit |", "|---|---|---|---|"]
        for row in rows:
            for k, lab in enumerate(row["numbers"]["torch"]):
                first = f"{row['client']} (time ratio {row['time_ratio']:.2f})" if k == 0 else ""
                lines.append(f"| {first} | {lab} | {row['numbers']['torch'][lab]} | "
                             f"{row['numbers']['lstmkit'][lab]} |")
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
