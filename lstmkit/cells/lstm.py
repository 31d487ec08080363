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
  ``torch.nn.LSTM(proj_size=P)``.
* the ablations of Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search
  Space Odyssey" (2015; IEEE TNNLS 2017, §II and §III), as the fields of :class:`Greff`:
  NIG ``i_t = 1``, NFG ``f_t = 1``, NOG ``o_t = 1``, NIAF ``g_t = a_g`` (no tanh),
  NOAF ``h_t = o_t ⊙ c_t`` and FGR (full gate recurrence)::

      [a_i, a_f, a_o] += W_gg [i_{t-1}; f_{t-1}; o_{t-1}]          W_gg (3H, 3H)

  i.e. each gate also receives the previous step's activations of all three gates
  through nine H×H matrices (Greff's R_ii … R_oo), rows = target gate i, f, o, columns =
  source gate i, f, o. The previous gate activations of the first step are zeros. A gate
  that is absent has no weight rows and no peephole entry; the rows are those of
  i, f, g, o that remain (NIG: f, g, o; NOG with coupled: i, g); ``record`` reports an
  absent gate as the constant 1.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, ExtraParam, Gates, LayerWeights, State


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


def lstm_step(
    x_t: Tensor, state: State, w: LayerWeights, *, peephole: bool = False, coupled: bool = False,
    greff: Greff = STANDARD,
) -> tuple[State, Gates]:
    h_prev, c_prev = state[0], state[1]                       # (B, H or P), (B, H)
    rows = gate_rows(coupled, greff)
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_prev, w.w_hh, w.b_hh)   # (B, G·H)
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


def lstm_spec(*, peephole: bool = False, coupled: bool = False,
              greff: Greff = STANDARD) -> CellSpec:
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
                 ("greff", None if greff == STANDARD else greff)),
        extra_params=extra,
    )


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
