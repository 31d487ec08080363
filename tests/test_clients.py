"""Small client programs written against torch.nn (tests/clients/, each reproducing how a
well-known client uses torch.nn's recurrent modules), run once with torch.nn and once with
lstmkit's classes swapped in (tests/clients/swap.py); the numbers each prints must agree.

Each run is deterministic (dropout 0), so torch.nn's and lstmkit's runs agree to float
tolerance; the plain cells run torch's own cell functions, so their run agrees bit for bit.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLIENTS = Path(__file__).parent / "clients"
SWAP = CLIENTS / "swap.py"


def _run(which: str, script: str, *args: str, cwd: Path, one_thread: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    if one_thread:          # no run-to-run differences from how MKL shares out a reduction
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SWAP), which, str(CLIENTS / script), *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{which} {script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """train/valid/test.txt from CPython's own sources (whitespace tokens, as WikiText)."""
    import argparse
    import shlex
    import textwrap
    root = tmp_path_factory.mktemp("corpus")
    for name, module in (("train", argparse), ("valid", textwrap), ("test", shlex)):
        lines = [ln for ln in inspect.getsource(module).splitlines() if ln.strip()]
        (root / f"{name}.txt").write_text("\n".join(lines[:1500]) + "\n", encoding="utf8")
    return root


def _numbers(text: str, label: str) -> list[float]:
    return [float(v) for v in re.findall(r"^" + label + r" ([-+0-9.e]+)$", text, flags=re.M)]


@pytest.mark.parametrize("model", ["LSTM", "GRU", "RNN_TANH"])
def test_word_language_model(model, corpus, tmp_path):
    results = {}
    for which in ("torch", "lstmkit"):
        out = tmp_path / which
        out.mkdir()
        results[which] = _run(which, "word_lm.py", "--data", str(corpus), "--out", str(out),
                              "--model", model, "--lr", "2", cwd=out)
        assert re.search(r"^sampled( \S+){30}$", results[which], flags=re.M)
        _check_onnx(out, model)
    for label in ("valid loss", "test loss"):
        a, b = _numbers(results["torch"], label), _numbers(results["lstmkit"], label)
        assert len(a) == len(b) == 1, (results["torch"], results["lstmkit"])
        assert abs(a[0] - b[0]) <= 1e-4 * abs(a[0]), f"{label}: torch {a}, lstmkit {b}"


def _check_onnx(run: Path, model: str) -> None:
    """The file plain torch.onnx.export wrote runs in onnxruntime and equals the model."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    sys.path.insert(0, str(CLIENTS))
    try:
        import word_lm

        import lstmkit  # noqa: F401  (its classes allowed for the safe loader)
        with torch.serialization.safe_globals([(word_lm.WordModel, "__main__.WordModel"),
                                               torch.nn.Dropout,
                                               torch.nn.Linear, torch.nn.Embedding,
                                               torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN]):
            net = torch.load(run / "model.pt", weights_only=True).eval()
    finally:
        sys.path.remove(str(CLIENTS))
    session = ort.InferenceSession(str(run / "model.onnx"))
    tokens = torch.randint(0, net.ntoken, (20, 1))
    hidden = net.init_hidden(1)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    with torch.no_grad():
        want, _ = net(tokens, hidden if len(hidden) == 2 else hidden[0])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, [tokens.numpy(), *(h.numpy() for h in hidden)])))[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_time_sequence_prediction(tmp_path):
    # bit for bit: lstmkit's cells run torch's own cell functions here. On two threads the
    # torch.nn run itself came out different in the fifth digit now and then (2 of about
    # 20 runs on an Intel Xeon, 2026-12-03), so both run on one thread
    results = {w: _run(w, "sine_cells.py", cwd=tmp_path, one_thread=True)
               for w in ("torch", "lstmkit")}
    for label in ("loss", "test loss"):
        a, b = _numbers(results["torch"], label), _numbers(results["lstmkit"], label)
        assert a and a == b, (label, a, b)


def test_dynamic_quantization_tutorial(corpus, tmp_path):
    results = {w: _run(w, "quantize_lm.py", "--data", str(corpus), "--out", str(tmp_path),
                       cwd=tmp_path) for w in ("torch", "lstmkit")}
    for text in results.values():
        assert "recurrent layer torch.ao.nn.quantized.dynamic.modules.rnn.LSTM" in text
    for label in ("size float", "size quantized", "loss float", "loss quantized"):
        a, b = _numbers(results["torch"], label), _numbers(results["lstmkit"], label)
        assert len(a) == 1 and abs(a[0] - b[0]) <= 1e-4 * abs(a[0]), (label, a, b)
    size = {k: _numbers(results["lstmkit"], f"size {k}")[0] for k in ("float", "quantized")}
    assert size["quantized"] < size["float"] / 1.5       # int8 LSTM and decoder weights
