"""Speed of the three forms of lstmkit.mLSTM against each other and torch.nn.LSTM.

    python -m benchmarks.mlstm_bench [--repeats N] [--threads N] [--sizes T,B,H ...]
                                     [--out benchmarks/results/mlstm_bench.json]

Forward + backward (and forward only, under no_grad), float32, input size = hidden size,
num_heads=4, chunk_size=64, one layer, runs interleaved in one process. Prints the median
and minimum time of each form — ``chunkwise``, ``parallel``, ``reference`` (the recurrent
step loop) — and of ``torch.nn.LSTM`` of the same hidden size (oneDNN), and the ratios of
the minima to torch.nn.LSTM. On a shared, loaded machine the minima are the steadier:
compare ratios, not absolute times. The recurrent loop is slow by design (it is the
reference and the form of one-step inference), so it runs fewer repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import lstmkit

SIZES = [(1024, 16, 256), (100, 16, 128)]
FORMS = ("chunkwise", "parallel", "reference")


def _train_step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    x.grad = None
    out = model(x)[0]
    out.backward(torch.ones_like(out))


def _infer(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _time(fn, model, x) -> float:
    t0 = time.perf_counter()
    fn(model, x)
    return time.perf_counter() - t0


def measure(T: int, B: int, H: int, repeats: int) -> dict:
    torch.manual_seed(0)
    models = {name: lstmkit.mLSTM(H, H, num_heads=4, backend=name, chunk_size=64)
              for name in FORMS}
    models["torch.nn.LSTM"] = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    result: dict = {}
    for mode, fn in (("fwd+bwd", _train_step), ("fwd", _infer)):
        times: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():                   # warm-up
            fn(model, x)
        for r in range(repeats):
            for name, model in models.items():
                if name == "reference" and r >= max(1, repeats // 3):
                    continue                            # the loop: a third of the repeats
                times[name].append(_time(fn, model, x))
        base = min(times["torch.nn.LSTM"])
        result[mode] = {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                               "runs": len(ts), "min_vs_torch_lstm": min(ts) / base}
                        for name, ts in times.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", nargs="+", default=None, help="T,B,H triples")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--note", default="", help="conditions, e.g. 'quiet machine'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes] if args.sizes else SIZES
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_average": os.getloadavg(), "note": args.note,
              "repeats": args.repeats, "results": {}}
    for T, B, H in sizes:
        res = measure(T, B, H, args.repeats)
        report["results"][f"T={T},B={B},H={H}"] = res
        print(f"\n(T, B, H) = ({T}, {B}, {H}), num_heads=4, chunk_size=64, float32, "
              f"{torch.get_num_threads()} threads")
        for mode, rows in res.items():
            print(f"  {mode}")
            for name, row in rows.items():
                print(f"    {name:14s} median {row['median_s'] * 1e3:9.1f} ms   min "
                      f"{row['min_s'] * 1e3:9.1f} ms   min / torch.nn.LSTM "
                      f"{row['min_vs_torch_lstm']:6.2f}x   ({row['runs']} runs)")
            ck, par, ref = (rows[n]["min_s"] for n in FORMS)
            print(f"    chunkwise vs parallel {par / ck:.2f}x faster, vs recurrent loop "
                  f"{ref / ck:.1f}x faster")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
