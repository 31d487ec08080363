r"""Attention over a sequence of encoder states: additive (Bahdanau, Cho & Bengio 2015) and
multiplicative (Luong, Pham & Manning 2015, "dot" and "general").

For a decoder query q (B, Q) and encoder states (keys) k_1 … k_S (B, S, K), each module
scores every source position, masks padded positions, and returns the attention weights
α = softmax(e) over the unmasked positions and the context c = Σ_s α_s k_s::

    additive (Bahdanau):   e_s = vᵀ tanh(W_q q + W_k k_s)           W_q (A, Q), W_k (A, K), v (A,)
    dot (Luong):           e_s = qᵀ k_s                             needs Q = K
    general (Luong):       e_s = qᵀ W_a k_s                         W_a (Q, K)

``scale=True`` divides dot/general scores by √K. ``mask`` (B, S) is True at real source
positions; every row needs at least one. Calling a module returns ``(context (B, K),
weights (B, S))``; :meth:`Attention.precompute` caches the query-independent part of the
additive score (W_k k_s) for a decoder that attends to the same keys at every step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Base of :class:`BahdanauAttention` and :class:`LuongAttention`."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        for name, value in (("query_size", query_size), ("key_size", key_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, "
                                 f"got {value!r}")
        self.query_size, self.key_size = query_size, key_size

    def precompute(self, keys: Tensor) -> Tensor:
        """The part of the score that does not depend on the query (identity here)."""
        return keys

    def scores(self, query: Tensor, keys: Tensor, projected: Tensor) -> Tensor:
        """e (B, S) from the query and the precomputed keys; each attention defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no score function")

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``query`` (B, Q), ``keys`` (B, S, K), ``mask`` (B, S) bool or None, ``projected``:
        :meth:`precompute` of ``keys``, if cached. Returns (context (B, K), weights (B, S))."""
        name = type(self).__name__
        if query.dim() != 2 or query.shape[1] != self.query_size:
            raise ValueError(f"{name}: query must be (batch, query_size={self.query_size}), "
                             f"got shape {tuple(query.shape)}")
        if keys.dim() != 3 or keys.shape[2] != self.key_size or keys.shape[0] != query.shape[0]:
            raise ValueError(f"{name}: keys must be (batch={query.shape[0]}, source length, "
                             f"key_size={self.key_size}), got shape {tuple(keys.shape)}")
        if keys.shape[1] == 0:
            raise ValueError(f"{name}: keys have source length 0; nothing to attend to")
        if mask is not None:
            if mask.shape != keys.shape[:2]:
                raise ValueError(f"{name}: mask must be (batch, source length) = "
                                 f"{tuple(keys.shape[:2])}, got {tuple(mask.shape)}")
            mask = mask.to(torch.bool)
            if not bool(mask.any(dim=1).all()):
                rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
                raise ValueError(f"{name}: mask leaves no source position in batch rows "
                                 f"{rows}; every row needs at least one")
        e = self.scores(query, keys, self.precompute(keys) if projected is None else projected)
        if mask is not None:
            e = e.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(e, dim=1)                                  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)        # (B, K)
        return context, weights


class BahdanauAttention(Attention):
    """Additive attention: e_s = vᵀ tanh(W_q q + W_k k_s) (see the module docstring)."""

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None
                 ) -> None:
        super().__init__(query_size, key_size)
        A = attention_size or query_size
        self.attention_size = A
        self.query_proj = nn.Linear(query_size, A, bias=False)
        self.key_proj = nn.Linear(key_size, A, bias=True)
        self.v = nn.Linear(A, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)                                        # (B, S, A)

    def scores(self, query: Tensor, keys: Tensor, projected: Tensor) -> Tensor:
        hidden = torch.tanh(projected + self.query_proj(query).unsqueeze(1))
        return self.v(hidden).squeeze(2)                                  # (B, S)

    def extra_repr(self) -> str:
        return f"{self.query_size}, {self.key_size}, attention_size={self.attention_size}"


class LuongAttention(Attention):
    """Multiplicative attention: ``kind="dot"`` e_s = qᵀ k_s, ``"general"`` e_s = qᵀ W_a k_s
    (see the module docstring); ``scale=True`` divides by √key_size."""

    KINDS = ("dot", "general")

    def __init__(self, query_size: int, key_size: int, kind: str = "general",
                 scale: bool = False) -> None:
        super().__init__(query_size, key_size)
        if kind not in self.KINDS:
            raise ValueError(f"LuongAttention: kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "dot" and query_size != key_size:
            raise ValueError(f"LuongAttention(kind='dot') scores qᵀk, so query_size must equal "
                             f"key_size; got {query_size} and {key_size} (use kind='general')")
        self.kind, self.scale = kind, bool(scale)
        self.weight = (nn.Parameter(torch.empty(query_size, key_size)) if kind == "general"
                       else None)
        if self.weight is not None:
            nn.init.uniform_(self.weight, -1 / math.sqrt(key_size), 1 / math.sqrt(key_size))

    def precompute(self, keys: Tensor) -> Tensor:
        return keys if self.weight is None else keys @ self.weight.t()   # (B, S, Q)

    def scores(self, query: Tensor, keys: Tensor, projected: Tensor) -> Tensor:
        e = torch.bmm(projected, query.unsqueeze(2)).squeeze(2)           # (B, S)
        return e / math.sqrt(self.key_size) if self.scale else e

    def extra_repr(self) -> str:
        return f"{self.query_size}, {self.key_size}, kind={self.kind!r}, scale={self.scale}"
