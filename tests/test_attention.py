"""Bahdanau and Luong attention: scores by hand, masks, batching, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lstmkit.attention import BahdanauAttention, LuongAttention

F64 = torch.float64
B, S, Q, K = 3, 5, 4, 6


def _inputs(q=Q, k=K):
    g = torch.Generator().manual_seed(0)
    query = torch.randn(B, q, dtype=F64, generator=g)
    keys = torch.randn(B, S, k, dtype=F64, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return query, keys, mask


def _by_hand(att, query, keys, mask):
    """Each row, each position, from the printed equations with plain Python loops."""
    contexts, weights = [], []
    query, keys = query.detach(), keys.detach()
    for b in range(B):
        e = []
        for s in range(S):
            q, k = query[b], keys[b, s]
            if isinstance(att, BahdanauAttention):
                hidden = torch.tanh(att.query_proj.weight @ q + att.key_proj.weight @ k
                                    + att.key_proj.bias)
                e.append(float(att.v.weight[0] @ hidden))
            elif att.kind == "dot":
                e.append(float(q @ k) / (math.sqrt(K) if att.scale else 1))
            else:
                e.append(float(q @ att.weight @ k) / (math.sqrt(K) if att.scale else 1))
        live = [s for s in range(S) if mask[b, s]]
        top = max(e[s] for s in live)
        z = sum(math.exp(e[s] - top) for s in live)
        w = [math.exp(e[s] - top) / z if mask[b, s] else 0.0 for s in range(S)]
        weights.append(w)
        contexts.append(sum(w[s] * keys[b, s] for s in range(S)))
    return torch.stack(contexts), torch.tensor(weights, dtype=F64)


MODULES = [
    lambda: BahdanauAttention(Q, K, 7),
    lambda: LuongAttention(Q, K, "general"),
    lambda: LuongAttention(Q, K, "general", scale=True),
    lambda: LuongAttention(K, K, "dot"),
]


@pytest.mark.parametrize("make", MODULES, ids=["bahdanau", "general", "general-scaled", "dot"])
def test_equals_the_equations_by_hand(make):
    torch.manual_seed(0)
    att = make().double().requires_grad_(False)
    query, keys, mask = _inputs(q=att.query_size)
    context, weights = att(query, keys, mask)
    want_c, want_w = _by_hand(att, query, keys, mask)
    torch.testing.assert_close(weights, want_w, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(context, want_c, atol=1e-12, rtol=1e-12)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(B, dtype=F64))


@pytest.mark.parametrize("make", MODULES, ids=["bahdanau", "general", "general-scaled", "dot"])
def test_padding_changes_nothing_and_rows_are_independent(make):
    """A row's result depends only on its own unmasked positions: junk in masked keys and
    other rows change nothing, and precomputed keys give the same result."""
    torch.manual_seed(0)
    att = make().double()
    query, keys, mask = _inputs(q=att.query_size)
    context, weights = att(query, keys, mask)
    junk = keys.clone()
    junk[~mask] = 1e3
    c2, w2 = att(query, junk, mask, projected=att.precompute(junk))
    torch.testing.assert_close(c2, context)
    torch.testing.assert_close(w2, weights)
    for b in range(B):
        n = int(mask[b].sum())
        c1, w1 = att(query[b:b + 1], keys[b:b + 1, :n])
        torch.testing.assert_close(c1[0], context[b])
        torch.testing.assert_close(w1[0], weights[b, :n])


@pytest.mark.parametrize("make", MODULES, ids=["bahdanau", "general", "general-scaled", "dot"])
def test_gradcheck(make):
    torch.manual_seed(0)
    att = make().double()
    query, keys, mask = _inputs(q=att.query_size)
    query.requires_grad_()
    keys.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k: att(q, k, mask), (query, keys))


def test_bad_inputs_are_named():
    att = BahdanauAttention(Q, K)
    query, keys, mask = _inputs()
    query, keys = query.float(), keys.float()
    with pytest.raises(ValueError, match=r"query must be \(batch, query_size=4\)"):
        att(query[:, :3], keys)
    with pytest.raises(ValueError, match=r"keys must be \(batch=3, source length, key_size=6\)"):
        att(query, keys[..., :5])
    with pytest.raises(ValueError, match=r"mask must be \(batch, source length\)"):
        att(query, keys, mask[:, :4])
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"no source position in batch rows \[1\]"):
        att(query, keys, empty)
    with pytest.raises(ValueError, match="source length 0"):
        att(query, keys[:, :0])
    with pytest.raises(ValueError, match="query_size must equal key_size"):
        LuongAttention(Q, K, "dot")
    with pytest.raises(ValueError, match="kind must be one of"):
        LuongAttention(Q, K, "concat")
    with pytest.raises(ValueError, match="query_size must be a positive int"):
        BahdanauAttention(0, K)
