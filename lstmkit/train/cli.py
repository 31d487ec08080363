"""``lstmkit train | sample | evaluate``: a thin layer over :mod:`lstmkit.train`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .._args import fraction, positive_float, positive_int
from ..data.packaged import DatasetUnavailable
from ..data.text import CorpusError
from .checkpoint import CheckpointError

EXIT_ERROR, EXIT_DIVERGED = 2, 1
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


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


def add_parsers(sub) -> None:
    from .variants import GREFF_VARIANTS
    S = argparse.SUPPRESS                      # only options given appear in the namespace
    train = sub.add_parser(
        "train", help="train a character- or word-level language model",
        description="Train a language model by truncated BPTT. With no --data it trains on "
                    "the Python standard library's .py sources (read at run time).")
    data = train.add_argument_group("data")
    data.add_argument("--data", nargs="+", metavar="PATH", default=S,
                      help="text files or folders (default: the built-in corpus)")
    data.add_argument("--max-chars", type=positive_int, default=S,
                      help="read at most this many characters (default 2,000,000)")
    data.add_argument("--tokens", choices=["char", "word"], default=S,
                      help="character-level (default) or word-level model")
    data.add_argument("--vocab-size", type=positive_int, default=S,
                      help="word level: keep the most frequent words (default 10000)")
    data.add_argument("--val-fraction", type=fraction, default=S)
    data.add_argument("--test-fraction", type=fraction, default=S)
    model = train.add_argument_group("model")
    model.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=S)
    model.add_argument("--peephole", action="store_true", default=S)
    model.add_argument("--coupled", action="store_true", default=S,
                       help="coupled input-forget gate (CIFG)")
    model.add_argument("--variant", choices=list(GREFF_VARIANTS), default=S,
                       help="an LSTM variant of Greff et al. 2015 (vanilla = with peepholes; "
                            "nig, nfg, nog, niaf, noaf, np, cifg, fgr)")
    model.add_argument("--layers", type=positive_int, default=S)
    model.add_argument("--hidden", type=positive_int, default=S)
    model.add_argument("--embed", type=positive_int, default=S)
    model.add_argument("--dropout", type=fraction, default=S)
    model.add_argument("--impl", choices=["lstmkit", "torch"], default=S,
                       help="recurrent layers from lstmkit (default) or torch.nn")
    model.add_argument("--backend", choices=["auto", "reference", "fused", "fused_py",
                                             "fused_cpp"], default=S)
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--seq-len", type=positive_int, default=S, help="BPTT length (100)")
    opt.add_argument("--batch", type=positive_int, default=S,
                     help="number of streams, over all processes (32)")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=S, help="optimizer steps (1500)")
    length.add_argument("--epochs", type=positive_float, default=S,
                        help="passes over the training data, instead of --steps")
    add_schedule_options(opt, lr=3e-3, warmup=50)
    run = train.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", type=Path,
                     help="run directory (default runs/<cell>-<date>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", type=Path,
                     help="continue the run in RUN_DIR (--steps/--epochs may extend it)")
    run.add_argument("--eval-every", type=positive_int, default=S,
                     help="validate, checkpoint and sample every N steps (10 per run)")
    run.add_argument("--log-every", type=positive_int, default=S)
    run.add_argument("--sample-length", type=positive_int, default=S)
    run.add_argument("--quiet", action="store_true", default=S,
                     help="no progress bar or intermediate samples: log lines only")
    train.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="generate text from a trained run")
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument("--prime", default="", help="text to start from")
    sample.add_argument("--length", type=positive_int, default=500,
                        help="tokens to generate (500)")
    sample.add_argument("--temperature", type=positive_float, default=0.8)
    sample.add_argument("--top-k", type=positive_int, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--checkpoint", choices=["best", "last"], default="best")
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("evaluate", help="loss, BPC or perplexity on held-out text")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--data", nargs="+", metavar="PATH",
                          help="text to score (default: the run's test split)")
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.set_defaults(func=cmd_evaluate)


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


def _error(message: str) -> int:
    print(f"lstmkit: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .trainer import Trainer, resume_config

    return run_job(args, TrainConfig.from_dict, resume_config, Trainer,
                   lambda cfg: cfg.cell, epochs=True)


def run_job(args: argparse.Namespace, make_config, resume_config, trainer_class,
            name_of, *, epochs: bool = False) -> int:
    """Start or resume a run (``--out`` / ``--resume``) of ``trainer_class`` and map its
    outcome to an exit code: 0 done, 1 diverged, 2 bad input, 130/143 signals."""
    from .loop import TrainingDiverged, TrainingInterrupted, shutdown_distributed

    try:
        if args.resume is not None:
            if args.out is not None and args.out != args.resume:
                return _error("give either --out or --resume, not both")
            run_dir = args.resume
            cfg = resume_config(run_dir, _overrides(args, epochs))
        else:
            cfg = make_config(_overrides(args, epochs))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = args.out or Path("runs") / f"{name_of(cfg)}-{stamp}"
            if (run_dir / "checkpoints").exists():
                return _error(f"{run_dir} already holds a run; continue it with --resume "
                              f"{run_dir} or choose another --out")
        trainer_class(cfg, run_dir, resume=args.resume is not None).fit()
    except TrainingInterrupted as e:
        print(f"lstmkit: interrupted by {e}", file=sys.stderr)
        return EXIT_SIGNAL.get(e.signame, 130)
    except TrainingDiverged as e:
        print(f"lstmkit: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (CorpusError, CheckpointError, ValueError, DatasetUnavailable, ImportError) as e:
        return _error(str(e))
    finally:
        shutdown_distributed()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import generate, load_run

    try:
        run = load_run(args.run_dir, args.checkpoint)
        pieces = generate(run.model, run.vocab, prime=args.prime, length=args.length,
                          temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        sys.stdout.write(args.prime)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (CorpusError, CheckpointError, ValueError) as e:
        return _error(str(e))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..data.text import read_corpus, split_by_position
    from .sample import evaluate_ids, evaluate_text, load_run

    try:
        run = load_run(args.run_dir, args.checkpoint)
        cfg = run.config
        if args.data:
            what = " ".join(args.data)
            result = evaluate_text(run.model, run.vocab, read_corpus(args.data).text,
                                   seq_len=cfg.seq_len, streams=cfg.batch)
        else:
            corpus = read_corpus(cfg.data, max_chars=cfg.max_chars)
            ids = run.vocab.encode(corpus.text)
            test = split_by_position(ids, cfg.val_fraction, cfg.test_fraction)[2]
            if not len(test):
                return _error("the run has no test split (test_fraction 0); give --data")
            what = "the run's test split"
            result = evaluate_ids(run.model, run.vocab, test, seq_len=cfg.seq_len,
                                  streams=cfg.batch)
    except (CorpusError, CheckpointError, ValueError) as e:
        return _error(str(e))
    result.update(checkpoint=str(run.path), step=run.step, data=what)
    print(json.dumps(result, indent=1))
    return 0


def add_experiment_parsers(sub) -> None:
    from ..data.synthetic import TASKS
    from .experiment import CELLS

    exp = sub.add_parser(
        "experiment", help="a long-time-lag task (adding, copy, Reber, temporal order) for "
                           "several cells and seeds, with a results table and curves",
        description="Train each cell on a synthetic long-time-lag task, test it on fresh "
                    "sequences and write results.md, results.json and curves.png.")
    exp.add_argument("task", choices=list(TASKS))
    exp.add_argument("--cell", nargs="+", choices=list(CELLS), default=["lstm", "rnn"])
    exp.add_argument("--T", type=positive_int, default=100, help="minimal sequence length")
    exp.add_argument("--budget", type=positive_int, default=100_000,
                     help="training sequences per run (100000)")
    exp.add_argument("--seeds", type=positive_int, default=1)
    exp.add_argument("--hidden", type=positive_int, default=64)
    exp.add_argument("--batch", type=positive_int, default=32)
    exp.add_argument("--lr", type=positive_float, default=1e-2, help="Adam (0.01)")
    exp.add_argument("--forget-bias", type=float, default=0.0,
                     help="add this to the LSTM forget-gate bias at initialisation")
    exp.add_argument("--no-stop", action="store_true",
                     help="use the whole budget even after the task is solved")
    exp.add_argument("--out", type=Path, help="output folder (default runs/experiments/"
                                              "<task>-T<T>-<date>-<time>)")
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
    from .experiment import run_table

    out = args.out or Path("runs/experiments") / (
        f"{args.task}-T{args.T}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        run_table(args.task, args.T, args.cell, args.seeds, out, hidden=args.hidden,
                  batch=args.batch, budget=args.budget, lr=args.lr,
                  forget_bias=args.forget_bias,
                  stop_when_solved=not args.no_stop)
    except ValueError as e:
        return _error(str(e))
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.json, curves.png")
    return 0


def cmd_gradient_flow(args: argparse.Namespace) -> int:
    from .experiment import flow_table, gradient_flow_study

    try:
        study = gradient_flow_study(args.task, args.T, tuple(args.cell), budget=args.budget,
                                    hidden=args.hidden, seed=args.seed, out=args.out)
    except ValueError as e:
        return _error(str(e))
    print(flow_table(study))
    print(f"wrote {args.out}/gradient_flow.png and gradient_flow.json")
    return 0


def add_inspect_parser(sub) -> None:
    ins = sub.add_parser(
        "inspect", help="an HTML page of a trained model's gates and cells on a text",
        description="Read a text with a trained language model and write a self-contained "
                    "HTML page (and its JSON): the text coloured by a chosen cell, cells "
                    "sorted by how interpretable they are, top-k predictions on hover, gate "
                    "heatmaps and saturation.")
    ins.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    source = ins.add_mutually_exclusive_group()
    source.add_argument("--text", help="the text to read")
    source.add_argument("--file", type=Path, help="read the text from this file")
    ins.add_argument("--layer", type=int, default=-1, help="layer to show (default: last)")
    ins.add_argument("--top-k", type=positive_int, default=5)
    ins.add_argument("--max-chars", type=positive_int, default=100_000,
                     help="cut longer texts, and say so on the page (100000)")
    ins.add_argument("--gradient-flow", type=Path, metavar="JSON",
                     help="a gradient_flow.json (lstmkit gradient-flow) to plot on the page")
    ins.add_argument("--out", type=Path, help="HTML file (default RUN_DIR/report.html); "
                                              "the JSON goes beside it")
    ins.add_argument("--png", type=Path, metavar="DIR",
                     help="also write gate heatmap and saturation PNGs here")
    ins.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ins.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from ..data.text import read_corpus, split_by_position
    from ..viz import report as rp
    from .sample import load_run

    try:
        run = load_run(args.run_dir, args.checkpoint)
        if args.file is not None:
            text = read_corpus([args.file]).text
        elif args.text is not None:
            text = args.text
        else:                                  # the start of the run's validation split
            cfg = run.config
            ids = run.vocab.encode(read_corpus(cfg.data, max_chars=cfg.max_chars).text)
            val = split_by_position(ids, cfg.val_fraction, cfg.test_fraction)[1]
            text = run.vocab.decode(val[:5000])
        flow = None
        if args.gradient_flow is not None:
            try:
                flow = json.loads(args.gradient_flow.read_text())
            except (OSError, json.JSONDecodeError) as e:
                return _error(f"cannot read {args.gradient_flow}: {e}")
        report = rp.language_model_report(
            run.model, run.vocab, text, layer=args.layer, top_k=args.top_k,
            max_steps=args.max_chars, gradient_flow=flow,
            title=f"{args.run_dir.name}: {run.config.cell} {run.config.layers}×"
                  f"{run.config.hidden}, step {run.step}")
    except (CorpusError, CheckpointError, ValueError) as e:
        return _error(str(e))
    out = args.out or args.run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    rp.write_html(report, out)
    rp.write_json(report, out.with_suffix(".json"))
    best = report["cells"][0]
    print(f"wrote {out} and {out.with_suffix('.json')}: {report['steps']:,} steps"
          + (f" (of {report['total_steps']:,}; truncated)" if report["total_steps"] >
             report["steps"] else "")
          + f"; most interpretable unit {best['unit']}: {best['feature']}, r = {best['r']:.3f}")
    if args.png is not None:
        import torch

        import lstmkit

        from ..viz.gates import plot_gate_heatmaps, plot_saturation
        args.png.mkdir(parents=True, exist_ok=True)
        ids = run.vocab.encode(text)[: args.max_chars]
        with lstmkit.record(run.model) as rec, torch.no_grad():
            run.model(torch.as_tensor(ids)[None])
        layer = rec.layers[args.layer % len(rec.layers)]
        plot_gate_heatmaps(layer, args.png / "gates.png")
        if layer.cell != "rnn":
            plot_saturation(layer, args.png / "saturation.png")
        print(f"wrote {args.png}/gates.png" + ("" if layer.cell == "rnn" else
                                                 " and saturation.png"))
    return 0
