r"""``lstmkit.CRF``: a linear-chain conditional random field with pytorch-crf's interface.

Emissions ``e_t(y)`` score tag ``y`` at step ``t`` (a BiLSTM's outputs, say); the parameters are
the start scores ``π = start_transitions`` (K,), the end scores ``η = end_transitions`` (K,) and
``A = transitions`` (K, K), ``A[i, j]`` the score of moving from tag i to tag j. A tag sequence
``y = y_1 … y_L`` scores

    s(y) = π[y_1] + e_1(y_1) + Σ_{t=2..L} (A[y_{t-1}, y_t] + e_t(y_t)) + η[y_L]
    log p(y | e) = s(y) − log Z,          log Z = log Σ_y' exp s(y')

and the forward (α) and backward (β) recursions, in log space, give Z and the marginals:

    α_1(j) = π_j + e_1(j)              α_t(j) = logsumexp_i (α_{t-1}(i) + A[i, j]) + e_t(j)
    β_L(i) = η_i                       β_t(i) = logsumexp_j (A[i, j] + e_{t+1}(j) + β_{t+1}(j))
    log Z = logsumexp_j (α_L(j) + η_j)
    p(y_t = j) = exp(α_t(j) + β_t(j) − log Z)
    p(y_{t-1} = i, y_t = j) = exp(α_{t-1}(i) + A[i, j] + e_t(j) + β_t(j) − log Z)

The gradient of log Z is these marginals (∂/∂e_t(j), ∂/∂π, ∂/∂η: unary; ∂/∂A: pairwise summed
over t), which is how :func:`log_partition` computes its backward pass; :func:`log_partition_ref`
is the log-space forward recursion differentiated by autograd, kept as the reference.
:func:`log_partition` runs each recursion in exp space, one (B, K) @ (K, K) product per step
(see ``forward_scores_fast``), and falls back to the log-space one (a (B, K, K) logsumexp per
step) where a sum would underflow. Viterbi
replaces logsumexp by max; the k-best Viterbi keeps the k best partial paths per tag.

A masked step is skipped: α, β and the Viterbi scores carry through it unchanged, so the chain
runs over the unmasked steps (a padded tail, or gaps such as non-first sub-word tokens). The
first step of every sequence must be unmasked, as in pytorch-crf. All loops are over time only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

REDUCTIONS = ("none", "sum", "mean", "token_mean")
SCHEMES = ("bio", "bioes")
_PAIR_BLOCK = 1 << 16        # elements of one (t, B, K, K) block of the transition gradient


# --- the recursions: emissions (T, B, K), mask (T, B) bool, time-major ---------------------

def forward_scores(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
    """α_t(j) for every step, (T, B, K); a masked step carries α_{t-1}."""
    trans_t = trans.t().contiguous()                                  # (K_to, K_from)
    alpha = start + em[0]                                             # (B, K)
    alphas = [alpha]
    for t in range(1, em.shape[0]):
        step = torch.logsumexp(alpha.unsqueeze(1) + trans_t, dim=2)   # (B, K_to, K_from) → (B, K)
        alpha = torch.where(mask[t].unsqueeze(1), step + em[t], alpha)
        alphas.append(alpha)
    return torch.stack(alphas)


def backward_scores(em: Tensor, mask: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    """β_t(i) for every step, (T, B, K); a masked step t+1 passes β_{t+1} through."""
    beta = end.expand(em.shape[1], -1)                                # (B, K)
    betas = [beta]
    for t in range(em.shape[0] - 1, 0, -1):
        step = torch.logsumexp(trans + (em[t] + beta).unsqueeze(1), dim=2)  # (B, K_from, K_to)
        beta = torch.where(mask[t].unsqueeze(1), step, beta)
        betas.append(beta)
    return torch.stack(betas[::-1])


def log_partition_ref(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor,
                      end: Tensor) -> Tensor:
    """log Z (B,): the forward recursion, differentiated by autograd (the reference)."""
    return torch.logsumexp(forward_scores(em, mask, start, trans)[-1] + end, dim=1)


def _pair_marginal_sum(em: Tensor, mask: Tensor, trans: Tensor, alpha: Tensor, beta: Tensor,
                       log_z: Tensor, grad: Tensor) -> Tensor:
    """Σ_{t≥2 unmasked, b} grad_b · p_b(y_{t-1} = i, y_t = j), (K, K), in blocks of steps."""
    T, B, K = em.shape
    after = em[1:] + beta[1:] - log_z.unsqueeze(1)                    # e_t(j) + β_t(j) − log Z
    after = after.masked_fill(~mask[1:].unsqueeze(2), float("-inf"))  # (T-1, B, K)
    weight = torch.where(mask[1:], grad, 0)                           # (T-1, B)
    before = alpha[:-1]                                               # α_{t-1}(i), (T-1, B, K)
    total = trans.new_zeros(K, K)
    block = max(1, _PAIR_BLOCK // (B * K * K))
    for s in range(0, T - 1, block):
        pair = torch.exp(before[s:s + block].unsqueeze(3) + trans
                         + after[s:s + block].unsqueeze(2))           # (t, B, K_from, K_to)
        total += torch.einsum("tbij,tb->ij", pair, weight[s:s + block])
    return total


# --- the same recursions in exp space: a (B, K) @ (K, K) product per step ------------------
#
#   α_t(j) = log Σ_i exp(α_{t-1}(i) − m) · exp(A[i, j] − c_j)  + m + c_j + e_t(j)
#
# with m = max_i α_{t-1}(i) and c_j = max_i A[i, j], so every factor is ≤ 1 and nothing
# overflows (β alike, with row maxima). A sum can underflow where scores span more than
# ~87 nats (float32; ~708 in float64) around an improbable tag; each function checks its
# sums at the unmasked steps and returns None then, and the caller takes the log-space path.

def _stabiliser(x: Tensor, dim: int) -> Tensor:
    """max over ``dim`` (kept), finite: an all −inf slice gives exp(−inf − finfo.min) = 0."""
    return x.amax(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).min)


def _all_normal(sums: list[Tensor], mask: Tensor) -> bool:
    """No sum (B, K) at an unmasked step is below the smallest normal number (or NaN)."""
    if not sums:
        return True
    small = ~(torch.stack(sums) >= torch.finfo(sums[0].dtype).tiny)  # (T-1, B, K)
    return not bool((small & mask[1:].unsqueeze(2)).any())


def forward_scores_fast(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor | None:
    """α as :func:`forward_scores`, a matmul per step; None if a sum underflowed."""
    c = _stabiliser(trans, 0)                                         # (1, K_to)
    E = torch.exp(trans - c)                                          # (K_from, K_to)
    shifted = em + c                                                  # c_j + e_t(j)
    on = mask.unsqueeze(2)
    alpha = start + em[0]                                             # (B, K)
    alphas, sums = [alpha], []
    for t in range(1, em.shape[0]):
        m = _stabiliser(alpha, 1)                                     # (B, 1)
        u = torch.exp(alpha - m) @ E                                  # (B, K_to)
        alpha = torch.where(on[t], torch.log(u) + m + shifted[t], alpha)
        alphas.append(alpha)
        sums.append(u)
    return torch.stack(alphas) if _all_normal(sums, mask) else None


def backward_scores_fast(em: Tensor, mask: Tensor, trans: Tensor, end: Tensor) -> Tensor | None:
    """β as :func:`backward_scores`, a matmul per step; None if a sum underflowed."""
    c = _stabiliser(trans, 1)                                         # (K_from, 1)
    E_t = torch.exp(trans - c).t()                                    # (K_to, K_from)
    c = c.t()                                                         # (1, K_from)
    on = mask.unsqueeze(2)
    beta = end.expand(em.shape[1], -1)                                # (B, K)
    betas, sums = [beta], []
    for t in range(em.shape[0] - 1, 0, -1):
        after = em[t] + beta                                          # e_t(j) + β_t(j)
        r = _stabiliser(after, 1)                                     # (B, 1)
        u = torch.exp(after - r) @ E_t                                # (B, K_from)
        beta = torch.where(on[t], torch.log(u) + r + c, beta)
        betas.append(beta)
        sums.append(u)
    return torch.stack(betas[::-1]) if _all_normal(sums[::-1], mask) else None


def _pair_marginal_sum_fast(em: Tensor, mask: Tensor, trans: Tensor, alpha: Tensor,
                            beta: Tensor, log_z: Tensor, grad: Tensor) -> Tensor | None:
    """:func:`_pair_marginal_sum` as one (K, T·B) @ (T·B, K) product:

        Σ_{t,b} w_tb · exp(α_{t-1}(i) − a) · exp(e_t(j) + β_t(j) + c_j − r) · exp(A[i, j] − c_j)

    with a, r the maxima over i, j at (t, b) and w_tb = grad_b · exp(a + r − log Z_b); None if
    some w would be too large for the product to stay finite (scores far apart)."""
    T, B, K = em.shape
    c = _stabiliser(trans, 0)                                         # (1, K_to)
    before = alpha[:-1]                                               # (T-1, B, K)
    after = em[1:] + beta[1:] + c
    a, r = _stabiliser(before, 2), _stabiliser(after, 2)              # (T-1, B, 1)
    s = (a + r).squeeze(2) - log_z                                    # (T-1, B)
    on = mask[1:]
    limit = 0.5 * math.log(torch.finfo(em.dtype).max)                 # e^limit · T·B stays finite
    if T > 1 and float(torch.where(on, s, float("-inf")).max()) > limit:
        return None
    w = torch.where(on, grad * torch.exp(s), 0)                       # (T-1, B)
    P = (torch.exp(before - a) * w.unsqueeze(2)).reshape(-1, K)       # (T-1·B, K_from)
    Q = torch.exp(after - r).reshape(-1, K)                           # (T-1·B, K_to)
    return (P.t() @ Q) * torch.exp(trans - c)

class _LogPartition(torch.autograd.Function):
    """log Z (B,) by the forward recursion; backward by forward–backward (the marginals)."""

    @staticmethod
    def forward(ctx, em, mask, start, trans, end):
        alpha = forward_scores_fast(em, mask, start, trans)           # (T, B, K)
        if alpha is None:                                             # underflow: log space
            alpha = forward_scores(em, mask, start, trans)
        log_z = torch.logsumexp(alpha[-1] + end, dim=1)               # (B,)
        ctx.save_for_backward(em, mask, trans, end, alpha, log_z)
        return log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        em, mask, trans, end, alpha, log_z = ctx.saved_tensors
        beta = backward_scores_fast(em, mask, trans, end)             # (T, B, K)
        if beta is None:
            beta = backward_scores(em, mask, trans, end)
        g = grad.unsqueeze(1)                                         # (B, 1)
        unary = torch.exp(alpha + beta - log_z.unsqueeze(1)) * mask.unsqueeze(2)  # p(y_t = j)
        d_em = unary * g
        d_start = d_em[0].sum(0)
        d_end = (torch.exp(alpha[-1] + end - log_z.unsqueeze(1)) * g).sum(0)   # p(y_L = j)
        d_trans = _pair_marginal_sum_fast(em, mask, trans, alpha, beta, log_z, grad)
        if d_trans is None:
            d_trans = _pair_marginal_sum(em, mask, trans, alpha, beta, log_z, grad)
        return d_em, None, d_start, d_trans, d_end


def log_partition(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor,
                  end: Tensor) -> Tensor:
    """log Z (B,), with the hand-derived (forward–backward) gradient."""
    return _LogPartition.apply(em, mask, start, trans, end)


def gold_score(em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor,
               end: Tensor) -> Tensor:
    """s(y) (B,) of the given tags over the unmasked steps, without a loop over time."""
    T, B, _ = em.shape
    tags = tags.masked_fill(~mask, 0)                                 # padding may hold -100
    steps = torch.arange(T, device=em.device).unsqueeze(1).expand(T, B)
    last = torch.where(mask, steps, -1).cummax(dim=0).values          # last unmasked step ≤ t
    prev = tags.gather(0, last[:-1])                                  # y at the step before t
    unary = em.gather(2, tags.unsqueeze(2)).squeeze(2)                # e_t(y_t), (T, B)
    pair = trans[prev, tags[1:]]                                      # A[y_prev, y_t], (T-1, B)
    return (start[tags[0]] + torch.where(mask, unary, 0).sum(0)
            + torch.where(mask[1:], pair, 0).sum(0) + end[tags.gather(0, last[-1:])[0]])


def log_likelihood(em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor,
                   end: Tensor) -> Tensor:
    """log p(tags | em) = s(tags) − log Z, (B,)."""
    return gold_score(em, tags, mask, start, trans, end) - log_partition(em, mask, start,
                                                                         trans, end)


def viterbi(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor,
            end: Tensor) -> tuple[Tensor, Tensor]:
    """The best path (T, B) (the last tag repeated over a padded tail) and its score (B,)."""
    T, B, K = em.shape
    trans_t = trans.t().contiguous()                                  # (K_to, K_from)
    keep = torch.arange(K, device=em.device).expand(B, K)             # backpointer of a masked step
    score = start + em[0]                                             # (B, K)
    history = []
    for t in range(1, T):
        best, arg = (score.unsqueeze(1) + trans_t).max(dim=2)         # (B, K_to, K_from) → (B, K)
        on = mask[t].unsqueeze(1)
        score = torch.where(on, best + em[t], score)
        history.append(torch.where(on, arg, keep))
    best_score, tag = (score + end).max(dim=1)                        # (B,)
    path = [tag]
    for arg in reversed(history):
        tag = arg.gather(1, tag.unsqueeze(1)).squeeze(1)
        path.append(tag)
    return torch.stack(path[::-1]), best_score


def viterbi_nbest(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor,
                  k: int) -> tuple[Tensor, Tensor]:
    """The k best paths (T, B, k) and their scores (B, k), best first (−inf: no such path).

    δ_t(j, r), (B, K, k), is the score of the r-th best partial path ending in tag j at t;
    its backpointer is i·k + r' (the r'-th best path ending in tag i at t−1).
    """
    T, B, K = em.shape
    trans_t = trans.t().contiguous().unsqueeze(2)                     # (K_to, K_from, 1)
    keep = torch.arange(K * k, device=em.device).view(K, k).expand(B, K, k)
    delta = em.new_full((B, K, k), float("-inf"))
    delta[:, :, 0] = start + em[0]
    history = []
    for t in range(1, T):
        cand = (delta.unsqueeze(1) + trans_t).reshape(B, K, K * k)    # (B, K_to, K_from·k)
        best, arg = cand.topk(k, dim=2)                               # (B, K, k), sorted
        on = mask[t].view(B, 1, 1)
        delta = torch.where(on, best + em[t].unsqueeze(2), delta)
        history.append(torch.where(on, arg, keep).reshape(B, K * k))
    scores, state = (delta + end.unsqueeze(1)).reshape(B, K * k).topk(k, dim=1)  # (B, k)
    path = [state // k]
    for arg in reversed(history):
        state = arg.gather(1, state)
        path.append(state // k)
    return torch.stack(path[::-1]), scores


# --- tagging schemes --------------------------------------------------------------------------

def _parse_tag(tag: str, scheme: str) -> tuple[str, str | None]:
    prefixes = {"bio": "BI", "bioes": "BIES"}[scheme]
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or len(prefix) != 1 or prefix not in prefixes or not kind:
        raise ValueError(f"allowed_transitions: tag {tag!r} is not in the {scheme.upper()} "
                         f"scheme: expected 'O' or one of {', '.join(p + '-' for p in prefixes)} "
                         f"followed by a type, e.g. 'B-PER'")
    return prefix, kind


def _may_follow(prev: tuple[str, str | None], cur: tuple[str, str | None], scheme: str) -> bool:
    """Whether tag ``cur`` may follow ``prev``; the start and the end act as an 'O'."""
    (p, x), (c, y) = prev, cur
    if scheme == "bio":                          # I-X continues a chunk of X, nothing else does
        return c != "I" or (p in "BI" and x == y)
    if p in "BI":                                # BIOES: an open chunk of X goes on with I/E-X
        return c in "IE" and x == y
    return c in "OBS"                            # after O, E-X or S-X: O or a new chunk


def allowed_transitions(tags: Sequence[str], scheme: str = "bio") -> tuple[Tensor, Tensor, Tensor]:
    """Which starts, transitions (from tag i to tag j) and ends ``scheme`` allows: bool masks
    ``(start (K,), transitions (K, K), end (K,))`` for tags such as ``["O", "B-PER", "I-PER"]``.

    ``"bio"`` (IOB2): a chunk is ``B-X I-X*``, so I-X comes only after B-X or I-X — never first
    or after O or another type. ``"bioes"`` (IOBES): a chunk is ``B-X I-X* E-X`` or ``S-X``; a
    sequence starts and ends outside a chunk.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"allowed_transitions: scheme must be one of {SCHEMES}, got {scheme!r}")
    if isinstance(tags, str) or len(tags) == 0:
        raise ValueError(f"allowed_transitions: tags must be a non-empty list of tag names, "
                         f"got {tags!r}")
    if len(set(tags)) != len(tags):
        raise ValueError(f"allowed_transitions: tags must be distinct, got {list(tags)}")
    parsed = [_parse_tag(t, scheme) for t in tags]
    outside = ("O", None)
    start = torch.tensor([_may_follow(outside, c, scheme) for c in parsed])
    trans = torch.tensor([[_may_follow(p, c, scheme) for c in parsed] for p in parsed])
    end = torch.tensor([_may_follow(p, outside, scheme) for p in parsed])
    return start, trans, end


# --- the module -------------------------------------------------------------------------------

class CRF(nn.Module):
    r"""A linear-chain CRF, a drop-in for pytorch-crf's ``torchcrf.CRF`` (see the module
    docstring for the equations).

    Parameters ``start_transitions`` (K,), ``end_transitions`` (K,) and ``transitions`` (K, K),
    ``transitions[i, j]`` = score of tag i followed by tag j, each initialised uniform(−0.1, 0.1)
    in that order, as pytorch-crf does; state dicts load either way.

    ``crf(emissions, tags, mask=None, reduction="sum")`` → log p(tags | emissions): emissions
    (seq_len, batch, K) — (batch, seq_len, K) with ``batch_first`` —, tags and mask (seq_len,
    batch) (bool or uint8; tags at masked steps are ignored); ``reduction`` ``"none"`` (batch,),
    ``"sum"``, ``"mean"`` (over the batch) or ``"token_mean"`` (over the unmasked steps).
    Negate it for a loss.

    ``decode(emissions, mask=None)`` → the Viterbi path of each sequence (list of lists of
    ints, one tag per unmasked step); ``decode_nbest(emissions, mask=None, k=1)`` → for each
    sequence the k best paths as ``(path, score)`` pairs, best first, ``score`` = s(path)
    (log p(path) = score − log Z); fewer than k where fewer paths have a finite score.
    ``marginals(emissions, mask=None)`` → p(y_t = j), in the emissions' layout, 0 at masked steps.

    ``constraints=(start, transitions, end)``: bool masks, True = allowed (see
    :func:`allowed_transitions`); a forbidden start, transition or end scores −inf whatever the
    parameters hold, so training cannot re-enable it. The masks are buffers kept out of the
    state dict: the constructor (or :meth:`for_scheme`) rebuilds them.
    """

    def __init__(self, num_tags: int, batch_first: bool = False, *,
                 constraints: tuple[Tensor, Tensor, Tensor] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        if not _positive_int(num_tags):
            raise ValueError(f"CRF: num_tags must be an int >= 1, got {num_tags!r}")
        super().__init__()
        self.num_tags = int(num_tags)
        self.batch_first = bool(batch_first)
        self.tags: list[str] | None = None
        self.scheme: str | None = None
        factory = {"device": device, "dtype": dtype}
        self.start_transitions = nn.Parameter(torch.empty(num_tags, **factory))
        self.end_transitions = nn.Parameter(torch.empty(num_tags, **factory))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags, **factory))
        self.reset_parameters()
        masks = (None,) * 3 if constraints is None else _check_constraints(constraints, num_tags)
        for name, m in zip(("start_allowed", "transitions_allowed", "end_allowed"), masks):
            if m is not None:
                m = m.clone() if device is None else m.to(device, copy=True)
            self.register_buffer(name, m, persistent=False)

    @classmethod
    def for_scheme(cls, tags: Sequence[str], scheme: str = "bio", batch_first: bool = False,
                   **kwargs) -> CRF:
        """A CRF over ``tags`` that never starts, continues or ends a chunk illegally in
        ``scheme`` ("bio" or "bioes"); ``crf.tags`` keeps the tag names."""
        crf = cls(len(tags), batch_first, constraints=allowed_transitions(tags, scheme), **kwargs)
        crf.tags, crf.scheme = list(tags), scheme
        return crf

    def reset_parameters(self) -> None:
        """Draw the start, end and transition scores anew from U(−0.1, 0.1), as pytorch-crf does."""
        for p in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        extra = f", scheme={self.scheme!r}" if self.scheme else (
            ", constrained" if self.transitions_allowed is not None else "")
        return f"num_tags={self.num_tags}, batch_first={self.batch_first}{extra}"

    def transition_scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """(start, transitions, end) as used: the parameters, −inf where forbidden."""
        params = (self.start_transitions, self.transitions, self.end_transitions)
        if self.transitions_allowed is None:
            return params
        masks = (self.start_allowed, self.transitions_allowed, self.end_allowed)
        return tuple(p.masked_fill(~m, float("-inf")) for p, m in zip(params, masks))

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
                reduction: str = "sum") -> Tensor:
        """log p(tags | emissions), reduced over the batch as `reduction` says."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"CRF: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        em, tags, mask = self._prepare(emissions, tags, mask)
        llh = log_likelihood(em, tags, mask, *self.transition_scores())     # (B,)
        if reduction == "none":
            return llh
        if reduction == "sum":
            return llh.sum()
        if reduction == "mean":
            return llh.mean()
        return llh.sum() / mask.sum()

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """The Viterbi path of each sequence: a list of tags, one per unmasked step."""
        em, _, mask = self._prepare(emissions, None, mask)
        paths, _ = viterbi(em, mask, *self.transition_scores())             # (T, B)
        return _split(paths.t(), mask.t())

    @torch.no_grad()
    def decode_nbest(self, emissions: Tensor, mask: Tensor | None = None,
                     k: int = 1) -> list[list[tuple[list[int], float]]]:
        """The k best paths of each sequence, best first, as (path, score) pairs; score = s(path),
        so log p(path | emissions) = score − log Z. Fewer than k where fewer paths are possible."""
        if not _positive_int(k):
            raise ValueError(f"CRF.decode_nbest: k must be an int >= 1, got {k!r}")
        k = int(k)
        em, _, mask = self._prepare(emissions, None, mask)
        paths, scores = viterbi_nbest(em, mask, *self.transition_scores(), k)  # (T, B, k)
        B = em.shape[1]
        found = _split(paths.permute(1, 2, 0).reshape(B * k, -1),
                       mask.t().repeat_interleave(k, dim=0))
        return [[(found[b * k + r], s) for r, s in enumerate(row) if s != float("-inf")]
                for b, row in enumerate(scores.tolist())]

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """p(y_t = j | emissions) by forward–backward, in the emissions' layout; 0 where masked."""
        em, _, mask = self._prepare(emissions, None, mask)
        start, trans, end = self.transition_scores()
        alpha = forward_scores(em, mask, start, trans)
        log_z = torch.logsumexp(alpha[-1] + end, dim=1)
        beta = backward_scores(em, mask, trans, end)
        p = torch.exp(alpha + beta - log_z.unsqueeze(1)) * mask.unsqueeze(2)  # (T, B, K)
        return p.transpose(0, 1) if self.batch_first else p

    # --- input checks: messages name the expected and the received shape or dtype -----------

    def _prepare(self, emissions: object, tags: object, mask: object
                 ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Check the inputs; return them time-major: em (T, B, K), tags (T, B), mask (T, B)."""
        steps = "(batch, seq_len)" if self.batch_first else "(seq_len, batch)"
        _check_emissions(emissions, self.num_tags, self.batch_first, self.transitions)
        shape = tuple(emissions.shape[:2])
        if tags is not None:
            _check_steps_tensor("tags", tags, shape, steps)
            if tags.is_floating_point() or tags.is_complex() or tags.dtype == torch.bool:
                raise TypeError(f"CRF: tags must be an integer tensor (torch.long), "
                                f"got dtype {tags.dtype}")
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=emissions.device)
        else:
            _check_steps_tensor("mask", mask, shape, steps)
            if mask.dtype not in (torch.bool, torch.uint8):
                raise TypeError(f"CRF: mask must be a bool or uint8 tensor, got dtype "
                                f"{mask.dtype} (use mask.bool())")
            mask = mask.bool()
        if self.batch_first:
            emissions, mask = emissions.transpose(0, 1), mask.t()
            tags = None if tags is None else tags.t()
        if not bool(mask[0].all()):
            first = "mask[:, 0]" if self.batch_first else "mask[0]"
            masked = (~mask[0]).nonzero().flatten().tolist()
            raise ValueError(f"CRF: the first step of every sequence must be unmasked ({first} "
                             f"all True), got it masked for batch entries {masked}")
        if tags is not None:
            _check_tag_range(tags, mask, self.num_tags)
        return emissions, tags, mask


def _check_emissions(emissions: object, num_tags: int, batch_first: bool, param: Tensor) -> None:
    layout = "(batch, seq_len, num_tags)" if batch_first else "(seq_len, batch, num_tags)"
    if not isinstance(emissions, Tensor):
        raise TypeError(f"CRF: emissions must be a Tensor {layout}, "
                        f"got {type(emissions).__name__}")
    if emissions.dim() != 3 or emissions.shape[2] != num_tags:
        raise ValueError(f"CRF: expected emissions of shape {layout} with num_tags={num_tags}, "
                         f"got shape {tuple(emissions.shape)}")
    if emissions.shape[0] == 0 or emissions.shape[1] == 0:
        raise ValueError(f"CRF: emissions {layout} are empty, got shape "
                         f"{tuple(emissions.shape)}; a CRF needs at least one step")
    if not emissions.is_floating_point() or emissions.dtype != param.dtype:
        raise TypeError(f"CRF: emissions must have the parameters' dtype {param.dtype}, got "
                        f"{emissions.dtype} (convert one: crf.to({emissions.dtype}) or "
                        f"emissions.to({param.dtype}))")
    if emissions.device != param.device:
        raise ValueError(f"CRF: emissions are on {emissions.device} but the parameters on "
                         f"{param.device}")
    finite = torch.isfinite(emissions)
    if not bool(finite.all()):
        where = tuple((~finite).nonzero()[0].tolist())
        raise ValueError(f"CRF: emissions must be finite, got {int((~finite).sum())} NaN or "
                         f"infinite values (the first at index {where}); to forbid a tag use "
                         f"constraints, not -inf emissions")


def _check_steps_tensor(name: str, t: object, shape: tuple[int, int], steps: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"CRF: {name} must be a Tensor {steps}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"CRF: expected {name} of shape {steps} = {shape} (the emissions' "
                         f"first two dimensions), got {tuple(t.shape)}")


def _check_tag_range(tags: Tensor, mask: Tensor, num_tags: int) -> None:
    bad = mask & ((tags < 0) | (tags >= num_tags))
    if bool(bad.any()):
        value = int(tags[bad][0])
        raise ValueError(f"CRF: tags at unmasked steps must be in [0, num_tags={num_tags}), "
                         f"got {value}")


def _check_constraints(constraints: object, num_tags: int) -> tuple[Tensor, Tensor, Tensor]:
    K = num_tags
    if not isinstance(constraints, (tuple, list)) or len(constraints) != 3:
        raise TypeError("CRF: constraints must be a tuple (start (K,), transitions (K, K), "
                        "end (K,)) of bool masks, e.g. from allowed_transitions()")
    masks = tuple(torch.as_tensor(m) for m in constraints)
    for name, m, want in zip(("start", "transitions", "end"), masks, ((K,), (K, K), (K,))):
        if m.dtype != torch.bool or tuple(m.shape) != want:
            raise ValueError(f"CRF: constraints {name} must be a bool mask (True = allowed) of "
                             f"shape {want}, got {m.dtype} {tuple(m.shape)}")
    if not bool(masks[0].any()) or not bool(masks[2].any()):
        raise ValueError("CRF: constraints must allow at least one start tag and one end tag")
    return masks


def _split(paths: Tensor, mask: Tensor) -> list[list[int]]:
    """Rows of ``paths`` (N, T) at the unmasked steps of ``mask`` (N, T), as lists of ints."""
    flat = paths[mask].tolist()
    out, i = [], 0
    for n in mask.sum(1).tolist():
        out.append(flat[i:i + n])
        i += n
    return out


def _positive_int(n: object) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
