"""``lstmkit music train | evaluate | sample``: a thin layer over :mod:`lstmkit.train.music`
(Bach chorales from music21's corpus as 88-key piano rolls)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.music import MusicDataError
from ..data.packaged import DatasetUnavailable
from ..train.checkpoint import CheckpointError
from ..train.config import CELLS
from ._args import fraction, positive_float, positive_int
from ._common import add_run_options, add_schedule_options, error, run_job

S = argparse.SUPPRESS                          # only options given appear in the namespace


def add_parsers(sub) -> None:
    music = sub.add_parser(
        "music", help="polyphonic music: train | evaluate | sample on Bach chorales",
        description="Model Bach chorales (music21's bundled corpus, 350 pieces) as 88-key "
                    "piano rolls with a sigmoid output per key; scores are negative "
                    "log-likelihood per time step (nats, summed over the keys).")
    msub = music.add_subparsers(dest="music_command", metavar="SUBCOMMAND", required=True)

    tr = msub.add_parser("train", help="train a piano-roll model and score its test pieces")
    data = tr.add_argument_group("data")
    data.add_argument("--grid", type=float, choices=[1.0, 0.5], default=S,
                      help="quarter notes per step: 1 (default, as JSB Chorales) or 0.5")
    data.add_argument("--select", metavar="PATTERN", default=S,
                      help="only the chorales whose corpus name matches (e.g. 'bach/bwv2*')")
    data.add_argument("--valid-fraction", type=fraction, default=S, help="(0.2)")
    data.add_argument("--test-fraction", type=fraction, default=S, help="(0.2)")
    data.add_argument("--split-seed", type=int, default=S, help="seed of the split (0)")
    model = tr.add_argument_group("model")
    model.add_argument("--cell", choices=list(CELLS), default=S,
                       help="lstm (default), gru, rnn (tanh), mut1/mut2/mut3 (Jozefowicz et "
                            "al. 2015; mut1/mut2 read the frame through a Linear(88 → H))")
    model.add_argument("--forget-bias", type=float, metavar="F", default=S,
                       help="LSTM: add F to the forget-gate biases after initialisation")
    model.add_argument("--project", action="store_true", default=S,
                       help="put the Linear(88 → H) in front of every cell, not only MUT1/2")
    model.add_argument("--peephole", action="store_true", default=S)
    model.add_argument("--coupled", action="store_true", default=S)
    model.add_argument("--layers", type=positive_int, default=S)
    model.add_argument("--hidden", type=positive_int, default=S, help="hidden size (64)")
    model.add_argument("--dropout", type=fraction, default=S)
    model.add_argument("--backend", choices=["auto", "reference", "fused", "fused_py",
                                             "fused_cpp"], default=S)
    opt = tr.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=S, help="optimizer steps (2000)")
    opt.add_argument("--batch", type=positive_int, default=S,
                     help="pieces per step, over all processes (16)")
    add_schedule_options(opt, lr=3e-3, warmup=20)
    add_run_options(tr, "music-<cell>", per_run=20)
    tr.set_defaults(func=cmd_train)

    ev = msub.add_parser("evaluate", help="NLL per time step of a trained run")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--split", choices=["train", "valid", "test"], default="test")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ev.set_defaults(func=cmd_evaluate)

    sa = msub.add_parser("sample", help="draw a chorale-like piano roll from a trained run")
    sa.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sa.add_argument("--steps", type=positive_int, default=64, help="frames to draw (64)")
    sa.add_argument("--temperature", type=positive_float, default=1.0)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", type=Path, metavar="FILE",
                    help="write a MIDI file (.mid) or the roll as JSON (.json); default: "
                         "print the sounding notes per step")
    sa.set_defaults(func=cmd_sample)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.music import MusicConfig, MusicTrainer, resume_music_config

    delattr(args, "music_command")
    return run_job(args, MusicConfig.from_dict, resume_music_config, MusicTrainer,
                   lambda cfg: f"music-{cfg.cell}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..train.music import evaluate_run

    try:
        nll, pieces, frames = evaluate_run(args.run_dir, args.split, args.checkpoint)
    except (CheckpointError, MusicDataError, DatasetUnavailable, ValueError) as e:
        return error(str(e))
    print(f"{args.split}: NLL {nll:.4f} nats per time step ({frames} frames of {pieces} "
          f"pieces; checkpoint {args.checkpoint})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..data.music import LOWEST, roll_to_score
    from ..train.music import load_music_run, sample_roll

    try:
        model, cfg = load_music_run(args.run_dir)
        roll = sample_roll(model, args.steps, temperature=args.temperature, seed=args.seed)
    except (CheckpointError, ValueError) as e:
        return error(str(e))
    if args.out is None:
        for t, frame in enumerate(roll):
            print(t, " ".join(str(LOWEST + k) for k in frame.nonzero()[0]))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".json":
        args.out.write_text(json.dumps({"grid": cfg.grid, "lowest_midi": LOWEST,
                                        "roll": roll.tolist()}) + "\n")
    elif args.out.suffix in (".mid", ".midi"):
        try:
            roll_to_score(roll, cfg.grid).write("midi", fp=str(args.out))
        except (MusicDataError, DatasetUnavailable) as e:
            return error(str(e))
    else:
        return error(f"--out must end in .mid, .midi or .json, got {args.out.name!r}")
    print(f"wrote {args.out} ({len(roll)} steps of {cfg.grid:g} quarter notes)")
    return 0
