""""Understanding LSTM networks", told with a real trained model: ``lstmkit tour``.

    from lstmkit.tour import build_tour
    tour = build_tour("runs/lstm-20261202-070000", "tour/")   # → tour/tour.html, .md, .json, PNGs

The explanation every text on LSTMs gives — the unrolled network, the cell state as a
conveyor belt, the forget, input and output gates, the step's equations, the parameter count
4(h² + hi + h), vanishing gradients, the variants — here with the numbers of one trained
character-level LSTM (a run of ``lstmkit train``) reading real text. Everything shown is
measured by the project's own tools:

* :func:`lstmkit.record` for the gates and states, :func:`lstmkit.viz.report.language_model_report`
  for the top-k predictions and the ranking of units by the text feature they follow (the same
  document the ``lstmkit inspect`` viewer shows; the tour writes that viewer's page too);
* :func:`lstmkit.summary` and :func:`lstmkit.count_parameters` for the parameter counts;
* :func:`lstmkit.gradient_flow` for ‖∂L/∂h_t‖ and ‖∂L/∂c_t‖;
* the results files under ``benchmarks/results/`` for the measured speed and quality of the
  variants and the trained RNN-against-LSTM gradient study, each number cited by its file.

This module measures and returns one JSON-able document; :mod:`lstmkit.viz.tour` draws the
PNGs and writes the HTML and Markdown pages from it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT, VERSION = "lstmkit-tour", 1
DIGITS = 6                                 # decimals of every number printed for the step
TEXT_CHARS = 2_000                         # characters of the validation split read
WINDOW = 120                               # steps shown in the belt and gate plots
FLOW_STEPS = 100                           # steps of the gradient-flow window
F_RESET, C_RESET = 0.2, 0.5                # a reset: f_t < F_RESET while |c_{t-1}| > C_RESET
F_CARRY, CARRY = 0.8, (10, 5, 3, 1, 0)     # ... after f > F_CARRY for `carry` steps before
MAX_AGE_DAYS = 30                          # a run in runs/ older than this is not reused
# the default tour model: a small `lstmkit train` run (48 s of CPU time on the 2-core dev machine)
TOUR_TRAINING = {"hidden": 128, "embed": 32, "steps": 2000}
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


class TourError(ValueError):
    """A run directory the tour cannot use (missing, corrupt, or not a character LSTM)."""


def fmt(v: float) -> str:
    """A number as printed on the page: ``DIGITS`` decimals."""
    return f"{v:.{DIGITS}f}"


# -- which run ------------------------------------------------------------------------------
def check_run(run_dir: str | Path, which: str = "best"):
    """Load ``run_dir`` (:func:`lstmkit.train.load_run`) if it is a run of ``lstmkit train``
    with a plain character-level lstmkit LSTM; :class:`TourError` naming what is wrong."""
    from .train.checkpoint import CheckpointError
    from .train.config import TrainConfig
    from .train.sample import load_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TourError(f"run directory not found: {run_dir}")
    try:
        raw = json.loads((run_dir / "config.json").read_text())
    except OSError:
        raise TourError(f"{run_dir} is not a run of `lstmkit train` (no config.json)") from None
    except json.JSONDecodeError as e:
        raise TourError(f"{run_dir}/config.json is corrupt: {e}") from None
    try:
        cfg = TrainConfig.from_dict(raw) if isinstance(raw, dict) else None
    except (TypeError, ValueError) as e:
        raise TourError(f"{run_dir} is not a language-model run of `lstmkit train` "
                        f"(its config.json: {e})") from None
    if cfg is None:
        raise TourError(f"{run_dir}/config.json is not a JSON object")
    why = _unsuitable(cfg)
    if why:
        raise TourError(f"{run_dir}: the tour explains a character-level LSTM of `lstmkit "
                        f"train`; this run is {why}")
    try:
        return load_run(run_dir, which)
    except CheckpointError as e:
        raise TourError(f"{run_dir}: {e}") from None


def _unsuitable(cfg) -> str:
    """Why a TrainConfig cannot be toured ("" if it can)."""
    if cfg.tokens != "char":
        return f"word-level (tokens={cfg.tokens!r})"
    if cfg.cell != "lstm":
        return f"a {cfg.cell} model (cell={cfg.cell!r})"
    if cfg.peephole or cfg.coupled or cfg.variant:
        kind = cfg.variant or ("peephole" if cfg.peephole else "coupled")
        return f"a {kind} LSTM (the tour's equations are the plain LSTM's)"
    if cfg.impl != "lstmkit":
        return "torch.nn's LSTM (impl='torch'), whose gates cannot be recorded"
    return ""


def find_recent_run(runs_dir: str | Path = "runs", max_age_days: float = MAX_AGE_DAYS):
    """The newest run under ``runs_dir`` that the tour can use (a character LSTM trained
    on the built-in corpus, with a readable best checkpoint, at most ``max_age_days`` old),
    as a loaded run; None if there is none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    now = time.time()
    found = []
    for d in runs_dir.iterdir():
        best = d / "checkpoints" / "best.pt"
        if best.is_file() and now - best.stat().st_mtime <= max_age_days * 86400:
            found.append((best.stat().st_mtime, d))
    for _, d in sorted(found, reverse=True):
        try:
            if json.loads((d / "config.json").read_text()).get("data"):
                continue                               # not the built-in corpus
            return check_run(d)
        except (OSError, ValueError, AttributeError):  # TourError is a ValueError
            continue
    return None


def train_tour_model(run_dir: str | Path, **overrides):
    """Train the tour's default model into ``run_dir`` with ``lstmkit train``'s trainer
    (:class:`lstmkit.train.Trainer`, with its ``loss.png``): ``TOUR_TRAINING`` on the
    built-in corpus, fields of ``overrides`` replacing them; returns the loaded run."""
    from .train import TrainConfig, Trainer
    from .viz.runs import with_plots

    cfg = TrainConfig(**{**TOUR_TRAINING, **overrides})
    with_plots(Trainer(cfg, run_dir)).fit()
    return check_run(run_dir)


# -- the text and the recording ---------------------------------------------------------------
def tour_text(run, chars: int = TEXT_CHARS) -> str:
    """The first ``chars`` characters of the run's validation split (text the model was not
    trained on), as ``lstmkit inspect`` reads by default."""
    from .data.text import read_corpus, split_by_position

    cfg = run.config
    ids = run.vocab.encode(read_corpus(cfg.data, max_chars=cfg.max_chars).text)
    val = split_by_position(ids, cfg.val_fraction, cfg.test_fraction)[1]
    return run.vocab.decode(val[:chars])


def _record(model, ids: torch.Tensor):
    import lstmkit
    with lstmkit.record(model) as rec, torch.no_grad():
        logits, _ = model(ids[None])
    return rec, logits[0]


def find_reset_unit(f: np.ndarray, c: np.ndarray) -> dict:
    """The unit whose cell state the forget gate wipes most often after carrying it, by
    measurement.

    ``f`` and ``c`` (T, H) are one layer's forget gate and cell state over a text. A *reset*
    of unit u at step t is ``f_t < F_RESET`` while ``|c_{t-1}| > C_RESET`` — the gate lets
    less than a fifth of a sizeable content through — after the belt carried that content
    for ``carry`` steps: ``f > F_CARRY`` at each of the ``carry`` steps before. ``carry`` is
    the first of ``CARRY`` (10, 5, 3, 1, 0) for which some unit has a reset. The unit with
    the most resets is chosen (ties: the larger content wiped, Σ|c_{t-1}|·(1 − f_t) over
    its resets), and its reset with the largest wiped content |c_{t-1}|·(1 − f_t). If no unit
    has a reset even with ``carry`` 0 (an untrained model), the unit and step of the largest
    wiped content are taken instead."""
    T, H = f.shape
    c_prev = np.vstack([np.zeros((1, H)), c[:-1]])
    wiped = np.abs(c_prev) * (1 - f)                                       # (T, H)
    wipes = (f < F_RESET) & (np.abs(c_prev) > C_RESET)
    for carry in CARRY:
        resets = wipes.copy()
        for k in range(1, carry + 1):                  # f_{t-k} > F_CARRY, k = 1..carry
            resets[k:] &= f[:-k] > F_CARRY
            resets[:k] = False
        if resets.any():
            break
    counts = resets.sum(0)
    total = (wiped * resets).sum(0)
    order = sorted(range(H), key=lambda u: (-counts[u], -total[u], u))
    if counts[order[0]] > 0:
        unit = order[0]
        step = int(np.argmax(np.where(resets[:, unit], wiped[:, unit], -1)))
        rule = "most resets"
    else:
        step, unit = map(int, np.unravel_index(np.argmax(wiped), wiped.shape))
        rule = "no unit has a reset; largest wiped content"
        order = list(np.argsort(-wiped.max(0), kind="stable"))
    ranking = [{"unit": int(u), "resets": int(counts[u]), "wiped": float(total[u]),
                "largest": float(wiped[:, u].max())} for u in order[:5]]
    return {"unit": int(unit), "step": step, "rule": rule, "ranking": ranking,
            "reset_steps": np.flatnonzero(resets[:, unit]).tolist(), "carry": carry,
            "f_reset": F_RESET, "c_reset": C_RESET, "f_carry": F_CARRY}


# -- one step by hand -------------------------------------------------------------------------
def _sigmoid(a: float) -> float:
    return 1 / (1 + math.exp(-a))


def step_by_hand(model, rec, layer: int, ids: torch.Tensor, t: int, u: int) -> dict:
    """The LSTM step of unit ``u`` at step ``t`` of layer ``layer``, from the weights, in
    float64: for each gate the three terms W·x_t, U·h_{t−1}, b (b = b_i* + b_h*), their sum
    (the pre-activation) and the activation; then c_t and h_t. Checked against the recorded
    float32 values of the model's own forward pass."""
    rnn = model.rnn
    H = rnn.hidden_size
    W = getattr(rnn, f"weight_ih_l{layer}").detach().double()
    U = getattr(rnn, f"weight_hh_l{layer}").detach().double()
    b = (getattr(rnn, f"bias_ih_l{layer}").detach().double()
         + getattr(rnn, f"bias_hh_l{layer}").detach().double())
    if layer == 0:
        x = model.embed.weight[ids[t]].detach().double()
    else:
        x = rec.layers[layer - 1].h[t, 0].double()
    lay = rec.layers[layer]
    h_prev = lay.h[t - 1, 0].double() if t else torch.zeros(H, dtype=torch.float64)
    c_prev = lay.c[t - 1, 0].double() if t else torch.zeros(H, dtype=torch.float64)
    gates = {}
    for k, g in enumerate("ifgo"):                  # PyTorch's row order: i, f, g, o
        row = k * H + u
        wx, uh, bias = float(W[row] @ x), float(U[row] @ h_prev), float(b[row])
        a = wx + uh + bias
        value = math.tanh(a) if g == "g" else _sigmoid(a)
        recorded = float(lay.tensors[g][t, 0, u])
        if abs(value - recorded) > 1e-4:
            raise RuntimeError(f"gate {g}: {value} from the weights, {recorded} recorded")
        gates[g] = {"Wx": wx, "Uh": uh, "b": bias, "a": a, "value": value,
                    "W_row": W[row].tolist(), "U_row": U[row].tolist()}
    cp = float(c_prev[u])
    c = gates["f"]["value"] * cp + gates["i"]["value"] * gates["g"]["value"]
    h = gates["o"]["value"] * math.tanh(c)
    for name, mine, theirs in (("c", c, lay.c[t, 0, u]), ("h", h, lay.h[t, 0, u])):
        if abs(mine - float(theirs)) > 1e-4:
            raise RuntimeError(f"{name}_t: {mine} from the weights, {float(theirs)} recorded")
    printed = {f"{p}_{g}": fmt(gates[g][p]) for g in "ifgo" for p in ("Wx", "Uh", "b", "a")}
    printed.update({f"{g}_t": fmt(gates[g]["value"]) for g in "ifgo"})
    printed.update({"c_prev": fmt(cp), "h_prev": fmt(float(h_prev[u])), "c_t": fmt(c),
                    "tanh_c_t": fmt(math.tanh(c)), "h_t": fmt(h)})
    return {"t": t, "unit": u, "layer": layer, "gates": gates, "c_prev": cp,
            "h_prev_u": float(h_prev[u]), "c": c, "h": h, "x": x.tolist(),
            "h_prev": h_prev.tolist(), "printed": printed, "digits": DIGITS}


# -- parameters -------------------------------------------------------------------------------
def parameter_counts(model) -> dict:
    """``lstmkit.summary`` of the model and of its recurrent layer, with the textbook count
    4(h² + hi + h) and PyTorch's 4(h² + hi + 2h) per layer, checked against the count."""
    import lstmkit

    rnn = model.rnn
    h = rnn.hidden_size
    layers = []
    for k in range(rnn.num_layers):
        i = rnn.input_size if k == 0 else h
        layers.append({"layer": k, "h": h, "i": i, "textbook": 4 * (h * h + h * i + h),
                       "pytorch": 4 * (h * h + h * i + 2 * h)})
    counted = lstmkit.count_parameters(rnn)
    if counted != sum(layer["pytorch"] for layer in layers):
        raise RuntimeError(f"count_parameters {counted} ≠ PyTorch's formula")
    return {"summary": lstmkit.summary(model), "layers": layers, "recurrent": counted,
            "total": lstmkit.count_parameters(model),
            "embedding": model.embed.weight.numel(),
            "decoder": sum(p.numel() for p in model.decoder.parameters())}


# -- gradient flow ----------------------------------------------------------------------------
def flow_of(model, ids: torch.Tensor, layer: int) -> dict:
    """‖∂L/∂h_t‖ and ‖∂L/∂c_t‖ (:func:`lstmkit.gradient_flow`, float64) of a language model
    reading ``ids[:-1]``, L the cross-entropy of predicting ``ids[-1]`` at the last step."""
    from .inspect import gradient_flow

    m = copy.deepcopy(model).double().eval()
    target = ids[-1:]

    def loss(out):
        return nn.functional.cross_entropy(out[0][0, -1:], target)

    g = gradient_flow(m, ids[:-1][None], loss)[layer]
    return {"dh": g.dh.tolist(), "dc": g.dc.tolist() if g.dc is not None else None}


def gradient_flow_tour(model, config, vocab_size: int, ids: torch.Tensor, layer: int) -> dict:
    """The flow through the trained model, and through an LSTM and a tanh RNN language
    model of the same sizes at initialisation (seeded as the run), on the same characters.
    The shape is :func:`lstmkit.train.experiment.gradient_flow_study`'s, so that
    :func:`lstmkit.viz.curves.plot_gradient_flow` draws it."""
    from .train.model import LanguageModel

    cells = {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(config.seed)
        cfg = copy.deepcopy(config)
        cfg.cell, cfg.forget_bias = cell, 0.0
        fresh = LanguageModel(vocab_size, cfg)
        cells[cell] = {"init": flow_of(fresh, ids, layer),
                       "trained": flow_of(model, ids, layer) if cell == "lstm" else None}
    return {"task": "next character", "T": len(ids) - 1, "cells": cells}


# -- the project's results files --------------------------------------------------------------
def _newest(results: Path, pattern: str) -> Path | None:
    found = sorted(results.glob(pattern))
    return found[-1] if found else None


def _cite(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(RESULTS.parents[1]))
    except ValueError:
        return str(path)


def _md_rows(path: Path, heading: str) -> dict[str, list[str]]:
    """The rows of the first Markdown table after the line starting with ``heading``."""
    rows, seen = {}, False
    for line in path.read_text().splitlines():
        if line.startswith(heading):
            seen = True
        elif seen and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif seen and rows and not line.startswith("|"):
            break
    return rows


VARIANTS = {                                        # the bench's (cell, variant) of each
    "lstm": ("lstm", ""), "peephole": ("lstm", "peephole"),
    "coupled": ("lstm", "coupled"), "gru": ("gru", ""),
}


def variant_results(results: Path = RESULTS) -> dict:
    """Speed and quality of LSTM, peephole, coupled (CIFG) and GRU from the project's
    results files, each number with the file it comes from. Files that are missing leave
    their numbers out (and ``missing`` says which)."""
    out: dict = {"speed": None, "text": None, "parity": None, "long_lag": None,
                 "flow": None, "missing": []}
    bench = _newest(results, "bench-*-full.json")
    if bench:
        rows = json.loads(bench.read_text())["results"]
        speed = {}
        for name, (cell, variant) in VARIANTS.items():
            for r in rows:
                cf = r["config"]
                if (cf["cell"], cf["variant"], cf["T"], cf["B"], cf["H"], cf["proj"],
                        cf["packed"]) == (cell, variant, 100, 16, 128, 0, False):
                    speed[name] = {"ms": r["impls"]["lstmkit"]["fb_ms"],
                                   "torch_ms": r["impls"]["torch"]["fb_ms"],
                                   "torch_module": r["impls"]["torch"]["module"]}
        meta = json.loads(bench.read_text())["meta"]
        out["speed"] = {"file": _cite(bench), "rows": speed, "shape": "T=100, B=16, H=I=128",
                        "threads": meta.get("threads"), "backend": meta.get("backend"),
                        "time": meta.get("time")}
    else:
        out["missing"].append("bench-*-full.json")
    train = _newest(results, "train-variants-*.json")
    if train:
        runs = json.loads(train.read_text())["runs"]
        text = {}
        for r in runs:
            c = r["config"]
            name = "peephole" if c["peephole"] else "coupled" if c["coupled"] else c["cell"]
            text[name] = {k: r[k] for k in ("val_bpc", "test_bpc", "parameters", "seconds")}
        c = runs[0]["config"]
        out["text"] = {"file": _cite(train), "rows": text,
                       "setup": f"{c['layers']}×{c['hidden']}, {c['steps']} steps, "
                                f"{c['max_chars']:,} characters of the built-in corpus"}
    else:
        out["missing"].append("train-variants-*.json")
    parity = _newest(results, "train-parity-*.json")
    if parity:
        runs = json.loads(parity.read_text())["runs"]
        rows = {r["config"]["cell"]: {"val_bpc": r["val_bpc"], "test_bpc": r["test_bpc"],
                                      "seconds": r["seconds"]}
                for r in runs if r["config"]["impl"] == "lstmkit"}
        c = runs[0]["config"]
        out["parity"] = {"file": _cite(parity), "rows": rows,
                         "setup": f"{c['layers']}×{c['hidden']}, {c['steps']} steps, "
                                  f"{c['max_chars']:,} characters of the built-in corpus"}
    else:
        out["missing"].append("train-parity-*.json")
    lag = _newest(results, "long-time-lag-variants-*.md")
    if lag:
        out["long_lag"] = {"file": _cite(lag), "reber": _md_rows(lag, "reber"),
                           "temporal_order": _md_rows(lag, "temporal_order")}
    else:
        out["missing"].append("long-time-lag-variants-*.md")
    flow = results / "gradient-flow.json"
    if flow.is_file():
        study = json.loads(flow.read_text())
        out["flow"] = {"file": _cite(flow), "study": study}
    else:
        out["missing"].append("gradient-flow.json")
    return out


def variant_parameters(input_size: int, hidden: int) -> dict:
    """``lstmkit.summary`` of same-size LSTM, peephole LSTM, coupled LSTM and GRU layers:
    the parameter count and the summary's formula line."""
    import lstmkit

    modules = {"lstm": lstmkit.LSTM(input_size, hidden),
               "peephole": lstmkit.LSTM(input_size, hidden, peephole=True),
               "coupled": lstmkit.LSTM(input_size, hidden, coupled=True),
               "gru": lstmkit.GRU(input_size, hidden)}
    out = {}
    for name, m in modules.items():
        text = lstmkit.summary(m)
        formula = next(line.strip() for line in text.splitlines()
                       if line.strip().startswith("layer 0 (I="))
        out[name] = {"count": lstmkit.count_parameters(m), "formula": formula,
                     "module": repr(m)}
    return out


# -- the whole tour ---------------------------------------------------------------------------
def _best_val(run_dir: Path) -> dict | None:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    vals = [json.loads(x) for x in lines if '"val_bpc"' in x]
    return min(vals, key=lambda r: r["val_bpc"]) if vals else None


def measure(run, *, run_dir: str | Path, how: str = "", text: str | None = None,
            results: str | Path | None = RESULTS) -> dict:
    """Everything the tour shows, measured on ``run`` (a loaded run, :func:`check_run`)
    reading ``text`` (default :func:`tour_text`): a JSON-able document."""
    from .viz.report import language_model_report

    model, vocab, cfg = run.model.eval(), run.vocab, run.config
    text = tour_text(run) if text is None else text
    ids = torch.as_tensor(vocab.encode(text))
    if len(ids) < 2:
        raise TourError("the tour's text must have at least 2 characters")
    layer = cfg.layers - 1
    rec, logits = _record(model, ids)
    lay = rec.layers[layer]
    f, c = lay.f[:, 0].double().numpy(), lay.c[:, 0].double().numpy()
    reset = find_reset_unit(f, c)
    u, t = reset["unit"], reset["step"]
    T = len(ids)
    start = max(0, min(T - WINDOW, t - (2 * WINDOW) // 3))
    stop = min(T, start + WINDOW)
    tokens = [vocab.decode([i]) for i in ids.tolist()]
    probs = torch.softmax(logits.double(), -1)
    top_p, top_i = probs.topk(3, -1)
    report = language_model_report(model, vocab, text, layer=layer, top_k=5,
                                   title=f"{Path(run_dir).name}: the tour's text")
    reset_chars = Counter(tokens[s] for s in reset["reset_steps"]).most_common(6)
    flow_ids = ids[max(0, t + 1 - FLOW_STEPS): t + 2] if t + 1 < T else ids[-FLOW_STEPS - 1:]
    results = Path(results) if results is not None else None
    series = {k: lay.tensors[k][:, 0, u].double().tolist() for k in ("i", "f", "g", "o", "c",
                                                                     "h")}
    return {
        "format": FORMAT, "version": VERSION,
        "run": {"dir": str(run_dir), "how": how, "step": run.step, "config": json.loads(
            cfg.to_json()), "best_val": _best_val(Path(run_dir)), "checkpoint": str(run.path)},
        "text": text, "tokens": tokens, "layer": layer, "hidden": model.rnn.hidden_size,
        "window": [start, stop], "unit": u, "step": t, "reset": reset,
        "reset_chars": reset_chars,
        "series": series,
        "h_norm": lay.h[:, 0].double().norm(dim=-1).tolist(),
        "h_first": lay.h[:, 0, :16].double().tolist(),                 # the unrolled picture
        "predictions": {"ids": top_i.tolist(), "p": top_p.tolist(),
                        "tokens": [vocab.decode([i]) for i in range(len(vocab))]},
        "interpretable": [{k: cell[k] for k in ("unit", "feature", "r")}
                          for cell in report["cells"][:6]],
        "report": report,
        "equations": step_by_hand(model, rec, layer, ids, t, u),
        "parameters": parameter_counts(model),
        "flow": gradient_flow_tour(model, cfg, len(vocab), flow_ids, layer),
        "variant_parameters": variant_parameters(cfg.embed if layer == 0 else cfg.hidden,
                                                 cfg.hidden),
        "results": variant_results(results) if results is not None and results.is_dir()
        else {"missing": [f"the results folder {results}" if results is not None
                          else "a results folder (none given)"]},
    }


def build_tour(run_dir: str | Path, out: str | Path | None = None, *, how: str = "",
               text: str | None = None, results: str | Path | None = RESULTS,
               image_dir: str = "") -> dict:
    """Measure the run in ``run_dir`` and write the tour into ``out`` (default
    ``RUN_DIR/tour``): ``tour.html`` (self-contained: its PNGs inlined as data URIs),
    ``tour.md`` (the same content, its images referred to under ``image_dir``), the PNGs,
    ``tour.json`` (every number, with the printed ones), and the ``lstmkit inspect`` viewer
    of the same text, ``report.html``. Returns the document, with ``paths``."""
    from .viz.tour import write_tour

    run = check_run(run_dir)
    doc = measure(run, run_dir=run_dir, how=how, text=text, results=results)
    out = Path(out) if out is not None else Path(run_dir) / "tour"
    doc["paths"] = {k: str(v) for k, v in write_tour(doc, out, image_dir=image_dir).items()}
    return doc
