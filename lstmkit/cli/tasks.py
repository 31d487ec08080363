"""``lstmkit forecast | predict | classify``: a thin layer over
:mod:`lstmkit.train.forecast` and :mod:`lstmkit.train.classify`."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..data.series import BUILTIN_SERIES
from ..data.ucr import BUILTIN_SETS
from ..train.checkpoint import CheckpointError
from ._args import fraction, positive_int
from ._common import add_run_options, add_schedule_options, error, run_job

S = argparse.SUPPRESS                          # only options given appear in the namespace


def _model_options(parser: argparse.ArgumentParser, *, bidirectional: bool) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=S)
    model.add_argument("--peephole", action="store_true", default=S)
    model.add_argument("--coupled", action="store_true", default=S,
                       help="coupled input-forget gate (CIFG)")
    model.add_argument("--layers", type=positive_int, default=S)
    model.add_argument("--hidden", type=positive_int, default=S, help="hidden size (64)")
    model.add_argument("--dropout", type=fraction, default=S)
    if bidirectional:
        model.add_argument("--bidirectional", action="store_true", default=S)
        model.add_argument("--pool", choices=["last", "mean"], default=S,
                           help="class scores from the final state (last) or the mean "
                                "of the outputs over time")
    model.add_argument("--backend", choices=["auto", "reference", "fused", "fused_py",
                                             "fused_cpp"], default=S)


def _run_options(parser: argparse.ArgumentParser, steps: int, unit: str) -> None:
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=S, help=f"optimizer steps ({steps})")
    opt.add_argument("--batch", type=positive_int, default=S,
                     help=f"{unit} per step, over all processes (32)")
    add_schedule_options(opt, lr=3e-3, warmup=20)
    add_run_options(parser, "<name>", per_run=20)


def add_parsers(sub) -> None:
    fc = sub.add_parser(
        "forecast", help="train a forecaster on a series and backtest it",
        description="Forecast a series H steps ahead (direct multi-output), with a rolling-"
                    "origin backtest against naive and seasonal-naive forecasts (and ARIMA/"
                    "ETS with --classical). With no --csv it runs on a built-in series read "
                    f"from installed package data: {', '.join(BUILTIN_SERIES)}.")
    data = fc.add_argument_group("data")
    data.add_argument("--csv", metavar="FILE", default=S, help="CSV file with a header row")
    data.add_argument("--target", metavar="COL", default=S, help="column to forecast")
    data.add_argument("--time", metavar="COL", default=S, help="time column (labels only)")
    data.add_argument("--features", metavar="COL", nargs="+", default=S,
                      help="more input columns")
    data.add_argument("--series", choices=sorted(BUILTIN_SERIES), default=S,
                      help="built-in series when no --csv (airline)")
    data.add_argument("--season", type=positive_int, default=S,
                      help="seasonal period m (built-in: its own; CSV: 1)")
    data.add_argument("--horizon", type=positive_int, default=S,
                      help="steps to forecast (m if m > 1, else 8)")
    data.add_argument("--lookback", type=positive_int, default=S,
                      help="input steps (max(2m, 2H))")
    data.add_argument("--backtest", type=positive_int, default=S,
                      help="rolling origins at the end of the series (12)")
    data.add_argument("--stride", type=positive_int, default=S,
                      help="steps between backtest origins (1)")
    data.add_argument("--val-windows", type=positive_int, default=S,
                      help="validation windows before the backtest (H)")
    data.add_argument("--absolute", dest="relative", action="store_false", default=S,
                      help="predict values, not changes from the last value")
    data.add_argument("--log", action="store_true", default=S, help="model log y")
    data.add_argument("--classical", action="store_true", default=S,
                      help="also fit ARIMA and ETS (statsmodels) over the same backtest")
    _model_options(fc, bidirectional=False)
    _run_options(fc, 600, "windows")
    fc.set_defaults(func=cmd_forecast)

    pr = sub.add_parser("predict", help="forecast from a saved forecast run",
                        description="Forecast the H steps after the end of a series with the "
                                    "best checkpoint of a `lstmkit forecast` run.")
    pr.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    pr.add_argument("--csv", metavar="FILE", help="the series, with the run's columns "
                                                  "(default: the run's own data)")
    pr.add_argument("--out", metavar="FILE", type=Path, help="write the forecast as CSV here")
    pr.set_defaults(func=cmd_predict)

    cl = sub.add_parser(
        "classify", help="train a sequence classifier and score its test set",
        description="Classify sequences (fixed or variable length, one or more channels). "
                    "Data: --train/--test files (.ts, or CSV/TSV with the label first) or a "
                    f"built-in UCR/UEA set: {', '.join(BUILTIN_SETS)}.")
    data = cl.add_argument_group("data")
    data.add_argument("--train", metavar="FILE", default=S)
    data.add_argument("--test", metavar="FILE", default=S)
    data.add_argument("--dataset", default=S, help="built-in set when no files (GunPoint)")
    data.add_argument("--val-fraction", type=fraction, default=S,
                      help="training cases held out to choose the checkpoint (0.2)")
    _model_options(cl, bidirectional=True)
    _run_options(cl, 500, "sequences")
    cl.set_defaults(func=cmd_classify)


def cmd_forecast(args: argparse.Namespace) -> int:
    from ..train.forecast import ForecastConfig, ForecastTrainer, resume_forecast_config

    return run_job(args, ForecastConfig.from_dict, resume_forecast_config, ForecastTrainer,
                   lambda cfg: f"forecast-{Path(cfg.csv).stem if cfg.csv else cfg.series}")


def cmd_classify(args: argparse.Namespace) -> int:
    from ..train.classify import ClassifyConfig, ClassifyTrainer, resume_classify_config

    return run_job(args, ClassifyConfig.from_dict, resume_classify_config, ClassifyTrainer,
                   lambda cfg: f"classify-{cfg.name}")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..train.forecast import predict

    try:
        values, labels = predict(args.run_dir, args.csv)
    except (CheckpointError, ValueError) as e:
        return error(str(e))
    rows = [(k + 1, label, float(v)) for k, (label, v) in enumerate(zip(labels, values))]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step_ahead", "time", "forecast"])
            w.writerows(rows)
        print(f"wrote {args.out}")
    else:
        w = csv.writer(sys.stdout)
        w.writerow(["step_ahead", "time", "forecast"])
        w.writerows(rows)
    return 0
