"""sLSTM speed against lstmkit's own fused LSTM of the same size (backend="fused", not
torch's oneDNN kernel): forward+backward of ``(output · g).sum()`` in training mode, I = H,
one layer, medians of interleaved rounds in one process (``lstmkit.bench.measure_times``).

Rows per size (T, B, H): sLSTM with 4 heads (the default) on the C++ kernels, sLSTM with one
head (a dense R: one GEMM per step with 4× the recurrent flops of 4 heads, for the cost of
the block-diagonal choice) and sLSTM 4 heads on the torch loop (``fused_py``); the ratio is
to the fused LSTM. Usage::

    python benchmarks/xlstm_bench.py [--threads 1] [--repeats 7] [--out results/x.json]

The machine these numbers were first taken on was shared with other jobs: rerun on a quiet
machine before quoting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import lstmkit
from lstmkit.bench import Config, make_inputs, measure_times, model_tasks

SIZES = ((100, 16, 128), (150, 64, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"threads={args.threads}, median of {args.repeats}, interleaved; ratio to the "
          "fused lstmkit.LSTM of the same size")
    print(f"{'module':<32}{'(T,B,H)':<16}{'f+b ms':>10}{'LSTM ms':>10}{'ratio':>8}")
    for T, B, H in SIZES:
        inp = make_inputs(Config("lstm", T, B, H))
        torch.manual_seed(0)
        modules = {
            "LSTM fused": lstmkit.LSTM(H, H, backend="fused"),
            "sLSTM 4 heads fused": lstmkit.sLSTM(H, H, backend="fused"),
            "sLSTM 1 head (dense R) fused": lstmkit.sLSTM(H, H, num_heads=1, backend="fused"),
            "sLSTM 4 heads fused_py": lstmkit.sLSTM(H, H, backend="fused_py"),
        }
        tasks = {name: {"fb": model_tasks(m.train(), inp)["fb"]} for name, m in modules.items()}
        times = measure_times(tasks, args.repeats)
        base = statistics.median(times["LSTM fused"]["fb"])
        for name in modules:
            ms = statistics.median(times[name]["fb"])
            rows.append({"module": name, "T": T, "B": B, "H": H, "threads": args.threads,
                         "fb_ms": ms, "lstm_fb_ms": base, "ratio": ms / base})
            print(f"{name:<32}{f'({T},{B},{H})':<16}{ms:>10.1f}{base:>10.1f}{ms / base:>8.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"note": "noisy, shared machine", "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
