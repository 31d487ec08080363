"""lstmkit.tagging: CoNLL/CoNLL-U reading and writing, tag schemes, vocabularies, embeddings,
and the BiLSTM-CRF tagger (padding invariance in float64, a small task that it must learn)."""

from __future__ import annotations

import random
import time

import pytest
import torch

from lstmkit.tagging import (
    ConllError,
    EmbeddingError,
    Tagger,
    Vocab,
    char_vocab,
    chunks,
    load_embeddings,
    make_batch,
    read_conll,
    read_conllu,
    tag_vocab,
    to_bio,
    to_bioes,
    word_vocab,
    write_conll,
    write_conllu,
)

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""

CONLLU = """# sent_id = 1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_

"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- reading and writing ----------------------------------------------------------------------

def test_read_conll_columns_and_docstart(tmp_path):
    path = write(tmp_path, "a.conll", CONLL)
    sents = read_conll(path)
    assert sents == [(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                     (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert [s.line for s in sents] == [3, 8]
    assert read_conll(path, tag_column=1)[1].tags == ["NNP", "NNP"]
    tokens, tags = sents[1]
    assert tokens == ["Peter", "Blackburn"] and tags == ["B-PER", "I-PER"]


def test_conll_round_trip_with_prediction_column(tmp_path):
    sents = read_conll(write(tmp_path, "a.conll", CONLL))
    out = tmp_path / "same.conll"
    write_conll(out, sents)
    again = read_conll(out)
    assert again == sents and [s.rows for s in again] == [s.rows for s in sents]

    predicted = [["O"] * len(s.tokens) for s in sents]
    write_conll(out, sents, predicted)
    back = read_conll(out)
    assert [s.tags for s in back] == predicted
    assert [[r[:-1] for r in s.rows] for s in back] == [s.rows for s in sents]
    assert read_conll(out, tag_column=-2) == sents


def test_conllu_reads_upos_xpos_and_skips_multiword_and_empty_nodes(tmp_path):
    path = write(tmp_path, "a.conllu", CONLLU)
    sents = read_conllu(path)
    assert sents == [(["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"]),
                     (["Yes"], ["INTJ"])]
    assert read_conllu(path, "xpos")[0].tags == ["VBP", "RB", "VB", "."]
    assert read_conllu(path, 7)[0].tags == ["aux", "advmod", "root", "punct"]
    assert sents[0].comments == ["# sent_id = 1", "# text = Don't go."]


def test_conllu_round_trip_with_prediction_column(tmp_path):
    sents = read_conllu(write(tmp_path, "a.conllu", CONLLU))
    out = tmp_path / "same.conllu"
    write_conllu(out, sents)
    again = read_conllu(out)
    assert again == sents
    assert [s.rows for s in again] == [s.rows for s in sents]
    assert [s.comments for s in again] == [s.comments for s in sents]

    predicted = [["X"] * len(s.tokens) for s in sents]
    write_conllu(out, sents, predicted)
    back = read_conllu(out, tag_column=-1)
    assert [s.tags for s in back] == predicted
    assert [[r[:10] for r in s.rows] for s in back] == [s.rows for s in sents]
    assert read_conllu(out, "upos") == sents


BAD_FILES = {
    "ragged": ("a B-X\nb I-X\n\nc O\nd e O\n", {}, 5, "columns"),
    "missing_tag": ("a B-X\n\nlonely\nwords\n", {}, 3, "missing tag column"),
    "unknown_scheme": ("a B-X\nb I-X\n\nc Q-X\n", {"scheme": "bio"}, 4, "no known chunk scheme"),
    "empty": ("\n-DOCSTART- O\n\n", {}, 1, "no sentences"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_conll_files_name_file_and_line(tmp_path, name):
    text, kwargs, line, words = BAD_FILES[name]
    path = write(tmp_path, f"{name}.conll", text)
    with pytest.raises(ConllError, match=words) as err:
        read_conll(path, **kwargs)
    assert str(err.value).startswith(f"{path}:{line}:")
    assert isinstance(err.value, ValueError)


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.conll"
    path.write_bytes("a O\nb O\n\ncaf\u00e9 O\n".encode("latin-1"))
    with pytest.raises(ConllError, match="not UTF-8") as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:4:")


def test_bad_conllu_and_bad_arguments(tmp_path):
    short = write(tmp_path, "short.conllu", "1\tDo\tdo\tAUX\n")
    with pytest.raises(ConllError, match="missing tag column") as err:
        read_conllu(short)
    assert str(err.value).startswith(f"{short}:1:")
    ragged = CONLLU.replace("2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_", "2\tn't\tnot")
    path = write(tmp_path, "ragged.conllu", ragged)
    with pytest.raises(ConllError, match="columns") as err:
        read_conllu(path)
    assert str(err.value).startswith(f"{path}:5:")
    good = write(tmp_path, "a.conll", CONLL)
    with pytest.raises(ConllError, match="unknown scheme"):
        read_conll(good, scheme="iobes2")
    with pytest.raises(ConllError, match="not a column name"):
        read_conllu(good, tag_column="lemmas")


# --- tag schemes ------------------------------------------------------------------------------

SCHEME_CASES = [
    # IOB1, BIO, BIOES
    (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"],
     ["B-PER", "E-PER", "O", "S-LOC"]),
    (["I-PER", "B-PER", "I-PER", "I-ORG"], ["B-PER", "B-PER", "I-PER", "B-ORG"],
     ["S-PER", "B-PER", "E-PER", "S-ORG"]),
    (["O", "O"], ["O", "O"], ["O", "O"]),
    (["I-MISC", "I-MISC", "I-MISC"], ["B-MISC", "I-MISC", "I-MISC"],
     ["B-MISC", "I-MISC", "E-MISC"]),
]


@pytest.mark.parametrize("iob1, bio, bioes", SCHEME_CASES)
def test_scheme_conversions(iob1, bio, bioes):
    assert to_bio(iob1) == bio
    assert to_bio(bio) == bio
    assert to_bioes(bio) == bioes
    assert to_bioes(iob1) == bioes
    assert to_bio(bioes) == bio
    assert to_bioes(bioes) == bioes
    assert chunks(bio) == chunks(bioes) == chunks(iob1)


def test_chunks_and_reading_with_a_scheme(tmp_path):
    assert chunks(["B-PER", "I-PER", "O", "S-LOC", "I-LOC"]) == [
        ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)]
    path = write(tmp_path, "iob1.conll", "a I-PER\nb I-PER\nc B-PER\nd O\n")
    assert read_conll(path, scheme="bioes")[0].tags == ["B-PER", "E-PER", "S-PER", "O"]
    assert read_conll(path, scheme="bio")[0].tags == ["B-PER", "I-PER", "B-PER", "O"]
    with pytest.raises(ValueError, match="no known chunk scheme"):
        to_bio(["B-PER", "X-PER"])


# --- vocabularies and embeddings --------------------------------------------------------------

def test_vocab_min_count_lower_and_dict_round_trip():
    sents = [(["The", "cat", "the", "dog"], ["D", "N", "D", "N"]), (["the", "Cat"], ["D", "N"])]
    v = word_vocab(sents, min_count=2, lower=True)
    assert v.itos == ["<pad>", "<unk>", "the", "cat"]
    assert v.encode(["THE", "Cat", "dog"]) == [2, 3, 1]
    cased = word_vocab(sents)
    assert cased.index("Cat") != cased.index("cat")
    again = Vocab.from_dict(v.to_dict())
    assert again.itos == v.itos and again.lower and again.encode(["Dog"]) == [1]
    tags = tag_vocab(sents)
    assert tags.itos == ["D", "N"]
    with pytest.raises(KeyError):
        tags.index("V")
    assert char_vocab(sents).itos[:2] == ["<pad>", "<unk>"]


def test_load_embeddings_text_file(tmp_path):
    v = Vocab(["<pad>", "<unk>", "the", "cat", "zebra"], lower=True)
    path = tmp_path / "vec.txt"
    path.write_text("3 2\nThe 0.5 -1\ncat 2 3e-1\ndog 9 9\nthe 7 7\n", encoding="utf-8")
    g = torch.Generator().manual_seed(0)
    w = load_embeddings(path, v, 2, generator=g)
    assert w.shape == (5, 2)
    assert torch.equal(w[0], torch.zeros(2))
    assert torch.allclose(w[2], torch.tensor([0.5, -1.0]))        # first matching line wins
    assert torch.allclose(w[3], torch.tensor([2.0, 0.3]))
    assert w[4].abs().max() < 1.0                                  # random init, not from file
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 2\ncat 3 4\n", encoding="utf-8")
    assert torch.allclose(load_embeddings(glove, v, 2)[3], torch.tensor([3.0, 4.0]))
    tagger = Tagger(len(v), 3, word_dim=2, hidden_size=4, embeddings=w)
    assert torch.equal(tagger.embed.weight.detach(), w)


@pytest.mark.parametrize("text, line, words", [
    ("the 1 2\ncat 3\n", 2, "expected dimension 2"),
    ("the 1 2\ncat 3 four\n", 2, "not a number"),
    ("the 1 2 3\n", 1, "expected dimension 2"),
    ("10 3\nthe 1 2\n", 1, "header says dimension 3"),
])
def test_load_embeddings_errors(tmp_path, text, line, words):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EmbeddingError, match=words) as err:
        load_embeddings(path, Vocab(["<pad>", "<unk>", "the", "cat"]), 2)
    assert str(err.value).startswith(f"{path}:{line}:")


# --- the tagger -------------------------------------------------------------------------------

SENTS = [
    (["the", "cat", "sat"], ["B-NP", "I-NP", "O"]),
    (["a", "dog"], ["B-NP", "I-NP"]),
    (["dogs", "barked", "at", "the", "cat", "loudly"], ["B-NP", "O", "O", "B-NP", "I-NP", "O"]),
    (["it"], ["B-NP"]),
]


def tagger_for(output, chars, cell="lstm", **kwargs):
    torch.manual_seed(0)
    words, tags = word_vocab(SENTS[:3]), tag_vocab(SENTS)
    cv = char_vocab(SENTS) if chars else None
    model = Tagger(len(words), len(tags), len(cv) if chars else 0, word_dim=6, char_dim=4,
                   char_hidden=3, hidden_size=5, cell=cell, output=output, **kwargs)
    return model.double().eval(), words, cv, tags


@pytest.mark.parametrize("chars", [False, True], ids=["words", "chars"])
@pytest.mark.parametrize("output", ["crf", "softmax"])
def test_padded_batch_equals_one_sentence_at_a_time(output, chars):
    model, words, cv, tags = tagger_for(output, chars)
    batch = make_batch(SENTS, words, cv, tags)
    em = model.emissions(batch)
    for b, sent in enumerate(SENTS):
        one = make_batch([sent], words, cv, tags)
        n = len(sent[0])
        torch.testing.assert_close(em[b, :n], model.emissions(one)[0], rtol=0, atol=1e-12)
    singles = [model.loss(make_batch([s], words, cv, tags)) for s in SENTS]
    if output == "crf":                                  # mean over sentences
        expected = torch.stack(singles).mean()
    else:                                                # mean over tokens
        n = torch.tensor([len(s[0]) for s in SENTS], dtype=torch.float64)
        expected = (torch.stack(singles) * n).sum() / n.sum()
    torch.testing.assert_close(model.loss(batch), expected, rtol=0, atol=1e-12)
    assert model.predict(batch) == [model.predict(make_batch([s], words, cv, tags))[0]
                                    for s in SENTS]
    assert [len(p) for p in model.predict(batch)] == [len(s[0]) for s in SENTS]


@pytest.mark.parametrize("cell, kwargs", [("gru", {}), ("rnn", {}), ("lstm", {"peephole": True}),
                                          ("lstm", {"layer_norm": True})])
def test_other_cells_and_variants_are_padding_invariant(cell, kwargs):
    model, words, cv, tags = tagger_for("crf", True, cell, **kwargs)
    batch = make_batch(SENTS, words, cv, tags)
    singles = torch.stack([model.loss(make_batch([s], words, cv, tags)) for s in SENTS])
    torch.testing.assert_close(model.loss(batch), singles.mean(), rtol=0, atol=1e-12)
    model.loss(batch).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_scheme_constrained_crf_never_predicts_an_illegal_tag():
    tv = tag_vocab(SENTS)
    model, words, cv, _ = tagger_for("crf", False, tags=tv.itos, scheme="bio")
    inside = tv.index("I-NP")
    with torch.no_grad():                  # I-NP scores highest everywhere, so the CRF alone
        model.proj.bias[inside] = 50.0     # keeps it from the start and from after an O
    paths = model.predict(make_batch(SENTS, words, cv, tv))
    for path in paths:
        tags = ["O"] + tv.decode(path)
        assert all(b != "I-NP" or a != "O" for a, b in zip(tags, tags[1:])), tags
    assert any(inside in path for path in paths)


def synthetic_task(n, rng):
    """Tag = a function of the token and its left neighbour: 'same' if equal to it, else
    'up'/'down' by comparing the two, and 'first' at the start."""
    out = []
    for _ in range(n):
        toks = [str(rng.randrange(6)) for _ in range(rng.randrange(3, 9))]
        tags = ["first"] + ["same" if b == a else ("up" if b > a else "down")
                            for a, b in zip(toks, toks[1:])]
        out.append((toks, tags))
    return out


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest, and spares a machine that runs other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_crf_tagger_learns_a_neighbour_task(one_thread):
    rng = random.Random(0)
    torch.manual_seed(0)
    train, test = synthetic_task(400, rng), synthetic_task(100, rng)
    words, tags = word_vocab(train), tag_vocab(train)
    model = Tagger(len(words), len(tags), word_dim=16, hidden_size=24, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    batches = [make_batch(train[i:i + 20], words, None, tags) for i in range(0, len(train), 20)]
    start = time.perf_counter()
    for _ in range(8):
        for batch in batches:
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    batch = make_batch(test, words, None, tags)
    predicted = [tags.decode(p) for p in model.predict(batch)]
    pairs = [(p, g) for pred, (_, gold) in zip(predicted, test) for p, g in zip(pred, gold)]
    accuracy = sum(p == g for p, g in pairs) / len(pairs)
    print(f"neighbour task: accuracy {accuracy:.3f}, trained in {elapsed:.1f} s")
    assert accuracy > 0.95, accuracy
