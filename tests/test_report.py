"""Gate and cell reports: text features, the interpretability ranking, the JSON document, the
PNG plots, `lstmkit inspect`, and the HTML page in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lstmkit
from lstmkit.data.text import Vocabulary, read_corpus
from lstmkit.train import LanguageModel, TrainConfig, Trainer
from lstmkit.viz import report as rp
from lstmkit.viz.gates import plot_gate_heatmaps, plot_saturation

ROOT = Path(__file__).resolve().parents[1]


def test_text_features_by_hand():
    f = rp.text_features(list("a(b'x(\n  [c]"))
    assert f["line position"].tolist() == [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5]
    assert f["indentation"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2]
    # the '(' inside the string does not count; the newline closes the open string
    assert f["bracket depth"].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1]
    assert f["inside string"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_interpretability_finds_a_planted_unit():
    tokens = list(read_corpus(max_chars=3000).text)
    feats = rp.text_features(tokens)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((len(tokens), 6)) * 0.1
    values[:, 4] = -feats["bracket depth"] + 0.05 * rng.standard_normal(len(tokens))
    ranked = rp.interpretability(values, feats)
    unit, feature, r = ranked[0]
    assert (unit, feature) == (4, "bracket depth") and r < -0.95
    expected = np.corrcoef(values[:, 4], feats["bracket depth"])[0, 1]
    assert r == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def small_lm():
    text = read_corpus(max_chars=4000).text
    vocab = Vocabulary.build(text)
    torch.manual_seed(0)
    cfg = TrainConfig(hidden=16, embed=8)
    return LanguageModel(len(vocab), cfg).eval(), vocab, text


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8)


def test_language_model_report_document(small_lm, tmp_path):
    model, vocab, text = small_lm
    report = rp.language_model_report(model, vocab, text[:300], top_k=3, title="t")
    assert report["format"] == "lstmkit-report" and report["steps"] == 300
    assert "".join(report["tokens"]) == text[:300]
    assert report["cell"] == "lstm" and report["hidden"] == 16 and len(report["cells"]) == 16
    rs = [abs(c["r"]) for c in report["cells"]]
    assert rs == sorted(rs, reverse=True)
    with lstmkit.record(model) as rec, torch.no_grad():
        logits, _ = model(torch.as_tensor(vocab.encode(text[:300]))[None])
    unit = report["cells"][0]["unit"]
    expected = torch.tanh(rec.layers[0].c[:, 0, unit]).numpy()
    got = _decode(report["cells"][0]["values"]) / 127.5 - 1
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-6            # 8-bit quantisation
    P = report["predictions"]
    ids = np.frombuffer(base64.b64decode(P["ids"]), dtype="<u2").reshape(300, 3)
    assert np.array_equal(ids, logits[0].topk(3, -1).indices.numpy())
    i_gate = _decode(report["heatmaps"]["maps"]["i"]["data"]).reshape(300, 16) / 255
    assert np.abs(i_gate - rec.layers[0].i[:, 0].numpy()).max() <= 1 / 255 + 1e-6
    sat = report["saturation"]["f"]
    f = rec.layers[0].f[:, 0].numpy()
    np.testing.assert_allclose(sat["left"], (f < 0.1).mean(0))
    np.testing.assert_allclose(sat["right"], (f > 0.9).mean(0))
    path = rp.write_json(report, tmp_path / "r.json")
    assert rp.read_json(path) == json.loads(json.dumps(report))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an lstmkit report"):
        rp.read_json(tmp_path / "bad.json")


def test_report_of_any_recording_and_truncation(small_lm):
    gru = lstmkit.GRU(3, 5)
    x = torch.randn(40, 2, 3)
    with lstmkit.record(gru) as rec:
        gru(x)
    report = rp.sequence_report(rec.layers[0], batch_index=1)
    assert report["cell"] == "gru" and report["steps"] == 40 and report["predictions"] is None
    assert set(report["heatmaps"]["maps"]) == {"r", "z", "n", "h"}
    with pytest.raises(ValueError, match="3 tokens for a recording of 40 steps"):
        rp.sequence_report(rec.layers[0], ["a", "b", "c"])
    model, vocab, text = small_lm
    cut = rp.language_model_report(model, vocab, text[:500], max_steps=200)
    assert (cut["steps"], cut["total_steps"]) == (200, 500)
    html = rp.render_html(cut)
    assert "</script>" not in html.split('type="application/json">')[1].split("</script>")[0]


def test_png_plots(small_lm, tmp_path):
    model, vocab, text = small_lm
    with lstmkit.record(model) as rec, torch.no_grad():
        model(torch.as_tensor(vocab.encode(text[:200]))[None])
    for path in (plot_gate_heatmaps(rec.layers[0], tmp_path / "g.png"),
                 plot_saturation(rec.layers[0], tmp_path / "s.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"
    rnn = lstmkit.RNN(2, 3)
    with lstmkit.record(rnn) as rec:
        rnn(torch.randn(5, 1, 2))
    with pytest.raises(ValueError, match="no sigmoid gates"):
        plot_saturation(rec.layers[0], tmp_path / "x.png")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "c.txt"
    path.write_text(read_corpus(max_chars=30_000).text)
    run = tmp_path_factory.mktemp("run") / "run"
    Trainer(TrainConfig(data=[str(path)], hidden=24, embed=8, seq_len=20, batch=4, steps=6,
                        eval_every=6, quiet=True, sample_length=5), run).fit()
    return run


def test_inspect_command(trained_run, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lstmkit.cli", "inspect", str(trained_run),
                        "--text", "x = [1, (2, 3)]\n" * 20, "--out", str(tmp_path / "p.html"),
                        "--png", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "most interpretable unit" in r.stdout
    report = rp.read_json(tmp_path / "p.json")
    assert report["steps"] == 320 and (tmp_path / "gates.png").exists()
    bad = subprocess.run([sys.executable, "-m", "lstmkit.cli", "inspect", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr


# -- the page in a real browser ---------------------------------------------------------------
def _browser():
    """Headless Chromium through chromedriver (Debian's chromium and chromium-driver, which
    .ci/run installs). Outside CI a machine without them skips these tests; in CI they fail."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium tests need chromium, chromium-driver and selenium")
        pytest.skip("chromium, chromedriver or selenium not installed")
    opts = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1400"):
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def browser():
    b = _browser()
    yield b
    b.quit()


def _open(browser, path: Path) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.perf_counter()
    browser.get(path.as_uri())

    def settled(b):                               # rendered, or stopped by an error
        return (b.execute_script("return document.body.dataset.ready") == "1"
                or b.find_element("id", "errors").text != "")
    WebDriverWait(browser, 600).until(settled)
    assert browser.find_element("id", "errors").text == "", "the page raised an error"
    return time.perf_counter() - start


def _colours(browser, n=200) -> list[str]:
    return browser.execute_script(
        f"return Array.from(document.getElementById('text').children).slice(0, {n})"
        ".map(s => s.style.backgroundColor)")


def test_page_renders_switches_cells_and_shows_predictions(browser, small_lm, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    model, vocab, text = small_lm
    report = rp.language_model_report(model, vocab, text[:1500], max_steps=1000, title="t")
    page = rp.write_html(report, tmp_path / "page.html")
    _open(browser, page)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [] and browser.find_element("id", "errors").text == ""
    assert "truncated: the first 1,000 of 1,500" in browser.find_element("id",
                                                                         "truncated").text
    spans = browser.execute_script("return document.getElementById('text').children.length")
    assert spans == 1000
    before = _colours(browser)
    assert len(set(before)) > 10                          # coloured by the unit's values
    select = Select(browser.find_element("id", "cell"))
    assert len(select.options) == 16
    select.select_by_index(5)
    after = _colours(browser)
    assert after != before
    assert browser.find_element("id", "text").get_attribute("data-cell") == str(
        report["cells"][5]["unit"])
    span = browser.find_element("css selector", "#text span[data-i='3']")
    ActionChains(browser).move_to_element(span).perform()
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed() and tip.text.startswith("next:")
    assert len(browser.find_elements("css selector", "#maps canvas")) == 6
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_page_of_100k_characters_loads(browser, small_lm, tmp_path):
    model, vocab, _ = small_lm
    text = read_corpus(max_chars=100_000).text
    report = rp.language_model_report(model, vocab, text)
    assert report["steps"] == 100_000 and report["total_steps"] == 100_000
    page = rp.write_html(report, tmp_path / "big.html")
    seconds = _open(browser, page)
    print(f"100k-character page: {page.stat().st_size / 1e6:.1f} MB, "
          f"rendered in {seconds:.1f} s")
    assert browser.execute_script(
        "return document.getElementById('text').children.length") == 100_000
    assert browser.find_element("id", "errors").text == ""
