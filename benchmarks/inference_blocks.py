"""Forward only (no_grad) on the C++ loop: the input projected a block of steps at a time
(``lstmkit.ops.fused._run_inference``) against the whole layer projected at once (the
training forward) and torch.nn, in one process, interleaved rounds, median time.

    python benchmarks/inference_blocks.py --threads 2 [--blocks 256K,1M,4M] [--json PATH]

Prints ms per forward and ratios against torch.nn of the same size (the same weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lstmkit
from lstmkit.cells.gru import GRUFused
from lstmkit.cells.lstm import LSTMFused
from lstmkit.cells.rnn import RNNFused
from lstmkit.ops import fused

CONFIGS = [("LSTM", 50, 1, 64, {}), ("LSTM", 100, 16, 128, {}), ("LSTM", 150, 64, 256, {}),
           ("LSTM", 25, 64, 512, {}), ("LSTM", 100, 16, 128, {"peephole": True}),
           ("LSTM", 150, 64, 256, {"peephole": True}), ("GRU", 100, 16, 128, {}),
           ("GRU", 150, 64, 256, {}), ("RNN", 100, 16, 128, {}),
           ("RNN", 150, 64, 256, {})]


def size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
    return int(text.rstrip("KM")) * scale


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", default="128K,512K,2M", help="block sizes in bytes (K, M)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", default="")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    blocks = [size(b) for b in args.blocks.split(",")]
    results = []
    for family, T, B, H, kw in CONFIGS:
        name = f"{family}{' peephole' if kw else ''} ({T},{B},{H})"
        if args.only and args.only not in name:
            continue
        torch.manual_seed(0)
        lk = getattr(lstmkit, family)(H, H, backend="fused_cpp", **kw)
        tn = getattr(torch.nn, family)(H, H)
        if not kw:
            tn.load_state_dict(lk.state_dict())
        x = torch.randn(T, B, H)
        reps = max(1, int(2e7 // (T * B * H * 4)))
        variants = {"whole": None, **{f"block {b >> 10}K": b for b in blocks}}

        def run(block, lk=lk, x=x, reps=reps, family=family):
            fam = {"LSTM": LSTMFused, "GRU": GRUFused, "RNN": RNNFused}[family]
            saved = fam.blocked_inference, fused.INFERENCE_BLOCK_BYTES
            fam.blocked_inference = block is not None
            fused.INFERENCE_BLOCK_BYTES = block or saved[1]
            try:
                with torch.no_grad():
                    return timed(lambda: lk(x), reps)
            finally:
                fam.blocked_inference, fused.INFERENCE_BLOCK_BYTES = saved

        with torch.no_grad():
            for _ in range(2):
                tn(x)  # noqa: B023 (called at once)
                for b in variants.values():
                    run(b)
        times = {k: [] for k in (*variants, "torch")}
        for _ in range(args.rounds):
            for k, b in variants.items():
                times[k].append(run(b))
            with torch.no_grad():
                times["torch"].append(timed(lambda tn=tn, x=x: tn(x), reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"name": name, "ms": med, "over_torch": {k: med[k] / med["torch"] for k in med}}
        results.append(row)
        print(f"{name:28s} " + "  ".join(f"{k} {v:8.3f} ms ({row['over_torch'][k]:.2f})"
                                        for k, v in med.items()), flush=True)
    if args.json:
        meta = {"threads": args.threads, "torch": torch.__version__, "rounds": args.rounds,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
