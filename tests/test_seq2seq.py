"""Seq2Seq: padding invariance, beam = 1 is greedy, beam search against brute force, a toy
reversal task, attention rows, named errors."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from lstmkit.seq2seq import Seq2Seq, Seq2SeqInputError

F64 = torch.float64
PAD, BOS, EOS = 0, 1, 2
CONFIGS = [dict(attention="bahdanau", cell="lstm"),
           dict(attention="luong-general", cell="gru", layers=2),
           dict(attention="luong-dot", cell="lstm", layers=2, input_feeding=False)]


def _model(seed=0, src_vocab=10, tgt_vocab=9, **kw):
    torch.manual_seed(seed)
    return Seq2Seq(src_vocab, tgt_vocab, emb=6, hidden=8, **kw).to(F64).eval()


def _batch():
    src = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 0, 0, 0], [5, 3, 9, 0, 0]])
    src_len = torch.tensor([5, 2, 3])
    tgt = torch.tensor([[1, 3, 4, 2, 0, 0], [1, 5, 6, 7, 8, 2], [1, 2, 0, 0, 0, 0]])
    tgt_len = torch.tensor([4, 6, 2])
    return src, src_len, tgt, tgt_len


@pytest.mark.parametrize("config", CONFIGS)
def test_padded_batch_equals_each_sentence_alone(config):
    m = _model(**config)
    src, sl, tgt, tl = _batch()
    losses = m.loss(src, sl, tgt, tl, reduction="none")
    greedy, att = m.greedy(src, sl, max_len=7, return_attention=True)
    for b in range(3):
        s, t = src[b:b + 1, :sl[b]], tgt[b:b + 1, :tl[b]]
        alone = m.loss(s, sl[b:b + 1], t, tl[b:b + 1], reduction="none")
        torch.testing.assert_close(losses[b:b + 1], alone, rtol=0, atol=1e-10)
        g1, a1 = m.greedy(s, sl[b:b + 1], max_len=7, return_attention=True)
        assert greedy[b] == g1[0]
        torch.testing.assert_close(att[b][:, :sl[b]], a1[0], rtol=0, atol=1e-10)
    mean = m.loss(src, sl, tgt, tl)
    torch.testing.assert_close(mean, (losses * (tl - 1)).sum() / (tl - 1).sum())
    junk_src = torch.where(src == PAD, torch.full_like(src, 7), src)     # padding content
    junk_tgt = torch.where(tgt == PAD, torch.full_like(tgt, 5), tgt)     # is never read
    torch.testing.assert_close(m.loss(junk_src, sl, junk_tgt, tl, reduction="none"), losses,
                               rtol=0, atol=1e-10)
    assert m.greedy(junk_src, sl, max_len=7) == greedy


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_torch_cross_entropys_over_the_emitted_symbols(eps):
    """The smoothed loss equals F.cross_entropy(label_smoothing=ε) on the decoder's log
    probabilities restricted to the symbols it can emit (pad and bos have p = 0)."""
    import torch.nn.functional as F

    m = _model(**CONFIGS[1])
    src, sl, tgt, tl = _batch()
    keys, projected, mask, state, feed = m.encode(src, sl)
    allowed = torch.tensor([v for v in range(9) if v not in (PAD, BOS)])
    per_token = []
    for t in range(tgt.shape[1] - 1):
        logp, state, feed, _ = m.step(tgt[:, t], state, feed, (keys, projected, mask))
        target = torch.searchsorted(allowed, tgt[:, t + 1].clamp(min=EOS))
        per_token.append(F.cross_entropy(logp[:, allowed], target, reduction="none",
                                         label_smoothing=eps))
    per_token = torch.stack(per_token, 1)
    real = torch.arange(tgt.shape[1] - 1)[None, :] < (tl - 1)[:, None]
    want = (per_token * real).sum() / real.sum()
    torch.testing.assert_close(m.loss(src, sl, tgt, tl, label_smoothing=eps), want,
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(Seq2SeqInputError, match="label_smoothing must be in"):
        m.loss(src, sl, tgt, tl, label_smoothing=1.0)


VARIANTS = [("lstm", dict(peephole=True)), ("lstm", dict(layer_norm=True)),
            ("gru", dict(reset_after=False))]


@pytest.mark.parametrize("cell,kwargs", VARIANTS)
def test_encoder_variants_and_training_gradients(cell, kwargs):
    torch.manual_seed(0)
    m = Seq2Seq(10, 9, emb=6, hidden=8, layers=2, cell=cell, dropout=0.3, **kwargs).to(F64)
    for key, value in kwargs.items():
        assert getattr(m.encoder, key) == value
    src, sl, tgt, tl = _batch()
    m.loss(src, sl, tgt, tl).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("config", CONFIGS)
def test_beam_one_is_greedy(config):
    src, sl, _, _ = _batch()
    for seed in range(3):
        m = _model(seed, **config)
        g, ga = m.greedy(src, sl, max_len=6, return_attention=True)
        for alpha in (0.0, 1.0):
            b, ba = m.beam_search(src, sl, beam=1, max_len=6, length_penalty=alpha,
                                  return_attention=True)
            assert b == g
            for x, y in zip(ba, ga):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@torch.no_grad()
def _score(m, src, sl, seq):
    """Σ log p of ``seq`` (generated tokens, eos included if it ended) by teacher forcing."""
    keys, projected, mask, state, feed = m.encode(src, sl)
    y, total = torch.tensor([BOS]), 0.0
    for tok in seq:
        logp, state, feed, _ = m.step(y, state, feed, (keys, projected, mask))
        total += float(logp[0, tok])
        y = torch.tensor([tok])
    return total


def _brute_force(m, src, sl, symbols, max_len, alpha):
    """Every hypothesis: n − 1 symbols then eos (n ≤ max_len), or max_len symbols."""
    best = None
    for n in range(1, max_len + 1):
        for body in itertools.product(symbols, repeat=n - 1):
            seqs = [list(body) + [EOS]] + ([list(body) + [s] for s in symbols]
                                           if n == max_len else [])
            for seq in seqs:
                score = _score(m, src, sl, seq) / len(seq) ** alpha
                if best is None or score > best[0]:
                    best = (score, [t for t in seq if t != EOS])
    return best


@pytest.mark.parametrize("tgt_vocab,max_len", [(4, 3), (6, 4)])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_finds_brute_force_best(tgt_vocab, max_len, alpha):
    symbols = list(range(3, tgt_vocab))                  # pad and bos are never generated
    src, sl, _, _ = _batch()
    for seed in range(4):
        m = _model(seed, tgt_vocab=tgt_vocab)
        with torch.no_grad():                            # sharpen so hypotheses differ a lot
            m.out.weight.mul_(4.0)
        found = m.beam_search(src, sl, beam=200, max_len=max_len, length_penalty=alpha)
        for b in range(3):
            s = src[b:b + 1, :sl[b]]
            best = _brute_force(m, s, sl[b:b + 1], symbols, max_len, alpha)
            assert found[b] == best[1], (seed, b, found[b], best)
            ended = [BOS] + best[1] + [EOS]                  # the scorer agrees with loss()
            if len(ended) - 1 <= max_len:
                t = torch.tensor([ended])
                with torch.no_grad():
                    nll = m.loss(s, sl[b:b + 1], t, torch.tensor([len(ended)]), reduction="sum")
                assert abs(-nll.item() - _score(m, s, sl[b:b + 1], ended[1:])) < 1e-10


def test_attention_rows():
    m = _model(attention="bahdanau")
    src, sl, _, _ = _batch()
    for decode in (lambda: m.greedy(src, sl, max_len=5, return_attention=True),
                   lambda: m.beam_search(src, sl, beam=3, max_len=5, return_attention=True)):
        tokens, att = decode()
        for b, (toks, a) in enumerate(zip(tokens, att)):
            assert a.shape[1] == src.shape[1]
            assert a.shape[0] in (len(toks), len(toks) + 1)   # + 1: the eos step
            torch.testing.assert_close(a.sum(1), torch.ones(a.shape[0], dtype=F64))
            assert bool((a[:, sl[b]:] == 0).all())
            assert bool((a[:, :sl[b]] > 0).all())


def _reverse_batch(g, n, vocab=8):
    lengths = torch.randint(3, 7, (n,), generator=g)
    src = torch.zeros(n, 6, dtype=torch.long)
    tgt = torch.zeros(n, 8, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        seq = torch.randint(3, 3 + vocab, (L,), generator=g)
        src[i, :L] = seq
        tgt[i, :L + 2] = torch.cat([torch.tensor([BOS]), seq.flip(0), torch.tensor([EOS])])
    return src, lengths, tgt, lengths + 2


def test_learns_to_reverse():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        m = Seq2Seq(11, 11, emb=32, hidden=64, attention="luong-general")
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        start = time.perf_counter()
        for _ in range(600):
            src, sl, tgt, tl = _reverse_batch(g, 32)
            opt.zero_grad()
            m.loss(src, sl, tgt, tl).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
        m.eval()
        src, sl, tgt, tl = _reverse_batch(g, 200)
        out = m.greedy(src, sl, max_len=8)
        want = [tgt[i, 1:tl[i] - 1].tolist() for i in range(200)]
        accuracy = sum(o == w for o, w in zip(out, want)) / 200
        print(f"reversal exact match {accuracy:.3f} after "
              f"{time.perf_counter() - start:.1f} s")
        assert accuracy >= 0.9, accuracy
    finally:
        torch.set_num_threads(threads)


def test_named_errors():
    m = _model()
    src, sl, tgt, tl = _batch()
    with pytest.raises(Seq2SeqInputError, match="empty"):
        m.greedy(src[:, :0], sl)
    with pytest.raises(Seq2SeqInputError, match="lengths must lie"):
        m.greedy(src, torch.tensor([5, 0, 3]))
    with pytest.raises(Seq2SeqInputError, match="lengths must lie"):
        m.greedy(src, torch.tensor([6, 2, 3]))
    with pytest.raises(Seq2SeqInputError, match="lengths must be"):
        m.greedy(src, torch.tensor([5, 2]))
    with pytest.raises(Seq2SeqInputError, match="lengths must be"):
        m.loss(src, sl, tgt, torch.tensor([4, 6]))
    with pytest.raises(Seq2SeqInputError, match="sentences"):
        m.loss(src, sl, tgt[:2], tl[:2])
    with pytest.raises(Seq2SeqInputError, match="beam"):
        m.beam_search(src, sl, beam=0)
    with pytest.raises(Seq2SeqInputError, match="max_len"):
        m.greedy(src, sl, max_len=0)
    with pytest.raises(Seq2SeqInputError, match="max_len"):
        m.beam_search(src, sl, max_len=0)
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(5, 5, attention="luong-concat")
    with pytest.raises(ValueError, match="cell"):
        Seq2Seq(5, 5, cell="rnn")
