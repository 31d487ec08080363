"""The ``lstmkit`` command.

    lstmkit demo      build every cell, run it on a generated sequence, print its summary
                      and how closely it matches torch.nn
    lstmkit bench     time the fused kernels against torch.nn and the reference loop
                      (forward, forward+backward, peak memory, error, GEMM share)
    lstmkit train     train a character- or word-level language model (default: on the
                      Python standard library's sources), with checkpoints and samples
    lstmkit sample    generate text from a trained run
    lstmkit evaluate  test loss, BPC or perplexity of a trained run
    lstmkit forecast  train a forecaster on a series and backtest it
    lstmkit predict   forecast from a saved forecast run
    lstmkit classify  train a sequence classifier and score its test set
    lstmkit tag train | predict | evaluate
                                  a BiLSTM-CRF tagger on CoNLL/CoNLL-U files: train it,
                                  tag a file, score it (token accuracy, entity F1)
    lstmkit seq2seq train | translate | evaluate
                                  an attentional encoder–decoder on TSV pairs (default:
                                  CMUdict grapheme-to-phoneme): train, decode, score
    lstmkit experiment TASK       the long-time-lag tasks (adding, copy, Reber, temporal
                                  order): cells × seeds, results table and curves
    lstmkit gradient-flow         ‖∂L/∂h_t‖ over t for RNN, GRU and LSTM
    lstmkit inspect RUN_DIR       an HTML page of a trained model's gates and cells
    lstmkit tour [RUN_DIR]        "Understanding LSTM networks" with a real trained model:
                                  an HTML page (+ PNGs, Markdown) of its gates and numbers
    lstmkit music train | evaluate | sample
                                  Bach chorales (music21's corpus) as 88-key piano rolls:
                                  NLL per time step, sampling to MIDI

One module per group of subcommands (demo, bench, train, tasks, tag, seq2seq, experiment,
inspect), each with ``add_parsers(sub)``; they parse the options and call the library
(:mod:`lstmkit.train`, :mod:`lstmkit.bench`, :mod:`lstmkit.viz`), which parses none.
``python -m lstmkit.cli`` runs the same command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import bench, demo, experiment, inspect, music, seq2seq, tag, tasks, train
from . import tour as tour_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmkit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo, bench, train, tasks, tag, seq2seq, experiment, inspect, music):
        module.add_parsers(sub)
    tour_cmd.add_parsers(sub)
    return parser


def _version() -> str:
    from .. import __version__
    return f"lstmkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code = args.func(args)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_worker(code)
    return code


def _exit_worker(code: int) -> None:
    """End a torchrun worker now that its job is done and its process group destroyed:
    without the interpreter's teardown, in which a communication thread of torch's gloo
    backend, destroyed while still joinable, can abort the process ("terminate called
    without an active exception") after the work succeeded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
