"""The long-time-lag tasks: definitions checked by direct computation, baselines by
sampling, an LSTM learning a short adding problem, and gradient flow against torch.nn cells."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmkit
from lstmkit.data.synthetic import (
    Adding1997,
    Adding2016,
    Copy,
    EmbeddedReber,
    TemporalOrder,
    embedded_reber_string,
    make_task,
)
from lstmkit.inspect import gradient_flow
from lstmkit.train.experiment import ExperimentConfig, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_adding_1997_definition_and_baseline():
    T = 100
    b = Adding1997(T).sample(20_000, gen())
    values, marker = b.x[..., 0], b.x[..., 1]
    assert b.lengths.min() >= T and b.lengths.max() <= T + T // 10
    assert set(b.lengths.tolist()) == set(range(T, T + T // 10 + 1))
    marked = marker == 1.0
    assert (marked.sum(1) == 2).all()
    first = marked.float().argmax(1)
    last = T // 2 - 2                                  # the first T/2 − 1 pairs: 0 … T/2 − 2
    assert (first <= last).all() and marked[:, :10].any(1).all()
    assert not marked[:, last + 1:].any()
    assert ((marker[:, 0] == -1) | marked[:, 0]).all()
    ends = marker[torch.arange(len(b)), b.lengths - 1]
    assert (ends == -1).all()
    past = torch.arange(b.x.shape[1])[None] >= b.lengths[:, None]
    assert (b.x[past] == 0).all()
    assert ((marker != 0) & ~marked).sum() == 2 * len(b) - (marked[:, 0]).sum()
    assert (values[marked[:, 0], 0] == 0).all()        # a marked first pair has value 0
    expected = 0.5 + (values * marked).sum(1) / 4      # direct computation of the target
    torch.testing.assert_close(b.y, expected)
    e = (b.y - 0.5).abs()
    assert e.pow(2).mean().item() == pytest.approx(0.039, abs=0.0015)
    assert (e >= 0.04).float().mean().item() == pytest.approx(0.85, abs=0.01)
    # the task's own scoring of the baseline predictor
    score = Adding1997(T).score(torch.full((len(b), 1), 0.5), b)
    assert score["wrong"] == pytest.approx(0.85, abs=0.01) and not score["solved"]


def test_adding_2016_definition_and_baseline():
    T = 100
    b = Adding2016(T).sample(50_000, gen(1))
    values, marker = b.x[..., 0], b.x[..., 1]
    assert ((marker[:, : T // 2] == 1).sum(1) == 1).all()
    assert ((marker[:, T // 2:] == 1).sum(1) == 1).all()
    assert (marker.sum(1) == 2).all() and values.min() >= 0 and values.max() <= 1
    torch.testing.assert_close(b.y, (values * marker).sum(1))
    mse = Adding2016(T).score(torch.ones(len(b), 1), b)["mse"]
    assert mse == pytest.approx(1 / 6, abs=0.005)      # the stated baseline 0.167


def test_copy_definition_and_baseline():
    T = 30
    task = Copy(T)
    b = task.sample(500, gen(2))
    ids = b.x.argmax(-1)
    assert b.x.shape == (500, T + 20, 10) and (b.x.sum(-1) == 1).all()
    assert ((ids[:, :10] >= 1) & (ids[:, :10] <= 8)).all()
    assert (ids[:, 10:T + 9] == 0).all() and (ids[:, T + 9] == 9).all()
    assert (ids[:, T + 10:] == 0).all()
    assert (b.y[:, : T + 10] == 0).all() and torch.equal(b.y[:, -10:], ids[:, :10])
    # the baseline predictor: certain blanks, then uniform over the 8 data symbols
    logits = torch.full((500, T + 20, 10), -1e9)
    logits[:, : T + 10, 0] = 0
    logits[:, T + 10:, 1:9] = 0
    assert task.score(logits, b)["ce"] == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-6)
    assert task.baseline["ce"] == pytest.approx(10 * math.log(8) / (T + 20))


# Reber's grammar as a regular expression, written from the transition graph independently of
# the generator: after B, either T S* X (state 4) or P T* V (state 5); from 4: S E ends or
# X T* V leads to 5; from 5: V E ends or P leads to 4.
REBER = r"B(?:TS*X(?:XT*VP)*(?:SE|XT*VVE)|PT*V(?:PXT*V)*(?:VE|PSE))"
EMBEDDED = re.compile(rf"B([TP]){REBER}\1E")


def test_embedded_reber_strings_and_legal_next_symbols():
    g = gen(3)
    branches = []
    for _ in range(2000):
        text, legal = embedded_reber_string(g)
        assert EMBEDDED.fullmatch(text), text
        assert len(legal) == len(text)
        for t, nxt in enumerate(text[1:]):            # each next symbol is among the legal
            assert nxt in legal[t]
        assert legal[-3] == text[1]                    # only the remembered branch is legal
        branches.append(text[1])
    assert branches.count("T") / len(branches) == pytest.approx(0.5, abs=0.04)
    assert re.fullmatch(REBER, "BTSXXTVVE") and re.fullmatch(REBER, "BPTVPSE")
    assert not re.fullmatch(REBER, "BTSXXTVE")
    b = EmbeddedReber(0).sample(64, g)
    perfect = b.y * 20 - 10                            # logits: exactly the legal symbols
    assert EmbeddedReber(0).score(perfect, b)["wrong"] == 0.0
    guess = perfect.clone()                            # unsure of the branch at the end
    guess[torch.arange(64), b.lengths - 2, 1:3] = 0.0
    assert EmbeddedReber(0).score(guess, b)["wrong"] == 1.0


def test_temporal_order_definition():
    T = 100
    b = TemporalOrder(T).sample(5000, gen(4))
    ids = b.x.argmax(-1)
    rows = torch.arange(len(b))
    assert b.lengths.min() >= 100 and b.lengths.max() <= 110
    assert (ids[:, 0] == 6).all() and (ids[rows, b.lengths - 1] == 7).all()
    xy = (ids == 4) | (ids == 5)
    assert (xy.sum(1) == 2).all()
    pos = xy.float().topk(2, dim=1, sorted=False).indices.sort(1).values
    assert ((pos[:, 0] >= 10) & (pos[:, 0] <= 20)).all()
    assert ((pos[:, 1] >= 50) & (pos[:, 1] <= 60)).all()
    s1, s2 = ids[rows, pos[:, 0]] - 4, ids[rows, pos[:, 1]] - 4
    assert torch.equal(b.y, 2 * s1 + s2)
    assert torch.bincount(b.y).min() > 1100            # four classes, each about a quarter


def test_streams_are_seeded_and_tasks_checked():
    a = next(Adding2016(50).stream(8, seed=5))
    b = next(Adding2016(50).stream(8, seed=5))
    c = next(Adding2016(50).stream(8, seed=6))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("no-such-task", 10)       # (parity is a task now: grid_tasks)
    with pytest.raises(ValueError, match="T must be"):
        make_task("adding", 5)


def test_lstm_learns_a_short_adding_problem():
    """T = 20 (2016 form): far below the 1/6 baseline within a few thousand sequences."""
    result = run_experiment(ExperimentConfig("adding2016", T=20, cell="lstm", hidden=32,
                                             batch=32, budget=12_000, lr=1e-2,
                                             stop_when_solved=True, test_size=1000))
    assert result["test"]["mse"] < 0.02, result["test"]
    assert result["solved_at"] is not None and result["solved_at"] <= 12_000


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_gradient_flow_equals_an_unrolled_torch_nn_cell(family):
    """‖∂L/∂h_t‖ from gradient_flow equals the same norms from torch.nn's cells unrolled by
    hand (retain_grad on every h_t and c_t), L = sum of the last output."""
    torch.manual_seed(0)
    T, B, I, H = 30, 3, 4, 5
    module = {"rnn": lstmkit.RNN, "lstm": lstmkit.LSTM, "gru": lstmkit.GRU}[family]
    m = module(I, H, dtype=torch.float64)
    cell = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
            "gru": torch.nn.GRUCell}[family](I, H, dtype=torch.float64)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in m.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    (g,) = gradient_flow(m, x)

    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    hs, cs = [], []
    for t in range(T):
        if family == "lstm":
            h, c = cell(x[t], (h, c))
            c.retain_grad()
            cs.append(c)
        else:
            h = cell(x[t], h)
        h.retain_grad()
        hs.append(h)
    h.sum().backward()
    expected = torch.stack([s.grad.norm() for s in hs])
    torch.testing.assert_close(g.dh, expected, rtol=1e-10, atol=1e-14)
    if family == "lstm":
        torch.testing.assert_close(g.dc, torch.stack([s.grad.norm() for s in cs]),
                                   rtol=1e-10, atol=1e-14)
    else:
        assert g.dc is None
    assert all(p.grad is None for p in m.parameters())   # parameters untouched


def test_gradient_flow_errors():
    with pytest.raises(ValueError, match="no lstmkit layer"):
        gradient_flow(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="needs loss_fn"):
        gradient_flow(torch.nn.Sequential(lstmkit.RNN(2, 3)), torch.zeros(4, 1, 2))


def test_experiment_command_writes_table_and_curves(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lstmkit.cli", "experiment", "adding2016",
                        "--T", "20", "--budget", "320", "--cell", "lstm", "rnn", "--hidden",
                        "8", "--out", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert [row["cell"] for row in data["summary"]] == ["lstm", "rnn"]
    assert all(run["sequences"] >= 320 or run["solved_at"] for run in data["runs"])
    assert "| lstm |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_forget_bias_moves_only_the_forget_rows():
    from lstmkit.train.experiment import SequenceModel
    task = make_task("adding2016", 10)
    torch.manual_seed(0)
    plain = SequenceModel(task, "lstm", 6)
    torch.manual_seed(0)
    biased = SequenceModel(task, "lstm", 6, forget_bias=1.0)
    a, b = plain.rnn.bias_ih_l0, biased.rnn.bias_ih_l0
    torch.testing.assert_close(b[6:12], a[6:12] + 1.0)
    assert torch.equal(b[:6], a[:6]) and torch.equal(b[12:], a[12:])
    assert torch.equal(plain.rnn.bias_hh_l0, biased.rnn.bias_hh_l0)


def test_gradient_flow_study_writes_plot_and_table(tmp_path):
    from lstmkit.train.experiment import flow_table, gradient_flow_study
    from lstmkit.viz.curves import plot_gradient_flow
    study = gradient_flow_study("adding2016", 12, ("rnn", "lstm"), budget=64, hidden=4,
                                out=tmp_path, log=None)
    assert (tmp_path / "gradient_flow.json").is_file()
    plot_gradient_flow(study, tmp_path / "gradient_flow.png")
    assert set(study["cells"]) == {"rnn", "lstm"}
    lstm = study["cells"]["lstm"]
    assert len(lstm["init"]["dh"]) == 12 and len(lstm["trained"]["dc"]) == 12
    assert study["cells"]["rnn"]["init"]["dc"] is None
    assert (tmp_path / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"
    table = flow_table(study)
    assert "| rnn | init |" in table and "| lstm | trained |" in table
