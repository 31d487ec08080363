r"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1/§6.4
and their LN-LSTM equations; the LN-GRU of the authors' released code for the
order-embedding and skip-thought experiments).

Layer normalisation of a vector v of D summed inputs, with gain α and bias β (D,)::

    LN(v; α, β) = α ⊙ (v − μ) / sqrt(σ² + ε) + β,   μ = mean(v),  σ² = mean((v − μ)²)

with the biased (population) variance and ε = :data:`EPS` = 1e-5, as torch.nn.LayerNorm
and the authors' code. Statistics are per row (per sequence and step), never over the batch.

LN-LSTM (``LSTM(layer_norm=True)``), gate order i, f, g, o, b = b_ih + b_hh::

    a_t = LN(W_ih x_t; α_ih, β_ih) + LN(W_hh h_{t-1}; α_hh, β_hh) + b     a_t = [a_i|a_f|a_g|a_o]
    i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o);   g_t = tanh(a_g)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                       (the carried state is not normalised)
    h_t = o_t ⊙ tanh(LN(c_t; α_c, β_c))

Each LN of a projection runs over the **whole 4H vector** of that projection, as the
paper's equation is written (LN applied to W_h h_{t-1} and W_x x_t, not to each gate's
block) and as the authors' code computes it. The alternative, one LN per gate block,
gives each gate its own statistics; we keep the published model so that results carry
over. The cell LN runs over the H entries of c_t.

LN-GRU (``GRU(layer_norm=True)``), gate order r, z, n, ``reset_after`` semantics (the reset
gate multiplies the *normalised* recurrent candidate term, as in the authors' code and in
PyTorch's GRU)::

    [a_r|a_z] = LN(W_i{rz} x_t; α_ih[:2H], β_ih[:2H]) + LN(W_h{rz} h_{t-1}; α_hh[:2H], β_hh[:2H])
                + b_i{rz} + b_h{rz}
    r_t, z_t  = σ(a_r), σ(a_z)
    n_t = tanh(LN(W_in x_t; α_ih[2H:], β_ih[2H:]) + b_in
               + r_t ⊙ (LN(W_hn h_{t-1}; α_hh[2H:], β_hh[2H:]) + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

The r and z rows are normalised together (2H entries), the candidate rows n on their own
(H entries), input and recurrent sides separately: four LNs, as the authors' LN-GRU. The
GRU has no cell state and so no third LN. ``z_t`` keeps the old state, as in PyTorch.

Parameters per layer and direction, beside torch.nn's ``weight_ih``/``weight_hh``/
``bias_ih``/``bias_hh``: ``ln_ih_weight``, ``ln_ih_bias`` (α_ih, β_ih) and ``ln_hh_weight``,
``ln_hh_bias`` (α_hh, β_hh) of shape (G·H,), and for LSTM ``ln_c_weight``, ``ln_c_bias``
(α_c, β_c) of shape (H,). Gains start at 1, LN biases at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    C_STATE,
    H_STATE,
    BackwardStep,
    CellSpec,
    Chunk,
    ExtraParam,
    ForwardStep,
    FusedCell,
    Gates,
    Grads,
    LayerWeights,
    State,
    new_buffer,
)

EPS = 1e-5          # ε of every LN here, as torch.nn.LayerNorm's default


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor) -> Tensor:
    """LN(v; α, β) over the last dimension, written out as the equation."""
    mu = v.mean(-1, keepdim=True)
    var = (v - mu).pow(2).mean(-1, keepdim=True)
    return gain * (v - mu) / torch.sqrt(var + EPS) + bias


def _ln_params(G: int, *, cell: bool) -> tuple[ExtraParam, ...]:
    gh = (lambda H, I, R: (G * H,))                         # noqa: E731
    params = [ExtraParam("ln_ih_weight", gh, "ones"), ExtraParam("ln_ih_bias", gh, "zeros"),
              ExtraParam("ln_hh_weight", gh, "ones"), ExtraParam("ln_hh_bias", gh, "zeros")]
    if cell:
        hh = (lambda H, I, R: (H,))                         # noqa: E731
        params += [ExtraParam("ln_c_weight", hh, "ones"), ExtraParam("ln_c_bias", hh, "zeros")]
    return tuple(params)


def _bias(b: Tensor | None) -> Tensor | float:
    return 0.0 if b is None else b


def ln_lstm_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None
                 ) -> tuple[State, Gates]:
    h_prev, c_prev = state                                   # (B, H), (B, H)
    h_in = h_prev if h_in is None else h_in                  # ĥ_{t-1} (recurrent dropout)
    alpha_ih, beta_ih, alpha_hh, beta_hh, alpha_c, beta_c = w.extra
    a = (layer_norm(F.linear(x_t, w.w_ih), alpha_ih, beta_ih)        # (B, 4H)
         + layer_norm(F.linear(h_in, w.w_hh), alpha_hh, beta_hh)
         + _bias(w.b_ih) + _bias(w.b_hh))
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i_t, f_t, o_t = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
    g_t = torch.tanh(a_g)
    c_t = f_t * c_prev + i_t * g_t
    h_t = o_t * torch.tanh(layer_norm(c_t, alpha_c, beta_c))
    return (h_t, c_t), {"i": i_t, "f": f_t, "g": g_t, "o": o_t}


def _ln_groups(v: Tensor, gain: Tensor, bias: Tensor, H: int) -> tuple[Tensor, Tensor]:
    """LN of the r|z block (2H) and of the n block (H) of a (B, 3H) projection."""
    return (layer_norm(v[:, :2 * H], gain[:2 * H], bias[:2 * H]),
            layer_norm(v[:, 2 * H:], gain[2 * H:], bias[2 * H:]))


def _split_rz_n(b: Tensor | None, H: int) -> tuple[Tensor | float, Tensor | float]:
    return (0.0, 0.0) if b is None else (b[:2 * H], b[2 * H:])


def ln_gru_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None
                ) -> tuple[State, Gates]:
    (h_prev,) = state                                        # (B, H)
    h_in = h_prev if h_in is None else h_in                  # ĥ_{t-1} (recurrent dropout)
    H = h_prev.shape[1]
    alpha_ih, beta_ih, alpha_hh, beta_hh = w.extra
    (b_irz, b_in), (b_hrz, b_hn) = _split_rz_n(w.b_ih, H), _split_rz_n(w.b_hh, H)
    x_rz, x_n = _ln_groups(F.linear(x_t, w.w_ih), alpha_ih, beta_ih, H)      # (B, 2H), (B, H)
    h_rz, h_n = _ln_groups(F.linear(h_in, w.w_hh), alpha_hh, beta_hh, H)
    r_t, z_t = torch.sigmoid(x_rz + h_rz + b_irz + b_hrz).chunk(2, dim=1)
    n_t = torch.tanh(x_n + b_in + r_t * (h_n + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_prev
    return (h_t,), {"r": r_t, "z": z_t, "n": n_t}



# -- the fused steps (hand-derived BPTT), torch ---------------------------------------------------
# LSTM: the input projection W_ih x of every step is made at once, before the loop, and the
# step normalises its rows itself: a_t = α_ih ⊙ x̂_t + s + α_hh ⊙ ĥ_t with s = β_ih + β_hh
# + b_ih + b_hh folded into one vector (x̂, ĥ the normalised W_ih x_t and W_hh ĥ_{t-1}); so
# the no-grad forward can project a block of steps at a time (blocked_inference), and the
# backward step leaves ∂L/∂(W_ih x) in dA and adds the parameters' row sums into one
# accumulator (sum_buffers): the chunk keeps to the three GEMMs of the plain LSTM. GRU: the
# input side is normalised for all steps at once, with the constant parts folded in; the n
# rows get hn = α_hh,n ⊙ ĥ_hh,n + (β_hh,n + b_hn). LN backward (per row, over the D entries of one
# normalised group, v̂ = (v − μ)/σ and dv̂ = α ⊙ ∂L/∂LN)::
#
#     ∂L/∂v = (dv̂ − mean(dv̂) − v̂ ⊙ mean(dv̂ ⊙ v̂)) / σ
#     ∂L/∂α = Σ_rows ∂L/∂LN ⊙ v̂,    ∂L/∂β = Σ_rows ∂L/∂LN
#
# LN-LSTM BPTT, per step, with dh = ∂L/∂h_t, y = α_c ⊙ ĉ_t + β_c::
#
#     da_o = dh ⊙ tanh(y) ⊙ o(1 − o);   dy = dh ⊙ o ⊙ (1 − tanh² y)       → dα_c, dβ_c
#     dc   = dc_next + LN-backward(α_c ⊙ dy)
#     da_g = dc ⊙ i ⊙ (1 − g²),  da_i = dc ⊙ g ⊙ i(1 − i),  da_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
#     dA   = [da_i, da_f, da_g, da_o]    = ∂L/∂(both LN outputs and all four biases)
#     dHW  = LN-backward(α_hh ⊙ dA)      = ∂L/∂(W_hh ĥ_{t-1})     → dW_hh = Σ dHWᵀ ĥ_{t-1}
#     dXW  = LN-backward(α_ih ⊙ dA)      = ∂L/∂(W_ih x_t)         → dW_ih, ∂L/∂x (chunk GEMMs)
#     ∂L/∂ĥ_{t-1} = dHW W_hh,   dc_{t-1} = dc ⊙ f
#     sums: Σ dA (b_ih, b_hh, β_ih, β_hh), Σ dA ⊙ x̂ (α_ih), Σ dA ⊙ ĥ (α_hh),
#           Σ dy ⊙ ĉ (α_c), Σ dy (β_c)
#
# LN-GRU BPTT, per step::
#
#     da_n = dh ⊙ (1 − z) ⊙ (1 − n²);   da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
#     da_r = da_n ⊙ hn ⊙ r(1 − r)
#     dA   = [da_r, da_z, da_n]              input side: LN_ih backward, b_ih
#     dY_h = [da_r, da_z, da_n ⊙ r]          recurrent side: α_hh, β_hh, b_hh
#     dHW  = LN-backward per group (α_hh ⊙ dY_h);  ∂L/∂h_{t-1} = dh ⊙ z,  ∂L/∂ĥ = dHW W_hh
def normalise(v: Tensor) -> tuple[Tensor, Tensor]:
    """(v̂, 1/σ) of each row of ``v`` (n, D): v̂ = (v − μ)/σ, σ = sqrt(var + ε); 1/σ is (n, 1)."""
    d = v - v.mean(1, keepdim=True)
    rstd = ((d * d).mean(1, keepdim=True) + EPS).rsqrt()
    return d * rstd, rstd


def normalise_backward(dv_hat: Tensor, v_hat: Tensor, rstd: Tensor) -> Tensor:
    """∂L/∂v from ∂L/∂v̂, row by row."""
    mean_d = dv_hat.mean(1, keepdim=True)
    mean_dv = (dv_hat * v_hat).mean(1, keepdim=True)
    return (dv_hat - mean_d - v_hat * mean_dv) * rstd


def _ln_all(v: Tensor, gain: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LN of every row of ``v`` (N, D) at once: (output, μ (N, 1), 1/σ (N, 1))."""
    return torch.native_layer_norm(v.contiguous(), [v.shape[1]], gain, bias, EPS)


def _ln_all_backward(dy: Tensor, v: Tensor, mean: Tensor, rstd: Tensor, gain: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """(∂L/∂v, ∂L/∂α) of :func:`_ln_all` for the rows of ``v``."""
    dv, dgain, _ = torch.ops.aten.native_layer_norm_backward(
        dy.contiguous(), v.contiguous(), [v.shape[1]], mean.contiguous(), rstd.contiguous(),
        gain.contiguous(), None, [True, True, False])
    return dv, dgain


def _add_input_grads(c: Chunk, w: LayerWeights, dxw: Tensor, rows: slice, g: Grads) -> None:
    """dx += dxw W_ih[rows], dW_ih[rows] += dxwᵀ x for one normalised group of rows."""
    if g.dx is not None:
        g.dx[c.r0:c.r1].addmm_(dxw, w.w_ih[rows])
    if g.w["w_ih"] is not None:
        g.w["w_ih"][rows].addmm_(dxw.t(), c.x)


class LNLSTMFused(FusedCell):
    """``a`` holds W_ih x (no bias; the step normalises it). Loop weights: W_hh, α_hh, α_c,
    β_c, α_ih, s = β_ih + β_hh (+ b_ih + b_hh). Saved: ĥ (N, 4H), x̂ (N, 4H), ĉ (N, H), the
    1/σ of the three (N, 3). Gradient buffers: dHW (rows, 4H) and the
    row sums (14H: Σ dA, Σ dA ⊙ x̂, Σ dA ⊙ ĥ, Σ dy ⊙ ĉ, Σ dy); the backward step leaves
    dXW = ∂L/∂(W_ih x) in dA."""

    cpp = "ln_lstm"
    blocked_inference = True      # with no saved buffers the C++ step keeps ĥ, x̂, ĉ per step
    sum_buffers = 1

    def input_bias(self, spec, w):
        return None               # s is added after the LN, by the step

    def loop_weights(self, spec, w):
        alpha_ih, beta_ih, alpha_hh, beta_hh, alpha_c, beta_c = w.extra
        shift = beta_ih + beta_hh if w.b_ih is None else beta_ih + beta_hh + w.b_ih + w.b_hh
        return [t.contiguous() for t in (w.w_hh, alpha_hh, alpha_c, beta_c, alpha_ih, shift)]

    def saved_buffers(self, spec, a, H):
        N = a.shape[0]
        return [new_buffer(a, *a.shape), new_buffer(a, *a.shape), new_buffer(a, N, H),
                new_buffer(a, N, 3)]

    def grad_buffers(self, spec, rows, like, H, side):
        return [new_buffer(like, rows, 4 * H), like.new_zeros(14 * H)]

    def chunk_scale(self, spec, w):
        # Chunks of ≥ 1024 rows: (100,16,128) training 0.94× as long, peak memory 0.79–0.96 of
        # torch.nn.LSTM's at the bench sizes instead of 0.69–0.85 (4: up to 1.17×; Xeon, 2
        # threads, docs/performance.md)
        return 2

    def forward_step(self, spec, s: ForwardStep) -> None:
        w_hh, alpha_hh, alpha_c, beta_c, alpha_ih, shift = s.w
        h_hat, x_hat, c_hat, rstd = s.saved
        H = s.prev[1].shape[1]
        xx, rstd[:, 1:2] = normalise(s.a)                                 # (n, 4H)
        x_hat.copy_(xx)
        hh, rstd[:, 0:1] = normalise(s.h_in @ w_hh.t())
        h_hat.copy_(hh)
        a = torch.addcmul(shift, xx, alpha_ih, out=s.a).addcmul_(hh, alpha_hh)
        a_i, a_f, a_g, a_o = a.split(H, dim=1)
        i_t, f_t, g_t, o_t = a_i.sigmoid_(), a_f.sigmoid_(), a_g.tanh_(), a_o.sigmoid_()
        c_t = torch.addcmul(f_t * s.prev[1], i_t, g_t, out=s.next[1])
        ch, rstd[:, 2:3] = normalise(c_t)
        c_hat.copy_(ch)
        torch.mul(o_t, torch.addcmul(beta_c, ch, alpha_c).tanh_(), out=s.next[0])

    def backward_step(self, spec, s: BackwardStep):
        w_hh, alpha_hh, alpha_c, beta_c, alpha_ih, _ = s.w
        h_hat, x_hat, c_hat, rstd = s.saved
        rstd_h, rstd_x, rstd_c = rstd.split(1, dim=1)
        dHW, sums = s.grads
        H = c_hat.shape[1]
        dh = s.dnext[0]
        i_t, f_t, g_t, o_t = s.gates.split(H, dim=1)
        da_i, da_f, da_g, da_o = s.dA.split(H, dim=1)
        tanh_y = torch.addcmul(beta_c, c_hat, alpha_c).tanh_()
        torch.mul(dh * tanh_y, o_t * (1 - o_t), out=da_o)
        dy = dh * o_t * (1 - tanh_y * tanh_y)
        dc = s.dnext[1] + normalise_backward(dy * alpha_c, c_hat, rstd_c)
        torch.mul(dc * i_t, 1 - g_t * g_t, out=da_g)
        torch.mul(dc * g_t, i_t * (1 - i_t), out=da_i)
        torch.mul(dc * s.prev[1], f_t * (1 - f_t), out=da_f)
        G = 4 * H
        sums[:G] += s.dA.sum(0)
        sums[G:2 * G] += (s.dA * x_hat).sum(0)
        sums[2 * G:3 * G] += (s.dA * h_hat).sum(0)
        sums[3 * G:3 * G + H] += (dy * c_hat).sum(0)
        sums[3 * G + H:] += dy.sum(0)
        dhw = normalise_backward(s.dA * alpha_hh, h_hat, rstd_h)
        dHW.copy_(dhw)
        s.dA.copy_(normalise_backward(s.dA * alpha_ih, x_hat, rstd_x))   # dXW
        return [None, dc * f_t], dhw @ w_hh

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        from ..ops import gemm
        dHW, sums = c.grads
        dxw = c.dA                             # ∂L/∂(W_ih x), left there by the step
        if g.dx is not None:
            gemm.matmul_into(g.dx[c.r0:c.r1], dxw, w.w_ih)
        if g.w["w_ih"] is not None:
            gemm.matmul_into(g.w["w_ih"], dxw.t(), c.x, accumulate=True)
        if g.w["w_hh"] is not None:
            gemm.matmul_into(g.w["w_hh"], dHW.t(), c.h_in, accumulate=True)
        G = dHW.shape[1]
        H = G // 4
        db, d_aih, d_ahh, d_ac, d_bc = sums.split([G, G, G, H, H])
        for name in ("b_ih", "b_hh"):         # b_ih, b_hh, β_ih and β_hh alike
            g.add(name, db)
        for k, value in ((0, d_aih), (1, db), (2, d_ahh), (3, db), (4, d_ac), (5, d_bc)):
            g.add_extra(k, value)


class LNGRUFused(FusedCell):
    """The r|z rows and the n rows are normalised apart, on both sides. Loop weights: W_hh,
    α_hh, β_hh,n + b_hn. Saved: ĥ_hh (N, 3H), its two 1/σ (N, 2), hn (N, H). Gradient
    buffers: dY_h and dHW (rows, 3H)."""

    cpp = "ln_gru"

    def project(self, spec, x, w, side):
        alpha_ih, beta_ih, _, beta_hh = w.extra
        H = w.w_hh.shape[1]
        rz, n_ = slice(0, 2 * H), slice(2 * H, 3 * H)
        xw_rz, xw_n = torch.mm(x, w.w_ih[rz].t()), torch.mm(x, w.w_ih[n_].t())
        shift_rz, shift_n = beta_ih[rz] + beta_hh[rz], beta_ih[n_]
        if w.b_ih is not None:
            shift_rz, shift_n = shift_rz + w.b_ih[rz] + w.b_hh[rz], shift_n + w.b_ih[n_]
        ln_rz, mean_rz, rstd_rz = _ln_all(xw_rz, alpha_ih[rz], shift_rz)
        ln_n, mean_n, rstd_n = _ln_all(xw_n, alpha_ih[n_], shift_n)
        return torch.cat([ln_rz, ln_n], dim=1), (xw_rz, mean_rz, rstd_rz, xw_n, mean_n, rstd_n)

    def loop_weights(self, spec, w):
        _, _, alpha_hh, beta_hh = w.extra
        H = w.w_hh.shape[1]
        c_hn = beta_hh[2 * H:] if w.b_hh is None else beta_hh[2 * H:] + w.b_hh[2 * H:]
        return [w.w_hh.contiguous(), alpha_hh.contiguous(), c_hn.contiguous()]

    def saved_buffers(self, spec, a, H):
        N = a.shape[0]
        return [new_buffer(a, *a.shape), new_buffer(a, N, 2), new_buffer(a, N, H)]

    def grad_buffers(self, spec, rows, like, H, side):
        return [new_buffer(like, rows, 3 * H), new_buffer(like, rows, 3 * H)]

    def forward_step(self, spec, s: ForwardStep) -> None:
        w_hh, alpha_hh, c_hn = s.w
        h_hat, rstd_h, hn = s.saved
        H = w_hh.shape[1]
        hw = s.h_in @ w_hh.t()                                            # (n, 3H)
        rz_hat, rstd_h[:, :1] = normalise(hw[:, :2 * H])
        n_hat, rstd_h[:, 1:] = normalise(hw[:, 2 * H:])
        h_hat[:, :2 * H], h_hat[:, 2 * H:] = rz_hat, n_hat
        a = s.a
        r_t, z_t = a[:, :2 * H].addcmul_(rz_hat, alpha_hh[:2 * H]).sigmoid_().split(H, dim=1)
        torch.addcmul(c_hn, n_hat, alpha_hh[2 * H:], out=hn)
        n_t = a[:, 2 * H:].addcmul_(r_t, hn).tanh_()
        h_prev = s.prev[0]
        torch.addcmul(n_t, z_t, h_prev - n_t, out=s.next[0])

    def backward_step(self, spec, s: BackwardStep):
        w_hh, alpha_hh, _ = s.w
        h_hat, rstd_h, hn = s.saved
        dY, dHW = s.grads
        H = w_hh.shape[1]
        dh, h_prev = s.dnext[0], s.prev[0]
        r_t, z_t, n_t = s.gates.split(H, dim=1)
        da_r, da_z, da_n = s.dA.split(H, dim=1)
        torch.mul(dh * (1 - z_t), 1 - n_t * n_t, out=da_n)
        torch.mul(dh * (h_prev - n_t), z_t * (1 - z_t), out=da_z)
        torch.mul(da_n * hn, r_t * (1 - r_t), out=da_r)
        dY[:, :2 * H] = s.dA[:, :2 * H]
        torch.mul(da_n, r_t, out=dY[:, 2 * H:])
        dyg = dY * alpha_hh
        dHW[:, :2 * H] = normalise_backward(dyg[:, :2 * H], h_hat[:, :2 * H], rstd_h[:, :1])
        dHW[:, 2 * H:] = normalise_backward(dyg[:, 2 * H:], h_hat[:, 2 * H:], rstd_h[:, 1:])
        return [dh * z_t], dHW @ w_hh

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        xw_rz, mean_rz, rstd_rz, xw_n, mean_n, rstd_n = aux
        rows = slice(c.r0, c.r1)
        dY, dHW = c.grads
        H = dY.shape[1] // 3
        rz, n_ = slice(0, 2 * H), slice(2 * H, 3 * H)
        alpha_ih = w.extra[0]
        dxw_rz, d_grz = _ln_all_backward(c.dA[:, rz], xw_rz[rows], mean_rz[rows],
                                         rstd_rz[rows], alpha_ih[rz])
        dxw_n, d_gn = _ln_all_backward(c.dA[:, n_], xw_n[rows], mean_n[rows], rstd_n[rows],
                                       alpha_ih[n_])
        if g.dx is not None:
            g.dx[rows] = 0
        _add_input_grads(c, w, dxw_rz, rz, g)
        _add_input_grads(c, w, dxw_n, n_, g)
        if g.w["w_hh"] is not None:
            g.w["w_hh"].addmm_(dHW.t(), c.h_in)
        db_ih, db_hh = c.dA.sum(0), dY.sum(0)   # b_ih, β_ih: Σ dA;  b_hh, β_hh: Σ dY_h
        g.add("b_ih", db_ih)
        g.add("b_hh", db_hh)
        for k, value in ((0, torch.cat([d_grz, d_gn])), (1, db_ih),
                         (2, (dY * c.saved[0]).sum(0)), (3, db_hh)):
            g.add_extra(k, value)


# -- the families ---------------------------------------------------------------------------------
def ln_lstm_spec() -> CellSpec:
    return CellSpec(family="lstm", step=ln_lstm_step, gate_rows=("i", "f", "g", "o"),
                    gates=("i", "f", "g", "o"), n_states=2,
                    options=(("peephole", False), ("coupled", False), ("layer_norm", True)),
                    extra_params=_ln_params(4, cell=True), states=(H_STATE, C_STATE),
                    fused=LNLSTMFused())


def ln_gru_spec() -> CellSpec:
    return CellSpec(family="gru", step=ln_gru_step, gate_rows=("r", "z", "n"),
                    gates=("r", "z", "n"), n_states=1,
                    options=(("reset_after", True), ("layer_norm", True)),
                    extra_params=_ln_params(3, cell=False), fused=LNGRUFused())

