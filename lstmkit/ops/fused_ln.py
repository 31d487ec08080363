r"""The fused backend for the layer-normalised cells (:mod:`lstmkit.cells.layernorm`).

Same plan as :mod:`lstmkit.ops.fused`: one large GEMM for the input projection of all
steps, here followed by its layer normalisation for all steps at once (ATen's
``native_layer_norm``, which also returns the mean and 1/σ that backward needs); then the
recurrence, whose every step does one GEMM with W_hh, the LN of that projection, the
pointwise gate update and (LSTM) the LN of c_t. The recurrence is a *kernel*: the torch
loops below (:data:`TORCH_LOOPS`, any device and dtype) or the C++ extension
``csrc/layernorm.cpp`` (same functions, same signatures). Backward walks the steps in the
same time chunks as :mod:`lstmkit.ops.fused` and forms the weight gradients with GEMMs.

The constant parts are folded before the recurrence: the LSTM step adds
``ax = LN(W_ih x; α_ih, β_ih) + β_hh + b_ih + b_hh`` to ``α_hh ⊙ ĥ`` (ĥ the normalised
W_hh h_{t-1}); the GRU's n rows get ``hn = α_hh,n ⊙ ĥ_n + (β_hh,n + b_hn)``.

LN backward (per row, over the D entries of one normalised group, v̂ = (v − μ)/σ and
dv̂ = α ⊙ ∂L/∂LN)::

    ∂L/∂v = (dv̂ − mean(dv̂) − v̂ ⊙ mean(dv̂ ⊙ v̂)) / σ
    ∂L/∂α = Σ_rows ∂L/∂LN ⊙ v̂,    ∂L/∂β = Σ_rows ∂L/∂LN

LN-LSTM BPTT, per step, with dh = ∂L/∂h_t, y = α_c ⊙ ĉ_t + β_c (ĉ_t the normalised c_t)::

    da_o = dh ⊙ tanh(y) ⊙ o(1 − o)
    dy   = dh ⊙ o ⊙ (1 − tanh² y)                          → dα_c, dβ_c
    dc   = dc_next + LN-backward(α_c ⊙ dy)
    da_g = dc ⊙ i ⊙ (1 − g²),  da_i = dc ⊙ g ⊙ i(1 − i),  da_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
    dA   = [da_i, da_f, da_g, da_o]         = ∂L/∂(both LN outputs and both biases)
    dHW  = LN-backward(α_hh ⊙ dA)           = ∂L/∂(W_hh h_{t-1})   → dW_hh = Σ dHWᵀ h_{t-1}
    dh_{t-1} = dHW W_hh,    dc_{t-1} = dc ⊙ f

LN-GRU BPTT, per step (hn as above)::

    da_n = dh ⊙ (1 − z) ⊙ (1 − n²);   da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
    da_r = da_n ⊙ hn ⊙ r(1 − r)
    dA_x = [da_r, da_z, da_n]                    input side: LN_ih backward, b_ih
    dY_h = [da_r, da_z, da_n ⊙ r]                recurrent side: α_hh, β_hh, b_hh
    dHW  = LN-backward per group (α_hh ⊙ dY_h);  dh_{t-1} = dh ⊙ z + dHW W_hh
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import CellSpec, LayerWeights, State
from ..cells.layernorm import EPS
from .extension import cpp_module
from .fused import (
    _Accumulators,
    _prev_of,
    _refuse_double_backward,
    _trace,
    backward_chunks,
    prev_rows,
)
from .loops import step_rows
from .reference import Trace


# -- layer norm helpers ----------------------------------------------------------------------
def _normalise(v: Tensor) -> tuple[Tensor, Tensor]:
    """(v̂, 1/σ) of each row of ``v`` (n, D): v̂ = (v − μ)/σ, σ = sqrt(var + ε); 1/σ is (n, 1)."""
    d = v - v.mean(1, keepdim=True)
    rstd = ((d * d).mean(1, keepdim=True) + EPS).rsqrt()
    return d * rstd, rstd


def _normalise_backward(dv_hat: Tensor, v_hat: Tensor, rstd: Tensor) -> Tensor:
    """∂L/∂v from ∂L/∂v̂, row by row."""
    mean_d = dv_hat.mean(1, keepdim=True)
    mean_dv = (dv_hat * v_hat).mean(1, keepdim=True)
    return (dv_hat - mean_d - v_hat * mean_dv) * rstd


def _ln_all(v: Tensor, gain: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LN of every row of ``v`` (N, D) at once: (output, μ (N, 1), 1/σ (N, 1))."""
    return torch.native_layer_norm(v.contiguous(), [v.shape[1]], gain, bias, EPS)


def _ln_all_backward(dy: Tensor, v: Tensor, mean: Tensor, rstd: Tensor, gain: Tensor,
                     bias: Tensor, *, with_bias: bool = True) -> tuple:
    """(∂L/∂v, ∂L/∂α, ∂L/∂β or None) of :func:`_ln_all` for the rows of ``v``."""
    return torch.ops.aten.native_layer_norm_backward(
        dy.contiguous(), v.contiguous(), [v.shape[1]], mean.contiguous(), rstd.contiguous(),
        gain.contiguous(), bias.contiguous(), [True, True, with_bias])


# -- the torch-loop recurrences (the C++ kernels in csrc/layernorm.cpp match them) -----------
def ln_lstm_forward(ax: Tensor, w_hh: Tensor, g_hh: Tensor, g_c: Tensor, b_c: Tensor,
                    h0: Tensor, c0: Tensor, batch_sizes: list[int], reverse: bool):
    """Returns (out, c, ĥ (N, 4H), 1/σ_h (N, 1), ĉ (N, H), 1/σ_c (N, 1), h_n, c_n); ``ax``
    (the folded input side, see the module docstring) becomes the activations i, f, g, o."""
    N, H = ax.shape[0], c0.shape[1]
    out, c, c_hat = ax.new_empty(N, H), ax.new_empty(N, H), ax.new_empty(N, H)
    h_hat = torch.empty_like(ax)
    rstd_h, rstd_c = ax.new_empty(N, 1), ax.new_empty(N, 1)
    h_carry, c_carry = h0.clone(), c0.clone()
    w_hh_t = w_hh.t()
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        hh, rstd_h[rows] = _normalise(h_carry[:n] @ w_hh_t)              # (n, 4H)
        h_hat[rows] = hh
        a_i, a_f, a_g, a_o = ax[rows].addcmul_(hh, g_hh).split(H, dim=1)
        i_t, f_t, g_t, o_t = a_i.sigmoid_(), a_f.sigmoid_(), a_g.tanh_(), a_o.sigmoid_()
        c_t = torch.addcmul(f_t * c_carry[:n], i_t, g_t, out=c[rows])
        ch, rstd_c[rows] = _normalise(c_t)
        c_hat[rows] = ch
        h_t = torch.mul(o_t, torch.addcmul(b_c, ch, g_c).tanh_(), out=out[rows])
        h_carry[:n] = h_t
        c_carry[:n] = c_t
    return out, c, h_hat, rstd_h, c_hat, rstd_c, h_carry, c_carry


def ln_lstm_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor, gates: Tensor,
                     c_prev_all: Tensor, h_hat: Tensor, rstd_h: Tensor, c_hat: Tensor,
                     rstd_c: Tensor, w_hh: Tensor, g_hh: Tensor, g_c: Tensor, b_c: Tensor,
                     batch_sizes: list[int], reverse: bool):
    """BPTT of :func:`ln_lstm_forward` (see the module docstring). Returns (dA (N, 4H),
    dHW (N, 4H), dh_0, dc_0, dα_hh, Σ dA, dα_c, dβ_c), the last four summed over the rows."""
    H = c_hat.shape[1]
    dA, dHW, dY = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(c_hat)
    dh_carry, dc_carry = dh_n.clone(), dc_n.clone()
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        i_t, f_t, g_t, o_t = gates[rows].split(H, dim=1)
        da_i, da_f, da_g, da_o = dA[rows].split(H, dim=1)
        ch = c_hat[rows]
        tanh_y = torch.addcmul(b_c, ch, g_c).tanh_()
        torch.mul(dh * tanh_y, o_t * (1 - o_t), out=da_o)
        dy = torch.mul(dh * o_t, 1 - tanh_y * tanh_y, out=dY[rows])
        dc = dc_carry[:n] + _normalise_backward(dy * g_c, ch, rstd_c[rows])
        torch.mul(dc * i_t, 1 - g_t * g_t, out=da_g)
        torch.mul(dc * g_t, i_t * (1 - i_t), out=da_i)
        torch.mul(dc * c_prev_all[rows], f_t * (1 - f_t), out=da_f)
        dhw = _normalise_backward(dA[rows] * g_hh, h_hat[rows], rstd_h[rows])
        dHW[rows] = dhw
        dh_carry[:n] = dhw @ w_hh
        dc_carry[:n] = dc * f_t
    return (dA, dHW, dh_carry, dc_carry, (dA * h_hat).sum(0), dA.sum(0), (dY * c_hat).sum(0),
            dY.sum(0))


def ln_gru_forward(ax: Tensor, w_hh: Tensor, g_hh: Tensor, c_hn: Tensor, h0: Tensor,
                   batch_sizes: list[int], reverse: bool):
    """Returns (out, ĥ (N, 3H), 1/σ_h (N, 2) for the r|z and the n group, hn (N, H), h_n);
    ``ax`` (folded input side) becomes the activations r, z, n."""
    N, H = ax.shape[0], h0.shape[1]
    out, hn_all = ax.new_empty(N, H), ax.new_empty(N, H)
    h_hat, rstd_h = torch.empty_like(ax), ax.new_empty(N, 2)
    h_carry = h0.clone()
    w_hh_t = w_hh.t()
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        h_prev = h_carry[:n]
        hw = h_prev @ w_hh_t                                              # (n, 3H)
        rz_hat, rstd_h[rows, :1] = _normalise(hw[:, :2 * H])
        n_hat, rstd_h[rows, 1:] = _normalise(hw[:, 2 * H:])
        h_hat[rows, :2 * H], h_hat[rows, 2 * H:] = rz_hat, n_hat
        a = ax[rows]
        r_t, z_t = a[:, :2 * H].addcmul_(rz_hat, g_hh[:2 * H]).sigmoid_().split(H, dim=1)
        hn = torch.addcmul(c_hn, n_hat, g_hh[2 * H:], out=hn_all[rows])
        n_t = a[:, 2 * H:].addcmul_(r_t, hn).tanh_()
        h_carry[:n] = torch.addcmul(n_t, z_t, h_prev - n_t, out=out[rows])
    return out, h_hat, rstd_h, hn_all, h_carry


def ln_gru_backward(dout: Tensor, dh_n: Tensor, gates: Tensor, h_hat: Tensor, rstd_h: Tensor,
                    hn_all: Tensor, h_prev_all: Tensor, w_hh: Tensor, g_hh: Tensor,
                    batch_sizes: list[int], reverse: bool):
    """BPTT of :func:`ln_gru_forward`. Returns (dA_x's r|z part (N, 2H) and n part (N, H),
    dHW (N, 3H), dh_0, dα_hh, Σ dY_h), the last two summed over the rows."""
    H = dh_n.shape[1]
    dA_x, dY_h, dHW = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(gates)
    dh_carry = dh_n.clone()
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        h_prev = h_prev_all[rows]
        r_t, z_t, n_t = gates[rows].split(H, dim=1)
        da_r, da_z, da_n = dA_x[rows].split(H, dim=1)
        torch.mul(dh * (1 - z_t), 1 - n_t * n_t, out=da_n)
        torch.mul(dh * (h_prev - n_t), z_t * (1 - z_t), out=da_z)
        torch.mul(da_n * hn_all[rows], r_t * (1 - r_t), out=da_r)
        dy = dY_h[rows]
        dy[:, :2 * H] = dA_x[rows, :2 * H]
        torch.mul(da_n, r_t, out=dy[:, 2 * H:])
        dyg, hh, rs = dy * g_hh, h_hat[rows], rstd_h[rows]
        dhw = dHW[rows]
        dhw[:, :2 * H] = _normalise_backward(dyg[:, :2 * H], hh[:, :2 * H], rs[:, :1])
        dhw[:, 2 * H:] = _normalise_backward(dyg[:, 2 * H:], hh[:, 2 * H:], rs[:, 1:])
        dh_carry[:n] = torch.addmm(dh * z_t, dhw, w_hh)
    return (dA_x[:, :2 * H].contiguous(), dA_x[:, 2 * H:].contiguous(), dHW, dh_carry,
            (dY_h * h_hat).sum(0), dY_h.sum(0))


TORCH_LOOPS = SimpleNamespace(ln_lstm_forward=ln_lstm_forward, ln_lstm_backward=ln_lstm_backward,
                              ln_gru_forward=ln_gru_forward, ln_gru_backward=ln_gru_backward)


# -- autograd Functions ----------------------------------------------------------------------
class LNLSTMFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, g_ih, beta_ih, g_hh, beta_hh, g_c, b_c,
                batch_sizes, reverse, kernels):
        xw = torch.mm(x, w_ih.t())                                        # (N, 4H)
        shift = beta_ih + beta_hh if b_ih is None else beta_ih + beta_hh + b_ih + b_hh
        ax, mean_x, rstd_x = _ln_all(xw, g_ih, shift)                     # folded input side
        out, c, h_hat, rstd_h, c_hat, rstd_c, h_n, c_n = kernels.ln_lstm_forward(
            ax, w_hh, g_hh, g_c, b_c, h0, c0, batch_sizes, reverse)
        gates = ax                                                        # activations now
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, g_ih, beta_ih, g_hh, g_c, b_c, xw,
                              mean_x, rstd_x, out, gates, c, h_hat, rstd_h, c_hat, rstd_c)
        ctx.config = (batch_sizes, reverse, kernels, b_ih is not None)
        ctx.mark_non_differentiable(gates, c)
        return out, h_n, c_n, gates, c

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dgates, _dc):
        _refuse_double_backward()
        (x, h0, c0, w_ih, w_hh, g_ih, beta_ih, g_hh, g_c, b_c, xw, mean_x, rstd_x, out, gates,
         c, h_hat, rstd_h, c_hat, rstd_c) = ctx.saved_tensors
        batch_sizes, reverse, kernels, has_bias = ctx.config
        need = ctx.needs_input_grad
        dh, dc = dh_n.contiguous(), dc_n.contiguous()
        dout = dout.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=False)
        dw_hh = torch.zeros_like(w_hh) if need[4] else None
        sums: dict[str, Tensor | None] = dict.fromkeys(("g_ih", "g_hh", "b", "g_c", "b_c"))
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            dA, dHW, dh, dc, d_ghh, d_b, d_gc, d_bc = kernels.ln_lstm_backward(
                dout[r0:r1], dh, dc, gates[r0:r1], _prev_of(c, c0, prev, r0, r1),
                h_hat[r0:r1], rstd_h[r0:r1], c_hat[r0:r1], rstd_c[r0:r1], w_hh, g_hh, g_c,
                b_c, batch_sizes[t0:t1], reverse)
            dxw, d_gih, _ = _ln_all_backward(dA, xw[r0:r1], mean_x[r0:r1], rstd_x[r0:r1],
                                             g_ih, beta_ih, with_bias=False)
            grads.add(dxw, r0, r1)
            if dw_hh is not None:
                dw_hh.addmm_(dHW.t(), _prev_of(out, h0, prev, r0, r1))
            _accumulate(sums, g_ih=d_gih, g_hh=d_ghh, b=d_b, g_c=d_gc, b_c=d_bc)
        db = sums["b"]                     # Σ dA: the gradient of b_ih, b_hh, β_ih and β_hh
        return (grads.dx, dh, dc, grads.dw_ih, dw_hh, *((db, db) if has_bias else (None, None)),
                sums["g_ih"], db, sums["g_hh"], db, sums["g_c"], sums["b_c"], None, None, None)


def _accumulate(sums: dict[str, Tensor | None], **parts: Tensor) -> None:
    for key, value in parts.items():
        sums[key] = value if sums[key] is None else sums[key] + value


class LNGRUFunction(Function):
    """The r|z rows and the n rows of the input side are normalised apart, so they are kept
    as two contiguous blocks (two input GEMMs) and the LN runs on each without copies."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, beta_ih, g_hh, beta_hh, batch_sizes,
                reverse, kernels):
        H = h0.shape[1]
        rz, n_ = slice(0, 2 * H), slice(2 * H, 3 * H)
        xw_rz, xw_n = torch.mm(x, w_ih[rz].t()), torch.mm(x, w_ih[n_].t())   # (N, 2H), (N, H)
        shift_rz, shift_n, c_hn = beta_ih[rz] + beta_hh[rz], beta_ih[n_], beta_hh[n_]
        if b_ih is not None:
            shift_rz = shift_rz + b_ih[rz] + b_hh[rz]
            shift_n, c_hn = shift_n + b_ih[n_], c_hn + b_hh[n_]
        ln_rz, mean_rz, rstd_rz = _ln_all(xw_rz, g_ih[rz], shift_rz)
        ln_n, mean_n, rstd_n = _ln_all(xw_n, g_ih[n_], shift_n)
        ax = torch.cat([ln_rz, ln_n], dim=1)                              # folded input side
        out, h_hat, rstd_h, hn, h_n = kernels.ln_gru_forward(ax, w_hh, g_hh, c_hn.contiguous(),
                                                             h0, batch_sizes, reverse)
        gates = ax
        ctx.save_for_backward(x, h0, w_ih, w_hh, g_ih, beta_ih, g_hh, xw_rz, xw_n, mean_rz,
                              rstd_rz, mean_n, rstd_n, out, gates, h_hat, rstd_h, hn)
        ctx.config = (batch_sizes, reverse, kernels, b_ih is not None)
        ctx.mark_non_differentiable(gates)
        return out, h_n, gates

    @staticmethod
    def backward(ctx, dout, dh_n, _dgates):
        _refuse_double_backward()
        (x, h0, w_ih, w_hh, g_ih, beta_ih, g_hh, xw_rz, xw_n, mean_rz, rstd_rz, mean_n, rstd_n,
         out, gates, h_hat, rstd_h, hn) = ctx.saved_tensors
        batch_sizes, reverse, kernels, has_bias = ctx.config
        need = ctx.needs_input_grad
        H = h0.shape[1]
        rz, n_ = slice(0, 2 * H), slice(2 * H, 3 * H)
        dout, dh = dout.contiguous(), dh_n.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dw_ih = torch.zeros_like(w_ih) if need[2] else None
        dw_hh = torch.zeros_like(w_hh) if need[3] else None
        sums: dict[str, Tensor | None] = dict.fromkeys(("g_rz", "b_rz", "g_n", "b_n", "g_hh",
                                                        "b_hh"))
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            h_prev = _prev_of(out, h0, prev, r0, r1)
            dA_rz, dA_n, dHW, dh, d_ghh, d_bhh = kernels.ln_gru_backward(
                dout[r0:r1], dh, gates[r0:r1], h_hat[r0:r1], rstd_h[r0:r1], hn[r0:r1], h_prev,
                w_hh, g_hh, batch_sizes[t0:t1], reverse)
            dxw_rz, d_grz, d_brz = _ln_all_backward(dA_rz, xw_rz[r0:r1], mean_rz[r0:r1],
                                                    rstd_rz[r0:r1], g_ih[rz], beta_ih[rz])
            dxw_n, d_gn, d_bn = _ln_all_backward(dA_n, xw_n[r0:r1], mean_n[r0:r1],
                                                 rstd_n[r0:r1], g_ih[n_], beta_ih[n_])
            if dx is not None:                        # dx = dxw_rz W_i{rz} + dxw_n W_in
                torch.mm(dxw_rz, w_ih[rz], out=dx[r0:r1])
                dx[r0:r1].addmm_(dxw_n, w_ih[n_])
            if dw_ih is not None:
                dw_ih[rz].addmm_(dxw_rz.t(), x[r0:r1])
                dw_ih[n_].addmm_(dxw_n.t(), x[r0:r1])
            if dw_hh is not None:
                dw_hh.addmm_(dHW.t(), h_prev)
            _accumulate(sums, g_rz=d_grz, b_rz=d_brz, g_n=d_gn, b_n=d_bn, g_hh=d_ghh,
                        b_hh=d_bhh)
        # Σ dA_x is the gradient of b_ih and β_ih; Σ dY_h that of b_hh and β_hh
        db_ih = torch.cat([sums["b_rz"], sums["b_n"]])
        d_gih = torch.cat([sums["g_rz"], sums["g_n"]])
        b_ih, b_hh = (db_ih, sums["b_hh"]) if has_bias else (None, None)
        return (dx, dh, dw_ih, dw_hh, b_ih, b_hh, d_gih, db_ih, sums["g_hh"], sums["b_hh"],
                None, None, None)


# -- the layer loop --------------------------------------------------------------------------
def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              kernels: ModuleType | SimpleNamespace) -> tuple[Tensor, State, Trace | None]:
    """:func:`lstmkit.ops.reference.run_layer` for a layer-normalised cell, with hand-derived
    BPTT; ``kernels`` is :data:`TORCH_LOOPS` or the C++ module ``layernorm``."""
    x = x.contiguous()
    extra = tuple(p.contiguous() for p in w.extra)
    c = None
    if cell.family == "lstm":
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c = LNLSTMFunction.apply(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, *extra, batch_sizes, reverse, kernels)
        final: State = (h_n, c_n)
    elif cell.family == "gru":
        out, h_n, gates = LNGRUFunction.apply(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, *extra, batch_sizes,
            reverse, kernels)
        final = (h_n,)
    else:
        raise ValueError(f"layer_norm has no fused kernel for cell family {cell.family!r}")
    trace = _trace(cell, batch_sizes, out, gates, c) if record else None
    return out, final, trace


def kernels_for(kernels: object) -> ModuleType | SimpleNamespace:
    """The layer-norm recurrences that go with the kernels :mod:`lstmkit.ops` chose: the
    torch loops with :mod:`lstmkit.ops.loops`, else the C++ module ``layernorm`` (the torch
    loops if it cannot be built; ``backend="fused_cpp"`` has already required it)."""
    from . import loops
    if kernels is loops:
        return TORCH_LOOPS
    return cpp_module("layernorm", required=False) or TORCH_LOOPS
