"""The pages of ``lstmkit tour``: PNGs, one self-contained HTML page and a Markdown copy,
written from the document of :func:`lstmkit.tour.measure`.

The content is built once, as a list of blocks (heading, paragraph, table, image,
preformatted text, the step's equations), and rendered twice: to HTML (CSS inline, images as
``data:`` URIs, no script needed, no network) and to Markdown (images as relative paths), so
the docs copy says exactly what the page says. In paragraphs and table cells, `code` and
**bold** are the only markup.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import numpy as np

from .curves import _pyplot, plot_gradient_flow, save
from .gates import char_label, plot_unit_over_text

UNROLLED = 8                                   # steps drawn in the unrolled picture


# -- PNGs -------------------------------------------------------------------------------------
def plot_unrolled(doc: dict, path: str | Path) -> Path:
    """The unrolled network over the ``UNROLLED`` steps up to the chosen step: one box per
    step (the same LSTM layer), the character read below, h_t's first 16 units as a strip
    and the most likely next character above."""
    plt = _pyplot()
    t = doc["step"]
    steps = list(range(max(0, t - UNROLLED + 1), t + 1))
    P = doc["predictions"]
    fig, ax = plt.subplots(figsize=(1.45 * len(steps) + 1.2, 3.6), dpi=100)
    for k, s in enumerate(steps):
        x = 1 + 1.45 * k
        ax.add_patch(plt.Rectangle((x - 0.45, 1.0), 0.9, 0.8, facecolor="#e8f0fb",
                                   edgecolor="#33557a"))
        ax.text(x, 1.4, "LSTM", ha="center", va="center", fontsize=9)
        ax.annotate("", xy=(x, 1.0), xytext=(x, 0.55), arrowprops={"arrowstyle": "->"})
        ax.text(x, 0.35, char_label(doc["tokens"][s]), ha="center", va="center",
                fontsize=11, family="monospace", bbox={"facecolor": "#fff6d6",
                                                        "edgecolor": "#e5c86b"})
        ax.text(x, 0.0, f"x_{s}", ha="center", fontsize=8, color="#555")
        if k:
            ax.annotate("", xy=(x - 0.45, 1.4), xytext=(x - 1.0, 1.4),
                        arrowprops={"arrowstyle": "->", "color": "#c33"})
        h = np.asarray(doc["h_first"][s])
        ax.imshow(h[None, :], extent=(x - 0.45, x + 0.45, 2.0, 2.2), cmap="bwr", vmin=-1,
                  vmax=1, aspect="auto")
        ax.annotate("", xy=(x, 2.0), xytext=(x, 1.8), arrowprops={"arrowstyle": "-"})
        nxt = P["tokens"][P["ids"][s][0]]
        ax.text(x, 2.45, f"{char_label(nxt)!s}  {P['p'][s][0]:.2f}", ha="center",
                fontsize=9, family="monospace")
        ax.text(x, 2.75, f"h_{s}", ha="center", fontsize=8, color="#555")
    ax.text(0.25, 1.4, "h, c →", ha="right", va="center", fontsize=8, color="#c33")
    ax.set_xlim(-0.2, 1.45 * len(steps) + 0.3)
    ax.set_ylim(-0.2, 3.0)
    ax.axis("off")
    ax.set_title("the same cell at every step: x_t below, h_t (first 16 units) and the most "
                 "likely next character above", fontsize=9)
    return save(fig, path)


def write_pngs(doc: dict, out: Path) -> dict[str, Path]:
    """Every PNG of the tour, into ``out``."""
    start, stop = doc["window"]
    tokens = doc["tokens"][start:stop]
    u, t = doc["unit"], doc["step"]
    s = {k: v[start:stop] for k, v in doc["series"].items()}
    marks = [m - start for m in doc["reset"]["reset_steps"] if start <= m < stop]
    pngs = {"unrolled": plot_unrolled(doc, out / "unrolled.png")}
    c_prev = [doc["series"]["c"][k - 1] if k else 0.0 for k in range(start, stop)]
    pngs["belt"] = plot_unit_over_text(
        tokens, {"c_t": s["c"], "f_t": s["f"], "|c_t-1|(1-f_t)":
                 [abs(c) * (1 - f) for c, f in zip(c_prev, s["f"])]},
        out / "belt.png", marks=marks, focus=t - start,
        title=f"unit {u}: the cell state c_t and the forget gate f_t (resets shaded, the "
              f"chosen step outlined)")
    pngs["gates"] = plot_unit_over_text(
        tokens, {"i_t": s["i"], "f_t": s["f"], "g_t": s["g"], "o_t": s["o"],
                 "tanh(c_t)": np.tanh(s["c"]).tolist(), "h_t": s["h"]},
        out / "gates.png", marks=marks, focus=t - start,
        title=f"unit {u}: input, forget and output gates, candidate, tanh(c_t) and h_t")
    pngs["flow"] = plot_gradient_flow(doc["flow"], out / "flow.png")
    study = (doc["results"].get("flow") or {}).get("study")
    if study:
        pngs["flow-study"] = plot_gradient_flow(study, out / "flow-study.png")
    return pngs


# -- content ----------------------------------------------------------------------------------
def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _ch(token: str) -> str:
    """A character as code: ``\\n`` for newline, ``␣`` for a space."""
    return _code(token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣"))


def _ms(v: float) -> str:
    return f"{v:.1f}"


def _corpus(cfg: dict) -> str:
    if not cfg["data"]:
        chars = f"the first {cfg['max_chars']:,} characters of " if cfg["max_chars"] else ""
        return (f"{chars}the built-in corpus (the Python standard library's own `.py` "
                "sources)")
    return "the files " + ", ".join(_code(p) for p in cfg["data"])


def _intro(doc: dict) -> list:
    run, cfg = doc["run"], doc["run"]["config"]
    best = run["best_val"]
    val = (f" Its best validation loss is {best['val_bpc']:.3f} bits per character (step "
           f"{best['step']}, from `metrics.jsonl`)." if best else "")
    return [
        ("h1", "Understanding LSTM networks, with a real one"),
        ("p", "The usual explanation of the LSTM — the unrolled network, the cell state as a "
              "conveyor belt, the gates, the step's equations, the parameter count, vanishing "
              "gradients, the variants — told here with the numbers of one trained model. "
              "Every number on this page was measured by lstmkit on that model, or is read "
              "from the results files of the project, which are named where they are used."),
        ("p", f"**The model**: a character-level language model of `lstmkit train` — an "
              f"embedding of {cfg['embed']} numbers per character, {cfg['layers']} LSTM "
              f"layer{'s' if cfg['layers'] > 1 else ''} of {cfg['hidden']} units, a linear "
              f"read-out over the {len(doc['predictions']['tokens'])} characters of its "
              f"vocabulary — trained {run['step']:,} steps on {_corpus(cfg)}. Run "
              f"directory: {_code(run['dir'])}; {run['how'] or 'given on the command line'}."
              + val),
        ("p", f"**The text**: the first {len(doc['tokens']):,} characters of the run's "
              f"validation split, which the model was not trained on. The page looks at layer "
              f"{doc['layer']} (the last), unit {doc['unit']}, and step {doc['step']} (the "
              f"character {_ch(doc['tokens'][doc['step']])}), chosen by measurement as "
              f"section 2 says."),
    ]


def _unrolled(doc: dict) -> list:
    t, P = doc["step"], doc["predictions"]
    rows = []
    for s in range(max(0, t - UNROLLED + 1), t + 1):
        top = ", ".join(f"{_ch(P['tokens'][i])} {p:.3f}" for i, p in zip(P["ids"][s], P["p"][s]))
        rows.append([str(s), _ch(doc["tokens"][s]), f"{doc['h_norm'][s]:.3f}", top])
    units = [[str(c["unit"]), c["feature"] or "—", f"{c['r']:+.3f}"]
             for c in doc["interpretable"]]
    H = doc["hidden"]
    return [
        ("h2", "1. The unrolled network, and what h_t carries"),
        ("p", "A recurrent network is one cell used at every step. At step t it reads x_t — "
              "here the embedding of one character — and its own output of the step before, "
              "h_{t−1}, and writes h_t. Drawn unrolled over the last "
              f"{UNROLLED} characters up to step {t}, every box is the same LSTM layer with the "
              "same weights; the LSTM passes a second vector along, the cell state c_t "
              "(section 2)."),
        ("img", "unrolled", "the unrolled LSTM over eight real characters"),
        ("p", f"h_t is all that the read-out sees: {H} numbers in (−1, 1) that must carry "
              "whatever about the text so far the next character depends on. The model's "
              "three most likely next characters, from h_t alone:"),
        ("table", ["step t", "character read", "‖h_t‖", "most likely next (probability)"],
         rows),
        ("p", "Some units carry things one can name. Ranked by the largest |Pearson r| of "
              "their tanh(c_t) (h_t = o_t ⊙ tanh(c_t)) with a feature of the text — position "
              "in the line, indentation, bracket depth, inside a string — over the whole "
              "text, as `lstmkit inspect` ranks them:"),
        ("table", ["unit", "follows", "r"], units),
    ]


def _belt(doc: dict) -> list:
    R, u = doc["reset"], doc["unit"]
    T, H = len(doc["tokens"]), doc["hidden"]
    rank = [[str(r["unit"]), str(r["resets"]), f"{r['wiped']:.2f}", f"{r['largest']:.3f}"]
            for r in R["ranking"]]
    if R["rule"] == "most resets":
        chosen = (f"Unit {u} has the most resets, {len(R['reset_steps'])}; the top five "
                  "units:")
        at = ", ".join(f"{_ch(ch)} ×{n}" for ch, n in doc["reset_chars"])
        where = f"Its resets happen on reading: {at}."
    else:
        chosen = (f"No unit of this model has a reset by that rule (the model is barely "
                  f"trained), so the unit and step with the largest wiped content "
                  f"|c_{{t−1}}|·(1 − f_t) were taken: unit {u}. The top five units:")
        where = ""
    known = next((c for c in doc["interpretable"] if c["unit"] == u and c["feature"]), None)
    if known:
        where += (f" Unit {u} is also one of the units of section 1 that follow a feature of "
                  f"the text: {known['feature']}, r = {known['r']:+.3f}.")
    t = doc["step"]
    e = doc["equations"]
    return [
        ("h2", "2. The cell state — the belt — and where the forget gate wipes it"),
        ("p", "The cell state c_t changes from step to step only by an element-wise product "
              "and a sum, c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t: what is on it rides along "
              "unchanged while the forget gate f_t is near 1, and is wiped where f_t is "
              "near 0."),
        ("p", f"**How unit {u} was chosen.** Over all {T:,} steps of the text and all {H} "
              f"units of layer {doc['layer']}, a *reset* of a unit is a step where its forget "
              f"gate f_t < {R['f_reset']} while |c_{{t−1}}| > {R['c_reset']} — the gate lets "
              "less than a fifth of a sizeable content through — "
              + (f"after the belt carried that content for {R['carry']} steps (f > "
                 f"{R['f_carry']} at each of the {R['carry']} steps before; the longest "
                 "carry of 10, 5, 3, 1 for which some unit has a reset). " if R["carry"] else
                 "(no unit had one after carrying its content even one step). ") + chosen),
        ("table", ["unit", "resets", "content wiped at its resets, Σ|c_{t−1}|(1 − f_t)",
                   "largest single wipe"], rank),
        ("p", where + (" " if where else "")
         + f"The chosen step is its largest wipe, step {t}: c_{{t−1}} = {e['c_prev']:.3f}, "
           f"f_t = {e['gates']['f']['value']:.3f}, c_t = {e['c']:.3f}."),
        ("img", "belt", f"unit {u}: cell state and forget gate over the text"),
        ("belt", None),
    ]


def _gates(doc: dict) -> list:
    s, t, u = doc["series"], doc["step"], doc["unit"]
    rows = []
    names = {"i": "input gate i_t", "f": "forget gate f_t", "g": "candidate g_t (C̃_t)",
             "o": "output gate o_t"}
    for g, label in names.items():
        v = np.asarray(s[g])
        rows.append([label, f"{v.mean():.3f}", f"{(v < 0.1).mean():.3f}",
                     f"{(v > 0.9).mean():.3f}", f"{s[g][t]:.3f}"])
    return [
        ("h2", f"3. The gates of unit {u}, on the same text"),
        ("p", "Three sigmoid gates in (0, 1) and one candidate in (−1, 1), each computed from "
              "x_t and h_{t−1}: the input gate i_t decides how much of the candidate g_t "
              "(colah's C̃_t) is written onto the belt, the forget gate f_t how much of the old "
              "content is kept, and the output gate o_t how much of tanh(c_t) is shown as "
              "h_t."),
        ("img", "gates", f"unit {u}: i, f, g, o, tanh(c) and h over the text"),
        ("p", f"Unit {u} over all {len(doc['tokens']):,} characters (saturation as in "
              "Karpathy, Johnson & Fei-Fei 2015):"),
        ("table", ["", "mean", "fraction < 0.1", "fraction > 0.9", f"at step {t}"], rows),
    ]


def _equations(doc: dict) -> list:
    e, t, u = doc["equations"], doc["step"], doc["unit"]
    tok = doc["tokens"]
    before = "".join(tok[max(0, t - 30):t])
    return [
        ("h2", "4. One step by hand"),
        ("p", f"Step {t}: the model has read {_code(repr(before))} and now reads "
              f"{_ch(tok[t])}. Unit {u}, layer {e['layer']}. For each gate the three terms "
              f"are the dot products of the unit's rows of `weight_ih_l{e['layer']}` (W) "
              f"and `weight_hh_l{e['layer']}` (U) with x_t ({len(e['x'])} numbers: the "
              f"character's embedding) and h_{{t−1}} ({len(e['h_prev'])} numbers), and "
              "b = b_i* + b_h*, the sum of PyTorch's two bias vectors. Every number is "
              f"printed with {e['digits']} decimals: recompute each line with a calculator; "
              "it agrees to the last digit or two. The vectors and the weight rows are in "
              "`tour.json` (key `equations`), to check the dot products as well."),
        ("step", None),
    ]


def _parameters(doc: dict) -> list:
    P = doc["parameters"]
    blocks = [("h2", "5. How many parameters"),
              ("p", "Each of the four gate blocks (i, f, g, o) has an h×i matrix for x_t, an "
                    "h×h matrix for h_{t−1} and a bias, so the textbook count of one LSTM "
                    "layer is 4(h² + hi + h). PyTorch, cuDNN and lstmkit keep two bias "
                    "vectors, b_i* and b_h*, which only ever appear as their sum: "
                    "4(h² + hi + 2h), 4h more parameters and no more expressive power.")]
    rows = []
    for L in P["layers"]:
        h, i = L["h"], L["i"]
        rows.append([str(L["layer"]), str(h), str(i),
                     f"4({h}² + {h}·{i} + {h}) = {L['textbook']:,}",
                     f"4({h}² + {h}·{i} + 2·{h}) = {L['pytorch']:,}"])
    blocks += [("table", ["layer", "h", "i", "textbook, one bias", "PyTorch, two biases"],
                rows),
               ("p", f"`lstmkit.count_parameters(model.rnn)` = {P['recurrent']:,}, PyTorch's "
                     f"count. The language model adds the embedding ({P['embedding']:,}) and "
                     f"the read-out ({P['decoder']:,}): {P['total']:,} in all. "
                     "`lstmkit.summary(model)` prints:"),
               ("pre", P["summary"])]
    return blocks


def _ratios(dh: list[float], at=(0, 25, 50, 75)) -> list[str]:
    last = dh[-1] if dh[-1] else float("nan")
    return [f"{dh[k] / last:.1e}" if k < len(dh) else "—" for k in at]


def _flow(doc: dict) -> list:
    F = doc["flow"]
    T = F["T"]
    at = [0, T // 4, T // 2, 3 * T // 4]
    rows = []
    for cell, e in F["cells"].items():
        for when in ("init", "trained"):
            if e.get(when):
                label = ("this model" if when == "trained"
                         else f"{cell.upper()} at initialisation")
                rows.append([label] + _ratios(e[when]["dh"], at))
    blocks = [
        ("h2", "6. Gradient flow through time: RNN against LSTM"),
        ("p", "Training by backpropagation through time needs the gradient of a late loss "
              "to reach early steps. `lstmkit.gradient_flow` measures ‖∂L/∂h_t‖ at every "
              f"step t. Here L is the cross-entropy of the next character after the {T} "
              "characters up to the chosen step (float64), through this model and through a "
              "tanh RNN and an LSTM language model of the same sizes at initialisation (same "
              "seed), reading the same characters; each value divided by its value at the "
              f"last step, t = {T - 1}:"),
        ("table", ["network", *(f"t = {k}" for k in at)], rows),
        ("img", "flow", "gradient norms over time, this model and untrained RNN and LSTM"),
    ]
    res = doc["results"].get("flow")
    if res:
        S = res["study"]
        rows = []
        for cell, e in S["cells"].items():
            for when in ("init", "trained"):
                mse = f"{e['test']['mse']:.2g}" if when == "trained" else ""
                rows.append([cell.upper(), "initialisation" if when == "init" else "trained",
                             *_ratios(e[when]["dh"]), mse])
        blocks += [
            ("p", f"The same measurement on a long-time-lag task, with an RNN, a GRU and an "
                  f"LSTM each trained, from `{res['file']}` (`lstmkit gradient-flow`: the "
                  f"{S['task']} adding task, T = {S['T']}, {S['hidden']} units, "
                  f"{S['budget']:,} training sequences; `docs/long-time-lag.md` describes "
                  "it). Trained, the RNN's gradient still vanishes over the 100 steps; the "
                  "LSTM's and the GRU's do not, and only they solve the task:"),
            ("table", ["cell", "when", "t = 0", "t = 25", "t = 50", "t = 75", "test MSE"],
             rows),
            ("img", "flow-study", "gradient flow on the adding task, from the results file"),
        ]
    return blocks


_EQUATIONS = {
    "lstm": "i, f, o = σ(W x_t + U h_{t−1} + b); g = tanh(…); c_t = f ⊙ c_{t−1} + i ⊙ g; "
            "h_t = o ⊙ tanh(c_t)",
    "peephole": "as LSTM, plus p_i ⊙ c_{t−1} in i, p_f ⊙ c_{t−1} in f, p_o ⊙ c_t in o "
                "(Gers & Schmidhuber 2000)",
    "coupled": "as LSTM with f_t = 1 − i_t: forget exactly where new content is written; no "
               "forget-gate weights (CIFG, Greff et al. 2015)",
    "gru": "r, z = σ(W x_t + U h_{t−1} + b); n = tanh(W_n x_t + b_in + r ⊙ (U_n h_{t−1} + "
           "b_hn)); h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}: no cell state (Cho et al. 2014, "
           "PyTorch's form)",
}
_NAMES = {"lstm": "LSTM", "peephole": "peephole LSTM", "coupled": "coupled (CIFG)",
          "gru": "GRU"}


def _variants(doc: dict) -> list:
    VP, R = doc["variant_parameters"], doc["results"]
    lstm_n = VP["lstm"]["count"]
    rows = [[_NAMES[k], _EQUATIONS[k], f"{v['count']:,} ({v['count'] / lstm_n:.2f}×)",
             _code(v["formula"])] for k, v in VP.items()]
    I, H = doc["parameters"]["layers"][-1]["i"], doc["hidden"]
    blocks = [("h2", "7. The variants side by side"),
              ("p", f"Parameter counts from `lstmkit.summary` of one layer of each, the size "
                    f"of this model's (I = {I}, H = {H}):"),
              ("table", ["cell", "equations", "parameters", "lstmkit.summary's formula"],
               rows)]
    sp = R.get("speed")
    if sp and sp["rows"]:
        base = sp["rows"].get("lstm", {}).get("ms")
        rows = [[_NAMES[k], _ms(v["ms"]), f"{v['ms'] / base:.2f}" if base else "—",
                 f"{_ms(v['torch_ms'])} ({_code(v['torch_module'])})"]
                for k, v in sp["rows"].items()]
        blocks += [("p", f"**Speed**, forward + backward at {sp['shape']}, lstmkit's C++ "
                         f"kernels ({sp['backend']}), {sp['threads']} thread(s), measured "
                         f"{sp['time']} on the project's shared 2-core machine (noisy), from "
                         f"`{sp['file']}` (`lstmkit bench --json`):"),
                   ("table", ["cell", "ms", "× LSTM", "torch.nn, ms"], rows)]
    blocks += _quality(R)
    if R.get("missing"):
        blocks.append(("p", "Not shown, because these results files were not found: "
                            + ", ".join(_code(m) for m in R["missing"]) + "."))
    return blocks


def _quality(R: dict) -> list:
    blocks = []
    tx, par = R.get("text"), R.get("parity")
    if tx:
        rows = [[_NAMES.get(k, k), f"{v['val_bpc']:.3f}", f"{v['test_bpc']:.3f}",
                 f"{v['parameters']:,}", f"{v['seconds'] / 60:.1f} min"]
                for k, v in tx["rows"].items()]
        blocks += [("p", f"**Quality on text** (bits per character, lower is better; one seed "
                         f"each), {tx['setup']}, from `{tx['file']}`; the training times "
                         "are wall times as recorded on a shared machine, not a speed "
                         "comparison (the speed table above is one):"),
                   ("table", ["cell", "validation BPC", "test BPC", "parameters",
                              "training time"], rows)]
    if par:
        rows = [[_NAMES.get(k, k), f"{v['val_bpc']:.3f}", f"{v['test_bpc']:.3f}",
                 f"{v['seconds']:.0f} s"] for k, v in par["rows"].items()]
        blocks += [("p", f"LSTM against GRU, {par['setup']}, one seed, from "
                         f"`{par['file']}`:"),
                   ("table", ["cell", "validation BPC", "test BPC", "training time"], rows)]
    lag = R.get("long_lag")
    if lag and lag["reber"] and lag["temporal_order"]:
        rows = []
        for k in ("lstm", "peephole", "coupled", "gru", "rnn"):
            a, b = lag["reber"].get(k), lag["temporal_order"].get(k)
            if a and b:
                rows.append([_NAMES.get(k, "tanh RNN"), a[0], a[1], b[0], b[1], b[2]])
        blocks += [("p", "**Long time lags** (fraction of test sequences wrong, mean ± sd "
                         "over seeds; seeds that solved the test set): the embedded Reber "
                         "grammar (3 seeds) and the temporal-order task at T = 100 "
                         f"(2 seeds), from `{lag['file']}` (`docs/long-time-lag.md`):"),
                   ("table", ["cell", "Reber: wrong", "Reber: solved", "temporal order: "
                              "wrong", "temporal order: solved", "sequences to solve"],
                    rows),
                   ("p", "A few seeds show how much the time to leave a plateau varies; "
                         "they do not rank the variants (Greff et al. 2015 needed hundreds of "
                         "runs per variant for that).")]
    return blocks


def _files(doc: dict) -> list:
    run = doc["run"]["dir"]
    return [("h2", "Files"),
            ("p", f"Made by `lstmkit tour` from the run `{run}`. It writes into one folder: "
                  "`tour.html` (this page, self-contained), `tour.md` (the same as Markdown), "
                  "the PNGs, `tour.json` (every number, the printed ones as printed, and the "
                  "vectors of the step), and `report.html`, the `lstmkit inspect` viewer of "
                  "the same text (any unit, the top-5 predictions on hover, every gate's "
                  "heatmap).")]


def blocks(doc: dict) -> list:
    """The tour's content, in order."""
    return (_intro(doc) + _unrolled(doc) + _belt(doc) + _gates(doc) + _equations(doc)
            + _parameters(doc) + _flow(doc) + _variants(doc) + _files(doc))


# -- the step's equations, as table rows ------------------------------------------------------
_GATE = {"i": ("i_t", "σ"), "f": ("f_t", "σ"), "g": ("g_t", "tanh"), "o": ("o_t", "σ")}


def step_rows(doc: dict, num) -> list[list[str]]:
    """The rows of the step's table; ``num(name)`` renders the printed number ``name``."""
    rows = []
    for g, (lhs, act) in _GATE.items():
        rows.append([f"{lhs} = {act}(W_{g}·x_t + U_{g}·h_{{t−1}} + b_{g})",
                     f"{act}({num('Wx_' + g)} + ({num('Uh_' + g)}) + ({num('b_' + g)})) = "
                     f"{act}({num('a_' + g)})", num(f"{g}_t")])
    rows.append(["c_t = f_t·c_{t−1} + i_t·g_t",
                 f"{num('f_t')} × ({num('c_prev')}) + {num('i_t')} × ({num('g_t')})",
                 num("c_t")])
    rows.append(["h_t = o_t·tanh(c_t)", f"{num('o_t')} × tanh({num('c_t')}) = {num('o_t')} × "
                 f"({num('tanh_c_t')})", num("h_t")])
    return rows


# -- rendering --------------------------------------------------------------------------------
def _emphasis(escaped: str) -> str:
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"(?<![\w*])\*(\S.*?)\*(?![\w*])", r"<i>\1</i>", escaped)


def _inline_html(text: str) -> str:
    """`code` (any number of backticks as the fence, as in Markdown), **bold** and *italic*
    of a paragraph or cell, as HTML; everything else escaped."""
    out, pos = [], 0
    for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", text):
        out.append(_emphasis(html.escape(text[pos:m.start()])))
        code = m.group(2)[1:-1] if len(m.group(1)) > 1 and m.group(2).startswith(" ") \
            and m.group(2).endswith(" ") else m.group(2)
        out.append(f"<code>{html.escape(code)}</code>")
        pos = m.end()
    return "".join(out) + _emphasis(html.escape(text[pos:]))


def _belt_html(doc: dict) -> str:
    """The whole text, each character tinted by tanh(c_t) of the chosen unit (red > 0 >
    blue, as the ``lstmkit inspect`` viewer colours it), resets boxed, the chosen step
    marked."""
    c = np.tanh(np.asarray(doc["series"]["c"]))
    resets = set(doc["reset"]["reset_steps"])
    spans = []
    for k, (tok, v) in enumerate(zip(doc["tokens"], c)):
        rgb = "220,40,30" if v >= 0 else "30,90,220"
        cls = ' class="chosen" id="chosen-step"' if k == doc["step"] else (
            ' class="reset"' if k in resets else "")
        spans.append(f'<span{cls} style="background:rgba({rgb},{min(1, abs(v)):.2f})" '
                     f'title="t = {k}, c = {doc["series"]["c"][k]:.3f}, f = '
                     f'{doc["series"]["f"][k]:.3f}">{html.escape(tok)}</span>')
    u = doc["unit"]
    return (f'<p>The whole text, each character tinted by tanh(c_t) of unit {u} after reading '
            f'it (red &gt; 0 &gt; blue), resets boxed, the chosen step boxed thick; hover a '
            f'character for t, c_t and f_t. The interactive viewer of the same text, '
            f'<a href="report.html#cell={u}">report.html</a>, shows any unit and every '
            f'gate.</p><div class="belt">{"".join(spans)}</div>')


def render_html(doc: dict, images: dict[str, str]) -> str:
    """The page: ``images`` maps a PNG's name to its ``data:`` URI."""
    body = []
    for b in blocks(doc):
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(b[1])}</p>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(b[1])}</pre>")
        elif kind == "img":
            if b[1] in images:
                body.append(f'<figure><img src="{images[b[1]]}" alt="{html.escape(b[2])}">'
                            f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                           for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "belt":
            body.append(_belt_html(doc))
        elif kind == "step":
            body.append(_step_html(doc))
    title = "Understanding LSTM networks, with a real one — lstmkit tour"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{_CSS}</style></head>\n<body>"
            + "\n".join(body) + '\n<p class="foot">lstmkit tour</p></body></html>\n')


def _step_html(doc: dict) -> str:
    printed = doc["equations"]["printed"]

    def num(name):
        return f'<span class="num" data-name="{name}">{printed[name]}</span>'

    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>= {c}</td></tr>"
                   for a, b, c in step_rows(doc, num))
    e = doc["equations"]
    vec = {"x_t": e["x"], "h_{t−1}": e["h_prev"]}
    for g in "ifgo":
        vec[f"W_{g} (row {g} of unit {e['unit']})"] = e["gates"][g]["W_row"]
        vec[f"U_{g} (row {g} of unit {e['unit']})"] = e["gates"][g]["U_row"]
    details = "\n".join(f"{k}: " + " ".join(f"{v:.9g}" for v in vals) for k, vals in vec.items())
    return (f'<table class="step" id="step" data-t="{e["t"]}" data-unit="{e["unit"]}">'
            "<tr><th>equation</th><th>with the numbers</th><th>result</th></tr>"
            f"{rows}</table><p>Before the step: c_{{t−1}} = {num('c_prev')} and "
            f"h_{{t−1}} = {num('h_prev')} for unit {e['unit']}.</p>"
            f"<details><summary>the vectors and weight rows of this step</summary>"
            f'<pre class="vectors">{html.escape(details)}</pre></details>')


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: dict, image_dir: str = "") -> str:
    """The same content as Markdown; images are ``image_dir/<name>.png``."""
    out = []
    prefix = image_dir.rstrip("/") + "/" if image_dir else ""
    for b in blocks(doc):
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}")
        elif kind == "h2":
            out.append(f"## {b[1]}")
        elif kind == "p":
            out.append(b[1])
        elif kind == "pre":
            out.append("```text\n" + b[1] + "\n```")
        elif kind == "img":
            if b[1] in doc.get("_pngs", ()):
                out.append(f"![{b[2]}]({prefix}{b[1]}.png)")
        elif kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) or " " for h in b[1]) + " |",
                     "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b[2]]
            out.append("\n".join(lines))
        elif kind == "step":
            printed = doc["equations"]["printed"]
            rows = step_rows(doc, printed.__getitem__)
            lines = ["| equation | with the numbers | result |", "|---|---|---|"]
            lines += [f"| {_md_cell(a)} | {_md_cell(b_)} | = {c} |" for a, b_, c in rows]
            e = doc["equations"]
            out.append("\n".join(lines))
            out.append(f"Before the step: c_{{t−1}} = {printed['c_prev']} and h_{{t−1}} = "
                       f"{printed['h_prev']} for unit {e['unit']}.")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 1.5em auto; padding: 0 1em;
       color: #222; line-height: 1.5; }
h1 { font-size: 1.7em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.92em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
.belt { font-family: ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ccc;
        padding: .6em; max-height: 24em; overflow-y: auto; line-height: 1.45; }
.belt .reset { outline: 1px solid #000; }
.belt .chosen { outline: 3px solid #000; }
table.step td { font-family: ui-monospace, monospace; }
.num { font-weight: 600; }
.foot { color: #888; font-size: .85em; margin-top: 3em; }
"""


def write_tour(doc: dict, out: str | Path, *, image_dir: str = "") -> dict[str, Path]:
    """Write the PNGs, ``tour.html`` (images inlined), ``tour.md`` (images under
    ``image_dir``, default beside it), ``tour.json`` and the ``lstmkit inspect`` viewer
    ``report.html`` (+ ``report.json``) of the same text into ``out``."""
    from .report import write_html, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_pngs(doc, out)
    doc["_pngs"] = list(pngs)
    images = {k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
              for k, p in pngs.items()}
    paths = {"html": out / "tour.html", "markdown": out / "tour.md", "json": out / "tour.json",
             "report": out / "report.html"}
    paths["html"].write_text(render_html(doc, images), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(doc, image_dir), encoding="utf-8")
    report = doc["report"]
    write_html(report, paths["report"])
    write_json(report, out / "report.json")
    saved = {k: v for k, v in doc.items() if k not in ("report", "_pngs")}
    paths["json"].write_text(json.dumps(saved, ensure_ascii=False, indent=None,
                                        default=_jsonable) + "\n", encoding="utf-8")
    return {**paths, **{f"png:{k}": p for k, p in pngs.items()}}


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
