"""Bach chorales as 88-key piano rolls, read from the corpus that ships inside ``music21``.

Nothing is downloaded: the chorales are MusicXML/Humdrum files in the installed
``music21`` wheel (the ``lstmkit[datasets]`` extra), parsed with music21 and turned into
piano rolls on a fixed grid.

**Which pieces.** :func:`chorale_names` lists the chorales of
``music21.corpus.chorales.Iterator(returnType='filename')``: Riemenschneider's numbering
1–371 of the four-part chorales (JSB Chorales, 382 pieces, is another selection of the
same repertoire; docs/architectures.md compares the two). The iterator names 371
chorales, some of them by the same file (music21 stores one harmonisation once even where
two Riemenschneider numbers print it); the file list, duplicates dropped in order, holds
350 pieces. The rest of ``corpus.getComposer('bach')`` (variant and instrumental versions,
the ``-a``, ``-2``, ``-inst`` files, and the romanText analyses) is not used.

**The roll.** Step ``k`` of a roll is the instant ``k · grid`` quarter notes after the
start of the score (the first, possibly incomplete, measure included; repeats are not
expanded). Key ``p − 21`` is on at step ``k`` if a note of MIDI pitch ``p`` (any part,
any voice; chords count every pitch) sounds at that instant: it starts at or before it
and ends after it. A note shorter than the grid that falls between two grid instants
(a passing eighth on a quarter grid) is therefore not in the roll, and a note held over
several steps is on at each of them, with no distinction between a held and a repeated
note — the representation of Boulanger-Lewandowski, Bengio & Vincent (ICML 2012), whose
JSB Chorales are sampled per quarter note. Grace notes (no duration) never sound at an
instant and are dropped. Pitches outside the piano (MIDI 21–108) raise
:class:`MusicDataError`; no chorale has one.

**Grid.** ``grid=1.0`` (a quarter note; the default, as in JSB Chorales, so that step
counts and NLL per step are comparable with the published figures) or ``grid=0.5`` (an
eighth note, which keeps the passing eighths and doubles the length).

**Cache.** Parsing all chorales with music21 takes a minute or more, so the rolls are kept
in ``<cache>/music/chorales-v<V>-music21-<version>-grid<g>.npz``, where ``<cache>`` is
``$LSTMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lstmkit``, else ``~/.cache/lstmkit``
(never the repository). The key holds a format version, music21's version and the grid,
so a new music21 or a new format rebuilds it. A cache file carries a SHA-256 of its
contents; one that cannot be read, lacks a field or fails the checksum is reported
(a warning) and rebuilt.

**Split.** :func:`split_pieces` splits by piece (never inside one), seeded: a permutation
of the pieces sorted by name, the first ``test`` fraction for testing, the next ``valid``
fraction for validation, the rest for training. The default 0.2 / 0.2 mirrors the
proportions of the standard JSB Chorales split (229 / 76 / 77 of 382 pieces), not its
membership, which music21's file names cannot reproduce.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .packaged import EXTRA, DatasetUnavailable

LOWEST, HIGHEST = 21, 108          # MIDI numbers of A0 and C8, the piano's keys
KEYS = HIGHEST - LOWEST + 1        # 88
GRIDS = {"quarter": 1.0, "eighth": 0.5}
CACHE_VERSION = 1


class MusicDataError(ValueError):
    """Chorale data that cannot be used as asked (the message says why)."""


@dataclass
class ChoraleSet:
    """Piano rolls of named pieces: ``rolls[i]`` is a (T_i, 88) uint8 array of piece
    ``names[i]``; ``skipped`` maps a corpus name that was not used to the reason."""

    names: list[str]
    rolls: list[np.ndarray]
    grid: float
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def frames(self) -> int:
        """The total number of time steps (grid frames) over all pieces."""
        return sum(len(r) for r in self.rolls)

    def subset(self, index: list[int]) -> ChoraleSet:
        """A new set of the pieces at ``index``, in that order, on the same grid."""
        return ChoraleSet([self.names[i] for i in index], [self.rolls[i] for i in index],
                          self.grid)

    def sha256(self) -> str:
        """A SHA-256 over the grid, every piece's name and its roll: equal sets have equal
        digests."""
        h = hashlib.sha256(f"grid={self.grid}".encode())
        for name, roll in zip(self.names, self.rolls):
            h.update(name.encode() + b"\0")
            h.update(np.ascontiguousarray(roll, dtype=np.uint8).tobytes())
            h.update(str(roll.shape).encode())
        return h.hexdigest()


def _music21():
    try:
        import music21
    except ImportError:
        raise DatasetUnavailable(
            "the Bach chorales are read from the corpus inside the 'music21' package, which "
            f"is not installed: pip install '{EXTRA}' (or pip install music21)") from None
    return music21


def grid_of(grid: float | str) -> float:
    """A grid in quarter notes: 1.0 / 0.5, or the names ``quarter`` / ``eighth``."""
    value = GRIDS.get(grid, grid) if isinstance(grid, str) else grid
    if value not in GRIDS.values():
        raise MusicDataError(f"grid must be one of {sorted(GRIDS)} (1.0 or 0.5 quarter "
                             f"notes), got {grid!r}")
    return float(value)


def chorale_names() -> list[str]:
    """Corpus names (``bach/bwv…``) of the chorales of music21's chorale iterator
    (Riemenschneider 1–371), duplicates dropped, in the iterator's order."""
    m21 = _music21()
    names = m21.corpus.chorales.Iterator(returnType="filename")
    return list(dict.fromkeys(str(n) for n in names))


def piano_roll(score, grid: float = 1.0, name: str = "score") -> np.ndarray:
    """The (T, 88) uint8 piano roll of a music21 score (see the module docstring):
    T = ⌈duration / grid⌉, key p − 21 on at step k if pitch p sounds at k · grid."""
    grid = grid_of(grid)
    length = float(score.highestTime)
    if not length > 0:
        raise MusicDataError(f"{name} has no duration (an empty score?)")
    steps = math.ceil(length / grid - 1e-9)
    roll = np.zeros((steps, KEYS), dtype=np.uint8)
    for element in score.flatten().notes:
        duration = float(element.quarterLength)
        if duration <= 0:                           # grace notes never sound at an instant
            continue
        start = float(element.offset)
        first = math.ceil(start / grid - 1e-9)      # grid instants in [start, start + dur)
        stop = math.ceil((start + duration) / grid - 1e-9)
        for pitch in element.pitches:
            midi = pitch.midi
            if not LOWEST <= midi <= HIGHEST:
                raise MusicDataError(f"{name}: pitch {pitch.nameWithOctave} (MIDI {midi}) at "
                                     f"offset {start} is outside the piano's 88 keys "
                                     f"(MIDI {LOWEST}–{HIGHEST})")
            roll[first:stop, midi - LOWEST] = 1
    return roll


def parse_chorales(names: list[str], grid: float = 1.0) -> ChoraleSet:
    """Parse the named corpus files into rolls; a piece that fails to parse or has no
    notes is skipped, with the reason in ``skipped``."""
    m21 = _music21()
    grid = grid_of(grid)
    out = ChoraleSet([], [], grid)
    for name in names:
        try:
            score = m21.corpus.parse(name)
        except Exception as e:          # music21 raises many kinds for a bad file
            out.skipped[name] = f"music21 could not parse it: {type(e).__name__}: {e}"[:300]
            continue
        roll = piano_roll(score, grid, name)
        if not roll.any():
            out.skipped[name] = "no notes"
            continue
        out.names.append(name)
        out.rolls.append(roll)
    return out


def cache_dir() -> Path:
    """Where parsed rolls are cached (see the module docstring)."""
    if os.environ.get("LSTMKIT_CACHE_DIR"):
        return Path(os.environ["LSTMKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lstmkit"


def cache_path(grid: float, directory: str | Path | None = None) -> Path:
    """The cache file of the parsed rolls for ``grid``, named by the cache format, music21's version
    and the grid, under ``directory`` (default :func:`cache_dir`)."""
    m21 = _music21()
    directory = Path(directory) if directory is not None else cache_dir()
    return (directory / "music" /
            f"chorales-v{CACHE_VERSION}-music21-{m21.__version__}-grid{grid_of(grid):g}.npz")


def write_cache(data: ChoraleSet, path: str | Path) -> None:
    """Save ``data`` as one .npz (written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(r) for r in data.rolls], dtype=np.int64)
    rolls = (np.concatenate(data.rolls) if data.rolls
             else np.zeros((0, KEYS), dtype=np.uint8))
    skipped = np.array([f"{k}\t{v}" for k, v in data.skipped.items()], dtype=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, version=np.int64(CACHE_VERSION), grid=np.float64(data.grid),
                            names=np.array(data.names, dtype=str), lengths=lengths,
                            rolls=rolls, skipped=skipped,
                            sha256=np.array(data.sha256()))
    os.replace(tmp, path)


def read_cache(path: str | Path) -> ChoraleSet:
    """Load a cache file written by :func:`write_cache`; :class:`MusicDataError` if it is
    missing, unreadable, of another format version, or fails its checksum."""
    path = Path(path)
    if not path.is_file():
        raise MusicDataError(f"no chorale cache at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            version, grid = int(z["version"]), float(z["grid"])
            names, lengths = [str(n) for n in z["names"]], z["lengths"]
            rolls, checksum = z["rolls"], str(z["sha256"])
            skipped = dict(str(s).split("\t", 1) for s in z["skipped"])
    except Exception as e:              # zip, key, value and EOF errors all mean corrupt
        raise MusicDataError(f"the chorale cache {path} is unreadable (corrupt or "
                             f"truncated): {type(e).__name__}: {str(e)[:200]}") from None
    if version != CACHE_VERSION:
        raise MusicDataError(f"the chorale cache {path} has format version {version}; this "
                             f"lstmkit reads {CACHE_VERSION}")
    if (rolls.ndim != 2 or rolls.shape[1] != KEYS or len(lengths) != len(names)
            or int(lengths.sum()) != len(rolls)):
        raise MusicDataError(f"the chorale cache {path} is inconsistent: {len(names)} names, "
                             f"{len(lengths)} lengths summing to {int(lengths.sum())}, rolls "
                             f"{tuple(rolls.shape)} (expected (frames, {KEYS}))")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    data = ChoraleSet(names, [rolls[a:b].astype(np.uint8) for a, b in
                              zip(bounds[:-1], bounds[1:])], grid, skipped)
    if data.sha256() != checksum:
        raise MusicDataError(f"the chorale cache {path} fails its checksum (corrupt)")
    return data


def load_chorales(grid: float | str = 1.0, *, select: str | None = None,
                  cache: bool = True, directory: str | Path | None = None,
                  refresh: bool = False) -> ChoraleSet:
    """Every chorale of :func:`chorale_names` as a piano roll on ``grid`` (quarter notes),
    from the cache when it holds them (parsed and cached otherwise).

    ``select``: a shell pattern over the corpus names (``"bach/bwv2*"``) to keep only some
    pieces — an error if none matches. ``cache=False`` parses without reading or writing
    the cache; ``refresh=True`` rebuilds it; ``directory`` replaces :func:`cache_dir`.
    """
    grid = grid_of(grid)
    data = None
    path = cache_path(grid, directory) if cache else None
    if path is not None and path.exists() and not refresh:
        try:
            data = read_cache(path)
        except MusicDataError as e:
            warnings.warn(f"{e}; rebuilding it", stacklevel=2)
    if data is None:
        data = parse_chorales(chorale_names(), grid)
        if not data.names:
            raise MusicDataError("music21's chorale corpus gave no usable pieces")
        if path is not None:
            write_cache(data, path)
    if select is not None:
        keep = [i for i, n in enumerate(data.names) if fnmatch.fnmatchcase(n, select)]
        if not keep:
            raise MusicDataError(f"no chorale name matches {select!r} (names look like "
                                 f"{data.names[0]!r}; {len(data.names)} pieces)")
        skipped = data.skipped
        data = data.subset(keep)
        data.skipped = skipped
    return data


def split_pieces(n: int, valid: float = 0.2, test: float = 0.2,
                 seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """(train, valid, test) piece indices: a seeded permutation of ``range(n)``, the first
    ⌊test·n⌉ pieces for testing, the next ⌊valid·n⌉ for validation, the rest for training;
    each part sorted. Every part must get at least one piece."""
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise MusicDataError(f"valid and test fractions must be in (0, 1) with a sum below 1, "
                             f"got {valid} and {test}")
    n_test, n_valid = round(test * n), round(valid * n)
    if min(n_test, n_valid, n - n_test - n_valid) < 1:
        raise MusicDataError(f"{n} pieces cannot be split into train/valid/test with "
                             f"fractions {1 - valid - test:.2f}/{valid}/{test}: a part would "
                             "be empty")
    order = np.random.default_rng(seed).permutation(n).tolist()
    test_idx = sorted(order[:n_test])
    valid_idx = sorted(order[n_test:n_test + n_valid])
    train_idx = sorted(order[n_test + n_valid:])
    return train_idx, valid_idx, test_idx


def roll_to_score(roll: np.ndarray, grid: float = 1.0):
    """A music21 score of a piano roll: one part, each run of consecutive on-steps of a
    key one note (so a repeated note and a held one sound alike, as in the roll)."""
    m21 = _music21()
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != KEYS:
        raise MusicDataError(f"a piano roll is (T, {KEYS}), got {tuple(roll.shape)}")
    grid = grid_of(grid)
    part = m21.stream.Part()
    for key in range(KEYS):
        on = np.flatnonzero(roll[:, key])
        if not len(on):
            continue
        runs = np.split(on, np.flatnonzero(np.diff(on) > 1) + 1)
        for run in runs:
            n = m21.note.Note(LOWEST + key)
            n.quarterLength = len(run) * grid
            part.insert(float(run[0]) * grid, n)
    score = m21.stream.Score()
    score.insert(0, part)
    return score
