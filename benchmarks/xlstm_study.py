"""xLSTM and parallel-in-time recurrences against the LSTM and the GRU, at equal parameter
count and equal wall time: a character language model on the default corpus (the Python
standard library's sources) and the adding problem (Arjovsky et al.'s 2016 form, mean
squared error against the 0.167 of always answering 1) at long T.

    python benchmarks/xlstm_study.py [--seconds 120] [--seeds 2] [--T 200 1000]

Equal parameters: each cell's hidden size is the one whose whole model comes closest to the
LSTM's at ``--hidden`` (the head-wise cells keep it a multiple of their head count). The cells
whose gates see only x_t (mLSTM, minGRU, minLSTM) are stacked ``--scan-layers`` deep (2), as
their papers stack them; the others have one layer.
Equal wall time: before training, one process times a training step of every model in
interleaved rounds (median of ``--rounds``) and gives each cell the number of steps (text)
or sequences (adding) that fits ``--seconds`` at that rate. The step counts, not the clock
during training, carry the budget, so a busy machine during training does not bias the
comparison; a busy machine during the calibration does, so calibrate on a quiet one.
Writes <name>.json (after every run) and <name>.md to ``--out``.
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
import torch.nn.functional as F
from mut_study import match_hidden, mean_sd, n_params  # benchmarks/ is on sys.path

from lstmkit.data.synthetic import make_task
from lstmkit.data.text import Vocabulary, read_corpus
from lstmkit.train import TrainConfig, Trainer
from lstmkit.train.experiment import ExperimentConfig, SequenceModel, run_experiment
from lstmkit.train.model import LanguageModel

CELLS = {"LSTM": "lstm", "GRU": "gru", "sLSTM": "slstm", "mLSTM": "mlstm",
         "minGRU": "mingru", "minLSTM": "minlstm"}
MULTIPLE = {"slstm": 4, "mlstm": 4}          # hidden sizes divisible by the default heads
# mLSTM, minGRU and minLSTM gates see only x_t: one layer cannot mix its memory back into its
# gates, so the papers stack them; they get ``--scan-layers`` layers, the others one.
STACKED = ("mlstm", "mingru", "minlstm")


def median_step_seconds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Seconds per call of each closure: interleaved rounds, one warm-up call each."""
    for f in steps.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def layers(cell: str, args) -> int:
    return args.scan_layers if cell in STACKED else 1


def text_config(cell: str, hidden: int, steps: int, args, seed: int) -> TrainConfig:
    return TrainConfig(cell=cell, hidden=hidden, embed=args.embed, steps=steps,
                       layers=layers(cell, args),
                       max_chars=args.max_chars, seed=seed, quiet=True,
                       seq_len=args.seq_len, batch=args.batch, eval_every=max(1, steps // 4))


def text_plan(args) -> dict:
    corpus = read_corpus([], max_chars=args.max_chars)
    V = len(Vocabulary.build(corpus.text, "char", 10_000))

    def model(cell: str, h: int) -> LanguageModel:
        return LanguageModel(V, text_config(cell, h, 1, args, 0))

    target = n_params(model("lstm", args.hidden))
    plan, closures = {}, {}
    for name, cell in CELLS.items():
        h = (args.hidden if cell == "lstm" else
             match_hidden(lambda h, c=cell: n_params(model(c, h)), target, args.hidden // 4,
                          MULTIPLE.get(cell, 1)))
        m = model(cell, h)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        ids = torch.randint(V, (args.batch, args.seq_len + 1))

        def step(m=m, opt=opt, ids=ids) -> None:
            logits, _ = m(ids[:, :-1])
            F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
            opt.step()
            opt.zero_grad()

        plan[name] = {"hidden": h, "layers": layers(cell, args), "params": n_params(m),
                      "vocab": V}
        closures[name] = step
    for name, s in median_step_seconds(closures, args.rounds).items():
        plan[name] |= {"step_ms": 1e3 * s, "steps": max(10, round(args.seconds / s))}
    return plan


def adding_plan(args, T: int) -> dict:
    task = make_task("adding2016", T)
    target = n_params(SequenceModel(task, "lstm", args.adding_hidden))
    plan, closures = {}, {}
    for name, cell in CELLS.items():
        n = layers(cell, args)
        h = (args.adding_hidden if cell == "lstm" else
             match_hidden(lambda h, c=cell, k=n: n_params(SequenceModel(task, c, h, k)), target,
                          args.adding_hidden // 4, MULTIPLE.get(cell, 1)))
        m = SequenceModel(task, cell, h, n)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        batch = task.sample(32, torch.Generator().manual_seed(0))

        def step(m=m, opt=opt, batch=batch) -> None:
            task.loss(m(batch), batch).backward()
            opt.step()
            opt.zero_grad()

        plan[name] = {"hidden": h, "layers": n, "params": n_params(m)}
        closures[name] = step
    for name, s in median_step_seconds(closures, args.rounds).items():
        plan[name] |= {"step_ms": 1e3 * s,
                       "sequences": max(32 * 10, 32 * round(args.seconds / s))}
    return plan


def markdown(study: dict) -> str:
    Ts = list(study["adding"])
    head = ["cell", "text: hidden (params)", "text: ms/step, steps", "text: test BPC"]
    for T in Ts:
        head += [f"adding T={T}: hidden (params)", f"T={T}: sequences",
                 f"T={T}: test MSE (per seed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in CELLS:
        tp, tr = study["text_plan"].get(name), study["text"].get(name, [])
        row = [name]
        row += ([f"{tp.get('layers', 1)}×{tp['hidden']} ({tp['params']:,})",
                 f"{tp['step_ms']:.1f}, {tp['steps']:,}",
                 mean_sd([r["test_bpc"] for r in tr]) if tr else "—"] if tp else ["—"] * 3)
        for T in Ts:
            ap, ar = study["adding_plan"][T].get(name), study["adding"][T].get(name, [])
            row += ([f"{ap.get('layers', 1)}×{ap['hidden']} ({ap['params']:,})",
                     f"{ap['sequences']:,}",
                     ", ".join(f"{r['test']['mse']:.4f}" for r in ar) or "—"]
                    if ap else ["—"] * 3)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="training time per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128, help="the text LSTM's hidden size")
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--T", type=int, nargs="*", default=[200, 1000])
    parser.add_argument("--adding-hidden", type=int, default=64)
    parser.add_argument("--scan-layers", type=int, default=2,
                        help="layers of mLSTM, minGRU and minLSTM (the others have one)")
    parser.add_argument("--rounds", type=int, default=7, help="calibration rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["text", "adding"], default=None)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--name", default="xlstm-study", help="output file stem")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/lstmkit-xlstm-study"))
    args = parser.parse_args(argv)
    for name in [n for n in CELLS if n not in args.cells]:
        del CELLS[name]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    study: dict = {"settings": vars(args) | {"out": str(args.out), "runs": str(args.runs)},
                   "text_plan": {}, "text": {}, "adding_plan": {}, "adding": {}}

    def save() -> None:  # after every run, so a cut-short study keeps what it has
        study["minutes"] = (time.perf_counter() - start) / 60
        (args.out / f"{args.name}.json").write_text(json.dumps(study, indent=1, default=str)
                                                    + "\n")

    if args.only != "adding":
        study["text_plan"] = text_plan(args)
        print(json.dumps(study["text_plan"]), flush=True)
        save()
        for seed in range(args.seeds):          # seed-major: a cut-short study has every cell
            for name, cell in CELLS.items():
                p = study["text_plan"][name]
                cfg = text_config(cell, p["hidden"], p["steps"], args, seed)
                t0 = time.perf_counter()
                r = Trainer(cfg, args.runs / f"text-{cell}-seed{seed}").fit()
                study["text"].setdefault(name, []).append({
                    "seed": seed, "val_bpc": r.best_val_metric, "test_bpc": r.test_metric,
                    "seconds": time.perf_counter() - t0})
                print(f"text {name} seed {seed}: test BPC {r.test_metric:.4f}, "
                      f"{study['text'][name][-1]['seconds']:.0f} s", flush=True)
                save()
    if args.only != "text":
        for T in args.T:
            plan = study["adding_plan"][T] = adding_plan(args, T)
            print(json.dumps({T: plan}), flush=True)
            study["adding"][T] = {}
            for seed in range(args.seeds):
                for name, cell in CELLS.items():
                    cfg = ExperimentConfig(task="adding2016", T=T, cell=cell,
                                           hidden=plan[name]["hidden"],
                                           layers=plan[name]["layers"], seed=seed,
                                           budget=plan[name]["sequences"],
                                           stop_when_solved=False)
                    t0 = time.perf_counter()
                    r = run_experiment(cfg)
                    study["adding"][T].setdefault(name, []).append({
                        "seed": seed, "test": r["test"], "solved_at": r["solved_at"],
                        "diverged": r["diverged"], "seconds": time.perf_counter() - t0})
                    print(f"adding T={T} {name} seed {seed}: test {r['test']}, "
                          f"{study['adding'][T][name][-1]['seconds']:.0f} s", flush=True)
                    save()
    (args.out / f"{args.name}.md").write_text(markdown(study))
    print(markdown(study))
    print(f"{study['minutes']:.1f} min, {torch.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
