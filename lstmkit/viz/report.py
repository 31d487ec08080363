"""Gate and cell-state reports: one JSON document, and a self-contained HTML page built from it.

    report = language_model_report(run, text)          # a trained `lstmkit train` run
    report = sequence_report(rec.layers[k], tokens)    # any recording of any model
    write_json(report, "report.json"); write_html(report, "report.html")

The document holds, for one layer (and direction) of an lstmkit module:

* ``tokens`` — what was read, one string per step (the page shows them as text);
* ``cells`` — units sorted by how interpretable they are: the largest absolute Pearson
  correlation of the unit's ``tanh(c_t)`` (LSTM) or ``h_t`` (GRU, RNN) with a nameable
  feature of the text (position in the line, indentation, bracket depth, inside a string),
  each with its values at every step;
* ``predictions`` — for language models, the top-k next tokens and probabilities per step;
* ``heatmaps`` — every gate, c and h over the first steps, all units;
* ``saturation`` — per gate and unit, the fraction of steps left-saturated (< 0.1) and
  right-saturated (> 0.9), as in Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and
  Understanding Recurrent Networks");
* ``gradient_flow`` — the study of :func:`lstmkit.train.experiment.gradient_flow_study`,
  when given.

Values in [−1, 1] or [0, 1] are stored as bytes (base64), 1/255 of the range apart, so that
100,000 characters give a page of a few megabytes that a browser opens in seconds. The page
needs no network: everything, script included, is inside the one file.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FORMAT, VERSION = "lstmkit-report", 1
MAX_STEPS = 100_000              # longer inputs are truncated, and the page says so
HEATMAP_STEPS = 1_000
CELL_BYTES = 4_000_000           # budget for per-step cell values: units × steps
SATURATED = 0.1                  # left: < 0.1, right: > 0.9


def _bytes(values: np.ndarray, lo: float, hi: float) -> str:
    q = np.clip(np.rint((values - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def text_features(tokens: Sequence[str]) -> dict[str, np.ndarray]:
    """Nameable per-step features of a text, each (T,): the value *after* reading the token.

    ``line position``: characters since the last newline; ``indentation``: leading spaces of
    the current line; ``bracket depth``: open (, [, { not yet closed; ``inside string``: 1
    between an opening and a closing quote (' or \") on the same line, else 0."""
    T = len(tokens)
    col, indent, depth, in_str = (np.zeros(T) for _ in range(4))
    c = ind = d = 0
    quote = None
    leading = True
    for t, tok in enumerate(tokens):
        for ch in tok:
            if ch == "\n":
                c, ind, leading, quote = 0, 0, True, None
                continue
            c += 1
            if leading and ch == " ":
                ind += 1
            elif leading:
                leading = False
            if quote is not None:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch in "([{":
                d += 1
            elif ch in ")]}":
                d = max(0, d - 1)
        col[t], indent[t], depth[t], in_str[t] = c, ind, d, float(quote is not None)
    return {"line position": col, "indentation": indent, "bracket depth": depth,
            "inside string": in_str}


def interpretability(values: np.ndarray, features: dict[str, np.ndarray]
                     ) -> list[tuple[int, str, float]]:
    """(unit, feature, r) for every unit of ``values`` (T, H), r being the Pearson
    correlation with the feature it correlates with most (by |r|); sorted by |r|."""
    v = values - values.mean(0)
    v_norm = np.sqrt((v * v).sum(0))
    best = [(u, "", 0.0) for u in range(values.shape[1])]
    for name, f in features.items():
        f = f - f.mean()
        f_norm = math.sqrt(float((f * f).sum()))
        if f_norm == 0:
            continue
        r = (f @ v) / np.where(v_norm > 0, v_norm * f_norm, np.inf)          # (H,)
        for u in range(values.shape[1]):
            if abs(r[u]) > abs(best[u][2]):
                best[u] = (u, name, float(r[u]))
    return sorted(best, key=lambda b: -abs(b[2]))


def sequence_report(layer, tokens: Sequence[str] | None = None, *, title: str = "",
                    predictions: dict | None = None, gradient_flow: dict | None = None,
                    batch_index: int = 0, total_steps: int | None = None) -> dict:
    """The report document of one recorded layer (a :class:`lstmkit.inspect.LayerRecord`)
    for sequence ``batch_index``; ``tokens`` label the steps (default: their numbers)."""
    mask = layer.mask[:, batch_index]
    T = int(mask.sum())
    tensors = {k: v[:T, batch_index].double().numpy() for k, v in layer.tensors.items()}
    tokens = list(tokens) if tokens is not None else [f"{t} " for t in range(T)]
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} tokens for a recording of {T} steps")
    if T == 0:
        raise ValueError("the recording has no steps")
    shown = np.tanh(tensors["c"]) if "c" in tensors else tensors["h"]           # (T, H)
    H = shown.shape[1]
    keep = min(H, max(24, CELL_BYTES // T))
    ranked = interpretability(shown, text_features(tokens))[:keep]
    cells = [{"unit": u, "feature": f, "r": r, "values": _bytes(shown[:, u], -1.0, 1.0)}
             for u, f, r in ranked]
    S = min(T, HEATMAP_STEPS)
    heatmaps = {}
    for key, v in tensors.items():
        if key == "c":
            v, key = np.tanh(v), "tanh(c)"
        lo = 0.0 if key in ("i", "f", "o", "r", "z") else -1.0
        heatmaps[key] = {"lo": lo, "hi": 1.0, "data": _bytes(v[:S], lo, 1.0)}
    saturation = {k: {"left": (v < SATURATED).mean(0).tolist(),
                      "right": (v > 1 - SATURATED).mean(0).tolist()}
                  for k, v in tensors.items() if k in ("i", "f", "o", "r", "z")}
    return {"format": FORMAT, "version": VERSION, "title": title, "tokens": tokens,
            "steps": T, "total_steps": total_steps if total_steps is not None else T,
            "layer": layer.layer, "direction": layer.direction, "cell": layer.cell,
            "hidden": H, "cells": cells, "predictions": predictions,
            "heatmaps": {"steps": S, "units": H, "maps": heatmaps},
            "saturation": saturation, "gradient_flow": gradient_flow}


@torch.no_grad()
def language_model_report(model, vocab, text: str, *, layer: int = -1, top_k: int = 5,
                          max_steps: int = MAX_STEPS, title: str = "",
                          gradient_flow: dict | None = None) -> dict:
    """Read ``text`` with a trained language model (:class:`lstmkit.train.LanguageModel`)
    and report layer ``layer`` (default the last) with its top-k next-token predictions.
    Text past ``max_steps`` tokens is cut, and the page says how much was shown."""
    import lstmkit

    ids = vocab.encode(text)
    if not len(ids):
        raise ValueError("the text is empty")
    total = len(ids)
    ids = ids[:max_steps]
    tokens = [vocab.decode([i]) if i else t for i, t in zip(ids, vocab.split(text))]
    if vocab.kind == "word":
        tokens = [t if t == "\n" else t + " " for t in tokens]
    layers = getattr(model.rnn, "num_layers", 1)
    if not -layers <= layer < layers:
        raise ValueError(f"layer must be in [0, {layers}), got {layer}")
    was = model.training
    model.eval()
    with lstmkit.record(model) as rec:
        logits, _ = model(torch.as_tensor(ids)[None])
    model.train(was)
    record = rec.layers[layer % layers]
    probs = torch.softmax(logits[0].float(), -1)
    p, top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)                   # (T, k)
    predictions = {"k": top.shape[1], "vocab": [vocab.decode([i]) for i in range(len(vocab))],
                   "ids": base64.b64encode(top.numpy().astype("<u2").tobytes()).decode(),
                   "probs": _bytes(p.numpy(), 0.0, 1.0)}
    return sequence_report(record, tokens, title=title, predictions=predictions,
                           gradient_flow=gradient_flow, total_steps=total)


def write_json(report: dict, path: str | Path) -> Path:
    """Write ``report`` as JSON (UTF-8) to ``path``; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(report, ensure_ascii=False))
    return path


def read_json(path: str | Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable report: {e}") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstmkit report (format {FORMAT!r})")
    return report


def render_html(report: dict) -> str:
    """The self-contained page for ``report``."""
    data = json.dumps(report, ensure_ascii=False).replace("</", "<\\/")
    title = html.escape(report.get("title") or "lstmkit report")
    return (_TEMPLATE.replace("__TITLE__", title).replace("__DATA__", data))


def write_html(report: dict, path: str | Path) -> Path:
    """Write ``report``'s self-contained HTML page (:func:`render_html`) to ``path``; returns the
    path."""
    path = Path(path)
    path.write_text(render_html(report), encoding="utf-8")
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
#text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.45;
        border: 1px solid #ccc; padding: .6em; max-height: 28em; overflow-y: auto; }
#text span { border-radius: 2px; }
#tip { position: fixed; background: #fff; border: 1px solid #888; padding: .3em .5em;
       font-family: ui-monospace, monospace; font-size: 12px; display: none; z-index: 9; }
.note { background: #fff6d6; padding: .4em .6em; border: 1px solid #e5c86b; }
#errors { color: #b00; }
canvas { border: 1px solid #ddd; image-rendering: pixelated; }
.maps { display: flex; flex-wrap: wrap; gap: 1em; }
.maps figure { margin: 0; }
table { border-collapse: collapse; } td, th { padding: .1em .6em; text-align: right; }
</style></head>
<body>
<h1 id="title"></h1>
<div id="errors"></div>
<p id="summary"></p>
<p id="truncated" class="note" style="display:none"></p>
<label>cell: <select id="cell"></select></label>
<span id="cellinfo"></span>
<div id="text"></div>
<div id="tip"></div>
<h2>Gates over time</h2>
<p id="mapnote"></p>
<div class="maps" id="maps"></div>
<h2>Gate saturation</h2>
<p>Fraction of steps each unit's gate is left-saturated (&lt; 0.1, x) and right-saturated
(&gt; 0.9, y); Karpathy, Johnson &amp; Fei-Fei 2015.</p>
<div class="maps" id="saturation"></div>
<table id="sattable"></table>
<div id="flowsection" style="display:none"><h2>Gradient flow</h2>
<p>‖∂L/∂h<sub>t</sub>‖ over t (log scale), before and after training.</p>
<div class="maps" id="flow"></div></div>
<script id="report" type="application/json">__DATA__</script>
<script>
"use strict";
window.onerror = function (msg) {
  document.getElementById("errors").textContent += "error: " + msg + "\n";
};
const R = JSON.parse(document.getElementById("report").textContent);
function bytes(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}
function u16(b64) { return new Uint16Array(bytes(b64).buffer); }
function esc(t) {
  return t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
function colour(q) {              // q in 0..255 for v in [-1, 1]: blue < 0 < red
  const v = q / 127.5 - 1, a = Math.min(1, Math.abs(v)).toFixed(3);
  return v >= 0 ? "rgba(220,40,30," + a + ")" : "rgba(30,90,220," + a + ")";
}
document.getElementById("title").textContent = R.title || "lstmkit report";
document.getElementById("summary").textContent =
  R.cell.toUpperCase() + ", layer " + R.layer + (R.direction ? " (reverse)" : "") + ", " +
  R.hidden + " units, " + R.steps.toLocaleString() + " steps. Colour: " +
  (R.cell === "lstm" ? "tanh(c)" : "h") + " of the chosen unit, red > 0 > blue.";
if (R.total_steps > R.steps) {
  const t = document.getElementById("truncated");
  t.style.display = "block";
  t.textContent = "The text was truncated: the first " + R.steps.toLocaleString() +
    " of " + R.total_steps.toLocaleString() + " tokens are shown.";
}
const text = document.getElementById("text");
text.innerHTML = R.tokens.map((t, i) => '<span data-i="' + i + '">' + esc(t) + "</span>")
  .join("");
const spans = text.children;
const select = document.getElementById("cell");
R.cells.forEach((c, k) => {
  const o = document.createElement("option");
  o.value = k;
  o.textContent = "unit " + c.unit + (c.feature ? " — " + c.feature + " r = " +
    c.r.toFixed(2) : "");
  select.appendChild(o);
});
const cellValues = R.cells.map(c => null);
function showCell(k) {
  if (!cellValues[k]) cellValues[k] = bytes(R.cells[k].values);
  const v = cellValues[k];
  for (let i = 0; i < spans.length; i++) spans[i].style.backgroundColor = colour(v[i]);
  const c = R.cells[k];
  document.getElementById("cellinfo").textContent = c.feature ?
    " correlates with " + c.feature + " (r = " + c.r.toFixed(3) + ")" : "";
  text.dataset.cell = String(c.unit);
}
select.addEventListener("change", () => showCell(+select.value));
const hashCell = /cell=(\d+)/.exec(location.hash);
if (hashCell) {
  const k = R.cells.findIndex(c => c.unit === +hashCell[1]);
  if (k >= 0) select.value = k;
}
showCell(+select.value || 0);
const tip = document.getElementById("tip");
if (R.predictions) {
  const P = R.predictions, ids = u16(P.ids), probs = bytes(P.probs);
  text.addEventListener("mouseover", e => {
    const i = e.target.dataset ? e.target.dataset.i : undefined;
    if (i === undefined) return;
    const rows = [];
    for (let j = 0; j < P.k; j++) {
      const tok = P.vocab[ids[i * P.k + j]];
      rows.push(JSON.stringify(tok) + "  " + (probs[i * P.k + j] / 255).toFixed(2));
    }
    tip.textContent = "next: " + rows.join("\n      ");
    tip.style.whiteSpace = "pre";
    tip.style.display = "block";
    tip.style.left = (e.clientX + 12) + "px";
    tip.style.top = (e.clientY + 12) + "px";
  });
  text.addEventListener("mouseout", () => { tip.style.display = "none"; });
}
function heatmap(name, m) {
  const S = R.heatmaps.steps, H = R.heatmaps.units, d = bytes(m.data);
  const cv = document.createElement("canvas");
  cv.width = S; cv.height = H;
  cv.style.width = Math.min(900, Math.max(300, S)) + "px";
  cv.style.height = Math.max(60, Math.min(256, H * 2)) + "px";
  const ctx = cv.getContext("2d"), img = ctx.createImageData(S, H);
  for (let t = 0; t < S; t++) for (let u = 0; u < H; u++) {
    const q = d[t * H + u], p = 4 * (u * S + t);
    if (m.lo === 0) { img.data[p] = img.data[p + 1] = img.data[p + 2] = 255 - q; }
    else {
      const v = q / 127.5 - 1;
      img.data[p] = v > 0 ? 255 : Math.round(255 * (1 + v));
      img.data[p + 1] = Math.round(255 * (1 - Math.abs(v)));
      img.data[p + 2] = v < 0 ? 255 : Math.round(255 * (1 - v));
    }
    img.data[p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const f = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = name + (m.lo === 0 ? " (white 0 … black 1)" : " (blue −1 … red +1)") +
    ", steps × units";
  f.appendChild(cap); f.appendChild(cv);
  document.getElementById("maps").appendChild(f);
}
document.getElementById("mapnote").textContent = "The first " + R.heatmaps.steps +
  " steps (x) of all " + R.heatmaps.units + " units (y).";
for (const [name, m] of Object.entries(R.heatmaps.maps)) heatmap(name, m);
function plot(parent, title, series, log) {
  const W = 320, Hh = 220, cv = document.createElement("canvas");
  cv.width = W; cv.height = Hh;
  const ctx = cv.getContext("2d");
  const tr = v => log ? Math.log10(Math.max(v, 1e-300)) : v;
  let xs = [], ys = [];
  series.forEach(s => { xs = xs.concat(s.x); ys = ys.concat(s.y.map(tr)); });
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1;
  const y0 = Math.min(...ys), y1 = Math.max(...ys);
  const X = x => 30 + (W - 40) * (x - x0) / ((x1 - x0) || 1);
  const Y = y => Hh - 20 - (Hh - 30) * (y - y0) / ((y1 - y0) || 1);
  ctx.font = "10px sans-serif";
  ctx.fillText(title, 30, 10);
  series.forEach(s => {
    ctx.strokeStyle = ctx.fillStyle = s.colour;
    if (s.points) {
      s.x.forEach((x, i) => ctx.fillRect(X(x) - 1.5, Y(tr(s.y[i])) - 1.5, 3, 3));
    } else {
      ctx.beginPath();
      s.y.forEach((v, i) => {
        i ? ctx.lineTo(X(s.x[i]), Y(tr(v))) : ctx.moveTo(X(s.x[i]), Y(tr(v)));
      });
      ctx.stroke();
      ctx.fillText(s.label, W - 60, 20 + 12 * series.indexOf(s));
    }
  });
  if (log) {
    ctx.fillStyle = "#444";
    ctx.fillText("1e" + y1.toFixed(0), 0, 20);
    ctx.fillText("1e" + y0.toFixed(0), 0, Hh - 20);
  }
  parent.appendChild(cv);
}
const sat = document.getElementById("saturation"), table = document.getElementById("sattable");
table.innerHTML = "<tr><th>gate</th><th>left-saturated</th><th>right-saturated</th></tr>";
for (const [g, s] of Object.entries(R.saturation)) {
  plot(sat, "gate " + g, [{x: s.left, y: s.right, colour: "#c33", points: true}], false);
  const mean = a => (a.reduce((p, q) => p + q, 0) / a.length).toFixed(3);
  table.innerHTML += "<tr><td>" + g + "</td><td>" + mean(s.left) + "</td><td>" +
    mean(s.right) + "</td></tr>";
}
if (R.gradient_flow) {
  document.getElementById("flowsection").style.display = "block";
  const colours = ["#c33", "#393", "#33c", "#999", "#c9c"];
  for (const when of ["init", "trained"]) {
    const series = Object.entries(R.gradient_flow.cells).map(([cell, e], k) => ({
      x: e[when].dh.map((_, t) => t), y: e[when].dh, colour: colours[k % 5], label: cell }));
    plot(document.getElementById("flow"), when === "init" ? "at initialisation" :
         "after training", series, true);
  }
}
document.body.dataset.ready = "1";
</script>
</body></html>
"""
