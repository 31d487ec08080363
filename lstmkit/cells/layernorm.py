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

from .base import CellSpec, ExtraParam, Gates, LayerWeights, State

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


def ln_lstm_step(x_t: Tensor, state: State, w: LayerWeights) -> tuple[State, Gates]:
    h_prev, c_prev = state                                   # (B, H), (B, H)
    a_ih, g_ih, a_hh, g_hh, a_c, g_c = w.extra
    a = (layer_norm(F.linear(x_t, w.w_ih), a_ih, g_ih)        # (B, 4H)
         + layer_norm(F.linear(h_prev, w.w_hh), a_hh, g_hh)
         + _bias(w.b_ih) + _bias(w.b_hh))
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i_t, f_t, o_t = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
    g_t = torch.tanh(a_g)
    c_t = f_t * c_prev + i_t * g_t
    h_t = o_t * torch.tanh(layer_norm(c_t, a_c, g_c))
    return (h_t, c_t), {"i": i_t, "f": f_t, "g": g_t, "o": o_t}


def _ln_groups(v: Tensor, gain: Tensor, bias: Tensor, H: int) -> tuple[Tensor, Tensor]:
    """LN of the r|z block (2H) and of the n block (H) of a (B, 3H) projection."""
    return (layer_norm(v[:, :2 * H], gain[:2 * H], bias[:2 * H]),
            layer_norm(v[:, 2 * H:], gain[2 * H:], bias[2 * H:]))


def _split_rz_n(b: Tensor | None, H: int) -> tuple[Tensor | float, Tensor | float]:
    return (0.0, 0.0) if b is None else (b[:2 * H], b[2 * H:])


def ln_gru_step(x_t: Tensor, state: State, w: LayerWeights) -> tuple[State, Gates]:
    (h_prev,) = state                                        # (B, H)
    H = h_prev.shape[1]
    a_ih, g_ih, a_hh, g_hh = w.extra
    (b_irz, b_in), (b_hrz, b_hn) = _split_rz_n(w.b_ih, H), _split_rz_n(w.b_hh, H)
    x_rz, x_n = _ln_groups(F.linear(x_t, w.w_ih), a_ih, g_ih, H)      # (B, 2H), (B, H)
    h_rz, h_n = _ln_groups(F.linear(h_prev, w.w_hh), a_hh, g_hh, H)
    r_t, z_t = torch.sigmoid(x_rz + h_rz + b_irz + b_hrz).chunk(2, dim=1)
    n_t = torch.tanh(x_n + b_in + r_t * (h_n + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_prev
    return (h_t,), {"r": r_t, "z": z_t, "n": n_t}


def ln_lstm_spec() -> CellSpec:
    return CellSpec(family="lstm", step=ln_lstm_step, gate_rows=("i", "f", "g", "o"),
                    gates=("i", "f", "g", "o"), n_states=2,
                    options=(("peephole", False), ("coupled", False), ("layer_norm", True)),
                    extra_params=_ln_params(4, cell=True))


def ln_gru_spec() -> CellSpec:
    return CellSpec(family="gru", step=ln_gru_step, gate_rows=("r", "z", "n"),
                    gates=("r", "z", "n"), n_states=1,
                    options=(("reset_after", True), ("layer_norm", True)),
                    extra_params=_ln_params(3, cell=False))
