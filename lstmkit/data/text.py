"""Text corpora for character- and word-level language models.

A corpus is one string: the given files concatenated in the order given (a directory
stands for its text files, sorted by path). With no files it is the built-in default, the
Python standard library's own ``.py`` sources of the running interpreter, read at run time
(nothing is shipped with lstmkit and nothing is downloaded).

The token stream is split by position — train, then validation, then test — never
shuffled across the split, and fed to truncated BPTT as ``B`` continuous streams
(Zaremba et al. 2014): the training ids are cut into ``B`` equal rows, and batch ``k``
holds columns ``[k·T, (k+1)·T)`` of every row, so the hidden state at the end of one batch
is the right start for the next.
"""

from __future__ import annotations

import hashlib
import json
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst", ".text")
UNK = "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]|\n")
_SNIFF = 8192                                   # bytes looked at for a NUL (binary file)


class CorpusError(ValueError):
    """A data file that is missing, empty, binary or not UTF-8, or a vocabulary mismatch."""


@dataclass(frozen=True)
class Corpus:
    """The text and where it came from (``sources``: the files, in order)."""

    text: str
    sources: tuple[str, ...]

    @property
    def sha256(self) -> str:
        """A SHA-256 of the corpus text (UTF-8): runs record it to tell which data they saw."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}


def default_corpus_files() -> list[Path]:
    """The built-in corpus: the standard library's ``.py`` files — the top-level modules
    sorted by name, then the packages' modules sorted by path (tests and installed
    third-party packages left out)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    for sub in sorted(d for d in stdlib.iterdir() if d.is_dir() and d.name not in _SKIP_DIRS):
        files += sorted(p for p in sub.rglob("*.py")
                        if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(stdlib).parts))
    if not files:
        raise CorpusError(f"no .py files found in the standard library folder {stdlib}; "
                          "give a text file with --data")
    return files


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"the folder {path} holds no text files "
                              f"(looked for {', '.join(TEXT_SUFFIXES)})")
        return files
    if not path.exists():
        raise CorpusError(f"data file not found: {path}")
    return [path]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw:
        raise CorpusError(f"the data file {path} is empty")
    nul = raw.find(b"\0", 0, _SNIFF)
    if nul >= 0:
        raise CorpusError(f"{path} looks binary (a NUL byte at offset {nul}); "
                          "lstmkit trains on UTF-8 text files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start}); convert it to UTF-8 first") from None


def read_corpus(paths: Sequence[str | Path] | None = None, *,
                max_chars: int | None = None) -> Corpus:
    """Read and concatenate ``paths`` (files or folders), or the built-in default corpus.

    ``max_chars`` keeps only the first that many characters. Raises :class:`CorpusError`
    for a missing, empty, binary or non-UTF-8 file.
    """
    files = [f for p in paths for f in _expand(Path(p))] if paths else default_corpus_files()
    parts, used, total = [], [], 0
    for f in files:
        text = _read_text(f)
        parts.append(text if text.endswith("\n") else text + "\n")
        used.append(str(f))
        total += len(parts[-1])
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(parts)
    if max_chars is not None:
        text = text[:max_chars]
    if not text.strip():
        raise CorpusError(f"the data ({', '.join(used)}) holds only whitespace")
    return Corpus(text, tuple(used))


class Vocabulary:
    """Tokens ↔ ids. Id 0 is ``<unk>``, for tokens never seen in the training data.

    ``kind="char"``: every distinct character of the text, in code-point order.
    ``kind="word"``: words, punctuation marks and newlines (``\\w+|[^\\w\\s]|\\n``), the
    ``max_size`` most frequent (ties by first appearance); decoding joins words by spaces.
    """

    def __init__(self, kind: str, tokens: Sequence[str]):
        if kind not in ("char", "word"):
            raise ValueError(f"vocabulary kind must be 'char' or 'word', got {kind!r}")
        if not tokens or tokens[0] != UNK:
            raise ValueError(f"a vocabulary's first token must be {UNK!r}")
        self.kind = kind
        self.tokens = list(tokens)
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if kind == "char":
            cps = np.array([ord(t) for t in self.tokens[1:]], dtype=np.int64)
            order = np.argsort(cps)
            self._cps, self._ids = cps[order], order + 1

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.kind == other.kind
                and self.tokens == other.tokens)

    @classmethod
    def build(cls, text: str, kind: str = "char", max_size: int | None = None) -> Vocabulary:
        """The vocabulary of ``text``: every character (``kind="char"``), or the ``max_size − 1``
        most frequent words, punctuation marks and newlines (``kind="word"``); index 0 is
        ``<unk>``."""
        if kind == "char":
            return cls(kind, [UNK] + sorted(set(text)))
        counts = Counter(_WORD.findall(text))
        words = [w for w, _ in counts.most_common(None if max_size is None else max_size - 1)]
        return cls(kind, [UNK] + words)

    def split(self, text: str) -> list[str]:
        """``text`` as tokens: its characters, or its words, punctuation marks and newlines."""
        return list(text) if self.kind == "char" else _WORD.findall(text)

    def encode(self, text: str) -> np.ndarray:
        """(n,) int64 ids; unknown tokens become 0."""
        if self.kind == "word":
            return np.array([self._index.get(w, 0) for w in _WORD.findall(text)], np.int64)
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if not len(self._cps):
            return np.zeros(len(cps), np.int64)
        pos = np.searchsorted(self._cps, cps).clip(max=len(self._cps) - 1)
        return np.where(self._cps[pos] == cps, self._ids[pos], 0)

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor) -> str:
        """The text of token ids (a list, array or tensor): characters joined as they are (``<unk>``
        shown as U+FFFD), words joined by spaces except at line starts."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if self.kind == "char":
            return "".join("\ufffd" if i == 0 else self.tokens[i] for i in ids)
        out = []
        for i in ids:
            w = self.tokens[i]
            out.append(w if w == "\n" or not out or out[-1].endswith("\n") else " " + w)
        return "".join(out)

    def unknown(self, text: str) -> list[str]:
        """The distinct tokens of ``text`` that this vocabulary does not have."""
        return sorted({t for t in self.split(text) if t not in self._index})

    def to_json(self) -> str:
        """The vocabulary as JSON (``kind`` and ``tokens``), as stored in a run's ``vocab.json``."""
        return json.dumps({"kind": self.kind, "tokens": self.tokens}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """The vocabulary that :meth:`to_json` wrote."""
        d = json.loads(text)
        return cls(d["kind"], d["tokens"])


def split_by_position(ids: np.ndarray, val_fraction: float, test_fraction: float,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test: consecutive slices of ``ids``, in that order."""
    n = len(ids)
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 2 or (val_fraction > 0 and n_val < 2) or (test_fraction > 0 and n_test < 2):
        raise CorpusError(f"the data has {n} tokens: too few to split into train / "
                          f"validation / test ({1 - val_fraction - test_fraction:.0%} / "
                          f"{val_fraction:.0%} / {test_fraction:.0%})")
    return ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]


def stream_rows(ids: np.ndarray, streams: int) -> Tensor:
    """(streams, n) int64: ``ids`` cut into ``streams`` continuous rows (the tail dropped)."""
    n = len(ids) // streams
    if n < 2:
        raise CorpusError(f"{len(ids)} tokens cannot feed {streams} streams of at least 2 "
                          "tokens; use a smaller batch or more data")
    return torch.from_numpy(np.ascontiguousarray(ids[:n * streams])).view(streams, n)


def eval_rows(ids: np.ndarray, batch: int, seq_len: int) -> Tensor:
    """The streams held-out ids are scored in: as many as the training batch, but each at
    least two windows long (fewer for short texts)."""
    return stream_rows(ids, max(1, min(batch, len(ids) // (2 * seq_len))))


def batches_per_pass(rows: Tensor, seq_len: int) -> int:
    """How many (input, target) windows of length ≤ ``seq_len`` one pass over ``rows`` has."""
    return -(-(rows.shape[1] - 1) // seq_len)


def window(rows: Tensor, k: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """Batch ``k``: inputs ``rows[:, kT:(k+1)T]`` and next-token targets, each (B, ≤T)."""
    start = k * seq_len
    stop = min(start + seq_len, rows.shape[1] - 1)
    return rows[:, start:stop], rows[:, start + 1:stop + 1]


def stream_batches(rows: Tensor, seq_len: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Every window of one pass, in order (the last may be shorter)."""
    for k in range(batches_per_pass(rows, seq_len)):
        yield window(rows, k, seq_len)
