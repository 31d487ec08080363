r"""The plain (Elman 1990) recurrent cell::

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      (or relu)

BPTT of one step (:class:`RNNFused`), with dh = ∂L/∂h_t::

    da = dh ⊙ act'(a) = dh ⊙ (1 − h_t²)  (tanh)  or  dh ⊙ [h_t > 0]  (relu)
    ∂L/∂ĥ_{t-1} = da W_hh
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    BackwardStep,
    CellSpec,
    ForwardStep,
    FusedCell,
    Gates,
    LayerWeights,
    State,
    register,
)

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_step(
    x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> tuple[State, Gates]:
    (h_prev,) = state                                          # (B, H)
    h_in = h_prev if h_in is None else h_in
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh, w.b_hh)     # (B, H)
    h_t = NONLINEARITIES[nonlinearity](a)
    return (h_t,), {}


class RNNFused(FusedCell):
    """The step leaves h̃_t = act(a_t) in ``a``, which is the output itself unless zoneout
    mixes h_{t-1} in (then the backward reads h̃_t from there)."""

    cpp = "rnn"
    output_in_gates = True
    blocked_inference = True

    def cpp_options(self, spec):
        return [float(spec.option("nonlinearity") == "relu")]

    def forward_step(self, spec, s: ForwardStep) -> None:
        a = s.a.addmm_(s.h_in, s.w[0].t())
        h_t = a.relu_() if spec.option("nonlinearity") == "relu" else a.tanh_()
        if s.next[0].data_ptr() != h_t.data_ptr():
            s.next[0].copy_(h_t)

    def backward_step(self, spec, s: BackwardStep):
        h_t = s.gates                                                # h̃_t
        if spec.option("nonlinearity") == "relu":
            torch.mul(s.dnext[0], h_t > 0, out=s.dA)
        else:
            torch.mul(s.dnext[0], 1 - h_t * h_t, out=s.dA)
        return [None], s.dA @ s.w[0]


_FUSED = RNNFused()


def rnn_spec(*, nonlinearity: str = "tanh") -> CellSpec:
    return CellSpec(
        family="rnn",
        step=partial(rnn_step, nonlinearity=nonlinearity),
        gate_rows=("h",),
        gates=(),
        n_states=1,
        options=(("nonlinearity", nonlinearity),),
        fused=_FUSED,
        onnx="RNN",
        onednn=f"rnn_{nonlinearity}",
    )


register("rnn", rnn_spec)
