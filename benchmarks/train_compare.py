"""Language-model training runs for the record: lstmkit against torch.nn, and LSTM variants.

    python benchmarks/train_compare.py [--only parity|variants] [--steps N] [--runs DIR]

``parity``: the same seed, data (the built-in corpus, 2M characters) and hyperparameters
with the recurrent layer from lstmkit (fused C++ kernels) and from torch.nn, for LSTM and
GRU; the validation BPC of each after the budget, and the relative difference.

``variants``: a 2-layer, 256-unit character model on 6M characters (≥ 5 MB) of the built-in
corpus, one pass over the data, for the plain, peephole and coupled (CIFG) LSTM.

Writes ``benchmarks/results/train-<what>-<date>.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lstmkit.train import TrainConfig, Trainer
from lstmkit.viz.runs import with_plots

RESULTS = Path(__file__).resolve().parent / "results"


def run(name: str, cfg: TrainConfig, runs: Path) -> dict:
    start = time.perf_counter()
    result = with_plots(Trainer(cfg, runs / name)).fit()
    seconds = time.perf_counter() - start
    row = {"name": name, "config": asdict(cfg), "seconds": seconds, "steps": result.step,
           "val_bpc": result.best_val_metric, "test_bpc": result.test_metric,
           "best_step": result.best_step}
    print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    return row


def parity(steps: int, runs: Path) -> tuple[list[dict], list[str]]:
    rows, lines = [], ["| cell | lstmkit val BPC | torch.nn val BPC | rel. diff | "
                       "lstmkit s | torch.nn s |", "|---|---|---|---|---|---|"]
    for cell in ("lstm", "gru"):
        common = dict(cell=cell, steps=steps, quiet=True, eval_every=steps // 4)
        ours = run(f"parity-{cell}-lstmkit", TrainConfig(backend="fused", **common), runs)
        theirs = run(f"parity-{cell}-torch", TrainConfig(impl="torch", **common), runs)
        diff = ours["val_bpc"] / theirs["val_bpc"] - 1
        rows += [ours, theirs]
        lines.append(f"| {cell} | {ours['val_bpc']:.4f} | {theirs['val_bpc']:.4f} | "
                     f"{diff:+.2%} | {ours['seconds']:.0f} | {theirs['seconds']:.0f} |")
    return rows, lines


def variants(steps: int, runs: Path) -> tuple[list[dict], list[str]]:
    rows, lines = [], ["| variant | val BPC | test BPC | parameters | time |",
                       "|---|---|---|---|---|"]
    for name, kw in (("lstm", {}), ("peephole", {"peephole": True}),
                     ("coupled", {"coupled": True})):
        cfg = TrainConfig(layers=2, hidden=256, embed=64, dropout=0.1, max_chars=6_000_000,
                          steps=steps, quiet=True, eval_every=steps // 6, **kw)
        row = run(f"variants-{name}", cfg, runs)
        from lstmkit.train import load_run
        n = sum(p.numel() for p in load_run(runs / f"variants-{name}").model.parameters())
        row["parameters"] = n
        rows.append(row)
        lines.append(f"| {name} | {row['val_bpc']:.4f} | {row['test_bpc']:.4f} | {n:,} | "
                     f"{row['seconds'] / 60:.1f} min |")
    return rows, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["parity", "variants"])
    parser.add_argument("--steps", type=int, help="override the budget (parity 600, "
                                                  "variants 1500)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    for what, fn, steps in (("parity", parity, 600), ("variants", variants, 1500)):
        if args.only not in (None, what):
            continue
        rows, lines = fn(args.steps or steps, args.runs)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "date": stamp}
        (RESULTS / f"train-{what}-{stamp}.json").write_text(
            json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
        (RESULTS / f"train-{what}-{stamp}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
