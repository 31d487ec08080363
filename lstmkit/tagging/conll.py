"""CoNLL column files and CoNLL-U: reading, writing back with a predicted column, tag schemes.

Plain CoNLL (CoNLL-2000/2003 style): one token per line, whitespace-separated columns, the
token first and the tag in a chosen column (the last by default); a blank line ends a
sentence; ``-DOCSTART-`` lines are skipped. CoNLL-U: ten tab-separated columns
``ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC``, ``#`` comment lines, and
multiword-token (``1-2``) and empty-node (``1.1``) lines, which are skipped; the token is
FORM and the tag column is named (``"upos"``, ``"xpos"``) or given by index.

Chunk tags are ``O`` or ``P-TYPE`` with a prefix P. A chunk of TYPE X is

    IOB1:   I-X I-X*  (B-X only to start a chunk right after another chunk of X)
    BIO:    B-X I-X*                       (IOB2)
    BIOES:  S-X  or  B-X I-X* E-X          (IOBES)

:func:`chunks` reads any of the three (a chunk starts at B or S, or at I/E where the previous
tag cannot continue it: O, E, S or another type), so :func:`to_bio` also normalises IOB1.

Every problem with a file is a :class:`ConllError` (a ``ValueError``) that starts with
``path:line:``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

SCHEMES = ("bio", "bioes")
CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps",
                  "misc")
DOCSTART = "-DOCSTART-"


class ConllError(ValueError):
    """A CoNLL/CoNLL-U file that cannot be read as tagged sentences; the message starts with
    ``path:line:``."""


class Sentence(tuple):
    """``(tokens, tags)``, compared and unpacked as that pair; also keeps what the file held:
    ``rows`` (the columns of each token's line), ``comments`` (CoNLL-U ``#`` lines before it)
    and ``line`` (the line number of its first token)."""

    def __new__(cls, tokens: Sequence[str], tags: Sequence[str],
                rows: Sequence[Sequence[str]] | None = None, comments: Sequence[str] = (),
                line: int = 0) -> Sentence:
        self = super().__new__(cls, (list(tokens), list(tags)))
        self.rows = [list(r) for r in rows] if rows is not None else [
            [tok, tag] for tok, tag in zip(tokens, tags)]
        self.comments = list(comments)
        self.line = line
        return self

    @property
    def tokens(self) -> list[str]:
        """The tokens of the sentence (the first field)."""
        return self[0]

    @property
    def tags(self) -> list[str]:
        """The tags of the sentence, one per token (the second field)."""
        return self[1]


# --- tag schemes ------------------------------------------------------------------------------

def parse_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` → ``("B", "PER")``, ``"O"`` → ``("O", None)``; ValueError for anything else."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"tag {tag!r} is in no known chunk scheme (IOB1, BIO, BIOES): "
                         f"expected 'O' or B-, I-, E-, S- followed by a type")
    return prefix, kind


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks ``(type, start, end)`` (end exclusive) of a tag sequence in IOB1, BIO or
    BIOES."""
    found: list[tuple[str, int, int]] = []
    prev_prefix, prev_kind = "O", None
    for t, tag in enumerate(tags):
        prefix, kind = parse_tag(tag)
        if prefix == "O":
            pass
        elif prefix in "BS" or prev_prefix in "OES" or kind != prev_kind:
            found.append((kind, t, t + 1))                   # a new chunk
        else:
            found[-1] = (kind, found[-1][1], t + 1)          # I/E continues the open chunk
        prev_prefix, prev_kind = prefix, kind
    return found


def _from_chunks(n: int, spans: Iterable[tuple[str, int, int]], scheme: str) -> list[str]:
    tags = ["O"] * n
    for kind, start, end in spans:
        if scheme == "bioes" and end - start == 1:
            tags[start] = f"S-{kind}"
            continue
        tags[start] = f"B-{kind}"
        for t in range(start + 1, end):
            tags[t] = f"I-{kind}"
        if scheme == "bioes":
            tags[end - 1] = f"E-{kind}"
    return tags


def to_bio(tags: Sequence[str]) -> list[str]:
    """The same chunks in BIO (IOB2); reads IOB1, BIO or BIOES."""
    return _from_chunks(len(tags), chunks(tags), "bio")


def to_bioes(tags: Sequence[str]) -> list[str]:
    """The same chunks in BIOES; reads IOB1, BIO or BIOES."""
    return _from_chunks(len(tags), chunks(tags), "bioes")


def convert(tags: Sequence[str], scheme: str) -> list[str]:
    """``tags`` in ``scheme`` ("bio" or "bioes")."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return to_bio(tags) if scheme == "bio" else to_bioes(tags)


# --- reading ------------------------------------------------------------------------------

def _lines(path: str | Path) -> list[str]:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConllError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); convert the "
                         f"file to UTF-8 first") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return [s.rstrip("\r") for s in text.split("\n")]


def _tag_index(tag_column: int | str, conllu: bool, path: str | Path) -> int:
    if isinstance(tag_column, str):
        if not conllu or tag_column.lower() not in CONLLU_COLUMNS:
            names = ", ".join(repr(c) for c in CONLLU_COLUMNS) if conllu else "none"
            raise ConllError(f"{path}: tag column {tag_column!r} is not a column name "
                             f"(names: {names}); give a column index")
        return CONLLU_COLUMNS.index(tag_column.lower())
    if isinstance(tag_column, bool) or not isinstance(tag_column, int):
        raise ConllError(f"{path}: tag column must be an int or a CoNLL-U column name, "
                         f"got {tag_column!r}")
    return tag_column


def _read(path: str | Path, tag_column: int | str, scheme: str | None,
          conllu: bool) -> list[Sentence]:
    if scheme is not None and scheme not in SCHEMES:
        raise ConllError(f"{path}: unknown scheme {scheme!r}; use one of {SCHEMES} or None")
    tag_at = _tag_index(tag_column, conllu, path)
    token_at = 1 if conllu else 0
    sentences: list[Sentence] = []
    rows: list[list[str]] = []
    numbers: list[int] = []                      # the line number of each row
    comments: list[str] = []

    def close() -> None:
        if rows:
            sentences.append(_sentence(path, rows, numbers, comments, token_at, tag_at, scheme))
        rows.clear(), numbers.clear(), comments.clear()

    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            close()
            continue
        if conllu and line.startswith("#"):
            comments.append(line)
            continue
        cols = line.split("\t") if conllu else line.split()
        if not conllu and cols[0] == DOCSTART:
            close()
            continue
        if conllu and ("-" in cols[0] or "." in cols[0]):
            continue                             # multiword token or empty node
        if rows and len(cols) != len(rows[0]):
            raise ConllError(f"{path}:{n}: {len(cols)} columns, but the sentence's first line "
                             f"(line {numbers[0]}) has {len(rows[0])}")
        rows.append(cols)
        numbers.append(n)
    close()
    if not sentences:
        raise ConllError(f"{path}:1: no sentences in the file")
    return sentences


def _sentence(path: str | Path, rows: list[list[str]], numbers: list[int], comments: list[str],
              token_at: int, tag_at: int, scheme: str | None) -> Sentence:
    width = len(rows[0])
    need = 10 if token_at == 1 else 2
    position = tag_at if tag_at >= 0 else width + tag_at
    if width < need or not 0 <= position < width or position == token_at:
        raise ConllError(f"{path}:{numbers[0]}: missing tag column: {width} column(s), tag "
                         f"column {tag_at}, token column {token_at}")
    tokens = [r[token_at] for r in rows]
    tags = [r[position] for r in rows]
    if scheme is not None:
        for tag, n in zip(tags, numbers):
            try:
                parse_tag(tag)
            except ValueError as e:
                raise ConllError(f"{path}:{n}: {e}") from None
        tags = convert(tags, scheme)
    return Sentence(tokens, tags, [list(r) for r in rows], list(comments), numbers[0])


def read_conll(path: str | Path, tag_column: int = -1,
               scheme: str | None = None) -> list[Sentence]:
    """The sentences of a plain CoNLL file: token in the first column, tag in ``tag_column``
    (default the last). ``scheme`` "bio"/"bioes" converts chunk tags (from IOB1, BIO or BIOES);
    None keeps them as they are."""
    return _read(path, tag_column, scheme, conllu=False)


def read_conllu(path: str | Path, tag_column: int | str = "upos",
                scheme: str | None = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file: token FORM, tag ``tag_column`` ("upos", "xpos", any
    column name or an index). Multiword-token and empty-node lines are skipped (and not
    written back)."""
    return _read(path, tag_column, scheme, conllu=True)


# --- writing ------------------------------------------------------------------------------

def _write(path: str | Path, sentences: Sequence[Sentence],
           predictions: Sequence[Sequence[str]] | None, sep: str) -> None:
    if predictions is not None and len(predictions) != len(sentences):
        raise ValueError(f"{len(predictions)} predictions for {len(sentences)} sentences")
    out: list[str] = []
    for k, s in enumerate(sentences):
        rows = s.rows
        if predictions is not None:
            if len(predictions[k]) != len(rows):
                raise ValueError(f"sentence {k}: {len(predictions[k])} predicted tags for "
                                 f"{len(rows)} tokens")
            rows = [r + [tag] for r, tag in zip(rows, predictions[k])]
        out.extend(s.comments)
        out.extend(sep.join(r) for r in rows)
        out.append("")
    Path(path).write_text("\n".join(out), encoding="utf-8")


def write_conll(path: str | Path, sentences: Sequence[Sentence],
                predictions: Sequence[Sequence[str]] | None = None) -> None:
    """Write ``sentences`` as plain CoNLL (columns joined by a space, a blank line after each
    sentence), each line's original columns kept and, with ``predictions`` (one tag list per
    sentence), the predicted tag appended as a new last column."""
    _write(path, sentences, predictions, " ")


def write_conllu(path: str | Path, sentences: Sequence[Sentence],
                 predictions: Sequence[Sequence[str]] | None = None) -> None:
    """Write ``sentences`` as CoNLL-U (tab-separated, comments kept), the predicted tag
    appended as an eleventh column when ``predictions`` is given."""
    _write(path, sentences, predictions, "\t")
