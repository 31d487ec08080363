"""``lstmkit tour [RUN_DIR] [--out DIR]``: "Understanding LSTM networks" told with a real
trained model (:mod:`lstmkit.tour`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..data.text import CorpusError
from ..train.checkpoint import CheckpointError
from ._args import positive_int
from ._common import error


def add_parsers(sub) -> None:
    tour = sub.add_parser(
        "tour", help="\"Understanding LSTM networks\" walked through with a real trained model",
        description="Write a self-contained HTML page (with its PNGs, a Markdown copy and the "
                    "numbers as JSON) that walks through the usual explanation of the LSTM — "
                    "the unrolled network, the cell state and where the forget gate wipes it, "
                    "the gates, one step's equations with its actual numbers, the parameter "
                    "count, gradient flow RNN against LSTM, the variants — with the numbers "
                    "of a trained character-level LSTM. With no RUN_DIR it reuses the newest "
                    "suitable run under runs/ (a character LSTM of `lstmkit train` on the "
                    "built-in corpus, at most 30 days old) or trains a small one (1×128 "
                    "units, 2,000 steps: about 50 s of CPU time, more wall time on a busy "
                    "machine) into runs/tour-<date>-<time>.")
    tour.add_argument("run_dir", type=Path, metavar="RUN_DIR", nargs="?",
                      help="a run of `lstmkit train` with a character-level LSTM")
    tour.add_argument("--out", type=Path, metavar="DIR",
                      help="where to write tour.html, tour.md, tour.json and the PNGs "
                           "(default RUN_DIR/tour)")
    tour.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                      help="where to look for a run to reuse and to train a new one (runs)")
    tour.add_argument("--train", action="store_true",
                      help="with no RUN_DIR: train a new model even if one could be reused")
    tour.add_argument("--steps", type=positive_int, default=None,
                      help="optimizer steps of a newly trained model (2000)")
    tour.add_argument("--results", type=Path, metavar="DIR", default=None,
                      help="the project's results files to cite (default: the "
                           "benchmarks/results folder of the lstmkit source tree)")
    tour.add_argument("--md-images", default="", metavar="PREFIX",
                      help="the folder tour.md refers to its PNGs under (default: beside it)")
    tour.set_defaults(func=cmd_tour)


def cmd_tour(args: argparse.Namespace) -> int:
    from .. import tour as tr

    start = time.perf_counter()
    if args.run_dir is not None and (args.train or args.steps):
        return error("--train and --steps train a new model; they cannot go with RUN_DIR")
    try:
        if args.run_dir is not None:
            run_dir, how = args.run_dir, "the run given on the command line"
            tr.check_run(run_dir)
        else:
            run = None if args.train else tr.find_recent_run(args.runs)
            if run is not None:
                run_dir = run.path.parents[1]
                how = (f"reused: the newest suitable run under {args.runs}/ (a character "
                       "LSTM on the built-in corpus)")
                print(f"lstmkit tour: reusing {run_dir} (step {run.step}); --train trains a "
                      "new model instead")
            else:
                run_dir = args.runs / f"tour-{time.strftime('%Y%m%d-%H%M%S')}"
                why = "--train" if args.train else f"no suitable run under {args.runs}/"
                print(f"lstmkit tour: {why}; training a small character LSTM into {run_dir}")
                extra = {"steps": args.steps} if args.steps else {}
                tr.train_tour_model(run_dir, **extra)
                how = f"trained for this tour by `lstmkit tour` ({why})"
        results = args.results if args.results is not None else tr.RESULTS
        doc = tr.build_tour(run_dir, args.out, how=how, results=results,
                            image_dir=args.md_images)
    except (tr.TourError, CorpusError, CheckpointError) as e:
        return error(str(e))
    except ImportError as e:
        return error(f"{e} (the tour draws its PNGs with matplotlib)")
    seconds = time.perf_counter() - start
    paths = doc["paths"]
    print(f"wrote {paths['html']} (self-contained), {paths['markdown']}, {paths['json']} and "
          f"{sum(k.startswith('png:') for k in paths)} PNGs in {seconds:.0f} s; unit "
          f"{doc['unit']}, step {doc['step']} ({doc['reset']['rule']})")
    sys.stdout.flush()
    return 0
