"""Speed of the oneDNN backend against torch.nn and against what ``auto`` picks without it.

    python -m benchmarks.onednn_bench [--threads 2 1] [--sizes T,B,H ...] [--repeats N]
                                      [--cells lstm peephole ...] [--note TEXT]
                                      [--out benchmarks/results/onednn-bench-noisy.json]

For each thread count (``torch.set_num_threads``), size (T, B, H = input size) and cell,
float32, one layer, in one process, interleaved: ``torch.nn`` (LSTM, LSTM(proj_size=H/2),
GRU, RNN; the peephole LSTM, which torch.nn lacks, against torch.nn.LSTM as in the
issue), lstmkit with ``backend="onednn"``, and lstmkit with ``backend="auto"`` as it was
before the oneDNN backend (``LSTMKIT_NO_ONEDNN=1``: torch's LSTM kernel for the plain
LSTM, the C++ engine otherwise). Modes: forward + backward (training step) and forward
under ``torch.no_grad()``. Prints the minimum time of each and the ratios to torch.nn as
the median over rounds of the ratio within a round (steadier than a ratio of minima while
the load of a shared machine drifts): compare ratios, not absolute times. In training it
also records each one's peak memory (what torch allocates during one step, the profiler's
count as in ``lstmkit bench``; oneDNN's workspace is among it). Writes the
numbers, the machine's load average and ``--note`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import lstmkit
from lstmkit import bench
from lstmkit.ops import onednn

SIZES = [(50, 1, 64), (100, 16, 128), (150, 64, 256)]
CELLS = ("lstm", "peephole", "proj", "gru", "rnn")
IMPLS = ("torch.nn", "onednn", "auto_before")


def _models(cell: str, H: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    P = H // 2
    ours = {
        "lstm": lambda b: lstmkit.LSTM(H, H, backend=b),
        "peephole": lambda b: lstmkit.LSTM(H, H, peephole=True, backend=b),
        "proj": lambda b: lstmkit.LSTM(H, H, proj_size=P, backend=b),
        "gru": lambda b: lstmkit.GRU(H, H, backend=b),
        "rnn": lambda b: lstmkit.RNN(H, H, backend=b),
    }[cell]
    theirs = {
        "lstm": lambda: torch.nn.LSTM(H, H), "peephole": lambda: torch.nn.LSTM(H, H),
        "proj": lambda: torch.nn.LSTM(H, H, proj_size=P), "gru": lambda: torch.nn.GRU(H, H),
        "rnn": lambda: torch.nn.RNN(H, H),
    }[cell]
    return {"torch.nn": theirs(), "onednn": ours("onednn"), "auto_before": ours("auto")}


def _train_step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    x.grad = None
    out = model(x)[0]
    out.backward(torch.ones_like(out))


def _infer(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


@contextlib.contextmanager
def _as_impl(impl: str) -> Iterator[None]:
    """Run ``auto_before`` as auto without the wheel (``LSTMKIT_NO_ONEDNN=1``)."""
    previous = os.environ.get(onednn.ENV_DISABLE_AUTO)
    if impl == "auto_before":
        os.environ[onednn.ENV_DISABLE_AUTO] = "1"
    try:
        yield
    finally:
        if impl == "auto_before":
            if previous is None:
                del os.environ[onednn.ENV_DISABLE_AUTO]
            else:
                os.environ[onednn.ENV_DISABLE_AUTO] = previous


def _timed(fn, model, x, impl: str) -> float:
    with _as_impl(impl):
        t0 = time.perf_counter()
        fn(model, x)
        return time.perf_counter() - t0


def _peak_mb(model: torch.nn.Module, x: torch.Tensor, impl: str) -> float:
    """Peak MB that torch allocates during one training step (the profiler's allocation
    events, :func:`lstmkit.bench.peak_memory_mb`; oneDNN's workspace is a torch tensor)."""
    model.zero_grad(set_to_none=True)
    x.grad = None
    with _as_impl(impl):
        return bench.peak_memory_mb(lambda: _train_step(model, x))


def measure(cell: str, T: int, B: int, H: int, repeats: int) -> dict:
    models = _models(cell, H)
    x = torch.randn(T, B, H, requires_grad=True)
    result: dict = {}
    for mode, fn in (("fwd+bwd", _train_step), ("no_grad fwd", _infer)):
        times: dict[str, list[float]] = {name: [] for name in models}
        for name, model in models.items():             # warm-up (and first builds)
            _timed(fn, model, x, name)
        for _ in range(repeats):                       # interleaved
            for name, model in models.items():
                times[name].append(_timed(fn, model, x, name))
        best = {name: min(ts) for name, ts in times.items()}
        result[mode] = {"min_ms": {k: round(v * 1e3, 4) for k, v in best.items()},
                        "ratio_to_torch": {k: _ratio(times[k], times["torch.nn"])
                                           for k in times},
                        "onednn_vs_auto_before": _ratio(times["onednn"], times["auto_before"])}
        if mode == "fwd+bwd":
            result[mode]["peak_mb"] = {name: round(_peak_mb(model, x, name), 3)
                                       for name, model in models.items()}
    return result


def _ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a/b within a round (the runs of one round are adjacent in
    time, so a load change on the shared machine hits both): steadier than a ratio of
    minima when the load drifts."""
    return round(statistics.median(x / y for x, y in zip(a, b)), 3)


def _repeats_for(T: int, B: int, H: int, repeats: int) -> int:
    """Fewer repeats at the largest sizes (hundreds of ms per step)."""
    return max(5, repeats // 2) if T * B * H * H > 1e8 else repeats


def markdown(report: dict) -> str:
    """The ratios as a table: per thread count, size and cell, oneDNN and auto-before
    against torch.nn, fwd+bwd and no_grad forward."""
    lines = ["| threads | (T, B, H) | cell | torch.nn fwd+bwd ms | onednn | auto-before | "
             "torch.nn no_grad ms | onednn | auto-before |", "|---" * 9 + "|"]
    for r in report["rows"]:
        t, f = r["fwd+bwd"], r["no_grad fwd"]
        lines.append(f"| {r['threads']} | ({r['T']}, {r['B']}, {r['H']}) | {r['cell']} | "
                     f"{t['min_ms']['torch.nn']:.3g} | {t['ratio_to_torch']['onednn']:.2f}× | "
                     f"{t['ratio_to_torch']['auto_before']:.2f}× | "
                     f"{f['min_ms']['torch.nn']:.3g} | {f['ratio_to_torch']['onednn']:.2f}× | "
                     f"{f['ratio_to_torch']['auto_before']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--sizes", nargs="+", default=[",".join(map(str, s)) for s in SIZES])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--note", default="noisy, shared machine (other jobs running)")
    parser.add_argument("--out", default="benchmarks/results/onednn-bench-noisy.json")
    parser.add_argument("--markdown", action="store_true", help="print the table of ratios")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    reason = onednn.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"onednn_bench: {reason}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for T, B, H in sizes:
            for cell in args.cells:
                r = measure(cell, T, B, H, _repeats_for(T, B, H, args.repeats))
                rows.append({"threads": threads, "T": T, "B": B, "H": H, "cell": cell, **r})
                for mode in ("fwd+bwd", "no_grad fwd"):
                    m = r[mode]
                    print(f"{threads}t ({T:4d},{B:3d},{H:4d}) {cell:9s} {mode:12s} "
                          f"torch {m['min_ms']['torch.nn']:9.3f} ms  onednn "
                          f"{m['ratio_to_torch']['onednn']:5.2f}x  auto-before "
                          f"{m['ratio_to_torch']['auto_before']:5.2f}x  onednn/auto-before "
                          f"{m['onednn_vs_auto_before']:5.2f}"
                          + (f"  peak MB torch.nn/onednn/auto-before "
                             f"{'/'.join(format(m['peak_mb'][k], '.1f') for k in IMPLS)}"
                             if "peak_mb" in m else ""), flush=True)
    report = {
        "what": "min time of repeats, float32, one layer, input size = H; ratios: median over "
                "interleaved rounds of the time ratio within the round, against torch.nn in "
                "the same process (peephole against torch.nn.LSTM; proj: proj_size=H/2)",
        "note": args.note, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_at_end": os.getloadavg(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "onednn": onednn.version(), "repeats": args.repeats,
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
