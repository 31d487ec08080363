r"""The GRU cell (Cho et al. 2014), gate order r, z, n as in PyTorch.

``reset_after=True`` (default; PyTorch and cuDNN)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

``reset_after=False`` (the paper's form; ONNX ``linear_before_reset=0``)::

    n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)

Note the role of ``z``: here (as in PyTorch) ``z_t`` keeps the old state. Some texts,
colah's blog among them, write ``h_t = (1 − z_t) h_{t-1} + z_t h̃_t`` instead.

BPTT of one step (:class:`GRUFused`), with dh = ∂L/∂h_t and ĥ the input of the recurrent
weights (h_{t-1}, or m ⊙ h_{t-1} with recurrent dropout)::

    da_n = dh ⊙ (1 − z) ⊙ (1 − n²);   da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
    ∂L/∂h_{t-1} (direct) = dh ⊙ z
    reset_after  (a_n = x-part + r ⊙ hw_n, hw_n = W_hn ĥ + b_hn):
        da_r = da_n ⊙ hw_n ⊙ r(1 − r);  recurrent side dA_h = [da_r, da_z, da_n ⊙ r]
        ∂L/∂ĥ = dA_h W_hh;   dW_hh = Σ dA_hᵀ ĥ,  db_hh = Σ dA_h,  db_ih = Σ dA
    reset before (a_n = x-part + W_hn (r ⊙ ĥ) + b_hn):
        dq = da_n W_hn;  da_r = dq ⊙ ĥ ⊙ r(1 − r)
        ∂L/∂ĥ = dq ⊙ r + [da_r, da_z] W_h{r,z};   dW_h{r,z} = Σ dA_{r,z}ᵀ ĥ,
        dW_hn = Σ da_nᵀ (r ⊙ ĥ),  db_hh = db_ih = Σ dA
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
    new_buffer,
    register,
)


def _chunk3(t: Tensor | None, dim: int = 0) -> tuple:
    return (None, None, None) if t is None else t.chunk(3, dim=dim)


# -- the equations (the reference) ------------------------------------------------------------
def gru_step(
    x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
    reset_after: bool = True,
) -> tuple[State, Gates]:
    """One step; ``h_in`` is what the recurrent weights see (ĥ_{t-1} with recurrent
    dropout), h_{t-1} by default; the direct path z_t ⊙ h_{t-1} keeps h_{t-1}."""
    (h_prev,) = state                                          # (B, H)
    h_in = h_prev if h_in is None else h_in
    ax_r, ax_z, ax_n = F.linear(x_t, w.w_ih, w.b_ih).chunk(3, dim=1)
    if reset_after:
        ah_r, ah_z, ah_n = F.linear(h_in, w.w_hh, w.b_hh).chunk(3, dim=1)
        r_t = torch.sigmoid(ax_r + ah_r)
        z_t = torch.sigmoid(ax_z + ah_z)
        n_t = torch.tanh(ax_n + r_t * ah_n)
    else:
        W_hr, W_hz, W_hn = w.w_hh.chunk(3, dim=0)
        b_hr, b_hz, b_hn = _chunk3(w.b_hh)
        r_t = torch.sigmoid(ax_r + F.linear(h_in, W_hr, b_hr))
        z_t = torch.sigmoid(ax_z + F.linear(h_in, W_hz, b_hz))
        n_t = torch.tanh(ax_n + F.linear(r_t * h_in, W_hn, b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_prev
    return (h_t,), {"r": r_t, "z": z_t, "n": n_t}


# -- the fused step (hand-derived BPTT), torch ---------------------------------------------------
class GRUFused(FusedCell):
    """Loop weights: W_hh, b_hh. Saved: hw_n = W_hn ĥ + b_hn (reset_after). Gradient
    buffer: the recurrent side's dA_h (reset_after)."""

    cpp = "gru"
    blocked_inference = True      # hw_n then lives only for the step (csrc/cells/gru.h)

    def input_bias(self, spec, w):
        return w.b_ih                                            # b_hh enters in the loop

    def loop_weights(self, spec, w):
        return [w.w_hh.contiguous(), None if w.b_hh is None else w.b_hh.contiguous()]

    def saved_buffers(self, spec, a, H):
        return [new_buffer(a, a.shape[0], H)] if spec.option("reset_after") else []

    def grad_buffers(self, spec, rows, like, H, side):
        return [new_buffer(like, rows, 3 * H)] if spec.option("reset_after") else []

    def cpp_options(self, spec):
        return [float(spec.option("reset_after"))]

    def forward_step(self, spec, s: ForwardStep) -> None:
        w_hh, b_hh = s.w
        H = w_hh.shape[1]
        a, h_prev, h_in = s.a, s.prev[0], s.h_in
        if spec.option("reset_after"):
            hw = h_in @ w_hh.t() if b_hh is None else torch.addmm(b_hh, h_in, w_hh.t())
            r_t, z_t = a[:, :2 * H].add_(hw[:, :2 * H]).sigmoid_().split(H, dim=1)
            hw_n = s.saved[0].copy_(hw[:, 2 * H:])
            n_t = a[:, 2 * H:].addcmul_(r_t, hw_n).tanh_()
        else:
            b_rz, b_n = (None, None) if b_hh is None else (b_hh[:2 * H], b_hh[2 * H:])
            rz = h_in @ w_hh[:2 * H].t()
            if b_rz is not None:
                rz += b_rz
            r_t, z_t = a[:, :2 * H].add_(rz).sigmoid_().split(H, dim=1)
            a_n = a[:, 2 * H:].addmm_(r_t * h_in, w_hh[2 * H:].t())
            if b_n is not None:
                a_n.add_(b_n)
            n_t = a_n.tanh_()
        torch.addcmul(n_t, z_t, h_prev - n_t, out=s.next[0])       # (1 − z) n + z h

    def backward_step(self, spec, s: BackwardStep):
        w_hh = s.w[0]
        H = w_hh.shape[1]
        dh, h_prev = s.dnext[0], s.prev[0]
        r_t, z_t, n_t = s.gates.split(H, dim=1)
        da_r, da_z, da_n = s.dA.split(H, dim=1)
        torch.mul(dh * (1 - z_t), 1 - n_t * n_t, out=da_n)
        torch.mul(dh * (h_prev - n_t), z_t * (1 - z_t), out=da_z)
        if spec.option("reset_after"):
            torch.mul(da_n * s.saved[0], r_t * (1 - r_t), out=da_r)
            dA_h = s.grads[0]
            dA_h[:, :2 * H] = s.dA[:, :2 * H]
            torch.mul(da_n, r_t, out=dA_h[:, 2 * H:])
            dh_in = dA_h @ w_hh
        else:
            dq = da_n @ w_hh[2 * H:]
            torch.mul(dq * s.h_in, r_t * (1 - r_t), out=da_r)
            dh_in = torch.addmm(dq * r_t, s.dA[:, :2 * H], w_hh[:2 * H])
        return [dh * z_t], dh_in

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        H = c.h_in.shape[1]
        if spec.option("reset_after"):
            dA_h = c.grads[0]
            self.input_grads(c, w, c.dA, g, b_hh=False)
            if g.w["w_hh"] is not None:
                from ..ops import gemm
                gemm.matmul_into(g.w["w_hh"], dA_h.t(), c.h_in, accumulate=True)
            if g.w["b_hh"] is not None:
                g.add("b_hh", dA_h.sum(0))
            return
        self.input_grads(c, w, c.dA, g)
        if g.w["w_hh"] is not None:                          # the n rows multiply r ⊙ ĥ
            g.w["w_hh"][:2 * H].addmm_(c.dA[:, :2 * H].t(), c.h_in)
            g.w["w_hh"][2 * H:].addmm_(c.dA[:, 2 * H:].t(), c.gates[:, :H] * c.h_in)


_FUSED = GRUFused()


# -- the family ------------------------------------------------------------------------------------
def gru_spec(*, reset_after: bool = True, layer_norm: bool = False) -> CellSpec:
    """The GRU of these options (``layer_norm``: :func:`lstmkit.cells.layernorm.ln_gru_spec`)."""
    if layer_norm:
        from .layernorm import ln_gru_spec
        return ln_gru_spec()
    return CellSpec(
        family="gru",
        step=partial(gru_step, reset_after=reset_after),
        gate_rows=("r", "z", "n"),
        gates=("r", "z", "n"),
        n_states=1,
        options=(("reset_after", reset_after),),
        fused=_FUSED,
        onnx="GRU",
        onednn="lbr_gru" if reset_after else None,
    )


register("gru", gru_spec)
