r"""sLSTM, the scalar-memory LSTM of xLSTM: Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp,
Klambauer, Brandstetter & Hochreiter (2024), "xLSTM: Extended Long Short-Term Memory",
arXiv:2405.04517, §2.2 and Appendix A. Exponential input gate, sigmoid or exponential forget
gate, a normaliser state n and a stabiliser state m; the recurrent weights are block-diagonal
over ``num_heads`` heads (each head mixes only its own H/num_heads units)::

    (ĩ, f̃, z̃, õ) = W x_t + b_ih + R ĥ_{t-1} + b_hh        R block-diagonal (head-wise)
    z_t = tanh(z̃),  o_t = σ(õ),  log i_t = ĩ,  log f_t = log σ(f̃)  (or f̃: forget_gate="exp")
    c_t = f_t c_{t-1} + i_t z_t,   n_t = f_t n_{t-1} + i_t,   h_t = o_t ⊙ c_t / n_t

computed in the stabilised form (the paper's stabilisation, §2.2; c and n are carried divided by
exp(m_t), which leaves h_t unchanged)::

    m_t  = max(log f_t + m_{t-1}, ĩ_t)
    i'_t = exp(ĩ_t − m_t),   f'_t = exp(log f_t + m_{t-1} − m_t)
    c_t  = f'_t c_{t-1} + i'_t z_t,   n_t = f'_t n_{t-1} + i'_t,   h_t = o_t ⊙ c_t / n_t

The first step of an empty memory: where n_{t-1} = 0 (the zero initial state), m_t = ĩ_t
and f'_t = 0, i.e. m_{t-1} = −∞ (NX-AI's vanilla kernel takes m_t = ĩ_t when its whole n
is zero; here the rule is per element). Then i'_t = 1 and n_t ≥ 1 from the first step on,
so h_t = c_t / n_t never divides by a vanishing number even for ĩ ≪ 0 (with m_0 = 0 and the
plain max, ĩ_1 = −1000 would give n_1 = 0 and h = 0/0). Gate order i, f, z, o and the
sigmoid forget gate are those of NX-AI's vanilla reference (``xlstm/blocks/slstm/src/
vanilla/slstm.py``); the paper allows either forget activation.

States: (h, c, n, m), all H wide, returned and accepted as ``hx`` like LSTM's (h, c).
Recorded: the stabilised gates i', f' (the factors c and n are really updated with), z, o,
and the states c, n, m, h.

Parameter layout (torch.nn's names)::

    weight_ih_l{k}  (4H, I)         rows i | f | z | o, each H rows in unit order
    weight_hh_l{k}  (4H, H/K)       K = num_heads, d = H/K: rows head-major — head k's
                                    block is rows [4dk, 4d(k+1)), gate-major inside
                                    (i, f, z, o, d rows each); columns: the head's d inputs
    bias_ih_l{k}, bias_hh_l{k}  (4H,)  rows as weight_ih; the gate's bias is their sum

so ``weight_hh.view(K, 4d, d)`` is NX-AI's vanilla internal ``_recurrent_kernel`` (K, 4d,
d), and from their external ``recurrent_kernel`` (K, d_in, 4, d_out):
``R.permute(0, 2, 3, 1).reshape(4H, d)``; their one ``bias`` (K, 4, d) is
``b.permute(1, 0, 2).reshape(4H)`` (bias_ih + bias_hh here). :func:`recurrent_matrix`
expands weight_hh to the dense (4H, H) block-diagonal matrix of the equations.

BPTT of one step (:class:`SLSTMFused`), with u = log f + m_{t-1} and s = [m_t took u]; dh,
dc, dn, dm the gradients of the new states::

    da_o = dh ⊙ (c/n) ⊙ o(1 − o)
    dĉ = dc + dh ⊙ o / n,       dn̂ = dn − dh ⊙ o ⊙ c / n²
    da_z = dĉ ⊙ i' ⊙ (1 − z²)
    g_i = (dĉ ⊙ z + dn̂) ⊙ i',   g_f = (dĉ ⊙ c_{t-1} + dn̂ ⊙ n_{t-1}) ⊙ f'
    δm = dm − g_i − g_f                          (∂L/∂m_t: the paths through i', f', m_t)
    du = g_f + s ⊙ δm,          da_i = g_i + (1 − s) ⊙ δm
    da_f = du ⊙ (1 − σ(f̃))   (exp forget gate: du)
    dc_{t-1} = dĉ ⊙ f',   dn_{t-1} = dn̂ ⊙ f',   dm_{t-1} = du,   ∂L/∂ĥ_{t-1} = dA R

h is invariant to m: scaling c and n by e^δ while shifting m by −δ changes nothing, so when
the loss reads only h, δm is zero in exact arithmetic (a rounding residue in floating
point) and the gradients equal those of the unstabilised equations. When the loss reads the
returned c, n or m, δm is not zero, and the chain rule above — the same one autograd applies
to :func:`slstm_step` — carries it (tested against autograd in float64).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    BackwardStep,
    CellSpec,
    Chunk,
    ForwardStep,
    FusedCell,
    Gates,
    Grads,
    LayerWeights,
    State,
    StateSpec,
    new_buffer,
    register,
)

FORGET_GATES = ("sigmoid", "exp")
GATES = ("i", "f", "z", "o")
STATES = tuple(StateSpec(name, lambda H, R: H) for name in ("h", "c", "n", "m"))


def check_heads(hidden_size: int, num_heads: object, what: str = "sLSTM") -> int:
    """ValueError unless ``num_heads`` is a positive int dividing ``hidden_size``."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{what}: num_heads must be a positive int, got {num_heads!r}")
    if hidden_size % num_heads:
        raise ValueError(f"{what}: hidden_size ({hidden_size}) must be divisible by num_heads "
                         f"({num_heads}): each head owns hidden_size/num_heads units")
    return num_heads


def _heads(w_hh: Tensor) -> tuple[int, int, int]:
    """(H, K, d) from weight_hh (4H, d)."""
    H, d = w_hh.shape[0] // 4, w_hh.shape[1]
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * H or d == 0 or H % d:
        raise ValueError(f"sLSTM: weight_hh must have shape (4·hidden_size, hidden_size/"
                         f"num_heads), got {tuple(w_hh.shape)}")
    return H, H // d, d


def recurrent_matrix(w_hh: Tensor) -> Tensor:
    """The dense (4H, H) recurrent matrix R of the equations (rows i | f | z | o, each in unit
    order), block-diagonal over the heads, from ``weight_hh`` (4H, H/K)."""
    H, K, d = _heads(w_hh)
    blocks = w_hh.view(K, 4, d, d)                      # [head, gate, out, in]
    R = w_hh.new_zeros(4, K, d, K, d)
    for k in range(K):
        R[:, k, :, k, :] = blocks[k]
    return R.view(4 * H, H)


def recurrent(h_in: Tensor, w_hh: Tensor) -> Tensor:
    """ĥ Rᵀ (B, 4H), gate-major columns, computed head by head (one batched GEMM)."""
    H, K, d = _heads(w_hh)
    B = h_in.shape[0]
    r = torch.bmm(h_in.reshape(B, K, d).transpose(0, 1), w_hh.view(K, 4 * d, d).transpose(1, 2))
    return r.view(K, B, 4, d).permute(1, 2, 0, 3).reshape(B, 4 * H)


def _log_forget(f_pre: Tensor, forget_gate: str) -> Tensor:
    return F.logsigmoid(f_pre) if forget_gate == "sigmoid" else f_pre


# -- the equations (the reference) ------------------------------------------------------------
def slstm_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
               num_heads: int = 4, forget_gate: str = "sigmoid") -> tuple[State, Gates]:
    """One step of sLSTM in the stabilised form (the module docstring's equations)."""
    h, c, n, m = state                                             # (B, H) each
    h_in = h if h_in is None else h_in
    a = F.linear(x_t, w.w_ih, w.b_ih) + recurrent(h_in, w.w_hh)
    if w.b_hh is not None:
        a = a + w.b_hh
    i_pre, f_pre, z_pre, o_pre = a.chunk(4, dim=1)
    u = _log_forget(f_pre, forget_gate) + m                        # log f_t + m_{t-1}
    empty = n == 0                                                 # an empty memory: m_{t-1} = −∞
    took_u = (u >= i_pre) & ~empty
    m_t = torch.where(took_u, u, i_pre)
    u_safe = torch.where(empty, m_t, u)                            # no exp(±∞) in the graph
    i_s = torch.exp(i_pre - m_t)
    f_s = torch.where(empty, torch.zeros_like(u), torch.exp(u_safe - m_t))
    z = torch.tanh(z_pre)
    o = torch.sigmoid(o_pre)
    c_t = f_s * c + i_s * z
    n_t = f_s * n + i_s
    h_t = o * c_t / n_t
    return (h_t, c_t, n_t, m_t), {"i": i_s, "f": f_s, "z": z, "o": o}


# -- the fused step (hand-derived BPTT), torch ---------------------------------------------------
class SLSTMFused(FusedCell):
    """``a`` (N, 4H) = [i | f | z | o]: the input projection with both biases in, the
    stabilised gates i', f' and z, o out. One saved buffer (N, 2H): s (1 where m_t took
    log f + m_{t-1}) and d log f / d f̃. Loop weight: weight_hh (4H, H/K)."""

    cpp = "slstm"

    def cpp_options(self, spec):
        return [1.0 if spec.option("forget_gate") == "exp" else 0.0,
                float(spec.option("num_heads"))]

    def saved_buffers(self, spec, a, H):
        return [new_buffer(a, a.shape[0], 2 * H)]

    def forward_step(self, spec, s: ForwardStep) -> None:
        W = s.w[0]
        H, K, d = _heads(W)
        n = s.a.shape[0]
        r = torch.bmm(s.h_in.view(n, K, d).transpose(0, 1), W.view(K, 4 * d, d).transpose(1, 2))
        s.a.view(n, 4, K, d).add_(r.view(K, n, 4, d).permute(1, 2, 0, 3))
        a_i, a_f, a_z, a_o = s.a.split(H, dim=1)
        took, dlf = s.saved[0].split(H, dim=1)
        _, c, nn_, m = s.prev
        if spec.option("forget_gate") == "sigmoid":
            torch.sigmoid(-a_f, out=dlf)                           # 1 − σ(f̃)
            u = F.logsigmoid(a_f) + m
        else:
            dlf.fill_(1.0)
            u = a_f + m
        empty = nn_ == 0
        took_u = (u >= a_i) & ~empty
        m_t = torch.where(took_u, u, a_i, out=s.next[3])
        took.copy_(took_u)
        a_i.sub_(m_t).exp_()                                       # i'
        a_f.copy_((u - m_t).exp_().masked_fill_(empty, 0.0))       # f'
        z, o = a_z.tanh_(), a_o.sigmoid_()
        c_t = torch.addcmul(a_f * c, a_i, z, out=s.next[1])
        n_t = torch.add(a_f * nn_, a_i, out=s.next[2])
        torch.mul(o, c_t / n_t, out=s.next[0])

    def backward_step(self, spec, s: BackwardStep):
        W = s.w[0]
        H, K, d = _heads(W)
        i_s, f_s, z, o = s.gates.split(H, dim=1)
        da_i, da_f, da_z, da_o = s.dA.split(H, dim=1)
        took, dlf = s.saved[0].split(H, dim=1)
        dh, dc, dn, dm = s.dnext
        _, c_p, n_p, _ = s.prev
        c_t, n_t = s.next[1], s.next[2]
        hn = c_t / n_t
        torch.mul(dh * hn, o * (1 - o), out=da_o)
        don = dh * o / n_t
        dc_hat = dc + don
        dn_hat = dn - don * hn
        torch.mul(dc_hat * i_s, 1 - z * z, out=da_z)
        g_i = (dc_hat * z + dn_hat) * i_s
        g_f = (dc_hat * c_p + dn_hat * n_p) * f_s
        delta = dm - g_i - g_f
        du = torch.addcmul(g_f, took, delta)
        torch.addcmul(g_i, 1 - took, delta, out=da_i)
        torch.mul(du, dlf, out=da_f)
        n = s.dA.shape[0]
        dA_h = s.dA.view(n, 4, K, d).permute(2, 0, 1, 3).reshape(K, n, 4 * d)
        dh_in = torch.bmm(dA_h, W.view(K, 4 * d, d)).transpose(0, 1).reshape(n, H)
        return [None, dc_hat * f_s, dn_hat * f_s, du], dh_in

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        self.input_grads(c, w, c.dA, g)
        if g.w["w_hh"] is not None:
            H, K, d = _heads(w.w_hh)
            r = c.dA.shape[0]
            dA_h = c.dA.view(r, 4, K, d).permute(2, 0, 1, 3).reshape(K, r, 4 * d)
            h_h = c.h_in.reshape(r, K, d).transpose(0, 1)
            g.w["w_hh"].view(K, 4 * d, d).baddbmm_(dA_h.transpose(1, 2), h_h)


_FUSED = SLSTMFused()


# -- the family ------------------------------------------------------------------------------------
def slstm_spec(*, num_heads: int = 4, forget_gate: str = "sigmoid") -> CellSpec:
    """sLSTM of Beck et al. (2024) with ``num_heads`` heads and a ``forget_gate`` of
    "sigmoid" (NX-AI's default) or "exp"."""
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"sLSTM: forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"sLSTM: num_heads must be a positive int, got {num_heads!r}")
    return CellSpec(
        family="slstm",
        step=partial(slstm_step, num_heads=num_heads, forget_gate=forget_gate),
        gate_rows=GATES,
        gates=GATES,
        n_states=4,
        options=(("num_heads", num_heads), ("forget_gate", forget_gate)),
        states=STATES,
        fused=_FUSED,
    )


register("slstm", slstm_spec)
