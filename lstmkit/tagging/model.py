r"""A BiLSTM(-CRF) sequence tagger (Huang et al. 2015; Lample et al. 2016) on lstmkit modules.

For a sentence of words w_1 … w_L, with word embedding E[w_t] and, optionally, the final
forward and backward states of a character BiLSTM over the letters of w_t (Lample et al.)::

    x_t = dropout([E[w_t]; →h^c_{|w_t|}(w_t); ←h^c_1(w_t)])
    h_t = dropout([→h_t; ←h_t])            a BiLSTM (or BiGRU, BiRNN) over x_1 … x_L
    e_t = W h_t + b                         tag scores (emissions), (K,)

and then either a linear-chain CRF, ``log p(y | e) = s(y) − log Z`` (see :mod:`lstmkit.crf`),
or a softmax per token, ``p(y_t) = softmax(e_t)``. Padded sentences are run packed
(``PackedSequence``), and only real words go through the character BiLSTM, so padding never
changes a score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..crf import CRF
from ..nn import GRU, LSTM, RNN

PAD, UNK = "<pad>", "<unk>"
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
OUTPUTS = ("crf", "softmax")


class EmbeddingError(ValueError):
    """A pretrained-embedding file that cannot be read; the message starts with ``path:line:``."""


# --- vocabularies -----------------------------------------------------------------------------

class Vocab:
    """Symbols ↔ indices. With ``specials=(PAD, UNK)`` (words, characters) index 0 is padding
    and an unknown symbol maps to 1; with ``specials=()`` (tags) an unknown symbol is an error.
    ``lower`` lowercases before every look-up."""

    def __init__(self, symbols: Sequence[str], lower: bool = False) -> None:
        self.itos = list(symbols)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocab: symbols must be distinct")
        self.lower = bool(lower)
        self.unk = self.stoi.get(UNK)

    @classmethod
    def build(cls, sequences: Iterable[Iterable[str]], min_count: int = 1, lower: bool = False,
              specials: Sequence[str] = (PAD, UNK)) -> Vocab:
        """From ``sequences`` of symbols: the specials, then every symbol seen ``min_count``
        times or more, most frequent first (ties in sorted order)."""
        counts = Counter(s.lower() if lower else s for seq in sequences for s in seq)
        kept = sorted((s for s, c in counts.items() if c >= min_count and s not in specials),
                      key=lambda s: (-counts[s], s))
        return cls(list(specials) + kept, lower)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, symbol: str) -> bool:
        return (symbol.lower() if self.lower else symbol) in self.stoi

    def index(self, symbol: str) -> int:
        """The index of ``symbol`` (lower-cased first if the vocabulary is), ``<unk>``'s for an
        unknown one; KeyError if the vocabulary has no ``<unk>``."""
        i = self.stoi.get(symbol.lower() if self.lower else symbol, self.unk)
        if i is None:
            raise KeyError(f"Vocab: {symbol!r} is not in the vocabulary (which has no {UNK})")
        return i

    def encode(self, symbols: Iterable[str]) -> list[int]:
        """The indices of ``symbols`` (see :meth:`index`)."""
        return [self.index(s) for s in symbols]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """The symbols at ``indices``."""
        return [self.itos[i] for i in indices]

    def to_dict(self) -> dict:
        """A plain dict (JSON-safe); :meth:`from_dict` rebuilds the vocabulary."""
        return {"itos": list(self.itos), "lower": self.lower}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        """The vocabulary that :meth:`to_dict` wrote."""
        return cls(d["itos"], d.get("lower", False))


def word_vocab(sentences: Iterable[tuple[Sequence[str], Sequence[str]]], min_count: int = 1,
               lower: bool = False) -> Vocab:
    """The words of training sentences ``(tokens, tags)``, with <pad> and <unk>."""
    return Vocab.build((tokens for tokens, _ in sentences), min_count, lower)


def char_vocab(sentences: Iterable[tuple[Sequence[str], Sequence[str]]],
               min_count: int = 1) -> Vocab:
    """The characters of training sentences' words, with <pad> and <unk>."""
    return Vocab.build((ch for tokens, _ in sentences for ch in tokens), min_count)


def tag_vocab(sentences: Iterable[tuple[Sequence[str], Sequence[str]]]) -> Vocab:
    """The tags of training sentences, no specials (an unseen tag is an error)."""
    return Vocab.build((tags for _, tags in sentences), specials=())


def load_embeddings(path: str | Path, vocab: Vocab, dim: int, *, std: float = 0.1,
                    generator: torch.Generator | None = None) -> Tensor:
    """A (len(vocab), dim) embedding matrix from a word2vec/GloVe text file (``word v_1 … v_dim``
    per line; a word2vec ``count dim`` header line is allowed). Rows of words not in the file
    are drawn from N(0, std²), the <pad> row is zero. A word in the file matches the vocabulary
    entry it looks up to (lowercased for a lowercasing vocabulary; the first such line wins)."""
    weight = torch.randn(len(vocab), dim, generator=generator) * std
    filled = torch.zeros(len(vocab), dtype=torch.bool)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.rstrip("\n").rstrip("\r").split(" ")
            if fields and fields[-1] == "":
                fields.pop()                              # a trailing space
            if n == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                if int(fields[1]) != dim:
                    raise EmbeddingError(f"{path}:1: header says dimension {fields[1]}, "
                                         f"expected {dim}")
                continue
            if len(fields) != dim + 1:
                raise EmbeddingError(f"{path}:{n}: {len(fields) - 1} values after the word, "
                                     f"expected dimension {dim}")
            try:
                values = [float(x) for x in fields[1:]]
            except ValueError:
                raise EmbeddingError(f"{path}:{n}: a value is not a number") from None
            if fields[0] not in vocab or vocab.index(fields[0]) == vocab.unk:
                continue
            i = vocab.index(fields[0])
            if not filled[i]:
                weight[i] = torch.tensor(values)
                filled[i] = True
    if vocab.stoi.get(PAD) is not None:
        weight[vocab.stoi[PAD]] = 0.0
    return weight


# --- batches ----------------------------------------------------------------------------------

@dataclass
class Batch:
    """Padded tensors of B sentences of at most T words (W characters per word):
    ``words`` (B, T), ``chars`` (B, T, W) or None, ``tags`` (B, T) or None, ``lengths`` (B,),
    ``mask`` (B, T) bool (True at real words). Padding is index 0."""

    words: Tensor
    chars: Tensor | None
    tags: Tensor | None
    lengths: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor moved to ``device``."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)
        return Batch(move(self.words), move(self.chars), move(self.tags), move(self.lengths),
                     move(self.mask))


def make_batch(sentences: Sequence[tuple[Sequence[str], Sequence[str] | None]], vocab: Vocab,
               chars: Vocab | None = None, tag_vocab: Vocab | None = None) -> Batch:
    """Pad ``sentences`` (``(tokens, tags)``, tags may be None) into a :class:`Batch`; no
    character tensor without ``chars``, no tags without ``tag_vocab`` (or when a sentence has
    none)."""
    if len(sentences) == 0 or any(len(tokens) == 0 for tokens, _ in sentences):
        raise ValueError("make_batch: needs at least one sentence and no empty sentence")
    lengths = torch.tensor([len(tokens) for tokens, _ in sentences])
    B, T = len(sentences), int(lengths.max())
    words = torch.zeros(B, T, dtype=torch.long)
    mask = torch.arange(T) < lengths.unsqueeze(1)                         # (B, T)
    for b, (tokens, _) in enumerate(sentences):
        words[b, :len(tokens)] = torch.tensor(vocab.encode(tokens))
    char_ids = None
    if chars is not None:
        W = max(max(len(tok) for tok in tokens) for tokens, _ in sentences)
        char_ids = torch.zeros(B, T, max(W, 1), dtype=torch.long)
        for b, (tokens, _) in enumerate(sentences):
            for t, tok in enumerate(tokens):
                char_ids[b, t, :len(tok)] = torch.tensor(chars.encode(tok), dtype=torch.long)
    tags = None
    if tag_vocab is not None and all(tg is not None for _, tg in sentences):
        tags = torch.zeros(B, T, dtype=torch.long)
        for b, (tokens, tg) in enumerate(sentences):
            if len(tg) != len(tokens):
                raise ValueError(f"make_batch: sentence {b} has {len(tokens)} tokens and "
                                 f"{len(tg)} tags")
            tags[b, :len(tg)] = torch.tensor(tag_vocab.encode(tg))
    return Batch(words, char_ids, tags, lengths, mask)


# --- the model --------------------------------------------------------------------------------

def _rnn_class(cell: str | type) -> type:
    if isinstance(cell, type):
        return cell
    if cell not in CELLS:
        raise ValueError(f"Tagger: cell must be one of {tuple(CELLS)} or an lstmkit module "
                         f"class, got {cell!r}")
    return CELLS[cell]


class Tagger(nn.Module):
    """A BiLSTM-CRF (``output="crf"``) or BiLSTM-softmax (``output="softmax"``) tagger; see the
    module docstring for the equations.

    ``num_chars`` > 0 adds the character BiLSTM (``char_dim`` embeddings, ``char_hidden`` per
    direction); ``cell`` "lstm" (lstmkit.LSTM), "gru", "rnn" or an lstmkit module class builds
    both BiRNNs, and ``rnn_kwargs`` (peephole=True, layer_norm=True, …) go to the word-level
    encoder. ``tags`` and ``scheme`` ("bio"/"bioes") build a CRF that forbids illegal chunk
    transitions (:meth:`lstmkit.CRF.for_scheme`). ``embeddings`` (num_words, word_dim)
    initialises the word embeddings (see :func:`load_embeddings`).
    """

    def __init__(self, num_words: int, num_tags: int, num_chars: int = 0, *,
                 word_dim: int = 100, char_dim: int = 25, char_hidden: int = 25,
                 hidden_size: int = 100, num_layers: int = 1, dropout: float = 0.5,
                 cell: str | type = "lstm", output: str = "crf",
                 tags: Sequence[str] | None = None, scheme: str | None = None,
                 embeddings: Tensor | None = None, **rnn_kwargs) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"Tagger: output must be one of {OUTPUTS}, got {output!r}")
        rnn = _rnn_class(cell)
        self.output = output
        self.embed = nn.Embedding(num_words, word_dim, padding_idx=0)
        if embeddings is not None:
            with torch.no_grad():
                self.embed.weight.copy_(embeddings)
        in_size = word_dim
        self.char_embed = self.char_rnn = None
        if num_chars > 0:
            self.char_embed = nn.Embedding(num_chars, char_dim, padding_idx=0)
            self.char_rnn = rnn(char_dim, char_hidden, bidirectional=True)
            in_size += 2 * char_hidden
        self.encoder = rnn(in_size, hidden_size, num_layers, bidirectional=True,
                           dropout=dropout if num_layers > 1 else 0.0, **rnn_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(2 * hidden_size, num_tags)
        self.crf = None
        if output == "crf":
            self.crf = (CRF.for_scheme(tags, scheme, batch_first=True) if scheme is not None
                        else CRF(num_tags, batch_first=True))

    def _char_features(self, chars: Tensor, mask: Tensor) -> Tensor:
        """[→h; ←h] of the character BiRNN at each real word, zeros at padding: (B, T, 2Hc)."""
        words = chars[mask]                                              # (N, W)
        lengths = (words != 0).sum(1).clamp(min=1)                       # (N,)
        x = self.char_embed(words)                                       # (N, W, C)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.char_rnn(packed)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n                  # (2, N, Hc)
        feats = torch.cat([h_n[0], h_n[1]], dim=1)                       # (N, 2Hc)
        out = feats.new_zeros(*mask.shape, feats.shape[1])               # (B, T, 2Hc)
        out[mask] = feats
        return out

    def emissions(self, batch: Batch) -> Tensor:
        """Tag scores e_t, (B, T, K); rows at padding are zero-input projections (masked out)."""
        x = self.embed(batch.words)                                      # (B, T, E)
        if self.char_rnn is not None:
            if batch.chars is None:
                raise ValueError("Tagger: this tagger has character features; make the batch "
                                 "with a character vocabulary")
            x = torch.cat([x, self._char_features(batch.chars, batch.mask)], dim=2)
        x = self.dropout(x)
        packed = pack_padded_sequence(x, batch.lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = self.encoder(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])  # (B, T, 2H)
        return self.proj(self.dropout(h))                                # (B, T, K)

    def loss(self, batch: Batch) -> Tensor:
        """The negative log-likelihood of ``batch.tags``: mean over sentences (CRF) or over
        tokens (softmax)."""
        if batch.tags is None:
            raise ValueError("Tagger.loss: the batch has no tags")
        em = self.emissions(batch)
        if self.crf is not None:
            return -self.crf(em, batch.tags, batch.mask, reduction="mean")
        return F.cross_entropy(em[batch.mask], batch.tags[batch.mask])

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[list[int]]:
        """The best tag indices of each sentence: Viterbi (CRF) or per-token argmax."""
        em = self.emissions(batch)
        if self.crf is not None:
            return self.crf.decode(em, batch.mask)
        best = em.argmax(dim=2)                                          # (B, T)
        return [best[b, :n].tolist() for b, n in enumerate(batch.lengths.tolist())]
