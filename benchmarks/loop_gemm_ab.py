"""Before/after in one process: the fused C++ loop with its GEMMs through MKL
(``LSTMKIT_GEMM=blas``: the loop's GEMMs as they were, sgemm or MKL's packed GEMM from 1M
weight elements on), through ATen's brgemm (``LSTMKIT_GEMM=brgemm``: oneDNN's
micro-kernels) and on the routes measured for this machine (``auto``, the default; see
lstmkit/ops/gemm.py), beside torch.nn, interleaved.

    PYTHONPATH=<checkout> python benchmarks/loop_gemm_ab.py [--repeats 7] [--threads N]
        [--clock wall|cpu] [--only S] [--json PATH]

For every row: forward+backward of ``(output · g).sum()`` (:func:`lstmkit.bench.train_step`),
float32, I = H, one warm-up of each, then ``--repeats`` rounds in which the three run in
turn (the first rotating). ``--clock cpu`` times the CPU time of the process instead of the
wall time: on a loaded machine, with one thread, it counts the work done rather than the
waiting for a core (with several threads it adds up the threads' times). It prints the
medians and the ratios to torch and auto/best (auto over the better of blas and brgemm).
``LSTMKIT_GEMM`` is read each time a layer starts, so one module serves all three. On a shared
machine compare the ratios, not the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from lstmkit import bench

ROWS = (
    bench.Config("lstm", 50, 1, 64), bench.Config("lstm", 100, 16, 128),
    bench.Config("lstm", 150, 64, 256), bench.Config("lstm", 25, 64, 512),
    bench.Config("lstm", 100, 32, 1024),
    bench.Config("lstm", 100, 16, 128, variant="peephole"),
    bench.Config("lstm", 150, 64, 256, variant="peephole"),
    bench.Config("gru", 100, 16, 128), bench.Config("gru", 150, 64, 256),
    bench.Config("rnn", 100, 16, 128), bench.Config("rnn", 150, 64, 256),
    bench.Config("lstm", 100, 16, 128, proj=64),
)
MODES = ("blas", "brgemm", "auto")


def run_row(cfg: bench.Config, repeats: int, clock: str = "wall") -> dict:
    ours, baseline = bench.build_models(cfg, "fused_cpp")
    inp = bench.make_inputs(cfg)

    def ours_in(mode):
        def step():
            os.environ["LSTMKIT_GEMM"] = mode
            bench.train_step(ours, inp)
        return step
    tasks = {"torch": {"fb": lambda: bench.train_step(baseline, inp)},
             **{m: {"fb": ours_in(m)} for m in MODES}}
    with bench.using_clock(clock):
        times = bench.measure_times(tasks, repeats, warmup=1)
    os.environ.pop("LSTMKIT_GEMM", None)
    runs = {k: v["fb"] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"name": cfg.name, "torch_same_function": cfg.torch_has_it, "ms_runs": runs,
            "median_ms": med, "min_ms": {k: min(v) for k, v in runs.items()},
            "brgemm_over_blas": med["brgemm"] / med["blas"],
            "auto_over_best": med["auto"] / min(med["blas"], med["brgemm"]),
            **{f"{m}_over_torch": med[m] / med["torch"] for m in MODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--only", help="rows whose name contains this")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. how quiet "
                        "the machine was)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
    rows = [c for c in ROWS if not args.only or args.only.lower() in c.name.lower()]
    from lstmkit.ops import gemm
    routes = gemm.describe()                      # measured now if this machine has none
    if routes.get("routes"):
        print(bench.format_gemm(routes))
    print(f"{torch.get_num_threads()} threads; fused_cpp f+b ms, {args.clock} clock (median of "
          f"{args.repeats}, interleaved); * torch.nn.LSTM of the same size")
    print(f"{'config':<30}{'torch':>10}{'blas':>10}{'brgemm':>10}{'auto':>10}{'blas/torch':>12}"
          f"{'brgemm/torch':>14}{'auto/torch':>12}{'auto/best':>11}")
    results = []
    for cfg in rows:
        r = run_row(cfg, args.repeats, args.clock)
        results.append(r)
        m = r["median_ms"]
        star = "" if cfg.torch_has_it else "*"
        print(f"{cfg.name:<30}{m['torch']:>9.2f}{star or ' '}{m['blas']:>10.2f}"
              f"{m['brgemm']:>10.2f}{m['auto']:>10.2f}{r['blas_over_torch']:>12.2f}"
              f"{r['brgemm_over_torch']:>14.2f}{r['auto_over_torch']:>12.2f}"
              f"{r['auto_over_best']:>11.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "platform": platform.platform(),
                "cpu_model": bench.cpu_model(), "threads": torch.get_num_threads(),
                "repeats": args.repeats, "clock": args.clock,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "load_average": os.getloadavg(), "note": args.note, "gemm": routes}
        args.json.write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
