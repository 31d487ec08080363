"""Forecasting and classification on real data: the numbers of docs/forecast-classify.md.

    python benchmarks/forecast_classify.py [--seeds 3] [--only forecast|classify]
                                           [--out benchmarks/results/forecast-classify]

Forecasting: each built-in series, the LSTM over several seeds against naive, seasonal
naive, ARIMA and ETS (statsmodels), all on the same rolling-origin backtest; the
classical models are fitted once per series (they have no seed). Classification: each
built-in UCR/UEA set over several seeds, test accuracy of the checkpoint chosen on the
held-out validation part of the training set, next to published 1-NN DTW and LSTM-FCN.
Every run keeps its run directory under ``--runs`` (not committed); the summary goes to
``summary.json`` and ``summary.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lstmkit.train.classify import ClassifyConfig, ClassifyTrainer
from lstmkit.train.forecast import ForecastConfig, ForecastTrainer
from lstmkit.viz.runs import with_plots

FORECASTS = {
    "airline": dict(series="airline", log=True),
    "sunspots": dict(series="sunspots", horizon=11, lookback=33, backtest=30),
    "elec_equip": dict(series="elec_equip", log=True, backtest=24),
}
CLASSIFY = ("GunPoint", "ItalyPowerDemand", "ArrowHead", "BasicMotions", "JapaneseVowels")
CLASSIFY_SETTINGS = dict(hidden=64, bidirectional=True, pool="mean", steps=400)

# Published test accuracies. 1-NN DTW (univariate: full-window DTW of the UCR archive,
# Dau et al. 2019; multivariate: DTW_D of Bagnall et al. 2018) and LSTM-FCN (Karim et al.
# 2018). The univariate figures are those the issue quotes; None where we have no figure.
PUBLISHED = {
    "GunPoint": (0.907, 1.000),
    "ItalyPowerDemand": (0.950, 0.962),
    "ArrowHead": (0.663, 0.897),
    "BasicMotions": (0.975, None),
    "JapaneseVowels": (0.949, None),
}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_forecasts(out: Path, seeds: int) -> dict:
    results = {}
    for name, settings in FORECASTS.items():
        runs = []
        for seed in range(seeds):
            cfg = ForecastConfig(**settings, seed=seed, quiet=True, classical=seed == 0)
            t0 = time.perf_counter()
            r = with_plots(ForecastTrainer(cfg, out / f"forecast-{name}-seed{seed}")).fit()
            runs.append({"seed": seed, "scores": r.scores, "best_step": r.best_step,
                         "seconds": time.perf_counter() - t0})
            print(f"{name} seed {seed}: MASE {r.scores['LSTM']['mase']:.3f}", flush=True)
        report = json.loads((out / f"forecast-{name}-seed0" / "report.json").read_text())
        lstm = [r["scores"]["LSTM"] for r in runs]
        results[name] = {
            "config": report["config"], "runs": runs,
            "lstm": {k: mean_sd([s[k] for s in lstm]) for k in lstm[0]},
            "baselines": {k: v for k, v in runs[0]["scores"].items() if k != "LSTM"},
            "classical_models": report["classical_models"],
        }
    return results


def run_classify(out: Path, seeds: int) -> dict:
    results = {}
    for name in CLASSIFY:
        runs = []
        for seed in range(seeds):
            cfg = ClassifyConfig(dataset=name, seed=seed, quiet=True, **CLASSIFY_SETTINGS)
            t0 = time.perf_counter()
            r = with_plots(ClassifyTrainer(cfg, out / f"classify-{name}-seed{seed}")).fit()
            runs.append({"seed": seed, "test_accuracy": r.test_accuracy,
                         "val_accuracy": r.val_accuracy, "best_step": r.best_step,
                         "seconds": time.perf_counter() - t0})
            print(f"{name} seed {seed}: test accuracy {r.test_accuracy:.4f}", flush=True)
        results[name] = {"runs": runs, "settings": CLASSIFY_SETTINGS,
                         "accuracy": mean_sd([r["test_accuracy"] for r in runs]),
                         "published_dtw": PUBLISHED[name][0],
                         "published_lstm_fcn": PUBLISHED[name][1]}
    return results


def markdown(summary: dict) -> str:
    lines = []
    if "forecast" in summary:
        lines += ["| series | LSTM MASE (mean ± sd) | seasonal naive | naive | ARIMA | ETS |",
                  "|---|---|---|---|---|---|"]
        for name, r in summary["forecast"].items():
            b = r["baselines"]
            m, sd = r["lstm"]["mase"]
            cells = [f"{m:.3f} ± {sd:.3f}"] + [
                f"{b[k]['mase']:.3f}" if k in b else "—"
                for k in ("seasonal_naive", "naive", "ARIMA", "ETS")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "classify" in summary:
        lines += ["| data set | lstmkit LSTM (mean ± sd) | 1-NN DTW | LSTM-FCN |",
                  "|---|---|---|---|"]
        for name, r in summary["classify"].items():
            m, sd = r["accuracy"]
            fcn = r["published_lstm_fcn"]
            lines.append(f"| {name} | {m:.3f} ± {sd:.3f} | {r['published_dtw']:.3f} | "
                         f"{'—' if fcn is None else f'{fcn:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=["forecast", "classify"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/forecast-classify"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/lstmkit-forecast-classify"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seeds": args.seeds, "torch": torch.__version__,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.only in (None, "forecast"):
        summary["forecast"] = run_forecasts(args.runs, args.seeds)
    if args.only in (None, "classify"):
        summary["classify"] = run_classify(args.runs, args.seeds)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
