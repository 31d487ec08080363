"""``lstmkit experiment | gradient-flow``: a thin layer over :mod:`lstmkit.train.experiment`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data.synthetic import TASKS
from ..train.experiment import CELLS, flow_table, gradient_flow_study, run_table
from ..viz.curves import plot_gradient_flow
from ..viz.runs import plot_experiment
from ._args import positive_float, positive_int
from ._common import error


def add_parsers(sub) -> None:
    exp = sub.add_parser(
        "experiment", help="a long-time-lag task (adding, copy, Reber, temporal order) for "
                           "several cells and seeds, with a results table and curves",
        description="Train each cell on a synthetic long-time-lag task, test it on fresh "
                    "sequences and write results.md, results.json and curves.png.")
    exp.add_argument("task", choices=list(TASKS))
    exp.add_argument("--cell", nargs="+", choices=list(dict.fromkeys([*CELLS, "lstm1997"])),
                     default=["lstm", "rnn"])
    exp.add_argument("--T", type=positive_int, default=100, help="minimal sequence length")
    exp.add_argument("--budget", type=positive_int, default=None,
                     help="training sequences per run (100000; with --protocol 1997: no cap)")
    exp.add_argument("--seeds", type=positive_int, default=1)
    exp.add_argument("--hidden", type=positive_int, default=64)
    exp.add_argument("--layers", type=positive_int, default=1,
                     help="stacked layers (grid cells: blocks along depth) (1)")
    exp.add_argument("--batch", type=positive_int, default=32)
    exp.add_argument("--lr", type=positive_float, default=1e-2, help="Adam (0.01)")
    exp.add_argument("--forget-bias", type=float, default=0.0,
                     help="add this to the LSTM forget-gate bias at initialisation "
                          "(other cells ignore it)")
    exp.add_argument("--no-stop", action="store_true",
                     help="use the whole budget even after the task is solved")
    exp.add_argument("--out", type=Path, help="output folder (default runs/experiments/"
                                              "<task>-T<T>-<date>-<time>)")
    exp.add_argument("--protocol", choices=["modern", "1997"], default=None,
                     help="1997: the adding problem as Hochreiter & Schmidhuber 1997 trained "
                          "it (their network of 93 weights, online SGD, truncated gradient, "
                          "their stop criterion; the C++ tiny trainer). Default: 1997 for "
                          "--cell lstm1997 on the adding task, else modern")
    exp.add_argument("--max-seconds", type=positive_float, default=3600.0,
                     help="wall-time cap per run with --protocol 1997 (3600)")
    exp.set_defaults(func=cmd_experiment)

    flow = sub.add_parser(
        "gradient-flow", help="‖∂L/∂h_t‖ over t for RNN, GRU and LSTM, before and after "
                              "training on a task")
    flow.add_argument("--task", choices=list(TASKS), default="adding2016")
    flow.add_argument("--T", type=positive_int, default=100)
    flow.add_argument("--cell", nargs="+", choices=list(CELLS), default=["rnn", "gru", "lstm"])
    flow.add_argument("--budget", type=positive_int, default=20_000)
    flow.add_argument("--hidden", type=positive_int, default=64)
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument("--out", type=Path, default=Path("runs/gradient-flow"))
    flow.set_defaults(func=cmd_gradient_flow)


def cmd_experiment(args: argparse.Namespace) -> int:
    out = args.out or Path("runs/experiments") / (
        f"{args.task}-T{args.T}-{time.strftime('%Y%m%d-%H%M%S')}")
    protocol = args.protocol or ("1997" if args.task == "adding" and args.cell == ["lstm1997"]
                                 else "modern")
    if protocol == "1997":
        return _experiment_1997(args, out)
    if "lstm1997" in args.cell and "lstm1997" not in CELLS:
        return error("--cell lstm1997 runs only the 1997 protocol: the adding task with "
                     "--cell lstm1997 alone (or --protocol 1997); for the other tasks use "
                     f"one of {', '.join(CELLS)}")
    if args.budget is None:
        args.budget = 100_000
    try:
        run_table(args.task, args.T, args.cell, args.seeds, out, hidden=args.hidden,
                  layers=args.layers, batch=args.batch, budget=args.budget, lr=args.lr,
                  forget_bias=args.forget_bias,
                  stop_when_solved=not args.no_stop)
    except ValueError as e:
        return error(str(e))
    plot_experiment(out)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.json, curves.png")
    return 0


def _experiment_1997(args: argparse.Namespace, out: Path) -> int:
    """``--protocol 1997``: lstmkit.train.protocol1997 (the adding task, cell lstm1997)."""
    from ..train.protocol1997 import run_protocol_1997
    if args.task != "adding":
        return error(f"--protocol 1997 is the adding problem of Hochreiter & Schmidhuber 1997; "
                     f"got task {args.task!r}")
    if args.cell != ["lstm1997"]:
        return error(f"--protocol 1997 trains only the 1997 LSTM: pass --cell lstm1997 alone "
                     f"(got --cell {' '.join(args.cell)})")
    try:
        run_protocol_1997(args.T, args.seeds, out, max_sequences=args.budget,
                          max_seconds=args.max_seconds, log=lambda s: print(s, flush=True))
    except ValueError as e:
        return error(str(e))
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.json")
    return 0


def cmd_gradient_flow(args: argparse.Namespace) -> int:
    try:
        study = gradient_flow_study(args.task, args.T, tuple(args.cell), budget=args.budget,
                                    hidden=args.hidden, seed=args.seed, out=args.out)
    except ValueError as e:
        return error(str(e))
    plot_gradient_flow(study, args.out / "gradient_flow.png")
    print(flow_table(study))
    print(f"wrote {args.out}/gradient_flow.png and gradient_flow.json")
    return 0
