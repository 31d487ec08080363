"""`lstmkit tour`: the printed step satisfies the LSTM's equations (recomputed with NumPy at
the printed precision, and checked against torch.nn.LSTM), the unit is chosen by the stated
measurement, the counts match torch.nn's, the page needs no network and renders in headless
Chromium without errors, bad run directories get clear errors, and the command works."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from test_report import browser  # noqa: F401  (the headless-Chromium fixture)

import lstmkit
from lstmkit import tour as tr
from lstmkit.cli import main
from lstmkit.train import load_run
from lstmkit.viz.tour import render_html

DELTA = 0.5 * 10 ** -tr.DIGITS                        # the rounding of a printed number
TINY = {"max_chars": 30_000, "hidden": 16, "embed": 8, "seq_len": 20, "batch": 4, "steps": 6,
        "eval_every": 6, "quiet": True, "sample_length": 5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs/ folder holding one tiny run trained by the tour's own trainer on the built-in
    corpus (its first 30,000 characters), as `lstmkit tour` would reuse it."""
    runs = tmp_path_factory.mktemp("runs")
    tr.train_tour_model(runs / "tiny", **TINY)
    return runs


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    doc = tr.build_tour(runs / "tiny", out)
    return doc, out


def _printed(html: str) -> dict[str, float]:
    found = re.findall(r'<span class="num" data-name="(\w+)">(-?\d+\.\d+)</span>', html)
    return {name: float(v) for name, v in found}


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_step_numbers_satisfy_the_equations(built):
    doc, out = built
    p = _printed((out / "tour.html").read_text())
    assert len(p) == 25                    # 4 gates × (Wx, Uh, b, a, value) + c, h, tanh c
    d = DELTA
    for g in "ifgo":
        assert abs(p[f"Wx_{g}"] + p[f"Uh_{g}"] + p[f"b_{g}"] - p[f"a_{g}"]) <= 4 * d + 1e-12
        act, slope = (np.tanh, 1.0) if g == "g" else (_sigmoid, 0.25)
        assert abs(act(p[f"a_{g}"]) - p[f"{g}_t"]) <= slope * d + d + 1e-12
    f, i, g, o, c_prev = p["f_t"], p["i_t"], p["g_t"], p["o_t"], p["c_prev"]
    bound = d * (abs(c_prev) + abs(f) + abs(i) + abs(g)) + d + 2 * d * d
    assert abs(f * c_prev + i * g - p["c_t"]) <= bound
    assert abs(np.tanh(p["c_t"]) - p["tanh_c_t"]) <= 2 * d
    assert abs(o * np.tanh(p["c_t"]) - p["h_t"]) <= d * (1 + abs(o)) + d + d * d
    # the dot products, from the vectors and weight rows saved beside the page
    e = json.loads((out / "tour.json").read_text())["equations"]
    x, h_prev = np.array(e["x"]), np.array(e["h_prev"])
    for g in "ifgo":
        assert abs(np.dot(e["gates"][g]["W_row"], x) - p[f"Wx_{g}"]) <= d + 1e-9
        assert abs(np.dot(e["gates"][g]["U_row"], h_prev) - p[f"Uh_{g}"]) <= d + 1e-9
    assert abs(h_prev[e["unit"]] - p["h_prev"]) <= d + 1e-9
    # and the outside reference: torch.nn.LSTM with the run's weights, on the same text
    run = load_run(doc["run"]["dir"])
    ref = run.model.rnn.to_torch()
    t, u = doc["step"], doc["unit"]
    assert isinstance(ref, torch.nn.LSTM)
    ids = torch.as_tensor(run.vocab.encode(doc["text"]))
    with torch.no_grad():
        _, (h_n, c_n) = ref.double()(run.model.embed.weight.double()[ids[: t + 1]][None])
    assert abs(float(c_n[0, 0, u]) - p["c_t"]) <= 1e-5
    assert abs(float(h_n[0, 0, u]) - p["h_t"]) <= 1e-5
    with torch.no_grad():
        _, (h_0, c_0) = ref(run.model.embed.weight.double()[ids[:t]][None]) if t else (
            None, (torch.zeros(1, 1, 16), torch.zeros(1, 1, 16)))
    assert abs(float(c_0[0, 0, u]) - p["c_prev"]) <= 1e-5
    assert abs(float(h_0[0, 0, u]) - p["h_prev"]) <= 1e-5


def test_markdown_prints_the_same_numbers(built):
    doc, out = built
    md = (out / "tour.md").read_text()
    for name, v in doc["equations"]["printed"].items():
        assert v in md, name
    for png in re.findall(r"\]\(([\w-]+\.png)\)", md):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert len(re.findall(r"\]\(([\w-]+\.png)\)", md)) == 5


def test_the_reset_unit_is_found_by_measurement():
    T, H = 30, 4
    f = np.full((T, H), 0.9)
    c = np.full((T, H), 0.2)
    c[:, 2] = 1.0                                      # unit 2 holds content ...
    f[[12, 25], 2] = [0.1, 0.05]                       # ... and is wiped twice after 10+ steps
    c[:, 1] = 2.0
    f[[3, 8, 13], 1] = 0.01                            # unit 1: three wipes, carried 2-4 steps
    f[18, 3] = 0.01                                    # unit 3: f low but c small: no reset
    r = tr.find_reset_unit(f, c)
    assert (r["unit"], r["carry"], r["reset_steps"], r["step"]) == (2, 10, [12, 25], 25)
    assert r["ranking"][0]["wiped"] == pytest.approx(0.9 + 0.95)
    assert [x["resets"] for x in r["ranking"]] == [2, 0, 0, 0]
    f[[12, 25], 2] = 0.9                               # now only unit 1 resets, carry 3
    r = tr.find_reset_unit(f, c)
    assert (r["unit"], r["carry"], r["reset_steps"], r["step"]) == (1, 3, [3, 8, 13], 3)
    f[[3, 8, 13], 1] = 0.5                             # no reset at all
    r = tr.find_reset_unit(f, c)
    assert r["rule"].startswith("no unit has a reset")
    assert (r["unit"], r["step"]) == (1, 3)            # largest |c_{t-1}|(1 - f_t) = 1.0


def test_parameter_counts_match_torch_nn(built):
    doc, _ = built
    L = doc["parameters"]["layers"][0]
    h, i = L["h"], L["i"]
    n_torch = sum(p.numel() for p in torch.nn.LSTM(i, h).parameters())
    assert L["pytorch"] == n_torch and L["textbook"] == n_torch - 4 * h
    V = doc["variant_parameters"]
    assert V["gru"]["count"] == sum(p.numel() for p in torch.nn.GRU(i, h).parameters())
    assert V["peephole"]["count"] == n_torch + 3 * h
    assert V["coupled"]["count"] == 3 * (h * h + h * i + 2 * h)
    assert f"= {L['textbook']:,}" in doc["parameters"]["summary"]


def test_gradient_flow_at_the_last_step_by_hand(built):
    """At the last step h_T reaches the loss only through the read-out: ∂L/∂h_T =
    W_decᵀ(softmax(z) − onehot(y)), computed here with NumPy from the run's weights."""
    doc, _ = built
    run = load_run(doc["run"]["dir"])
    flow = doc["flow"]
    T = flow["T"]
    t = doc["step"]
    ids = run.vocab.encode(doc["text"])
    window = ids[max(0, t + 1 - T): t + 2] if t + 1 < len(ids) else ids[-T - 1:]
    assert len(window) == T + 1
    with torch.no_grad():
        logits, _ = run.model.double()(torch.as_tensor(window[:-1])[None])
    z = logits[0, -1].numpy()
    p = np.exp(z - z.max())
    p /= p.sum()
    p[window[-1]] -= 1
    W = run.model.decoder.weight.detach().double().numpy()
    dh = flow["cells"]["lstm"]["trained"]["dh"]
    assert len(dh) == T
    assert dh[-1] == pytest.approx(float(np.linalg.norm(W.T @ p)), rel=1e-9)
    rnn = flow["cells"]["rnn"]["init"]["dh"]
    assert rnn[0] / rnn[-1] < 1e-6                     # the untrained RNN's vanishes
    assert flow["cells"]["rnn"]["trained"] is None


def test_results_are_read_from_the_cited_files(built, tmp_path):
    doc, out = built
    R = doc["results"]
    root = tr.RESULTS.parents[1]
    bench = json.loads((root / R["speed"]["file"]).read_text())["results"]
    row = next(r for r in bench if r["config"]["cell"] == "gru" and r["config"]["H"] == 128
               and r["config"]["T"] == 100 and r["config"]["B"] == 16
               and not r["config"]["packed"])
    assert R["speed"]["rows"]["gru"]["ms"] == row["impls"]["lstmkit"]["fb_ms"]
    runs = json.loads((root / R["text"]["file"]).read_text())["runs"]
    peep = next(r for r in runs if r["config"]["peephole"])
    assert R["text"]["rows"]["peephole"]["val_bpc"] == peep["val_bpc"]
    html = (out / "tour.html").read_text()
    for key in ("speed", "text", "parity", "long_lag", "flow"):
        assert R[key]["file"] in html                   # every source is named on the page
    assert f"{R['text']['rows']['peephole']['val_bpc']:.3f}" in html
    lag = (root / R["long_lag"]["file"]).read_text()
    assert "| gru | " + " | ".join(R["long_lag"]["temporal_order"]["gru"]) + " |" in lag
    # without the results files the page says what it left out, and invents nothing
    bare = render_html({**doc, "results": tr.variant_results(tmp_path)}, {})
    assert "Not shown, because these results files were not found: <code>bench-*-full.json" \
        in bare
    assert "Speed" not in bare and "BPC" not in bare and "adding2016" not in bare


def test_the_page_has_no_external_resources(built):
    _, out = built
    html = (out / "tour.html").read_text()
    assert "@import" not in html and "<link" not in html and "<script" not in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    assert refs and all(not re.match(r"(https?:)?//", r, re.I) for r in refs)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    images = [r for r in refs if r.startswith("data:")]
    assert len(images) == 5 and all(r.startswith("data:image/png;base64,") for r in images)
    local = [r.split("#")[0] for r in refs if not r.startswith("data:")]
    assert local == ["report.html"] and (out / "report.html").is_file()


def test_page_renders_in_headless_chromium(browser, built):  # noqa: F811
    from selenium.webdriver.support.ui import WebDriverWait

    _, out = built
    browser.get((out / "tour.html").as_uri())
    WebDriverWait(browser, 120).until(
        lambda b: b.execute_script("return document.readyState") == "complete")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 5 and min(widths) > 100          # every PNG decoded
    assert len(browser.find_elements("css selector", "table#step tr")) == 7
    assert browser.find_element("id", "chosen-step").is_displayed()
    headings = [h.text for h in browser.find_elements("css selector", "h2")]
    assert headings[0].startswith("1. The unrolled") and headings[6].startswith("7. The var")


def test_bad_run_dirs_get_clear_errors(runs, tmp_path):
    with pytest.raises(tr.TourError, match="run directory not found"):
        tr.check_run(tmp_path / "nope")
    with pytest.raises(tr.TourError, match="no config.json"):
        tr.check_run(tmp_path)
    cfg = json.loads((runs / "tiny" / "config.json").read_text())
    cases = {"gru": ({"cell": "gru"}, "a gru model"),
             "word": ({"tokens": "word"}, "word-level"),
             "peep": ({"peephole": True}, "a peephole LSTM"),
             "torch": ({"impl": "torch"}, "torch.nn's LSTM"),
             "other": ({"source_tokens": "char"}, "not a language-model run")}
    for name, (change, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(tr.TourError, match=message):
            tr.check_run(d)
    broken = tmp_path / "broken"
    shutil.copytree(runs / "tiny", broken)
    (broken / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(tr.TourError, match="corrupt or truncated"):
        tr.check_run(broken)
    (broken / "config.json").write_text("{")
    with pytest.raises(tr.TourError, match="config.json is corrupt"):
        tr.check_run(broken)


def test_cli_reuses_a_recent_run_and_rejects_bad_ones(runs, tmp_path, capsys, monkeypatch):
    bad = runs / "zz-gru"                       # unsuitable, and newer: skipped
    (bad / "checkpoints").mkdir(parents=True)
    cfg = json.loads((runs / "tiny" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "cell": "gru"}))
    (bad / "checkpoints" / "best.pt").write_bytes(b"x")
    other = runs / "zz-own-data"                # suitable cell, but not the built-in corpus
    shutil.copytree(runs / "tiny", other)
    (other / "config.json").write_text(json.dumps({**cfg, "data": ["book.txt"]}))
    newer = (runs / "tiny" / "checkpoints" / "best.pt").stat().st_mtime + 60
    for run in (bad, other):                    # both newer than the suitable run
        os.utime(run / "checkpoints" / "best.pt", (newer, newer))
    assert tr.find_recent_run(runs).path.parents[1] == runs / "tiny"
    assert tr.find_recent_run(runs, max_age_days=0) is None
    out = tmp_path / "page"
    assert main(["tour", "--runs", str(runs), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"reusing {runs / 'tiny'}" in said and "wrote" in said
    assert "reused: the newest suitable run" in (out / "tour.html").read_text()
    assert main(["tour", str(bad)]) == 2
    assert "a gru model" in capsys.readouterr().err
    assert main(["tour", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["tour", str(runs / "tiny"), "--train"]) == 2
    assert "cannot go with RUN_DIR" in capsys.readouterr().err


def test_cli_trains_when_nothing_can_be_reused(tmp_path, capsys, monkeypatch):
    """The default path end to end, with the tour's training shortened to a few steps of a
    small model on 30,000 characters (TOUR_TRAINING is what `lstmkit tour` trains)."""
    monkeypatch.setattr(tr, "TOUR_TRAINING", {**tr.TOUR_TRAINING, **TINY, "steps": 3})
    out = tmp_path / "page"
    assert main(["tour", "--runs", str(tmp_path / "runs"), "--out", str(out),
                 "--md-images", "img/tour"]) == 0
    said = capsys.readouterr().out
    assert "no suitable run" in said
    trained = list((tmp_path / "runs").glob("tour-*"))
    assert len(trained) == 1 and load_run(trained[0]).step == 3
    md = (out / "tour.md").read_text()
    assert "](img/tour/belt.png)" in md and "trained for this tour" in md
    assert math.isfinite(json.loads((out / "tour.json").read_text())["equations"]["h"])
    assert lstmkit.count_parameters(load_run(trained[0]).model.rnn) == 4 * (16 * 16 + 16 * 8
                                                                           + 2 * 16)


def test_two_layer_run_steps_from_the_layer_below(runs, tmp_path):
    """In a stacked model the tour shows the last layer, whose x_t is the first layer's
    h_t: the printed c_t, h_t agree with torch.nn.LSTM's on the same weights."""
    tr.train_tour_model(tmp_path / "deep", **{**TINY, "layers": 2, "hidden": 8, "steps": 2})
    doc = tr.measure(tr.check_run(tmp_path / "deep"), run_dir=tmp_path / "deep",
                     results=None)
    e, t, u = doc["equations"], doc["step"], doc["unit"]
    assert doc["layer"] == e["layer"] == 1 and len(e["x"]) == 8
    assert [L["i"] for L in doc["parameters"]["layers"]] == [8, 8]
    run = load_run(tmp_path / "deep")
    ref = run.model.rnn.to_torch().double()
    ids = torch.as_tensor(run.vocab.encode(doc["text"]))
    with torch.no_grad():
        _, (h_n, c_n) = ref(run.model.embed.weight.double()[ids[: t + 1]][None])
    assert abs(float(c_n[1, 0, u]) - float(e["printed"]["c_t"])) <= 1e-5
    assert abs(float(h_n[1, 0, u]) - float(e["printed"]["h_t"])) <= 1e-5
    assert doc["results"] == {"missing": ["a results folder (none given)"]}


def test_inline_markup_of_the_page():
    from lstmkit.viz.tour import _ch, _code, _inline_html

    assert _inline_html(f"read {_ch('`')} then {_code(chr(39) + 'a`b' + chr(39))} <x>") == \
        "read <code>`</code> then <code>&#x27;a`b&#x27;</code> &lt;x&gt;"
    assert _inline_html("**How** a *reset*: b_i* + b_h*") == \
        "<b>How</b> a <i>reset</i>: b_i* + b_h*"
    assert _ch(" ") == "`␣`" and _ch("\n") == "`\\n`"
