"""A small rerun of Jozefowicz, Zaremba & Sutskever's comparison ("An Empirical Exploration
of Recurrent Network Architectures", ICML 2015): the LSTM (forget-gate bias 0 and 1), the
GRU and MUT1–3 on a character language model (the Python standard library's sources) and on
the 1997 adding problem, at equal parameter count, with the same hyperparameters per task.

    python benchmarks/mut_study.py [--seeds 2] [--text-steps 300] [--T 50] [--budget 60000]

Equal parameters: MUT1/MUT2 add x_t to an H-vector, so the language models all use
embed = hidden, and each cell's hidden size is the one whose whole model (embedding,
recurrent layer, decoder) comes closest to the LSTM's at ``--hidden``. The adding models are
matched the same way (MUT1/MUT2 get the 2 → H input layer of ``lstmkit experiment``).
Writes <name>.json and <name>.md (name: ``--name``, default mut-study) to ``--out``, run
directories to ``--runs``; ``--only text|adding`` and ``--cells`` run a subset (then only
the JSON is written), e.g. the follow-up ``--only adding --cells LSTM "LSTM fb=1" --budget
300000 --name mut-study-lstm-adding-300k``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lstmkit.data.synthetic import make_task
from lstmkit.data.text import Vocabulary, read_corpus
from lstmkit.train import TrainConfig, Trainer
from lstmkit.train.experiment import ExperimentConfig, SequenceModel, run_experiment
from lstmkit.train.model import LanguageModel

# name → (cell, forget-gate bias)
CELLS = {"LSTM": ("lstm", 0.0), "LSTM fb=1": ("lstm", 1.0), "GRU": ("gru", 0.0),
         "MUT1": ("mut1", 0.0), "MUT2": ("mut2", 0.0), "MUT3": ("mut3", 0.0)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def match_hidden(count: Callable[[int], int], target: int, start: int = 8, step: int = 1) -> int:
    """The hidden size (a multiple of ``step``) whose parameter count is closest to
    ``target``: counts grow with H, so walk up from ``start`` to the first H at or above it
    and take the nearer of two."""
    h = max(step, start - start % step)
    while count(h) < target:
        h += step
    return h if h == step or count(h) - target <= target - count(h - step) else h - step


def text_config(cell: str, fb: float, hidden: int, args, seed: int) -> TrainConfig:
    return TrainConfig(cell=cell, forget_bias=fb, hidden=hidden, embed=hidden,
                       steps=args.text_steps, max_chars=args.max_chars, seed=seed,
                       quiet=True, eval_every=args.text_steps)


def text_sizes(args) -> dict:
    corpus = read_corpus([], max_chars=args.max_chars)
    V = len(Vocabulary.build(corpus.text, "char", 10_000))

    def count(cell: str, h: int) -> int:
        return n_params(LanguageModel(V, text_config(cell, 0.0, h, args, 0)))

    target, start = count("lstm", args.hidden), args.hidden // 2
    sizes = {}
    for name, (cell, _) in CELLS.items():
        h = (args.hidden if cell == "lstm" else
             match_hidden(lambda h, c=cell: count(c, h), target, start))
        sizes[name] = {"hidden": h, "params": count(cell, h), "vocab": V}
    return sizes


def text(args, sizes: dict, out: dict, save: Callable[[], None]) -> None:
    for seed in range(args.seeds):           # seed-major: a cut-short study has every cell
        for name, (cell, fb) in CELLS.items():
            cfg = text_config(cell, fb, sizes[name]["hidden"], args, seed)
            slug = name.lower().replace(" ", "").replace("=", "")
            t0 = time.perf_counter()
            r = Trainer(cfg, args.runs / f"text-{slug}-seed{seed}").fit()
            out.setdefault(name, []).append({
                "seed": seed, "val_bpc": r.best_val_metric, "test_bpc": r.test_metric,
                "seconds": time.perf_counter() - t0})
            print(f"text {name} seed {seed}: val BPC {r.best_val_metric:.4f}, test "
                  f"{r.test_metric:.4f}, {out[name][-1]['seconds']:.0f} s", flush=True)
            save()


def adding_sizes(args) -> dict:
    task = make_task("adding", args.T)

    def count(cell: str, h: int) -> int:
        return n_params(SequenceModel(task, cell, h))

    target, start = count("lstm", args.adding_hidden), args.adding_hidden // 2
    return {name: {"hidden": (h := args.adding_hidden if cell == "lstm" else
                              match_hidden(lambda h, c=cell: count(c, h), target, start)),
                   "params": count(cell, h)}
            for name, (cell, _) in CELLS.items()}


def adding(args, sizes: dict, out: dict, save: Callable[[], None]) -> None:
    for name, (cell, fb) in CELLS.items():
        runs = []
        for seed in range(args.seeds):
            cfg = ExperimentConfig(task="adding", T=args.T, cell=cell, forget_bias=fb,
                                   hidden=sizes[name]["hidden"], seed=seed, budget=args.budget)
            t0 = time.perf_counter()
            r = run_experiment(cfg)
            runs.append({"seed": seed, "test": r["test"], "sequences": r["sequences"],
                         "solved_at": r["solved_at"], "diverged": r["diverged"],
                         "seconds": time.perf_counter() - t0})
            print(f"adding {name} seed {seed}: wrong {r['test']['wrong']:.4f}, solved at "
                  f"{r['solved_at']}, {runs[-1]['seconds']:.0f} s", flush=True)
            out[name] = runs
            save()


def mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def markdown(study: dict) -> str:
    s = study["settings"]
    lines = [f"| cell | text: hidden (params) | text: validation BPC | text: test BPC | "
             f"adding T={s['T']}: hidden (params) | adding: test wrong, % (per seed) | "
             f"adding: sequences to solve (per seed) |",
             "|---|---|---|---|---|---|---|"]
    for name in CELLS:
        ts, tr = study["text_sizes"][name], study["text"][name]
        asz, ar = study["adding_sizes"][name], study["adding"][name]
        wrong = ", ".join(f"{100 * r['test']['wrong']:.2f}" for r in ar)
        solved = ", ".join(f"{r['solved_at']:,}" if r["solved_at"] else "—" for r in ar)
        lines.append(f"| {name} | {ts['hidden']} ({ts['params']:,}) | "
                     f"{mean_sd([r['val_bpc'] for r in tr])} | "
                     f"{mean_sd([r['test_bpc'] for r in tr])} | "
                     f"{asz['hidden']} ({asz['params']:,}) | {wrong} | {solved} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128, help="the text LSTM's hidden size")
    parser.add_argument("--text-steps", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--adding-hidden", type=int, default=64)
    parser.add_argument("--budget", type=int, default=60_000, help="adding: training sequences")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["text", "adding"], default=None)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--name", default="mut-study", help="output file stem")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/lstmkit-mut-study"))
    args = parser.parse_args(argv)
    for name in [n for n in CELLS if n not in args.cells]:
        del CELLS[name]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    study = {"settings": vars(args) | {"out": str(args.out), "runs": str(args.runs)},
             "text_sizes": text_sizes(args), "adding_sizes": adding_sizes(args)}
    print(json.dumps({k: study[k] for k in ("text_sizes", "adding_sizes")}), flush=True)
    study["text"], study["adding"] = {}, {}

    def save() -> None:  # after every run, so a cut-short study keeps what it has
        study["minutes"] = (time.perf_counter() - start) / 60
        (args.out / f"{args.name}.json").write_text(json.dumps(study, indent=1, default=str) + "\n")

    if args.only != "text":
        adding(args, study["adding_sizes"], study["adding"], save)
    if args.only != "adding":
        text(args, study["text_sizes"], study["text"], save)
    if args.only is None:
        (args.out / f"{args.name}.md").write_text(markdown(study))
        print(markdown(study))
    print(f"{study['minutes']:.1f} min, {torch.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
