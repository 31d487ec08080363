"""`lstmkit classify`: file formats, built-in sets, packed = per-sequence, runs and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lstmkit.cli import main
from lstmkit.data.ucr import (
    SequenceDataError,
    builtin_set,
    read_sequences,
    stratified_split,
)
from lstmkit.train.classify import (
    ClassifyConfig,
    ClassifyTrainer,
    SequenceClassifier,
    confusion_matrix,
    load_classifier,
    predict_logits,
)
from lstmkit.viz.runs import with_plots

TS_HEADER = ("@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"
             "@equalLength false\n@classLabel true up down\n@data\n")


def toy_sets(tmp_path, n_train=40, n_test=30, seed=0):
    """Two channels, lengths 5–14: class "up" rises in channel 0, "down" falls."""
    rng = np.random.default_rng(seed)

    def case():
        label = rng.choice(["up", "down"])
        L = int(rng.integers(5, 15))
        slope = 1.0 if label == "up" else -1.0
        c0 = slope * np.linspace(0, 1, L) + rng.normal(0, 0.1, L)
        c1 = rng.normal(0, 1, L)
        return ",".join(f"{v:.5f}" for v in c0) + ":" + ",".join(f"{v:.5f}" for v in c1) + \
            f":{label}\n"
    for name, n in (("train", n_train), ("test", n_test)):
        (tmp_path / f"toy_{name}.ts").write_text(TS_HEADER + "".join(case() for _ in range(n)))
    return tmp_path / "toy_train.ts", tmp_path / "toy_test.ts"


def small(train, test, **kw) -> ClassifyConfig:
    base = dict(train=str(train), test=str(test), hidden=8, steps=40, batch=8, lr=2e-2,
                warmup=2, eval_every=10, log_every=10, quiet=True)
    return ClassifyConfig(**{**base, **kw})


# -- formats ---------------------------------------------------------------------------
def test_ts_reader_multivariate_variable_length(tmp_path):
    train, _ = toy_sets(tmp_path)
    data = read_sequences(train)
    assert len(data) == 40 and data.channels == 2
    assert min(data.lengths) >= 5 and max(data.lengths) <= 14
    assert set(data.labels) <= {"up", "down"}
    first = (tmp_path / "toy_train.ts").read_text().split("@data\n")[1].splitlines()[0]
    c0 = [float(v) for v in first.split(":")[0].split(",")]
    np.testing.assert_allclose(data.sequences[0][:, 0], c0, rtol=1e-6)


def test_table_reader_label_first_shorter_rows(tmp_path):
    (tmp_path / "t.tsv").write_text("a\t1\t2\t3\nb\t4\t5\t\n")
    data = read_sequences(tmp_path / "t.tsv")
    assert data.labels == ["a", "b"] and data.lengths == [3, 2]
    np.testing.assert_array_equal(data.sequences[1][:, 0], [4, 5])
    (tmp_path / "t.csv").write_text("1,0.5,0.25\n2,1.5,2.5\n")
    assert read_sequences(tmp_path / "t.csv").channels == 1


@pytest.mark.parametrize("body, message", [
    ("1,2,?:1,2,3:up\n", "line 8: missing value"),
    ("1,2:1,2,3:up\n", "channels of different lengths"),
    ("1,2,x:1,2,3:up\n", "not a number: 'x'"),
    ("1,2,3:up\n1,2:3,4:down\n", "different numbers of channels"),
])
def test_bad_ts_files(tmp_path, body, message):
    (tmp_path / "bad.ts").write_text(TS_HEADER + body)
    with pytest.raises(SequenceDataError, match=message):
        read_sequences(tmp_path / "bad.ts")


def test_missing_empty_and_headerless_files(tmp_path):
    with pytest.raises(SequenceDataError, match="not found"):
        read_sequences(tmp_path / "nope.ts")
    (tmp_path / "e.ts").write_text("  \n")
    with pytest.raises(SequenceDataError, match="empty"):
        read_sequences(tmp_path / "e.ts")
    (tmp_path / "h.ts").write_text("@problemName X\n1,2:up\n")
    with pytest.raises(SequenceDataError, match="no @data"):
        read_sequences(tmp_path / "h.ts")


def test_builtin_sets_have_the_published_shapes():
    gp = builtin_set("GunPoint", "train")
    assert len(gp) == 50 and gp.channels == 1 and set(gp.lengths) == {150}
    assert sorted(set(gp.labels)) == ["1", "2"]
    assert len(builtin_set("gunpoint", "test")) == 150
    jv = builtin_set("JapaneseVowels", "train")
    assert len(jv) == 270 and jv.channels == 12 and len(set(jv.labels)) == 9
    assert min(jv.lengths) == 7 and max(jv.lengths) == 26
    with pytest.raises(SequenceDataError, match="unknown built-in data set 'Nope'"):
        builtin_set("Nope", "train")


def test_stratified_split_holds_out_every_class():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 1
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [labels[i] for i in val].count("a") == 2 and [labels[i] for i in val].count("b") == 1
    assert "c" not in [labels[i] for i in val]                 # one case stays for training


# -- the model: packed batches equal one sequence at a time ------------------------------
@pytest.mark.parametrize("cell, bidirectional, pool, layers", [
    ("lstm", False, "last", 1), ("lstm", True, "last", 2), ("gru", True, "mean", 1),
    ("rnn", False, "mean", 2), ("lstm", True, "mean", 1)])
def test_packed_batch_equals_padding_free_per_sequence(cell, bidirectional, pool, layers):
    torch.manual_seed(0)
    cfg = ClassifyConfig(cell=cell, bidirectional=bidirectional, pool=pool, layers=layers,
                         hidden=6)
    model = SequenceClassifier(3, 4, cfg).double().eval()
    seqs = [torch.randn(L, 3, dtype=torch.float64) for L in (7, 2, 11, 5, 1)]
    batch = predict_logits(model, seqs)
    alone = torch.cat([model([s]) for s in seqs]).detach()
    torch.testing.assert_close(batch, alone, atol=1e-12, rtol=1e-12)
    # and equal to torch.nn on the same weights, one sequence unpacked
    import torch.nn as nn
    ref = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](
        3, 6, layers, batch_first=True, bidirectional=bidirectional).double()
    ref.load_state_dict(model.rnn.state_dict())
    out, state = ref(seqs[2][None])
    h_n = state[0] if isinstance(state, tuple) else state
    D = 2 if bidirectional else 1
    h = out.mean(1) if pool == "mean" else torch.cat(list(h_n[-D:]), dim=1)
    torch.testing.assert_close(model.head(h), alone[2:3], atol=1e-12, rtol=1e-12)


def test_confusion_matrix_by_hand():
    m = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


# -- runs ----------------------------------------------------------------------------------
def test_learns_a_separable_problem_and_reports(tmp_path):
    train, test = toy_sets(tmp_path)
    result = with_plots(ClassifyTrainer(small(train, test), tmp_path / "run")).fit()
    assert result.test_accuracy >= 0.9
    assert result.confusion.sum() == 30
    assert result.test_accuracy == pytest.approx(np.trace(result.confusion) / 30)
    run = tmp_path / "run"
    for name in ("report.md", "report.json", "predictions.csv", "confusion.png", "loss.png",
                 "data.json", "config.json"):
        assert (run / name).is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_loss" in r]
    best = min(vals, key=lambda r: r["val_loss"])
    assert result.best_step == best["step"]               # chosen by validation, not test
    assert sum("test_accuracy" in r for r in records) == 1  # the test set is scored once
    model, cfg, scaler, classes = load_classifier(run)
    x = [torch.from_numpy(s) for s in scaler.apply(read_sequences(test))]
    pred = predict_logits(model, x).argmax(1)
    truth = torch.tensor([classes.index(v) for v in read_sequences(test).labels])
    assert (pred == truth).double().mean().item() == pytest.approx(result.test_accuracy)


def test_bad_label_sets(tmp_path):
    train, test = toy_sets(tmp_path)
    (tmp_path / "other.ts").write_text(TS_HEADER + "1,2,3:1,2,3:sideways\n")
    with pytest.raises(SequenceDataError, match="classes the training set lacks"):
        ClassifyTrainer(small(train, tmp_path / "other.ts"), tmp_path / "r1")
    (tmp_path / "one.ts").write_text(TS_HEADER + "1,2,3:1,2,3:up\n1,2:3,4:up\n")
    with pytest.raises(SequenceDataError, match="needs two or more"):
        ClassifyTrainer(small(tmp_path / "one.ts", tmp_path / "one.ts"), tmp_path / "r2")
    with pytest.raises(ValueError, match="give both --train and --test"):
        ClassifyConfig(train=str(train))
    with pytest.raises(ValueError, match="val_fraction"):
        ClassifyConfig(val_fraction=0.0)


def test_cli_classify(tmp_path, capsys):
    train, test = toy_sets(tmp_path)
    assert main(["classify", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--steps", "20", "--bidirectional", "--quiet", "--out",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "confusion matrix" in out
    assert {"loss.png", "confusion.png"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert main(["classify", "--dataset", "Nope", "--out", str(tmp_path / "x")]) == 2
    assert "dataset must be one of" in capsys.readouterr().err


def test_torchrun_two_processes_match_one(tmp_path):
    """The shared trainer's data parallelism: 2 processes, each half the batch, end with
    the weights of 1 process taking the whole batch."""
    import subprocess
    import sys
    from pathlib import Path

    from lstmkit.train import load_checkpoint
    root = Path(__file__).resolve().parents[1]
    train, test = toy_sets(tmp_path)
    args = ["-m", "lstmkit.cli", "classify", "--train", str(train), "--test", str(test),
            "--hidden", "8", "--steps", "6", "--batch", "8", "--quiet"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert two.returncode == 0, two.stderr
    a = load_checkpoint(tmp_path / "one/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert b["world_size"] == 2 and a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5)
