"""Labelled sequences for classification: the UCR/UEA ``.ts`` format, plain CSV/TSV, and
named built-in sets read from the data folder of the installed ``aeon`` wheel.

A :class:`SequenceSet` holds a list of float32 arrays (L_i, C) — fixed or variable length,
univariate (C = 1) or multivariate — with their labels. Formats:

* ``.ts`` (sktime/aeon, used by the UCR and UEA archives): ``@`` header lines, then one
  case per line, channels separated by ``:``, values by ``,``, the class label last;
* ``.csv`` / ``.tsv`` / ``.txt``: one univariate case per row, the label in the first
  column, then the values (rows may be shorter: trailing empty cells end a sequence).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .packaged import package_file


class SequenceDataError(ValueError):
    """A classification data file that cannot be used as given (the message says why)."""


@dataclass
class SequenceSet:
    sequences: list[np.ndarray]          # each (L_i, C), float32
    labels: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def channels(self) -> int:
        """The number of channels C (1 for a univariate set)."""
        return self.sequences[0].shape[1]

    @property
    def lengths(self) -> list[int]:
        """Each sequence's length L_i, in order."""
        return [s.shape[0] for s in self.sequences]


# UCR (univariate) and UEA (multivariate) sets shipped in the aeon wheel.
BUILTIN_SETS = {
    "GunPoint": "univariate, 150 steps, 2 classes, 50 train / 150 test",
    "ItalyPowerDemand": "univariate, 24 steps, 2 classes, 67 train / 1029 test",
    "ArrowHead": "univariate, 251 steps, 3 classes, 36 train / 175 test",
    "OSULeaf": "univariate, 427 steps, 6 classes, 200 train / 242 test",
    "BasicMotions": "6 channels, 100 steps, 4 classes, 40 train / 40 test",
    "JapaneseVowels": "12 channels, 7–29 steps (variable), 9 classes, 270 train / 370 test",
}


def builtin_set(name: str, split: str) -> SequenceSet:
    """The TRAIN or TEST part of a built-in set (see :data:`BUILTIN_SETS`)."""
    match = {k.lower(): k for k in BUILTIN_SETS}.get(name.lower())
    if match is None:
        raise SequenceDataError(f"unknown built-in data set {name!r}; choose one of "
                                f"{', '.join(BUILTIN_SETS)}")
    rel = f"datasets/data/{match}/{match}_{split.upper()}.ts"
    return read_ts(package_file("aeon", rel, f"data set {match!r}"))


def read_sequences(path: str | Path) -> SequenceSet:
    """A ``.ts`` file, or a CSV/TSV with the label in the first column."""
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"data file not found: {path}")
    if path.suffix.lower() == ".ts":
        return read_ts(path)
    return read_table(path)


def _text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SequenceDataError(f"{path} is not a UTF-8 text file ({e.reason} at byte "
                                f"{e.start})") from None
    if not text.strip():
        raise SequenceDataError(f"{path} is empty")
    return text


def _values(cells: list[str], path: Path, line: int) -> np.ndarray:
    out = []
    for cell in cells:
        cell = cell.strip()
        if cell in ("?", "", "nan", "NaN", "NA"):
            raise SequenceDataError(f"{path}, line {line}: missing value; fill or drop "
                                    "missing values first")
        try:
            v = float(cell)
        except ValueError:
            raise SequenceDataError(f"{path}, line {line}: not a number: {cell!r}") from None
        if not math.isfinite(v):
            raise SequenceDataError(f"{path}, line {line}: non-finite value {cell!r}")
        out.append(v)
    return np.asarray(out, dtype=np.float32)


def read_ts(path: str | Path) -> SequenceSet:
    """Read the ``.ts`` format (see the module docstring)."""
    path = Path(path)
    lines = _text(path).splitlines()
    try:
        start = next(i for i, s in enumerate(lines) if s.strip().lower() == "@data") + 1
    except StopIteration:
        raise SequenceDataError(f"{path}: no @data line; not a .ts file") from None
    sequences, labels = [], []
    for n, line in enumerate(lines[start:], start=start + 1):
        if not line.strip() or line.startswith("#"):
            continue
        *channels, label = line.strip().split(":")
        if not channels:
            raise SequenceDataError(f"{path}, line {n}: expected channels separated by ':' "
                                    "and a class label last")
        arrays = [_values(c.split(","), path, n) for c in channels]
        if len({len(a) for a in arrays}) != 1:
            raise SequenceDataError(f"{path}, line {n}: channels of different lengths "
                                    f"{[len(a) for a in arrays]}")
        sequences.append(np.stack(arrays, axis=1))                      # (L, C)
        labels.append(label.strip())
    return _checked(SequenceSet(sequences, labels, str(path)), path)


def read_table(path: str | Path) -> SequenceSet:
    """Read a CSV/TSV with one univariate case per row, the label first."""
    path = Path(path)
    text = _text(path)
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    sequences, labels = [], []
    for n, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), start=1):
        if not any(c.strip() for c in row):
            continue
        cells = list(row[1:])
        while cells and not cells[-1].strip():                          # shorter sequences
            cells.pop()
        if not cells:
            raise SequenceDataError(f"{path}, line {n}: a label but no values")
        sequences.append(_values(cells, path, n)[:, None])
        labels.append(row[0].strip())
    return _checked(SequenceSet(sequences, labels, str(path)), path)


def _checked(data: SequenceSet, path: Path) -> SequenceSet:
    if not data.sequences:
        raise SequenceDataError(f"{path} holds no sequences")
    widths = {s.shape[1] for s in data.sequences}
    if len(widths) != 1:
        raise SequenceDataError(f"{path}: cases have different numbers of channels "
                                f"{sorted(widths)}")
    return data


@dataclass
class Standardizer:
    """Per-channel mean and standard deviation over every step of the training set."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: SequenceSet) -> Standardizer:
        """Per-channel mean and standard deviation over every step of every sequence of ``data``; a
        constant channel gets a standard deviation of 1."""
        allv = np.concatenate(data.sequences, axis=0).astype(np.float64)
        std = allv.std(axis=0)
        return cls(allv.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, data: SequenceSet) -> list[np.ndarray]:
        """The sequences of ``data`` standardised per channel, as float32 arrays."""
        return [((s - self.mean) / self.std).astype(np.float32) for s in data.sequences]

    def to_dict(self) -> dict:
        """The statistics as plain lists, for JSON; :meth:`from_dict` reads them back."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        """The standardiser that :meth:`to_dict` wrote."""
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]))


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int],
                                                                             list[int]]:
    """(train indices, validation indices): ``fraction`` of each class (at least one case
    of every class with two or more cases) goes to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == label]
        rng.shuffle(idx)
        k = max(1, round(fraction * len(idx))) if len(idx) > 1 and fraction > 0 else 0
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)
