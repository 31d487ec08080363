"""lstmkit.CRF, the linear-chain CRF with pytorch-crf's interface.

Outside references: enumeration of every tag sequence (log-likelihood, Viterbi, k-best,
marginals), torch.autograd.gradcheck, pytorch-crf (``torchcrf.CRF``) on the same parameters,
and a regular expression of the BIO/BIOES chunk grammar for the constrained decoder. Checks:

* log p(tags | emissions), the best path, the k best paths in order and the marginals equal
  brute force in float64, with no mask, padded tails and gaps, in both layouts;
* the forward–backward gradient of log Z (log_partition) equals autograd through the same
  recursion (log_partition_ref) at 1e-10, and both pass gradcheck with the log-likelihood;
* every reduction, the decoded paths and every gradient equal pytorch-crf's; so does the
  initialisation under the same seed, and state dicts load both ways;
* constrained CRFs never decode an illegal BIO/BIOES sequence, even with the forbidden
  parameters pushed up and after training steps;
* bad input raises a ValueError/TypeError that names what was expected.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from helpers import TOL, assert_close

from lstmkit import crf as crf_ops
from lstmkit.crf import CRF, REDUCTIONS, allowed_transitions

F64 = torch.float64
T, B, K = 4, 4, 3
MASKS = ("none", "padded", "gaps")


def _crf(num_tags=K, batch_first=False, dtype=F64, scale=1.0, seed=0, **kw) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(num_tags, batch_first, dtype=dtype, **kw)
    with torch.no_grad():
        for p in crf.parameters():
            p.uniform_(-scale, scale)               # well away from the ±0.1 init
    return crf


def _case(kind: str, steps=T, batch=B, num_tags=K, dtype=F64, seed=1):
    """Time-major emissions (T, B, K), tags (T, B) and mask (T, B) or None."""
    g = torch.Generator().manual_seed(seed)
    em = 2 * torch.randn(steps, batch, num_tags, dtype=dtype, generator=g)
    tags = torch.randint(num_tags, (steps, batch), generator=g)
    if kind == "none":
        return em, tags, None
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = steps, 1
    mask = torch.arange(steps).unsqueeze(1) < lengths               # a padded tail
    if kind == "gaps":
        mask = torch.rand(steps, batch, generator=g) < 0.6
        mask[0] = True
    return em, tags, mask


def _layout(batch_first: bool, *tensors):
    return [t if t is None or not batch_first else t.transpose(0, 1) for t in tensors]


def _full(mask, em):
    return torch.ones(em.shape[:2], dtype=torch.bool) if mask is None else mask


def brute_force(crf: CRF, em, mask):
    """Per batch entry: {path over the unmasked steps: s(path)} for every tag sequence."""
    start, trans, end = (p.tolist() for p in crf.transition_scores())
    e, m = em.tolist(), _full(mask, em).tolist()
    out = []
    for b in range(em.shape[1]):
        steps = [t for t in range(em.shape[0]) if m[t][b]]
        scores = {}
        for path in itertools.product(range(crf.num_tags), repeat=len(steps)):
            s = start[path[0]] + end[path[-1]] + sum(e[t][b][y] for t, y in zip(steps, path))
            scores[path] = s + sum(trans[i][j] for i, j in zip(path, path[1:]))
        out.append(scores)
    return out


def _log_z(scores: dict) -> float:
    top = max(scores.values())
    return top + math.log(sum(math.exp(s - top) for s in scores.values()))


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("kind", MASKS)
def test_log_likelihood_equals_brute_force(kind, batch_first):
    crf = _crf(batch_first=batch_first)
    em, tags, mask = _case(kind)
    tags[~_full(mask, em)] = -100                   # padding tags are ignored
    llh = crf(*_layout(batch_first, em, tags, mask), reduction="none")
    m = _full(mask, em)
    want = []
    for b, scores in enumerate(brute_force(crf, em, mask)):
        gold = tuple(tags[m[:, b], b].tolist())
        want.append(scores[gold] - _log_z(scores))
    assert_close(llh, torch.tensor(want, dtype=F64), f"log-likelihood ({kind})", TOL[F64])


def test_reductions():
    crf = _crf()
    em, tags, mask = _case("padded")
    llh = crf(em, tags, mask, reduction="none")
    assert llh.shape == (B,) and bool((llh < 0).all())
    assert_close(crf(em, tags, mask), llh.sum(), "sum (the default)", TOL[F64])
    assert_close(crf(em, tags, mask, reduction="mean"), llh.mean(), "mean", TOL[F64])
    assert_close(crf(em, tags, mask, reduction="token_mean"), llh.sum() / mask.sum(),
                 "token_mean", TOL[F64])


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("kind", MASKS)
def test_viterbi_equals_brute_force_argmax(kind, batch_first):
    crf = _crf(batch_first=batch_first)
    em, _, mask = _case(kind, seed=2)
    em_in, mask_in = _layout(batch_first, em, mask)
    want = [list(max(scores, key=scores.get)) for scores in brute_force(crf, em, mask)]
    assert crf.decode(em_in, mask_in) == want
    best = [paths[0] for paths in crf.decode_nbest(em_in, mask_in, k=1)]
    assert [p for p, _ in best] == want
    for (_, score), scores, path in zip(best, brute_force(crf, em, mask), want):
        assert math.isclose(score, scores[tuple(path)], rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("k", [2, 5, 100])
@pytest.mark.parametrize("kind", MASKS)
def test_nbest_equals_brute_force_top_k(kind, k):
    """k = 100 is more than the 3^4 = 81 paths of the longest sequence: all of them come
    back, no more."""
    crf = _crf()
    em, _, mask = _case(kind, seed=3)
    got = crf.decode_nbest(em, mask, k=k)
    for b, scores in enumerate(brute_force(crf, em, mask)):
        ranked = sorted(scores.items(), key=lambda item: -item[1])[:k]
        assert [p for p, _ in got[b]] == [list(p) for p, _ in ranked], f"batch entry {b}"
        torch.testing.assert_close(torch.tensor([s for _, s in got[b]], dtype=F64),
                                   torch.tensor([s for _, s in ranked], dtype=F64),
                                   atol=TOL[F64], rtol=TOL[F64])


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("kind", MASKS)
def test_marginals_equal_brute_force(kind, batch_first):
    crf = _crf(batch_first=batch_first)
    em, _, mask = _case(kind, seed=4)
    got = crf.marginals(*_layout(batch_first, em, mask))
    got = got.transpose(0, 1) if batch_first else got
    m = _full(mask, em)
    want = torch.zeros(T, B, K, dtype=F64)
    for b, scores in enumerate(brute_force(crf, em, mask)):
        steps = m[:, b].nonzero().flatten().tolist()
        log_z = _log_z(scores)
        for path, s in scores.items():
            for t, y in zip(steps, path):
                want[t, b, y] += math.exp(s - log_z)
    assert_close(got, want, f"marginals ({kind})", TOL[F64])
    assert_close(got.sum(2), m.to(F64), "marginals sum to 1 (0 where masked)", TOL[F64])


def _parameters(crf: CRF):
    return [p.detach().clone().requires_grad_() for p in
            (crf.start_transitions, crf.transitions, crf.end_transitions)]


@pytest.mark.parametrize("partition", [crf_ops.log_partition, crf_ops.log_partition_ref],
                         ids=["forward-backward", "autograd"])
@pytest.mark.parametrize("kind", MASKS)
def test_gradcheck_log_likelihood(kind, partition):
    """Emissions and the three parameter tensors, in float64."""
    crf = _crf()
    em, tags, mask = _case(kind, steps=5, batch=3, seed=5)
    mask = _full(mask, em)
    em.requires_grad_()

    def llh(em, start, trans, end):
        return (crf_ops.gold_score(em, tags, mask, start, trans, end)
                - partition(em, mask, start, trans, end))

    assert torch.autograd.gradcheck(llh, (em, *_parameters(crf)))


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_gradcheck_with_constraints(scheme):
    """Through the module, the forbidden entries −inf: gold tags are the (legal) best path."""
    tags = ["O", "B-X", "I-X"] if scheme == "bio" else ["O", "B-X", "I-X", "E-X", "S-X"]
    crf = CRF.for_scheme(tags, scheme, dtype=F64)
    em, _, mask = _case("padded", steps=5, batch=3, num_tags=len(tags), seed=6)
    gold = _gold(crf.decode(em, mask), mask)
    em.requires_grad_()

    def llh(em, start, trans, end):
        params = {"start_transitions": start, "transitions": trans, "end_transitions": end}
        return torch.func.functional_call(crf, params, (em, gold, mask),
                                          {"reduction": "none"})

    params = _parameters(crf)
    assert bool(torch.isfinite(llh(em, *params)).all())
    assert torch.autograd.gradcheck(llh, (em, *params))


def _gold(paths: list[list[int]], mask) -> torch.Tensor:
    """Decoded paths back into a (T, B) tag tensor (0 at masked steps)."""
    gold = torch.zeros(mask.shape, dtype=torch.long)
    for b, path in enumerate(paths):
        gold[mask[:, b], b] = torch.tensor(path)
    return gold


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "bioes"])
@pytest.mark.parametrize("kind", MASKS)
def test_forward_backward_gradient_equals_autograd(kind, constrained):
    """log_partition (hand-derived backward) against log_partition_ref, random upstream
    gradients, every gradient at 1e-10 in float64. Masked steps hold emissions of 1000 (exp
    overflows): they must not reach any result."""
    tags = ["O"] + [f"{p}-{x}" for x in ("A", "B") for p in "BIES"]
    crf = (CRF.for_scheme(tags, "bioes", dtype=F64) if constrained
           else _crf(len(tags), scale=2.0))
    em, _, mask = _case(kind, steps=9, batch=6, num_tags=len(tags), seed=7)
    mask = _full(mask, em)
    em[~mask] = 1000.0
    upstream = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(8))
    results = []
    for partition in (crf_ops.log_partition, crf_ops.log_partition_ref):
        x = em.clone().requires_grad_()
        crf.zero_grad()
        log_z = partition(x, mask, *crf.transition_scores())
        (log_z * upstream).sum().backward()
        results.append((log_z, x.grad, *(p.grad for p in crf.parameters())))
    for what, got, want in zip(("log Z", "grad emissions", "grad start", "grad end",
                                "grad transitions"), *results):
        assert bool(torch.isfinite(got).all()), what
        assert_close(got, want, what, TOL[F64])


@pytest.mark.filterwarnings("ignore:where received a uint8 condition:UserWarning")  # torchcrf
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
def test_same_as_pytorch_crf(batch_first):
    torchcrf = pytest.importorskip("torchcrf")
    torch.manual_seed(0)
    theirs = torchcrf.CRF(5, batch_first=batch_first)
    torch.manual_seed(0)
    ours = CRF(5, batch_first=batch_first)
    for name, p in theirs.named_parameters():
        assert_close(ours.get_parameter(name), p, f"init of {name}", 0.0)
    assert bool((ours.transitions.abs() <= 0.1).all())
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    em, tags, mask = _case("padded", steps=7, batch=5, num_tags=5, dtype=torch.float32)
    em, tags, mask = _layout(batch_first, em, tags, mask)
    for reduction in REDUCTIONS:
        results = []
        for crf in (ours, theirs):
            x = em.clone().requires_grad_()
            crf.zero_grad()
            llh = crf(x, tags, mask, reduction=reduction)
            (llh if llh.dim() == 0 else llh @ torch.linspace(-1, 2, 5)).backward()
            results.append((llh, x.grad, *(p.grad for p in crf.parameters())))
        for what, got, want in zip(("llh", "grad emissions", "grad start", "grad end",
                                    "grad transitions"), *results):
            assert_close(got, want, f"{reduction}: {what}", 1e-5)
    assert ours.decode(em, mask) == theirs.decode(em, mask)
    assert ours.decode(em) == theirs.decode(em)
    theirs.load_state_dict(ours.state_dict())


# --- constrained transitions -----------------------------------------------------------------

SCHEME_TAGS = {"bio": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"],
               "bioes": ["O"] + [f"{p}-{x}" for x in ("PER", "LOC") for p in "BIES"]}
GRAMMAR = {"bio": r"(O |B-(\w+) (I-\2 )*)*",                  # tags joined by spaces
           "bioes": r"(O |S-\w+ |B-(\w+) (I-\2 )*E-\2 )*"}


def _legal(path: list[int], tags: list[str], scheme: str) -> bool:
    return re.fullmatch(GRAMMAR[scheme], "".join(tags[y] + " " for y in path)) is not None


def test_allowed_transitions_spelled_out():
    start, trans, end = allowed_transitions(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], "bio")
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    assert trans.int().tolist() == [[1, 1, 0, 1, 0],          # from O: no I-X
                                    [1, 1, 1, 1, 0],          # from B-PER: I-PER, not I-LOC
                                    [1, 1, 1, 1, 0],
                                    [1, 1, 0, 1, 1],
                                    [1, 1, 0, 1, 1]]
    start, trans, end = allowed_transitions(["O", "B-X", "I-X", "E-X", "S-X"], "bioes")
    assert start.int().tolist() == [1, 1, 0, 0, 1]
    assert end.int().tolist() == [1, 0, 0, 1, 1]
    assert trans.int().tolist() == [[1, 1, 0, 0, 1],          # from O
                                    [0, 0, 1, 1, 0],          # from B-X: I-X or E-X only
                                    [0, 0, 1, 1, 0],          # from I-X
                                    [1, 1, 0, 0, 1],          # from E-X
                                    [1, 1, 0, 0, 1]]          # from S-X


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_constrained_decoding_is_always_legal(scheme):
    tags = SCHEME_TAGS[scheme]
    crf = CRF.for_scheme(tags, scheme)
    free = CRF(len(tags))
    start, trans, end = allowed_transitions(tags, scheme)
    with torch.no_grad():
        for p, allowed in zip((crf.start_transitions, crf.transitions, crf.end_transitions),
                              (start, trans, end)):
            p.normal_(0, 2).masked_fill_(~allowed, 10.0)   # forbidden ones pushed up
        free.load_state_dict(crf.state_dict())
    em, _, mask = _case("padded", steps=12, batch=300, num_tags=len(tags), dtype=torch.float32)
    em = 3 * em
    illegal = [p for p in free.decode(em, mask) if not _legal(p, tags, scheme)]
    assert len(illegal) > 100                        # the check can fail: unconstrained does
    for path in crf.decode(em, mask):
        assert _legal(path, tags, scheme), [tags[y] for y in path]
    lengths = mask.sum(0).tolist()
    for b, paths in enumerate(crf.decode_nbest(em[:, -40:], mask[:, -40:], k=4), start=260):
        # a BIOES sequence of one step has 3 legal paths (O, S-PER, S-LOC): fewer than k
        assert len(paths) == (3 if scheme == "bioes" and lengths[b] == 1 else 4)
        for path, _ in paths:
            assert _legal(path, tags, scheme), [tags[y] for y in path]


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_training_cannot_enable_a_forbidden_transition(scheme):
    tags = SCHEME_TAGS[scheme]
    crf = CRF.for_scheme(tags, scheme)
    start, trans, end = allowed_transitions(tags, scheme)
    em, gold, mask = _case("padded", steps=8, batch=16, num_tags=len(tags),
                           dtype=torch.float32, seed=9)
    gold = _gold(crf.decode(torch.randn_like(em), mask), mask)   # legal gold tags
    optimiser = torch.optim.SGD(crf.parameters(), lr=5.0)
    for _ in range(5):
        optimiser.zero_grad()
        (-crf(em, gold, mask)).backward()
        for p, allowed in zip((crf.start_transitions, crf.transitions, crf.end_transitions),
                              (start, trans, end)):
            assert bool((p.grad[~allowed] == 0).all())
        optimiser.step()
    s, a, e = crf.transition_scores()
    assert bool(torch.isneginf(a[~trans]).all()) and bool(torch.isfinite(a[trans]).all())
    assert bool(torch.isneginf(s[~start]).all()) and bool(torch.isneginf(e[~end]).all())
    p = crf.marginals(em, mask)
    assert bool((p[0][:, ~start] == 0).all())        # no chunk opens with I-X
    assert all(_legal(path, tags, scheme) for path in crf.decode(em, mask))


def test_constraints_stay_out_of_the_state_dict():
    crf = CRF.for_scheme(SCHEME_TAGS["bio"], "bio")
    assert set(crf.state_dict()) == {"start_transitions", "end_transitions", "transitions"}
    plain = CRF(len(SCHEME_TAGS["bio"]))
    plain.load_state_dict(crf.state_dict())
    crf.load_state_dict(plain.state_dict())
    crf = crf.to(F64)
    assert crf.transitions_allowed.dtype == torch.bool
    assert "scheme='bio'" in repr(crf)


# --- bad input ---------------------------------------------------------------------------------

def _bad_inputs():
    em, tags, mask = _case("padded", dtype=torch.float32)
    first = mask.clone()
    first[0, 1] = False
    nan, inf = em.clone(), em.clone()
    nan[2, 1, 0], inf[1, 0, 2] = float("nan"), float("inf")
    wide = torch.randn(T, B, K + 1)
    out_of_range = tags.clone()
    out_of_range[0, 0] = K
    return {
        "first step masked": ((em, tags, first), ValueError, r"first step .* \[1\]"),
        "wrong num_tags": ((wide, tags, mask), ValueError, r"num_tags=3.*\(4, 4, 4\)"),
        "2-D emissions": ((em[0], tags, mask), ValueError, r"\(seq_len, batch, num_tags\)"),
        "wrong mask shape": ((em, tags, mask.t()[:, :3]), ValueError, r"mask of shape"),
        "tags shape": ((em, tags[:2], mask), ValueError, r"tags of shape"),
        "NaN emissions": ((nan, tags, mask), ValueError, r"finite.*\(2, 1, 0\)"),
        "infinite emissions": ((inf, tags, mask), ValueError, r"finite.*\(1, 0, 2\)"),
        "mask dtype": ((em, tags, mask.long()), TypeError, r"bool or uint8.*int64"),
        "tags dtype": ((em, tags.float(), mask), TypeError, r"integer.*float32"),
        "emissions dtype": ((em.double(), tags, mask), TypeError, r"dtype torch.float32"),
        "tags out of range": ((em, out_of_range, mask), ValueError, r"num_tags=3\), got 3"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_raises_clear_errors(case):
    (em, tags, mask), error, message = _bad_inputs()[case]
    crf = CRF(K)
    with pytest.raises(error, match=message):
        crf(em, tags, mask)
    if not case.startswith("tags"):                  # decode takes no tags
        with pytest.raises(error, match=message):
            crf.decode(em, mask)


def test_bad_arguments_raise_clear_errors():
    em, tags, mask = _case("padded", dtype=torch.float32)
    crf = CRF(K)
    assert torch.equal(crf(em, tags, mask.to(torch.uint8)), crf(em, tags, mask))
    with pytest.raises(ValueError, match=r"reduction must be one of .*'avg'"):
        crf(em, tags, mask, reduction="avg")
    with pytest.raises(ValueError, match=r"k must be an int >= 1, got 0"):
        crf.decode_nbest(em, mask, k=0)
    with pytest.raises(ValueError, match=r"num_tags must be an int >= 1, got 0"):
        CRF(0)
    with pytest.raises(ValueError, match=r"'I_X' is not in the BIO scheme"):
        allowed_transitions(["O", "B-X", "I_X"], "bio")
    with pytest.raises(ValueError, match=r"'E-X' is not in the BIO scheme"):
        allowed_transitions(["O", "B-X", "E-X"], "bio")
    with pytest.raises(ValueError, match=r"scheme must be one of .*'bilou'"):
        allowed_transitions(["O"], "bilou")
    with pytest.raises(ValueError, match=r"transitions must be a bool mask .* \(3, 3\)"):
        CRF(3, constraints=(torch.ones(3, dtype=torch.bool), torch.ones(3, 3),
                            torch.ones(3, dtype=torch.bool)))


def test_masked_steps_do_not_matter():
    """What the emissions and tags hold at masked steps changes no result."""
    crf = _crf()
    em, tags, mask = _case("gaps", steps=6, seed=10)
    other_em, other_tags = em.clone(), tags.clone()
    other_em[~mask], other_tags[~mask] = 1000.0, -100
    for a, b in ((em, tags), (other_em, other_tags)):
        a.requires_grad_()
        crf(a, b, mask, reduction="none").sum().backward()
    assert_close(crf(other_em, other_tags, mask, reduction="none"),
                 crf(em, tags, mask, reduction="none"), "log-likelihood", TOL[F64])
    assert_close(other_em.grad, em.grad, "grad emissions", TOL[F64])
    assert bool((em.grad[~mask] == 0).all())
    assert crf.decode(other_em, mask) == crf.decode(em, mask)
    assert crf.decode_nbest(other_em, mask, k=3) == crf.decode_nbest(em, mask, k=3)
    assert_close(crf.marginals(other_em, mask), crf.marginals(em, mask), "marginals", TOL[F64])


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "bioes"])
@pytest.mark.parametrize("kind", MASKS)
def test_exp_space_recursions_equal_log_space(kind, constrained):
    """forward/backward_scores_fast and the transition gradient as one matmul against the
    log-space recursions, at 1e-10 in float64; on ordinary scores none falls back, whatever
    junk the masked steps hold (their sums underflow but do not count)."""
    tags = ["O"] + [f"{p}-{x}" for x in ("A", "B") for p in "BIES"]
    crf = (CRF.for_scheme(tags, "bioes", dtype=F64) if constrained
           else _crf(len(tags), scale=3.0))
    em, _, mask = _case(kind, steps=9, batch=6, num_tags=len(tags), seed=11)
    mask = _full(mask, em)
    em[~mask] = 1000 * torch.randn(int((~mask).sum()), len(tags), dtype=F64)   # padding junk
    start, trans, end = (p.detach() for p in crf.transition_scores())
    alpha = crf_ops.forward_scores_fast(em, mask, start, trans)
    beta = crf_ops.backward_scores_fast(em, mask, trans, end)
    assert alpha is not None and beta is not None
    assert_close(alpha, crf_ops.forward_scores(em, mask, start, trans), "alpha", TOL[F64])
    assert_close(beta, crf_ops.backward_scores(em, mask, trans, end), "beta", TOL[F64])
    log_z = torch.logsumexp(alpha[-1] + end, dim=1)
    grad = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(12))
    pair = crf_ops._pair_marginal_sum_fast(em, mask, trans, alpha, beta, log_z, grad)
    assert pair is not None
    assert_close(pair, crf_ops._pair_marginal_sum(em, mask, trans, alpha, beta, log_z, grad),
                 "transition gradient", TOL[F64])


def test_underflow_falls_back_to_log_space():
    """Scores 200-300 nats apart in float32: every exp-space sum underflows (or would
    overflow), each part hands over to the log-space recursion, and the log-likelihood and
    its gradients still equal float64's."""
    em = torch.tensor([[[0.0, -200, -200]], [[-300, 300, -300]], [[0.0, 0, 0]]])  # (3, 1, 3)
    tags, mask = torch.tensor([[0], [1], [1]]), torch.ones(3, 1, dtype=torch.bool)
    crf = CRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.zero_()
        crf.transitions[0, 1] = -200.0
    start, trans, end = (p.detach() for p in crf.transition_scores())
    alpha = crf_ops.forward_scores(em, mask, start, trans)
    beta = crf_ops.backward_scores(em, mask, trans, end)
    log_z = torch.logsumexp(alpha[-1] + end, dim=1)
    assert crf_ops.forward_scores_fast(em, mask, start, trans) is None
    assert crf_ops.backward_scores_fast(em, mask, trans, end) is None
    assert crf_ops._pair_marginal_sum_fast(em, mask, trans, alpha, beta, log_z,
                                           torch.ones(1)) is None
    results = []
    for dtype in (torch.float32, F64):
        model = CRF(3, dtype=dtype)
        model.load_state_dict(crf.state_dict())
        x = em.to(dtype, copy=True).requires_grad_()
        llh = model(x, tags, mask)
        llh.backward()
        results.append((llh, x.grad, *(p.grad for p in model.parameters())))
    for what, got, want in zip(("llh", "grad emissions", "grad start", "grad end",
                                "grad transitions"), *results):
        assert bool(torch.isfinite(got).all()), what
        torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-4, msg=what)
