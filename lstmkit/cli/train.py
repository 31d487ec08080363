"""``lstmkit train | sample | evaluate``: a thin layer over :mod:`lstmkit.train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.text import CorpusError
from ..train.checkpoint import CheckpointError
from ..train.config import CELLS
from ..train.variants import GREFF_VARIANTS
from ._args import fraction, positive_float, positive_int
from ._common import add_schedule_options, error, run_job


def add_parsers(sub) -> None:
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
    model.add_argument("--cell", choices=list(CELLS), default=S,
                       help="lstm (default), gru, rnn, mut1/mut2/mut3 (Jozefowicz et al. "
                            "2015; mut1 and mut2 need --embed equal to --hidden), mlstm "
                            "(xLSTM's matrix-memory LSTM, 4 heads: --hidden divisible by 4), "
                            "slstm (xLSTM's sLSTM, 4 heads: --hidden divisible by 4), "
                            "or mingru/minlstm (Feng et al. 2024, trained by a scan)")
    model.add_argument("--peephole", action="store_true", default=S)
    model.add_argument("--coupled", action="store_true", default=S,
                       help="coupled input-forget gate (CIFG)")
    model.add_argument("--variant", choices=list(GREFF_VARIANTS), default=S,
                       help="an LSTM variant of Greff et al. 2015 (vanilla = with peepholes; "
                            "nig, nfg, nog, niaf, noaf, np, cifg, fgr)")
    model.add_argument("--forget-bias", type=float, metavar="F", default=S,
                       help="LSTM: add F to the forget-gate biases after initialisation "
                            "(Jozefowicz et al. 2015 use 1; default 0)")
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


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.config import TrainConfig
    from ..train.trainer import Trainer, resume_config

    return run_job(args, TrainConfig.from_dict, resume_config, Trainer,
                   lambda cfg: cfg.cell, epochs=True)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..train.sample import generate, load_run

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
        return error(str(e))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..data.text import read_corpus, split_by_position
    from ..train.sample import evaluate_ids, evaluate_text, load_run

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
                return error("the run has no test split (test_fraction 0); give --data")
            what = "the run's test split"
            result = evaluate_ids(run.model, run.vocab, test, seq_len=cfg.seq_len,
                                  streams=cfg.batch)
    except (CorpusError, CheckpointError, ValueError) as e:
        return error(str(e))
    result.update(checkpoint=str(run.path), step=run.step, data=what)
    print(json.dumps(result, indent=1))
    return 0
