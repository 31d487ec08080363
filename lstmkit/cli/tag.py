"""``lstmkit tag train | predict | evaluate``: a thin layer over :mod:`lstmkit.train.tag`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..train.checkpoint import CheckpointError
from ._args import fraction, positive_int
from ._common import add_run_options, add_schedule_options, error, run_job

S = argparse.SUPPRESS                          # only options given appear in the namespace


def column(text: str) -> int | str:
    """An ``argparse`` type: a column index (``-1`` = last) or a CoNLL-U column name."""
    try:
        return int(text)
    except ValueError:
        return text.lower()


def add_parsers(sub) -> None:
    from ..tagging.corpora import CORPORA, DEFAULT

    tag = sub.add_parser(
        "tag", help="train a sequence tagger (NER, chunking, POS) on CoNLL files",
        description="A BiLSTM-CRF (or softmax) tagger with a character BiLSTM, on CoNLL or "
                    "CoNLL-U files or a built-in corpus: train it, tag a file, or score it "
                    "on a tagged file.")
    tag_sub = tag.add_subparsers(dest="tag_command", metavar="SUBCOMMAND")
    tag.set_defaults(func=lambda args: (tag.print_help(), 2)[1])

    tr = tag_sub.add_parser(
        "train", help="train a tagger (best checkpoint on --dev, --test scored at the end)",
        description="Train a tagger. Vocabularies come from --train; the best checkpoint is "
                    "chosen by entity F1 (token accuracy for non-chunk tags) on --dev, or on "
                    "a tenth of the training sentences without --dev; --test is scored once, "
                    "with that checkpoint, into RUN_DIR/test.json. Without --train: the "
                    f"built-in corpus ({DEFAULT}, or --corpus) with its own dev and test "
                    "parts (see docs/tagging.md).")
    data = tr.add_argument_group("data")
    data.add_argument("--train", metavar="FILE", default=S,
                      help="training file (default: the built-in corpus)")
    data.add_argument("--corpus", choices=sorted(CORPORA), default=S,
                      help=f"built-in corpus read from its installed package, used without "
                           f"--train ({DEFAULT}: WNUT-2016 English tweets; hironsan: "
                           f"Japanese); needs the tagging extra")
    data.add_argument("--dev", metavar="FILE", default=S)
    data.add_argument("--test", metavar="FILE", default=S)
    data.add_argument("--format", choices=["conll", "conllu"], default=S,
                      help="file format (default: conllu for .conllu files, else conll)")
    data.add_argument("--column", type=column, metavar="N|upos|xpos", default=S,
                      help="tag column: an index or a CoNLL-U name (conll: -1, the last; "
                           "conllu: upos)")
    data.add_argument("--scheme", choices=["bio", "bioes"], default=S,
                      help="convert chunk tags (IOB1, BIO, BIOES) to this scheme; the CRF "
                           "then forbids illegal transitions (default: tags as read)")
    model = tr.add_argument_group("model")
    model.add_argument("--output", choices=["crf", "softmax"], default=S, help="(crf)")
    model.add_argument("--chars", action=argparse.BooleanOptionalAction, default=S,
                       help="character BiLSTM features (on)")
    model.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=S)
    model.add_argument("--layers", type=positive_int, default=S)
    model.add_argument("--hidden", type=positive_int, default=S, help="per direction (100)")
    model.add_argument("--dropout", type=fraction, default=S, help="(0.5)")
    model.add_argument("--embeddings", metavar="PATH", default=S,
                       help="pretrained word vectors (word2vec/GloVe text)")
    model.add_argument("--embedding-dim", dest="word_dim", metavar="D", type=positive_int,
                       default=S,
                       help="word embedding size; the vectors' size with --embeddings (50)")
    model.add_argument("--unk-replace", dest="unk_replace", type=fraction, metavar="P",
                       default=S, help="while training, a word seen once in the training "
                                       "data becomes <unk> with probability P, so that "
                                       "unseen words have a trained vector (0.5)")
    opt = tr.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=S, help="optimizer steps (1000)")
    opt.add_argument("--batch", type=positive_int, default=S,
                     help="sentences per step, over all processes (16)")
    add_schedule_options(opt, lr=3e-3, warmup=20)
    add_run_options(tr, "tag-<name>")
    tr.set_defaults(func=cmd_train)

    pr = tag_sub.add_parser(
        "predict", help="tag a file with a trained run",
        description="Tag the sentences of a CoNLL or CoNLL-U file with the best checkpoint "
                    "of a `lstmkit tag train` run; each line is written back with the "
                    "predicted tag appended as its last column.")
    pr.add_argument("run_dir", type=Path, metavar="RUN")
    pr.add_argument("--file", required=True, metavar="FILE",
                    help="file to tag (the run's format; plain CoNLL may hold tokens only)")
    pr.add_argument("--out", type=Path, metavar="PATH", help="output file (default: stdout)")
    pr.set_defaults(func=cmd_predict)

    ev = tag_sub.add_parser(
        "evaluate", help="score a trained run on a tagged file (JSON)",
        description="Score the best checkpoint of a run on a tagged file: token accuracy "
                    "and entity precision, recall and F1 (overall and per type, by seqeval), "
                    "printed as JSON. Gold tags the model does not know count as wrong.")
    ev.add_argument("run_dir", type=Path, metavar="RUN")
    ev.add_argument("--file", metavar="FILE",
                    help="tagged file to score (default: the run's test file or its built-in "
                         "corpus's test part)")
    ev.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    from ..tagging import ConllError
    from ..train.tag import TagConfig, TagTrainer, resume_tag_config

    del args.tag_command
    try:
        return run_job(args, TagConfig.from_dict, resume_tag_config, TagTrainer,
                       lambda cfg: f"tag-{cfg.name}")
    except ConllError as e:                    # a ValueError too; caught here if not there
        return error(str(e))


def cmd_predict(args: argparse.Namespace) -> int:
    from ..tagging import ConllError, write_conll, write_conllu
    from ..train.tag import predict_file

    try:
        sentences, pred, fmt = predict_file(args.run_dir, args.file)
    except (ConllError, CheckpointError, ValueError) as e:
        return error(str(e))
    write = write_conllu if fmt == "conllu" else write_conll
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write(args.out, sentences, pred)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out"
            write(path, sentences, pred)
            sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..tagging import ConllError
    from ..train.tag import evaluate_file

    try:
        scores = evaluate_file(args.run_dir, args.file)
    except (ConllError, CheckpointError, ValueError, ImportError) as e:
        return error(str(e))
    print(json.dumps(scores, indent=1))
    return 0
