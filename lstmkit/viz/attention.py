"""Attention alignments of an encoder–decoder: a self-contained HTML page (and its JSON) and
a PNG, one source × output grid per example.

An example is ``(source tokens, output tokens, α)`` with α of shape (steps, source length):
one row per decoding step, the step that emitted ``</s>`` included when the output ended
with it (as :meth:`lstmkit.seq2seq.Seq2Seq.greedy` returns it). Each row sums to 1.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import torch

Example = tuple[Sequence[str], Sequence[str], torch.Tensor]
FORMAT = "lstmkit-attention"


def _rows(output: Sequence[str], alpha: torch.Tensor) -> list[str]:
    """The label of each row of α: the output tokens, then ``</s>`` for the final step."""
    labels = list(output)
    return labels + ["</s>"] * (alpha.shape[0] - len(labels))


def attention_document(examples: Sequence[Example], *, title: str = "") -> dict:
    """The JSON document of the page: per example the source, the row labels, α (rounded
    to 4 digits) and, per output row, the source position it attends most."""
    items = []
    for source, output, alpha in examples:
        a = alpha.detach().float().cpu()
        if a.dim() != 2 or a.shape[1] != len(source):
            raise ValueError(f"attention of shape {tuple(a.shape)} does not fit a source of "
                             f"{len(source)} tokens")
        items.append({"source": list(source), "output": _rows(output, a),
                      "alpha": [[round(float(v), 4) for v in row] for row in a],
                      "argmax": a.argmax(1).tolist()})
    return {"format": FORMAT, "title": title, "examples": items}


def render_attention_html(document: dict) -> str:
    """A page with one table per example: rows the output tokens, columns the source tokens,
    each cell shaded by its weight (the weight on hover)."""
    title = html.escape(document.get("title") or "attention")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}"
             "</title><style>body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}"
             "table{border-collapse:collapse;margin:0 0 1.6em 0}td,th{font-family:ui-monospace,"
             "monospace;padding:.25em .45em;text-align:center;min-width:1.4em}"
             "th{font-weight:normal;color:#555}caption{text-align:left;padding:.3em 0}"
             "</style></head><body>", f"<h1>{title}</h1>",
             "<p>Rows: the output, one decoding step each; columns: the source. Each row's "
             "weights sum to 1; darker is more.</p>"]
    for ex in document["examples"]:
        src, out, alpha = ex["source"], ex["output"], ex["alpha"]
        joined = "".join(src) if all(len(t) == 1 for t in src) else " ".join(src)
        parts.append(f"<table><caption>{html.escape(joined)} → "
                     f"{html.escape(' '.join(t for t in out if t != '</s>'))}</caption>")
        parts.append("<tr><th></th>" + "".join(f"<th>{html.escape(t)}</th>" for t in src)
                     + "</tr>")
        for label, row in zip(out, alpha):
            cells = "".join(
                f'<td title="{v:.3f}" style="background:rgba(31,78,180,{v:.3f});'
                f'color:{"#fff" if v > 0.55 else "#222"}">{v:.2f}</td>' for v in row)
            parts.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
        parts.append("</table>")
    data = json.dumps(document).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="data">{data}</script></body></html>\n')
    return "\n".join(parts)


def write_attention_report(examples: Sequence[Example], path: str | Path, *,
                           title: str = "") -> tuple[Path, Path]:
    """``path`` (HTML) and the JSON beside it."""
    path = Path(path)
    doc = attention_document(examples, title=title)
    path.write_text(render_attention_html(doc), encoding="utf-8")
    js = path.with_suffix(".json")
    js.write_text(json.dumps(doc, ensure_ascii=False))
    return path, js


def plot_alignments(examples: Sequence[Example], path: str | Path, *, title: str = "",
                    columns: int = 3) -> Path:
    """The examples' α as heatmaps in one PNG (rows: output steps, columns: source)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(examples)
    if n == 0:
        raise ValueError("plot_alignments: no examples")
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (source, output, alpha) in zip(axes.flat, examples):
        a = alpha.detach().float().cpu().numpy()
        ax.imshow(a, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(source)), list(source), fontsize=8)
        ax.set_yticks(range(a.shape[0]), _rows(output, alpha), fontsize=7)
        ax.xaxis.tick_top()
        ax.set_title("".join(source), fontsize=9, pad=16)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
