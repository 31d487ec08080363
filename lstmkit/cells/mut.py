r"""MUT1, MUT2 and MUT3: the three architectures found by the architecture search of
Jozefowicz, Zaremba & Sutskever (2015), "An Empirical Exploration of Recurrent Network
Architectures", ICML, §3.2. Their equations as the paper prints them (its h_t is the state
before the step, h_{t+1} the state after; σ the logistic sigmoid)::

    MUT1:
      z = σ(W_xz x_t + b_z)
      r = σ(W_xr x_t + W_hr h_t + b_r)
      h_{t+1} = tanh(W_hh (r ⊙ h_t) + tanh(x_t) + b_h) ⊙ z + h_t ⊙ (1 − z)

    MUT2:
      z = σ(W_xz x_t + W_hz h_t + b_z)
      r = σ(x_t + W_hr h_t + b_r)
      h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 − z)

    MUT3:
      z = σ(W_xz x_t + W_hz tanh(h_t) + b_z)
      r = σ(W_xr x_t + W_hr h_t + b_r)
      h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 − z)

One family ``mut`` with the option ``variant`` (1, 2, 3). The candidate
n = tanh(W_hh (r ⊙ h_t) + …) is recorded as ``n`` beside the gates ``z`` and ``r``. Unlike
torch's GRU, z here lets the candidate in: z = 1 replaces the state, z = 0 keeps it.

MUT1's tanh(x_t) and MUT2's x_t in r add the input to an H-vector, so those two need
input size = hidden size (:func:`check_input_size`); MUT3 takes any input size.

Parameter layout (torch.nn's names; the row blocks of ``weight_ih_l{k}`` are the gates that
read x_t through a weight, those of ``weight_hh_l{k}`` the gates that read h_t through one;
``bias_ih`` and ``bias_hh`` follow the rows of their matrix, and a gate's bias is the sum of
the biases it has, as in torch.nn)::

             weight_ih (rows)          weight_hh (rows)              biases of z, r, n
    MUT1     W_xz | W_xr     (2H, I)   W_hr | W_hh          (2H, H)   b_iz, b_ir + b_hr, b_hn
    MUT2     W_xz | W_xh     (2H, I)   W_hz | W_hr | W_hh   (3H, H)   b_iz + b_hz, b_hr, b_in + b_hn
    MUT3     W_xz | W_xr | W_xh (3H, I) W_hz | W_hr | W_hh  (3H, H)   both, per gate

With recurrent dropout ĥ (the dropped h_t) is what the recurrent weights see — W_hr ĥ,
W_hh (r ⊙ ĥ), W_hz ĥ, W_hz tanh(ĥ) — while the direct path h_t ⊙ (1 − z) keeps h_t.

BPTT of one step (:class:`MUTFused`). The input side a = [a_z | a_r | a_n] (N, 3H) holds
every term that does not involve h (x_t W_xᵀ, the biases, MUT1's tanh(x_t), MUT2's x_t);
with dh = ∂L/∂h_{t+1}, q = r ⊙ ĥ::

    da_n = dh ⊙ z ⊙ (1 − n²)
    da_z = dh ⊙ (n − h_t) ⊙ z (1 − z)
    ∂L/∂h_t (direct) = dh ⊙ (1 − z)
    dq = da_n W_hh;   da_r = dq ⊙ ĥ ⊙ r (1 − r)
    ∂L/∂ĥ = dq ⊙ r + da_r W_hr  [MUT2: + da_z W_hz;  MUT3: + (da_z W_hz) ⊙ (1 − tanh²(ĥ))]
    dW_hr = Σ da_rᵀ ĥ,   dW_hh = Σ da_nᵀ q,   dW_hz = Σ da_zᵀ ĥ (MUT2), Σ da_zᵀ tanh(ĥ) (MUT3)
    dW_x* = Σ da_*ᵀ x_t,  db_* = Σ da_* (for the rows each matrix has)
    ∂L/∂x_t = Σ_rows of W_ih da_* W_x*  [MUT1: + da_n ⊙ (1 − tanh²(x_t));  MUT2: + da_r]
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
    register,
)

VARIANTS = (1, 2, 3)
#: per variant: the row blocks of W_ih, those of W_hh
ROWS = {1: (("z", "r"), ("r", "n")),
        2: (("z", "n"), ("z", "r", "n")),
        3: (("z", "r", "n"), ("z", "r", "n"))}
SLOT = {"z": 0, "r": 1, "n": 2}                   # the column blocks of a: z | r | n


def needs_equal_sizes(variant: int) -> bool:
    """MUT1 (tanh(x_t) in the candidate) and MUT2 (x_t in r) add x_t to an H-vector."""
    return variant in (1, 2)


def check_input_size(variant: int, input_size: int, hidden_size: int, what: str = "") -> None:
    """Raise ValueError if MUT``variant`` cannot take inputs of ``input_size`` (``what``
    says where that size comes from, e.g. the layer below in a stacked module)."""
    if needs_equal_sizes(variant) and input_size != hidden_size:
        term = "tanh(x_t) to the candidate" if variant == 1 else "x_t to the reset gate r"
        raise ValueError(
            f"MUT{variant} adds {term}, so its input size must equal hidden_size; got "
            f"input size {input_size}{what} and hidden_size {hidden_size}")


def _blocks(t: Tensor | None, names: tuple[str, ...]) -> dict[str, Tensor | None]:
    if t is None:
        return dict.fromkeys(names)
    return dict(zip(names, t.chunk(len(names), dim=0)))


# -- the equations (the reference) ------------------------------------------------------------
def mut_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
             variant: int = 1) -> tuple[State, Gates]:
    """One step of MUT``variant`` (the module docstring's equations); ``h_in`` is what the
    recurrent weights see (ĥ with recurrent dropout), h_t by default."""
    (h,) = state                                                   # (B, H)
    h_in = h if h_in is None else h_in
    check_input_size(variant, x_t.shape[-1], h.shape[-1])
    x_rows, h_rows = ROWS[variant]
    W_x, b_x = _blocks(w.w_ih, x_rows), _blocks(w.b_ih, x_rows)
    W_h, b_h = _blocks(w.w_hh, h_rows), _blocks(w.b_hh, h_rows)

    def wx(g: str) -> Tensor:                                      # W_xg x_t + b_ig
        return F.linear(x_t, W_x[g], b_x[g])

    def wh(g: str, v: Tensor) -> Tensor:                           # W_hg v + b_hg
        return F.linear(v, W_h[g], b_h[g])

    if variant == 1:
        z = torch.sigmoid(wx("z"))
        r = torch.sigmoid(wx("r") + wh("r", h_in))
        n = torch.tanh(wh("n", r * h_in) + torch.tanh(x_t))
    elif variant == 2:
        z = torch.sigmoid(wx("z") + wh("z", h_in))
        r = torch.sigmoid(x_t + wh("r", h_in))
        n = torch.tanh(wh("n", r * h_in) + wx("n"))
    else:
        z = torch.sigmoid(wx("z") + wh("z", torch.tanh(h_in)))
        r = torch.sigmoid(wx("r") + wh("r", h_in))
        n = torch.tanh(wh("n", r * h_in) + wx("n"))
    h_next = n * z + h * (1 - z)
    return (h_next,), {"z": z, "r": r, "n": n}


# -- the fused step (hand-derived BPTT), torch ---------------------------------------------------
class MUTFused(FusedCell):
    """``a`` (N, 3H) = [z | r | n] for every variant: the input side in, the activations
    out. Loop weights: W_hh (its rows per :data:`ROWS`). No saved or gradient buffers: the
    backward reads z, r, n, h_t and ĥ."""

    cpp = "mut"

    def cpp_options(self, spec):
        return [float(spec.option("variant"))]

    def project(self, spec, x, w, side):
        v = spec.option("variant")
        x_rows, h_rows = ROWS[v]
        H = w.w_hh.shape[0] // len(h_rows)
        check_input_size(v, x.shape[1], H)
        xw = F.linear(x, w.w_ih, w.b_ih)                          # (N, |x_rows|·H)
        if v == 3:
            a = xw                                                 # already z | r | n
        else:
            cols: list[Tensor | None] = [None, None, None]
            for k, g in enumerate(x_rows):
                cols[SLOT[g]] = xw[:, k * H:(k + 1) * H]
            cols[SLOT["n" if v == 1 else "r"]] = torch.tanh(x) if v == 1 else x
            a = torch.cat(cols, dim=1)                             # (N, 3H)
        if w.b_hh is not None:                                     # the h-side biases
            first = SLOT[h_rows[0]]
            a[:, first * H:].add_(w.b_hh)                          # rows are the last blocks
        return a, ()

    def forward_step(self, spec, s: ForwardStep) -> None:
        v = spec.option("variant")
        W = s.w[0]
        H = W.shape[1]
        W_h = dict(zip(ROWS[v][1], W.split(H)))
        a_z, a_r, a_n = s.a.split(H, dim=1)
        h_in = s.h_in
        if v == 2:                                                 # z and r both see ĥ
            s.a[:, :2 * H].addmm_(h_in, W[:2 * H].t())
        else:
            a_r.addmm_(h_in, W_h["r"].t())
            if v == 3:
                a_z.addmm_(torch.tanh(h_in), W_h["z"].t())
        z, r = a_z.sigmoid_(), a_r.sigmoid_()
        n = a_n.addmm_(r * h_in, W_h["n"].t()).tanh_()
        h = s.prev[0]
        torch.addcmul(h, z, n - h, out=s.next[0])                  # n ⊙ z + h ⊙ (1 − z)

    def backward_step(self, spec, s: BackwardStep):
        v = spec.option("variant")
        W = s.w[0]
        H = W.shape[1]
        W_h = dict(zip(ROWS[v][1], W.split(H)))
        z, r, n = s.gates.split(H, dim=1)
        da_z, da_r, da_n = s.dA.split(H, dim=1)
        dh, h, h_in = s.dnext[0], s.prev[0], s.h_in
        torch.mul(dh * z, 1 - n * n, out=da_n)
        torch.mul(dh * (n - h), z * (1 - z), out=da_z)
        dq = da_n @ W_h["n"]
        torch.mul(dq * h_in, r * (1 - r), out=da_r)
        dh_in = torch.addmm(dq * r, da_r, W_h["r"])
        if v == 2:
            dh_in.addmm_(da_z, W_h["z"])
        elif v == 3:
            th = torch.tanh(h_in)
            dh_in.addcmul_(da_z @ W_h["z"], 1 - th * th)
        return [dh * (1 - z)], dh_in

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        v = spec.option("variant")
        x_rows, h_rows = ROWS[v]
        H = c.h_in.shape[1]
        da = dict(zip(("z", "r", "n"), c.dA.split(H, dim=1)))
        dA_x = c.dA if v == 3 else torch.cat([da[k] for k in x_rows], dim=1)
        if g.dx is not None:
            dx = torch.mm(dA_x, w.w_ih, out=g.dx[c.r0:c.r1])
            if v == 1:                                             # tanh(x_t) in the candidate
                tx = torch.tanh(c.x)
                dx.addcmul_(da["n"], 1 - tx * tx)
            elif v == 2:                                           # x_t in r
                dx.add_(da["r"])
        if g.w["w_ih"] is not None:
            g.w["w_ih"].addmm_(dA_x.t(), c.x)
        if g.w["b_ih"] is not None:
            g.add("b_ih", dA_x.sum(0))
        if g.w["w_hh"] is not None:
            seen = {"r": c.h_in, "n": c.gates[:, H:2 * H] * c.h_in,
                    "z": c.h_in if v == 2 else torch.tanh(c.h_in)}
            for k, name in enumerate(h_rows):
                g.w["w_hh"][k * H:(k + 1) * H].addmm_(da[name].t(), seen[name])
        if g.w["b_hh"] is not None:
            g.add("b_hh", torch.cat([da[k] for k in h_rows], dim=1).sum(0))

    def trace_gates(self, spec, gates, H):
        return dict(zip(("z", "r", "n"), gates.split(H, dim=1)))


_FUSED = MUTFused()


# -- the family ------------------------------------------------------------------------------------
def mut_spec(*, variant: int = 1) -> CellSpec:
    """MUT``variant`` of Jozefowicz et al. (2015)."""
    if variant not in VARIANTS or isinstance(variant, bool):
        raise ValueError(f"MUT variant must be 1, 2 or 3, got {variant!r}")
    variant = int(variant)
    x_rows, h_rows = ROWS[variant]
    return CellSpec(
        family="mut",
        step=partial(mut_step, variant=variant),
        gate_rows=h_rows,
        input_rows=x_rows,
        gates=("z", "r", "n"),
        n_states=1,
        options=(("variant", variant),),
        fused=_FUSED,
    )


register("mut", mut_spec)
