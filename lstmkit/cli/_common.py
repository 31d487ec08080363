"""What the subcommands share: the error exit, the schedule options of every trainer, and
starting or resuming a run of one (``lstmkit train | forecast | classify``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..data.packaged import DatasetUnavailable
from ..data.text import CorpusError
from ..train.checkpoint import CheckpointError
from ._args import positive_float

EXIT_ERROR, EXIT_DIVERGED = 2, 1
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def error(message: str) -> int:
    print(f"lstmkit: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def add_schedule_options(opt: argparse._ArgumentGroup, *, lr: float, warmup: int) -> None:
    """The learning-rate schedule, clipping and seed options every trainer takes
    (``lr`` and ``warmup``: the defaults shown in the help)."""
    S = argparse.SUPPRESS
    opt.add_argument("--lr", type=positive_float, default=S, help=f"peak learning rate ({lr})")
    opt.add_argument("--lr-schedule", choices=["cosine", "constant"], default=S)
    opt.add_argument("--warmup", type=int, default=S, help=f"linear warm-up steps ({warmup})")
    opt.add_argument("--clip", type=float, default=S, help="gradient-norm clip, 0 = off (1.0)")
    opt.add_argument("--weight-decay", type=float, default=S)
    opt.add_argument("--seed", type=int, default=S)


def add_run_options(parser: argparse.ArgumentParser, name: str, *, validates: str = "validate "
                    "and checkpoint", per_run: int = 10, extends: str = "--steps"
                    ) -> argparse._ArgumentGroup:
    """The "run" group every trainer takes: --out (default ``runs/<name>-<date>-<time>``),
    --resume, --eval-every, --log-every and --quiet; returns the group for more."""
    S = argparse.SUPPRESS
    from ._args import positive_int
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", type=Path,
                     help=f"run directory (default runs/{name}-<date>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", type=Path,
                     help=f"continue the run in RUN_DIR ({extends} may extend it)")
    run.add_argument("--eval-every", type=positive_int, default=S,
                     help=f"{validates} every N steps ({per_run} per run)")
    run.add_argument("--log-every", type=positive_int, default=S)
    run.add_argument("--quiet", action="store_true", default=S, help="no progress bar")
    return run


_NOT_CONFIG = {"command", "func", "out", "resume"}


def _overrides(args: argparse.Namespace, epochs: bool = True) -> dict:
    """The options given, as configuration fields; with ``epochs``, --steps and --epochs
    replace each other."""
    d = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if not epochs:
        return d
    if "epochs" in d:
        d["steps"] = None
    elif "steps" in d:
        d["epochs"] = None
    return d


def run_job(args: argparse.Namespace, make_config, resume_config, trainer_class,
            name_of, *, epochs: bool = False) -> int:
    """Start or resume a run (``--out`` / ``--resume``) of ``trainer_class``, with its
    PNGs (:func:`lstmkit.viz.runs.with_plots`), and map its outcome to an exit code: 0 done,
    1 diverged, 2 bad input, 130/143 signals."""
    from ..train.loop import TrainingDiverged, TrainingInterrupted, shutdown_distributed
    from ..viz.runs import with_plots

    try:
        if args.resume is not None:
            if args.out is not None and args.out != args.resume:
                return error("give either --out or --resume, not both")
            run_dir = args.resume
            cfg = resume_config(run_dir, _overrides(args, epochs))
        else:
            cfg = make_config(_overrides(args, epochs))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = args.out or Path("runs") / f"{name_of(cfg)}-{stamp}"
            if (run_dir / "checkpoints").exists():
                return error(f"{run_dir} already holds a run; continue it with --resume "
                             f"{run_dir} or choose another --out")
        with_plots(trainer_class(cfg, run_dir, resume=args.resume is not None)).fit()
    except TrainingInterrupted as e:
        print(f"lstmkit: interrupted by {e}", file=sys.stderr)
        return EXIT_SIGNAL.get(e.signame, 130)
    except TrainingDiverged as e:
        print(f"lstmkit: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (CorpusError, CheckpointError, ValueError, DatasetUnavailable, ImportError) as e:
        return error(str(e))
    finally:
        shutdown_distributed()
    return 0
