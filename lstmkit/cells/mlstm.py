"""The mLSTM of xLSTM (Beck et al. 2024, arXiv:2405.04517, section 2.3 and appendix A.3):
an LSTM whose cell state is a matrix memory, read out by a query, with exponential gating.

Per head (head dimension d = hidden_size / num_heads), from the input x_t only:

    q_t = W_q x_t + b_q                      query     (d)
    k_t = W_k x_t / √d + b_k                 key       (d)
    v_t = W_v x_t + b_v                      value     (d)
    ĩ_t = w_iᵀ x_t + b_i,  i_t = exp(ĩ_t)    input gate   (a scalar per head)
    f̃_t = w_fᵀ x_t + b_f,  f_t = σ(f̃_t)     forget gate  (or exp(f̃_t): ``forget_gate="exp"``)
    o_t = σ(W_o x_t + b_o)                   output gate  (d)
    C_t = f_t C_{t-1} + i_t v_t k_tᵀ         matrix memory (d×d)
    n_t = f_t n_{t-1} + i_t k_t              normaliser    (d)
    h̃_t = C_t q_t / max(|n_tᵀ q_t|, 1)
    h_t = o_t ⊙ h̃_t

The stabiliser (appendix A.3): i_t = exp(ĩ_t) overflows, so the state is kept scaled by
exp(−m_t), with

    m_t  = max(log f_t + m_{t-1}, ĩ_t)
    i'_t = exp(ĩ_t − m_t),  f'_t = exp(log f_t + m_{t-1} − m_t)
    C'_t = f'_t C'_{t-1} + i'_t v_t k_tᵀ,   n'_t = f'_t n'_{t-1} + i'_t k_t   (C' = C e^{−m})
    h̃_t = C'_t q_t / max(|n'_tᵀ q_t|, exp(−m_t))

(the denominator floored at the dtype's smallest normal number, see
:func:`stabilised_denominator`), which is the same h̃_t for *any* m_t (numerator and
denominator both scale by e^{−m_t}), so
the recurrent, parallel and chunkwise forms (:mod:`lstmkit.ops.mlstm`) compute one function
although each picks its m_t its own way. The carried state is the triple (C', n', m); the
true memory is C' e^{m}. This module holds the step as the equations read (the reference);
the forms that run a whole sequence are in :mod:`lstmkit.ops.mlstm`.

Unlike NX-AI's reference code (``xlstm/blocks/mlstm/backends.py``), which adds ε = 1e-6
to the stabilised denominator, no ε is added here: ε e^{m_t} in true units depends on the
stabiliser, so with it the three forms would no longer compute the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = tuple[Tensor, Tensor, Tensor]          # C' (…, d, d), n' (…, d), m (…)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
               state: State) -> tuple[Tensor, State, Tensor]:
    """One stabilised mLSTM step for every head.

    ``q``, ``k``, ``v``: (…, d) with ``k`` already scaled (k_t = W_k x_t / √d + b_k);
    ``log_i`` = ĩ_t and ``log_f`` = log f_t: (…); ``state`` = (C' (…, d, d) with rows in
    value space and columns in key space, n' (…, d), m (…)). Returns h̃_t (…, d), the new
    state, and the stabilised denominator max(|n'_tᵀ q_t|, exp(−m_t)) (…); the true
    normaliser max(|n_tᵀ q_t|, 1) is that times exp(m_t).
    """
    C, n, m = state
    m_t = torch.maximum(log_f + m, log_i)
    f_t = torch.exp(log_f + m - m_t)
    i_t = torch.exp(log_i - m_t)
    C_t = f_t[..., None, None] * C + i_t[..., None, None] * (v[..., :, None] * k[..., None, :])
    n_t = f_t[..., None] * n + i_t[..., None] * k
    denominator = stabilised_denominator((n_t * q).sum(-1), m_t)
    h_t = (C_t @ q[..., None])[..., 0] / denominator[..., None]
    return h_t, (C_t, n_t, m_t), denominator


def stabilised_denominator(qn: Tensor, m: Tensor) -> Tensor:
    """max(|n'_tᵀ q_t|, exp(−m_t)), floored at the dtype's smallest normal number: when m_t
    is so large that exp(−m_t) underflows (m_t > 708 in float64, > 87 in float32) and
    n'_tᵀ q_t is exactly 0 (a step with q_t = 0, e.g. the neutral padding of the chunkwise
    form), this keeps 0/0 out of the output and its gradient. It changes nothing else."""
    return torch.maximum(qn.abs(), torch.exp(-m)).clamp_min(torch.finfo(qn.dtype).tiny)


def log_forget(f_pre: Tensor, forget_gate: str) -> Tensor:
    """log f_t from the pre-activation f̃_t: log σ(f̃_t) (``"sigmoid"``) or f̃_t (``"exp"``)."""
    if forget_gate == "sigmoid":
        return torch.nn.functional.logsigmoid(f_pre)
    return f_pre


FORGET_GATES = ("sigmoid", "exp")
