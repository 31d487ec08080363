"""The three forms of the mLSTM (:mod:`lstmkit.cells.mlstm`) over a whole sequence.

Its gates read only x_t, so the sequence can be computed three ways, all stabilised and all
the same function (they are tested equal in float64):

* :func:`mlstm_recurrent` — the step of :func:`lstmkit.cells.mlstm.mlstm_step`, T times: the
  reference, and the form of step-by-step inference. O(T·d²) per head.
* :func:`mlstm_parallel` — every output at once from the T×T decay matrix
  D_ts = exp(F_t − F_s + ĩ_s − m_t) for s ≤ t (F_t = Σ_{r≤t} log f_r), row-stabilised:
  h̃_t = Σ_s D_ts (q_tᵀk_s) v_s / max(|Σ_s D_ts q_tᵀk_s|, exp(−m_t)), with
  m_t = max_s (F_t − F_s + ĩ_s) (and F_t + m_0 for the initial state). O(T²·d) per head.
* :func:`mlstm_chunkwise` — chunks of L steps: the state at every chunk start by the
  recurrence between chunks (one step per chunk), then the parallel form inside every chunk
  from its start state, all chunks at once. O(T·L·d + T·d²) per head, and O(T·L +
  (T/L)·d²) memory.

Shapes: q, k, v (…, T, d) with k already scaled by 1/√d; log_i = ĩ and log_f = log f
(…, T); the state (C' (…, d, d), n' (…, d), m (…)) as in :mod:`lstmkit.cells.mlstm`.
Each returns h̃ (…, T, d), the final state, and the stabilised denominator with its m
((…, T) each; the true normaliser max(|n_tᵀq_t|, 1) is denominator · exp(m)).

Sequences that end early (packed input) are run by the parallel and chunkwise forms with
*neutral steps* after their end (``lstmkit.mLSTM`` sets them; the chunkwise form also pads
the last chunk with them): ĩ = −∞ and log f = 0, so that C', n' and m pass through
unchanged and the final state is the state at the sequence's own end.
:func:`mlstm_recurrent` instead takes a ``valid`` mask and keeps the state where it is
False (an independent check of the above).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.mlstm import State, mlstm_step, stabilised_denominator


def zero_state(q: Tensor) -> State:
    """C' = 0, n' = 0, m = 0 for the leading dimensions of ``q`` (…, T, d)."""
    *lead, _, d = q.shape
    return q.new_zeros(*lead, d, d), q.new_zeros(*lead, d), q.new_zeros(*lead)


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
                    state: State | None = None, valid: Tensor | None = None):
    """Step by step. ``valid`` (…, T) bool, where given: steps where it is False leave the
    state unchanged (their output is computed but meaningless)."""
    state = zero_state(q) if state is None else state
    hs, dens, ms = [], [], []
    # unbind, not q[..., t, :]: the backward of T selects would zero-fill T full tensors
    steps = zip(q.unbind(-2), k.unbind(-2), v.unbind(-2), log_i.unbind(-1), log_f.unbind(-1))
    keeps = valid.unbind(-1) if valid is not None else None
    for t, (q_t, k_t, v_t, i_t, f_t) in enumerate(steps):
        h, new, den = mlstm_step(q_t, k_t, v_t, i_t, f_t, state)
        if keeps is not None:
            keep = keeps[t]
            new = (torch.where(keep[..., None, None], new[0], state[0]),
                   torch.where(keep[..., None], new[1], state[1]),
                   torch.where(keep, new[2], state[2]))
        state = new
        hs.append(h)
        dens.append(den)
        ms.append(new[2])
    return torch.stack(hs, -2), state, torch.stack(dens, -1), torch.stack(ms, -1)


def mlstm_parallel(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
                   state: State | None = None, final_state: bool = True):
    """All T outputs at once from the T×T decay matrix (see the module docstring);
    ``final_state=False`` skips the final state (the chunkwise form needs only h̃)."""
    T = q.shape[-2]
    C0, n0, m0 = zero_state(q) if state is None else state
    F = torch.cumsum(log_f, -1)                                            # (…, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    # log D_ts = F_t − F_s + ĩ_s = F_t + g_s (s ≤ t): the row maximum is F_t + cummax g,
    # so the T×T matrix is built once, already stabilised
    g = log_i - F                                                          # (…, T)
    log_0 = F + m0[..., None]                  # log weight of the initial state at t (…, T)
    m = torch.maximum(F + torch.cummax(g, -1).values, log_0)               # (…, T)
    log_D = g[..., None, :] - (m - F)[..., :, None]                        # (…, T, T)
    D = torch.exp(torch.where(causal, log_D, float("-inf")))
    w0 = torch.exp(log_0 - m)                                              # (…, T)
    S = (q @ k.transpose(-1, -2)) * D                                      # (…, T, T)
    numerator = S @ v + w0[..., None] * (q @ C0.transpose(-1, -2))         # (…, T, d)
    qn = S.sum(-1) + w0 * (q @ n0[..., None])[..., 0]                      # (…, T)
    denominator = stabilised_denominator(qn, m)
    h = numerator / denominator[..., None]
    if not final_state:
        return h, None, denominator, m
    w = D[..., -1, :]                          # weights of each step in the last state (…, T)
    C = (v * w[..., None]).transpose(-1, -2) @ k + w0[..., -1, None, None] * C0
    n = (k * w[..., None]).sum(-2) + w0[..., -1, None] * n0
    return h, (C, n, m[..., -1]), denominator, m


def mlstm_chunkwise(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
                    state: State | None = None, chunk_size: int = 64):
    """Chunks of ``chunk_size`` steps: recurrent between chunks, parallel inside."""
    *lead, T, d = q.shape
    L = chunk_size
    pad = -T % L
    if pad:                                   # neutral steps: ĩ = −∞, log f = 0, q = k = v = 0
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_i = torch.nn.functional.pad(log_i, (0, pad), value=float("-inf"))
        log_f = torch.nn.functional.pad(log_f, (0, pad), value=0.0)
    N = (T + pad) // L
    qc, kc, vc = (t.reshape(*lead, N, L, d) for t in (q, k, v))           # (…, N, L, d)
    ic, fc = log_i.reshape(*lead, N, L), log_f.reshape(*lead, N, L)       # (…, N, L)
    F = torch.cumsum(fc, -1)                                              # (…, N, L)
    F_L = F[..., -1]                                                      # (…, N)
    a = F_L[..., None] - F + ic            # log weight of step s in its chunk's end state
    m_loc = a.amax(-1)                                                    # (…, N)
    m_safe = torch.where(torch.isinf(m_loc), torch.zeros_like(m_loc), m_loc)  # all-neutral chunk
    w = torch.exp(a - m_safe[..., None])                                  # (…, N, L)
    K = (vc * w[..., None]).transpose(-1, -2) @ kc                        # (…, N, d, d)
    k_sum = (kc * w[..., None]).sum(-2)                                   # (…, N, d)

    C, n, m = zero_state(q) if state is None else state
    starts: list[State] = []
    chunks = zip(F_L.unbind(-1), m_loc.unbind(-1), m_safe.unbind(-1), K.unbind(-3),
                 k_sum.unbind(-2))                  # unbind: one backward op, not N selects
    for F_c, m_loc_c, m_safe_c, K_c, k_sum_c in chunks:   # the recurrence between chunks
        starts.append((C, n, m))
        m_new = torch.maximum(F_c + m, m_loc_c)
        decay = torch.exp(F_c + m - m_new)
        scale = torch.exp(m_safe_c - m_new)
        C = decay[..., None, None] * C + scale[..., None, None] * K_c
        n = decay[..., None] * n + scale[..., None] * k_sum_c
        m = m_new
    start = tuple(torch.stack(s, len(lead)) for s in zip(*starts))       # (…, N, ·)
    h, _, den, m_t = mlstm_parallel(qc, kc, vc, ic, fc, start, final_state=False)
    h = h.reshape(*lead, N * L, d)[..., :T, :]
    den = den.reshape(*lead, N * L)[..., :T]
    m_t = m_t.reshape(*lead, N * L)[..., :T]
    return h, (C, n, m), den, m_t


FORMS = {"reference": mlstm_recurrent, "parallel": mlstm_parallel,
         "chunkwise": mlstm_chunkwise}
