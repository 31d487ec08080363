"""``lstmkit bench``: the options of :mod:`lstmkit.bench` (also taken by
``benchmarks/run.py``), the table as rows arrive, and the JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import bench
from ._args import positive_int


def add_parsers(sub) -> None:
    parser = sub.add_parser("bench", help="time the fused kernels against torch.nn and the "
                                          "reference loop")
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="only a few small configurations")
    parser.add_argument("--only", metavar="S", help="only configurations whose name contains S")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs (median)")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads(N) "
                                                           "(default: leave as is)")
    parser.add_argument("--backend", choices=bench.BACKENDS, default="fused_cpp")
    parser.add_argument("--reference", choices=("auto", "all", "none"), default="auto",
                        help=f"time the reference loop: auto = only if T·B·H <= "
                             f"{bench.REFERENCE_LIMIT}")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write all numbers here")
    parser.add_argument("--variants", action="store_true",
                        help="instead: every variant's fused path (Greff ablations, layer "
                             "norm, regularisers, Clockwork, Depth-Gated) against the plain "
                             "fused LSTM of the same size")
    parser.add_argument("--scans", action="store_true",
                        help="instead: minGRU and minLSTM trained by their scan against their "
                             "sequential loop and torch.nn.GRU/LSTM of the same size")
    parser.add_argument("--clock", choices=tuple(bench.CLOCKS), default="wall",
                        help="wall time, or cpu: CPU time of the process (with one thread on "
                             "a loaded machine: the work, not the waiting; sums threads)")
    parser.add_argument("--inference", action="store_true",
                        help="instead: forward only (no_grad) against torch.nn and "
                             "onnxruntime on the same weights (LSTM, peephole, GRU, RNN)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe, print the table, write the JSON."""
    if args.variants:
        return _run_variants(args)
    if args.scans:
        return _run_scans(args)
    select = bench.select_inference_configs if args.inference else bench.select_configs
    configs = select(args.quick, args.only)
    if not configs:
        names = ", ".join(c.name for c in select(args.quick))
        print(f"no configuration matches --only {args.only!r}; the names are: {names}")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    reference = {"auto": None, "all": True, "none": False}[args.reference]
    with bench.using_clock(args.clock):
        peak = bench.sgemm_peak()
        print(bench.format_meta(bench.environment(args.backend, args.repeats, peak)))
    print(bench.format_header(args.inference), flush=True)
    data = bench.run_benchmark(configs, backend=args.backend, repeats=args.repeats,
                               reference=reference, peak=peak, inference=args.inference,
                               clock=args.clock,
                               on_result=lambda r: print(bench.format_row(r), flush=True))
    print(bench.INFERENCE_FOOTNOTE if args.inference else bench.FOOTNOTE)
    after = data["meta"]["sgemm_peak_after"]["gflop_per_s"]
    print(f"sgemm peak at the end of the run: {after:.1f} GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _run_variants(args: argparse.Namespace) -> int:
    from .. import bench_variants as bv
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"fused forward+backward, training mode, backend={args.backend}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, interleaved with "
          "the plain lstmkit.LSTM of the same size")
    print(bv.HEADER, flush=True)
    rows = bv.bench_variants(backend=args.backend, repeats=args.repeats, only=args.only,
                             on_row=lambda r: print(bv.format_row(r), flush=True))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": bench.environment(args.backend, args.repeats),
                                         "variants": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _run_scans(args: argparse.Namespace) -> int:
    from .. import bench_scans as bs
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"minGRU/minLSTM: scan (backend auto) vs the sequential loop (backend reference) vs "
          f"torch.nn of the same size; {torch.get_num_threads()} threads, median of "
          f"{args.repeats}, interleaved")
    print(bs.HEADER, flush=True)
    rows = bs.bench_scans(repeats=args.repeats, only=args.only,
                          on_row=lambda r: print(bs.format_row(r), flush=True))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": bench.environment("auto", args.repeats),
                                         "scans": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
