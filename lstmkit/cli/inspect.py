"""``lstmkit inspect``: a trained language model's gates and cells, as an HTML page (and its
JSON) from :mod:`lstmkit.viz.report`, and PNGs from :mod:`lstmkit.viz.gates`; for a seq2seq
run, its attention alignments (:mod:`lstmkit.viz.attention`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.text import CorpusError
from ..train.checkpoint import CheckpointError
from ._args import positive_int
from ._common import error


def add_parsers(sub) -> None:
    ins = sub.add_parser(
        "inspect", help="an HTML page of a trained model's gates and cells on a text "
                        "(a seq2seq run: its attention)",
        description="Read a text with a trained language model and write a self-contained "
                    "HTML page (and its JSON): the text coloured by a chosen cell, cells "
                    "sorted by how interpretable they are, top-k predictions on hover, gate "
                    "heatmaps and saturation. For a `lstmkit seq2seq` run: the source × "
                    "output attention of --text, of each line of --file, or of the first "
                    "test sources, as RUN_DIR/attention.html and, with --png, attention.png.")
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


def _is_seq2seq_run(run_dir: Path) -> bool:
    import json
    try:
        return "source_tokens" in json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False


def cmd_inspect_seq2seq(args: argparse.Namespace) -> int:
    """A seq2seq run: the attention alignments of --text, of the lines of --file, or of the
    first test sources, as RUN_DIR/attention.html (+ .json) and, with --png, a PNG."""
    from ..data.pairs import PairsError
    from ..train.seq2seq import load_seq2seq, run_splits
    from ..viz.attention import plot_alignments, write_attention_report

    try:
        run = load_seq2seq(args.run_dir, args.checkpoint)
        if args.text is not None:
            texts = [args.text]
        elif args.file is not None:
            try:
                lines = args.file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                return error(f"cannot read {args.file}: {e}")
            texts = [t for t in lines if t.strip()]
        else:
            _, (_, _, test) = run_splits(run.config)
            texts = [e.source for e in test[:6]]
        if not texts:
            return error("nothing to inspect: the text is empty")
        examples = run.translate(texts, attention=True)
    except (PairsError, CheckpointError, ValueError) as e:
        return error(str(e))
    title = f"{args.run_dir.name}: {run.config.attention} attention, step {run.step}"
    out = args.out or args.run_dir / "attention.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    html_path, json_path = write_attention_report(examples, out, title=title)
    print(f"wrote {html_path} and {json_path}: {len(examples)} alignment(s)")
    if args.png is not None:
        args.png.mkdir(parents=True, exist_ok=True)
        plot_alignments(examples, args.png / "attention.png", title=title)
        print(f"wrote {args.png}/attention.png")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    if _is_seq2seq_run(args.run_dir):
        return cmd_inspect_seq2seq(args)

    from ..data.text import read_corpus, split_by_position
    from ..train.sample import load_run
    from ..viz import report as rp

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
                return error(f"cannot read {args.gradient_flow}: {e}")
        report = rp.language_model_report(
            run.model, run.vocab, text, layer=args.layer, top_k=args.top_k,
            max_steps=args.max_chars, gradient_flow=flow,
            title=f"{args.run_dir.name}: {run.config.cell} {run.config.layers}×"
                  f"{run.config.hidden}, step {run.step}")
    except (CorpusError, CheckpointError, ValueError) as e:
        return error(str(e))
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
