r"""The LSTM cell (Hochreiter & Schmidhuber 1997, forget gate of Gers et al. 2000).

One step, with PyTorch's gate order i, f, g, o in the weight rows::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi  [+ p_i ⊙ c_{t-1}])
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf  [+ p_f ⊙ c_{t-1}])   or 1 − i_t (coupled)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho  [+ p_o ⊙ c_t])
    h_t = o_t ⊙ tanh(c_t)                         [h_t = W_hr (o_t ⊙ tanh(c_t)) with proj_size]

Variants:

* ``peephole`` (Gers & Schmidhuber 2000): diagonal peephole weights ``p`` (3H,) in
  the order i, f, o; the input and forget gates look at c_{t-1}, the output gate at c_t.
* ``coupled`` (CIFG, Greff et al. 2015): ``f_t = 1 − i_t``; the weight rows of the
  forget gate are absent (rows i, g, o) and so is its peephole (``p`` is (2H,): i, o).
* projections (Sak et al. 2014): ``w_hr`` (P, H) maps the cell output to h_t, as
  ``torch.nn.LSTM(proj_size=P)`` (done by the shared time loop for every family).
* the ablations of Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search
  Space Odyssey" (2015; IEEE TNNLS 2017, §II and §III), as the fields of :class:`Greff`:
  NIG ``i_t = 1``, NFG ``f_t = 1``, NOG ``o_t = 1``, NIAF ``g_t = a_g`` (no tanh),
  NOAF ``h_t = o_t ⊙ c_t`` and FGR (full gate recurrence)::

      [a_i, a_f, a_o] += W_gg [i_{t-1}; f_{t-1}; o_{t-1}]          W_gg (3H, 3H)

  i.e. each gate also receives the previous step's activations of all three gates
  through nine H×H matrices (Greff's R_ii … R_oo), rows = target gate i, f, o, columns =
  source gate i, f, o. The previous gate activations of the first step are zeros (an
  internal state ``q`` the loops carry). A gate that is absent has no weight rows and no
  peephole entry; the rows are those of i, f, g, o that remain (NIG: f, g, o; NOG with
  coupled: i, g); ``record`` reports an absent gate as the constant 1.

BPTT of one step (:class:`LSTMFused`), with dh = ∂L/∂h_t (∂L/∂m_t with a projection) and
dc_next the carried ∂L/∂c_t; act_c = tanh or the identity (NOAF), act_g likewise (NIAF),
act' its derivative; an absent gate is the constant 1 and has no dA block; dq = [dq_i,
dq_f, dq_o] the carried gradient of FGR's q_t (0 without FGR)::

    da_o  = (dh ⊙ act_c(c_t) + dq_o) ⊙ o(1 − o)
    dc    = dc_next + dh ⊙ o ⊙ act_c'(c_t) [+ da_o ⊙ p_o]          (o peeks at c_t)
    da_g  = dc ⊙ i ⊙ act_g'(a_g)                                    (1 − g² or 1)
    da_i  = (dc ⊙ g + dq_i) ⊙ i(1 − i),   da_f = (dc ⊙ c_{t-1} + dq_f) ⊙ f(1 − f)
    coupled (f = 1 − i):  da_i = dc ⊙ (g − c_{t-1}) ⊙ i(1 − i)
    dc_{t-1} = dc ⊙ f [+ da_i ⊙ p_i + da_f ⊙ p_f]
    ∂L/∂ĥ_{t-1} = dA W_hh            (dA = [da_i, da_f, da_g, da_o], the rows present)
    FGR:  dq_{t-1} = [da_i, da_f, da_o] W_gg

Chunk sums: dp_i = Σ da_i ⊙ c_{t-1}, dp_f = Σ da_f ⊙ c_{t-1}, dp_o = Σ da_o ⊙ c_t,
dW_gg = Σ [da_i, da_f, da_o]ᵀ q_{t-1}. With zoneout on c the stored c_t is the zoned one;
the candidate c̃_t = f ⊙ c_{t-1} + i ⊙ g, which the output gate and tanh saw, is recomputed.
"""

from __future__ import annotations

from functools import cache, partial
from typing import NamedTuple

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
    StateSpec,
    register,
)


class Greff(NamedTuple):
    """Which parts of the LSTM a Greff et al. (2015) ablation keeps (defaults: all)."""

    input_gate: bool = True              # False: NIG, i_t = 1
    forget_gate: bool = True             # False: NFG, f_t = 1
    output_gate: bool = True             # False: NOG, o_t = 1
    input_activation: bool = True        # False: NIAF, g_t = a_g
    cell_activation: bool = True         # False: NOAF, h_t = o_t ⊙ c_t
    gate_recurrence: bool = False        # True: FGR, W_gg (3H, 3H) from i, f, o at t−1


STANDARD = Greff()


def gate_rows(coupled: bool, v: Greff = STANDARD) -> tuple[str, ...]:
    """The row blocks of W_ih/W_hh: those of i, f, g, o that have weights."""
    has = {"i": v.input_gate, "f": v.forget_gate and not coupled, "g": True,
           "o": v.output_gate}
    return tuple(k for k in "ifgo" if has[k])


# -- the equations (the reference) ------------------------------------------------------------
def lstm_step(
    x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
    peephole: bool = False, coupled: bool = False, greff: Greff = STANDARD,
) -> tuple[State, Gates]:
    """One step; ``h_in`` is what the recurrent weights see (ĥ_{t-1} with recurrent
    dropout), h_{t-1} by default."""
    h_prev, c_prev = state[0], state[1]                       # (B, H or P), (B, H)
    h_in = h_prev if h_in is None else h_in
    rows = gate_rows(coupled, greff)
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh, w.b_hh)   # (B, G·H)
    pre = dict(zip(rows, a.chunk(len(rows), dim=1)))          # each (B, H)
    if greff.gate_recurrence:                                 # FGR: gates see i, f, o at t−1
        q_prev = state[2] if len(state) > 2 else c_prev.new_zeros(c_prev.shape[0],
                                                                 3 * c_prev.shape[1])
        for k, a_k in zip("ifo", F.linear(q_prev, w.extra[0]).chunk(3, dim=1)):
            pre[k] = pre[k] + a_k
    names = [k for k in rows if k != "g"]                     # gates with a peephole
    p = dict(zip(names, w.peephole.chunk(len(names)))) if peephole else {}     # each (H,)

    def gate(k: str, c: Tensor) -> Tensor:                    # σ(a_k [+ p_k ⊙ c]), or 1
        if k not in pre:
            return torch.ones_like(c)
        return torch.sigmoid(pre[k] + p[k] * c if k in p else pre[k])

    i_t = gate("i", c_prev)
    f_t = 1 - i_t if coupled else gate("f", c_prev)
    g_t = torch.tanh(pre["g"]) if greff.input_activation else pre["g"]
    c_t = f_t * c_prev + i_t * g_t
    o_t = gate("o", c_t)                                      # its peephole sees c_t
    h_t = o_t * (torch.tanh(c_t) if greff.cell_activation else c_t)
    if w.w_hr is not None:
        h_t = F.linear(h_t, w.w_hr)                           # (B, P)
    new_state = (h_t, c_t)
    if greff.gate_recurrence:
        new_state += (torch.cat([i_t, f_t, o_t], dim=1),)     # (B, 3H), for step t+1
    return new_state, {"i": i_t, "f": f_t, "g": g_t, "o": o_t}


# -- the fused step (hand-derived BPTT), torch ---------------------------------------------------
class _Layout(NamedTuple):
    """Where each gate lives: its column block in the rows (absent gates: none) and its
    block in the peephole vector."""

    cols: dict[str, int]
    peep: dict[str, int]
    coupled: bool
    greff: Greff

    @property
    def standard(self) -> bool:
        return self.greff == STANDARD


@cache
def _layout(coupled: bool, greff: Greff) -> _Layout:
    rows = gate_rows(coupled, greff)
    return _Layout({k: j for j, k in enumerate(rows)},
                   {k: j for j, k in enumerate(k for k in rows if k != "g")}, coupled, greff)


def _blocks(t: Tensor, index: dict[str, int], H: int) -> dict[str, Tensor]:
    return {k: t[..., j * H:(j + 1) * H] for k, j in index.items()}


class LSTMFused(FusedCell):
    """The fused LSTM step for every variant of :func:`lstm_step` (see the module
    docstring for the backward). Loop weights: W_hh, the peephole vector, W_gg (FGR)."""

    cpp = "lstm"
    blocked_inference = True

    def loop_weights(self, spec, w):
        return [w.w_hh.contiguous(), None if w.peephole is None else w.peephole.contiguous(),
                w.extra[0].contiguous() if w.extra else None]

    def cpp_options(self, spec):
        v = _spec_layout(spec)
        return [float(v.coupled), *(float(f) for f in v.greff)]

    def chunk_scale(self, spec, w):
        # Chunks of ≥ 2048 rows instead of 512 (one chunk up to 2048 rows): LSTM (100,16,128)
        # training 0.91× as long, peephole 0.94×, larger sizes unchanged (2 threads, Xeon,
        # one process), for a peak memory of 0.53–0.66 of torch.nn's LSTM instead of
        # 0.36–0.43 there and at most 0.54 elsewhere (docs/performance.md). Not with a
        # projection: torch.nn's projected LSTM keeps less (1.21× of it with one chunk).
        return 1 if w.w_hr is not None else 4

    def forward_step(self, spec, s: ForwardStep) -> None:
        v = _spec_layout(spec)
        w_hh, peep, w_gg = s.w
        H = s.prev[1].shape[1]
        a = s.a.addmm_(s.h_in, w_hh.t())                           # (n, G·H) pre-activations
        if w_gg is not None:                                       # FGR: + q_{t-1} W_ggᵀ
            r = s.prev[2] @ w_gg.t()                               # (n, 3H): to i, f, o
            a[:, :2 * H] += r[:, :2 * H]
            a[:, 3 * H:] += r[:, 2 * H:]
        act = _blocks(a, v.cols, H)
        p = _blocks(peep, v.peep, H) if peep is not None else {}
        c_prev, c_t, m_t = s.prev[1], s.next[1], s.next[0]

        def gate(k: str, c: Tensor) -> Tensor | None:              # σ(a_k [+ p_k ⊙ c]) in place
            if k not in act:
                return None
            return (act[k].addcmul_(p[k], c) if k in p else act[k]).sigmoid_()

        i_t = gate("i", c_prev)
        f_t = 1 - i_t if v.coupled else gate("f", c_prev)
        g_t = act["g"].tanh_() if v.greff.input_activation else act["g"]
        if f_t is None:
            c_t.copy_(c_prev)
        else:
            torch.mul(f_t, c_prev, out=c_t)
        if i_t is None:
            c_t.add_(g_t)
        else:
            c_t.addcmul_(i_t, g_t)
        o_t = gate("o", c_t)                                       # its peephole sees c_t
        act_c = c_t.tanh() if v.greff.cell_activation else c_t
        if o_t is None:
            m_t.copy_(act_c)
        else:
            torch.mul(o_t, act_c, out=m_t)
        if w_gg is not None:
            torch.cat([i_t, f_t, o_t], dim=1, out=s.next[2])

    def backward_step(self, spec, s: BackwardStep):
        v = _spec_layout(spec)
        w_hh, peep, w_gg = s.w
        H = s.prev[1].shape[1]
        act, da = _blocks(s.gates, v.cols, H), _blocks(s.dA, v.cols, H)
        p = _blocks(peep, v.peep, H) if peep is not None else {}
        dq = _blocks(s.dnext[2], {"i": 0, "f": 1, "o": 2}, H) if w_gg is not None else {}
        c_prev = s.prev[1]
        i_t, g_t, o_t = act.get("i"), act["g"], act.get("o")
        f_t = 1 - i_t if v.coupled else act.get("f")
        c_t = _candidate(v, act, c_prev) if s.zoned[1] else s.next[1]
        dh, dc = s.dnext[0], s.dnext[1]
        act_c = c_t.tanh() if v.greff.cell_activation else c_t
        d_act = dh if o_t is None else dh * o_t                     # ∂L/∂act_c(c_t)
        dc = dc + (d_act * (1 - act_c * act_c) if v.greff.cell_activation else d_act)
        if o_t is not None:
            torch.mul(dh * act_c + dq.get("o", 0), o_t * (1 - o_t), out=da["o"])
            if "o" in p:
                dc = dc.addcmul(da["o"], p["o"])
        d_g = dc if i_t is None else dc * i_t                       # ∂L/∂g
        if v.greff.input_activation:
            torch.mul(d_g, 1 - g_t * g_t, out=da["g"])
        else:
            da["g"].copy_(d_g)
        if v.coupled:
            torch.mul(dc * (g_t - c_prev), i_t * (1 - i_t), out=da["i"])
        else:
            if i_t is not None:
                torch.mul(dc * g_t + dq.get("i", 0), i_t * (1 - i_t), out=da["i"])
            if f_t is not None:
                torch.mul(dc * c_prev + dq.get("f", 0), f_t * (1 - f_t), out=da["f"])
        dc_prev = dc if f_t is None else dc * f_t
        for k in ("i", "f"):
            if k in p:
                dc_prev = dc_prev.addcmul(da[k], p[k])
        dprev: list[Tensor | None] = [None, dc_prev]
        if w_gg is not None:                                        # dq_{t-1} = da_{ifo} W_gg
            dprev.append(torch.cat([da["i"], da["f"], da["o"]], dim=1) @ w_gg)
        return dprev, s.dA @ w_hh

    def chunk_grads(self, spec, c: Chunk, w, aux, g: Grads) -> None:
        super().chunk_grads(spec, c, w, aux, g)
        peephole, fgr = g.w["peephole"] is not None, bool(w.extra) and g.extra[0] is not None
        if not (peephole or fgr):
            return
        v = _spec_layout(spec)
        H = c.prev[1].shape[1]
        da = _blocks(c.dA, v.cols, H)
        if peephole:                             # Σ da_k ⊙ (c it saw)
            c_t = _candidate(v, _blocks(c.gates, v.cols, H), c.prev[1]) if c.zoned[1] \
                else c.seqs[1]
            seen = {"i": c.prev[1], "f": c.prev[1], "o": c_t}
            g.add("peephole", torch.cat([(da[k] * seen[k]).sum(0) for k in v.peep]))
        if fgr:                                                     # FGR: Σ da_{ifo}ᵀ q_{t-1}
            d_ifo = torch.cat([da["i"], da["f"], da["o"]], dim=1)
            g.add_extra(0, d_ifo.t() @ c.prev[2])

    def trace_gates(self, spec, gates, H):
        v = _spec_layout(spec)
        act = _blocks(gates, v.cols, H)
        out = {}
        for k in "ifgo":                          # absent: f = 1 − i (coupled), else 1
            out[k] = act.get(k)
            if out[k] is None:
                out[k] = 1 - act["i"] if k == "f" and v.coupled else torch.ones_like(act["g"])
        return out


def _candidate(v: _Layout, act: dict[str, Tensor], c_prev: Tensor) -> Tensor:
    """c̃_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t from the saved activations (absent gates: 1)."""
    i_t, g_t = act.get("i"), act["g"]
    f_t = 1 - i_t if v.coupled else act.get("f")
    c = c_prev if f_t is None else f_t * c_prev
    return c + (g_t if i_t is None else i_t * g_t)


@cache
def _spec_layout(spec: CellSpec) -> _Layout:
    greff = spec.option("greff")
    return _layout(bool(spec.option("coupled")), STANDARD if greff is None else Greff(*greff))


_FUSED = LSTMFused()
Q_STATE = StateSpec("q", lambda H, R: 3 * H)     # FGR: i, f, o of the previous step


# -- the family ------------------------------------------------------------------------------------
def lstm_spec(*, peephole: bool = False, coupled: bool = False,
              greff: Greff | tuple | None = STANDARD, layer_norm: bool = False) -> CellSpec:
    """The LSTM of these options (``layer_norm``: :func:`lstmkit.cells.layernorm.ln_lstm_spec`,
    which takes no other variant)."""
    if layer_norm:
        from .layernorm import ln_lstm_spec
        return ln_lstm_spec()
    greff = STANDARD if greff is None else Greff(*greff)
    check_variant(peephole, coupled, greff)
    extra = ((ExtraParam("weight_gg", lambda H, I, R: (3 * H, 3 * H)),)
             if greff.gate_recurrence else ())
    return CellSpec(
        family="lstm",
        step=partial(lstm_step, peephole=peephole, coupled=coupled, greff=greff),
        gate_rows=gate_rows(coupled, greff),
        gates=("i", "f", "g", "o"),
        n_states=2,
        options=(("peephole", peephole), ("coupled", coupled),
                 ("greff", None if greff == STANDARD else tuple(greff))),
        extra_params=extra,
        states=(H_STATE, C_STATE, Q_STATE) if greff.gate_recurrence else (H_STATE, C_STATE),
        fused=_FUSED,
        native=not peephole and not coupled and greff == STANDARD,
        projection=True,
        onnx="LSTM" if greff == STANDARD else None,
        onednn="lstm" if not coupled and greff == STANDARD else None,
    )


register("lstm", lstm_spec)


def check_variant(peephole: bool, coupled: bool, greff: Greff) -> None:
    """Refuse the combinations that make no sense, saying why."""
    if coupled and not greff.input_gate:
        raise ValueError("coupled=True (f_t = 1 − i_t) needs the input gate, got "
                         "input_gate=False (the forget gate would be 0: c_t = g_t)")
    if coupled and not greff.forget_gate:
        raise ValueError("coupled=True defines the forget gate as 1 − i_t; forget_gate=False "
                         "(f_t = 1) contradicts it: choose one")
    if peephole and not (greff.input_gate or greff.forget_gate or greff.output_gate):
        raise ValueError("peephole=True needs at least one of the gates i, f, o, got all "
                         "three disabled")
    if greff.gate_recurrence and (coupled or not (greff.input_gate and greff.forget_gate
                                                  and greff.output_gate)):
        raise ValueError("gate_recurrence=True (FGR) connects the three gates i, f, o as "
                         "Greff et al. define it; it is not supported with coupled=True or "
                         "with input_gate/forget_gate/output_gate=False")
