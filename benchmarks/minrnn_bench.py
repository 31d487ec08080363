"""Speed of minGRU and minLSTM (lstmkit.minGRU, lstmkit.minLSTM): the scans against their
sequential loop and against torch.nn.GRU / torch.nn.LSTM of the same size.

    python -m benchmarks.minrnn_bench [--repeats N] [--threads N] [--json PATH]

Float32, input size = hidden size, every configuration measured interleaved in one process
(medians and minima of ``--repeats`` runs after a warm-up), printed as ratios to the
baselines measured in the same process:

1. training, forward + backward at (T, B, H) = (1024, 16, 256): the sequential loop
   (``backend="reference"``, the equations step by step under autograd), the log-space scan
   in torch ops (``"fused_py"``), the C++ kernel (``"fused_cpp"``), ``"auto"``, and
   torch.nn.GRU (minGRU) / torch.nn.LSTM (minLSTM);
2. inference (no_grad) over the whole sequence, the same backends;
3. inference step by step: T calls of one step each, passing h_n back as hx;
4. the scan alone (pre-activations given, forward + backward) for T in 64 … 1024, torch
   scan against the C++ kernel: the measurement that decides what ``"auto"`` runs.

On a shared, loaded machine compare the ratios, not the absolute times; the minima are the
steadier of the two statistics.

Memory: in the sandbox these numbers were taken in, a fresh large allocation costs ~4 ms per
MB in page faults (a 32 MB ``torch.empty(...).fill_(1)`` took 141 ms, against 1 ms for
filling an existing tensor), which swamped every contender's time. The script therefore
re-executes itself with glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
raised, so that freed memory is reused instead of returned to the system — the same for
every contender (``--system-malloc`` to keep the default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lstmkit
from lstmkit.ops import scan as scan_ops

BACKENDS = ("reference", "fused_py", "fused_cpp", "auto")


def _timed(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1
           ) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def _train(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)[0]
        out.backward(torch.ones_like(out))
    return run


def _infer(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)
    return run


def _stream(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            h = None
            for t in range(x.shape[0]):
                _, h = model(x[t:t + 1], h)
    return run


def _models(name: str, H: int) -> dict[str, torch.nn.Module]:
    cls = {"minGRU": lstmkit.minGRU, "minLSTM": lstmkit.minLSTM}[name]
    torch.manual_seed(0)
    models = {b: cls(H, H, backend=b) for b in BACKENDS}
    torch_cls = torch.nn.GRU if name == "minGRU" else torch.nn.LSTM
    models["torch.nn." + torch_cls.__name__] = torch_cls(H, H)
    return models


def _summarise(times: dict[str, list[float]], baselines: tuple[str, ...]) -> dict:
    rows = {}
    for name, ts in times.items():
        rows[name] = {"median_ms": statistics.median(ts), "min_ms": min(ts)}
        for base in baselines:
            if base in times and base != name:
                rows[name][f"speedup_vs_{base}_median"] = (statistics.median(times[base])
                                                           / statistics.median(ts))
                rows[name][f"speedup_vs_{base}_min"] = min(times[base]) / min(ts)
    return rows


def _print(title: str, rows: dict) -> None:
    print(f"\n{title}")
    for name, r in rows.items():
        ratios = "  ".join(f"{k.replace('speedup_vs_', '×vs ')}={v:.2f}" for k, v in r.items()
                           if k.startswith("speedup"))
        print(f"  {name:18s} median {r['median_ms']:9.2f} ms  min {r['min_ms']:9.2f} ms  {ratios}")


def bench_models(T: int, B: int, H: int, repeats: int, stream_T: int,
                 parts: tuple[str, ...] = ("train", "infer", "stream")) -> dict:
    results: dict[str, dict] = {}
    x = torch.randn(T, B, H)
    for name in ("minGRU", "minLSTM"):
        models = _models(name, H)
        torch_name = [k for k in models if k.startswith("torch.nn")][0]
        base = ("reference", torch_name)
        results[name] = {}
        if "train" in parts:
            rows = _summarise(_timed({k: _train(m, x) for k, m in models.items()}, repeats),
                              base)
            _print(f"{name}, training fwd+bwd, (T, B, H) = ({T}, {B}, {H})", rows)
            results[name]["train"] = rows
        if "infer" in parts:
            rows = _summarise(_timed({k: _infer(m, x) for k, m in models.items()}, repeats),
                              base)
            _print(f"{name}, inference (no_grad), whole sequence", rows)
            results[name]["infer"] = rows
        if "stream" in parts:
            xs = x[:stream_T]
            rows = _summarise(_timed({k: _stream(m, xs) for k, m in models.items()},
                                     max(3, repeats // 2)), base)
            _print(f"{name}, inference step by step, {stream_T} calls of one step", rows)
            results[name]["stream"] = rows
    return results


def bench_scan(B: int, H: int, lengths: tuple[int, ...], repeats: int) -> dict:
    results = {}
    for family in ("mingru", "minlstm"):
        K = 2 if family == "mingru" else 3
        for T in lengths:
            k = torch.randn(T, B, K * H, requires_grad=True)
            h0 = torch.zeros(B, H)

            def run(kernel: str, k=k, h0=h0, family=family) -> Callable[[], None]:
                def step() -> None:
                    k.grad = None
                    h = scan_ops.scan(family, k, h0, False, kernel)
                    h.backward(torch.ones_like(h))
                return step
            times = _timed({kern: run(kern) for kern in scan_ops.KERNELS}, repeats)
            rows = _summarise(times, ("torch",))
            _print(f"{family} scan alone, fwd+bwd, T = {T}, B = {B}, H = {H}", rows)
            results[f"{family}_T{T}"] = rows
    return results


PARTS = ("train", "infer", "stream", "scan")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def main() -> None:
    if "--system-malloc" not in sys.argv and any(k not in os.environ for k in MALLOC_ENV):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.minrnn_bench",
                                   *sys.argv[1:]], {**os.environ, **MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--stream-T", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default allocation thresholds (see the docstring)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "default" if args.system_malloc else "raised thresholds"
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, glibc malloc: "
          f"{malloc}; noisy if the machine is shared")
    results = {"config": {"T": args.T, "B": args.B, "H": args.H, "repeats": args.repeats,
                          "threads": torch.get_num_threads(), "dtype": "float32",
                          "malloc": malloc, "load_average": os.getloadavg()},
               "models": bench_models(args.T, args.B, args.H, args.repeats, args.stream_T,
                                      tuple(args.parts))}
    if "scan" in args.parts:
        results["scan"] = bench_scan(args.B, args.H, (64, 256, 1024), args.repeats)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
