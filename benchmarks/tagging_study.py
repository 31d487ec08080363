"""BiLSTM-softmax vs BiLSTM-CRF vs BiLSTM-CRF with character features on the built-in
tagging corpora: entity F1 (seqeval) and token accuracy on each corpus's test part, and
the training time, over a few seeds.

    python -m benchmarks.tagging_study [--corpora wnut16 hironsan] [--seeds 0 1 2]
                                       [--steps wnut16=3000 hironsan=1000] [--json PATH]

Every run is ``lstmkit tag train`` (through :class:`lstmkit.train.tag.TagTrainer`) with the
defaults (1×100 BiLSTM, 50-d random word embeddings, 25-d characters into a 1×25 char
BiLSTM, dropout 0.5, words seen once replaced by <unk> with p = 0.5, Adam 3e-3 with cosine
decay, batch 16 sentences, best checkpoint by dev F1 of 10 validations), tags in BIO, one
thread (the study shares a 2-core machine).
"time" is the wall time of the whole ``fit()`` (its 10 dev validations included). The
JSON is rewritten after every run, so an interrupted study keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lstmkit.train.tag import TagConfig, TagTrainer

MODELS = {                               # name: (output, chars)
    "BiLSTM-softmax": ("softmax", False),
    "BiLSTM-CRF": ("crf", False),
    "BiLSTM-CRF+chars": ("crf", True),
}
STEPS = {"wnut16": 3000, "hironsan": 1000}
OUT = Path(__file__).parent / "results" / "tagging-study.json"


def run_one(corpus: str, model: str, seed: int, steps: int, runs: Path) -> dict:
    output, chars = MODELS[model]
    cfg = TagConfig(corpus=corpus, output=output, chars=chars, seed=seed, steps=steps,
                    scheme="bio", quiet=True)
    start = time.perf_counter()
    result = TagTrainer(cfg, runs / f"{corpus}-{model}-{seed}").fit()
    seconds = time.perf_counter() - start
    test = result.test
    return {"corpus": corpus, "model": model, "seed": seed, "steps": steps,
            "best_step": result.best_step, "seconds": seconds, "f1": test["f1"],
            "precision": test["precision"], "recall": test["recall"],
            "accuracy": test["accuracy"], "dev_f1": result.dev.get("f1"),
            "per_type": test["per_type"]}


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample std over seeds of F1, accuracy and time, per (corpus, model)."""
    rows = []
    for corpus in dict.fromkeys(r["corpus"] for r in runs):
        for model in MODELS:
            got = [r for r in runs if r["corpus"] == corpus and r["model"] == model]
            if not got:
                continue
            row = {"corpus": corpus, "model": model, "seeds": len(got)}
            for key in ("f1", "accuracy", "seconds"):
                values = [r[key] for r in got]
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| corpus | model | seeds | entity F1 (test) | token accuracy | time (s) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['model']} | {r['seeds']} | "
                     f"{100 * r['f1']:.1f} ± {100 * r['f1_std']:.1f} | "
                     f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} | "
                     f"{r['seconds']:.0f} ± {r['seconds_std']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", nargs="+", default=list(STEPS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", nargs="+", default=[], metavar="CORPUS=N",
                   help="steps per corpus (default: " +
                        " ".join(f"{k}={v}" for k, v in STEPS.items()) + ")")
    p.add_argument("--json", type=Path, default=OUT)
    args = p.parse_args(argv)
    steps = {**STEPS, **{k: int(v) for k, v in (s.split("=") for s in args.steps)}}
    torch.set_num_threads(1)
    out = {"torch": torch.__version__, "machine": platform.machine(), "threads": 1,
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": steps, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpora:
            for seed in args.seeds:
                for model in MODELS:
                    r = run_one(corpus, model, seed, steps[corpus], Path(tmp))
                    out["runs"].append(r)
                    out["summary"] = summarise(out["runs"])
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(out, indent=1) + "\n")
                    print(f"{corpus} {model} seed {seed}: F1 {100 * r['f1']:.1f}, accuracy "
                          f"{100 * r['accuracy']:.2f}, {r['seconds']:.0f} s", flush=True)
    print(table(out["summary"]))


if __name__ == "__main__":
    main()
