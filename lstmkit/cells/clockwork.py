r"""The Clockwork RNN cell (Koutník, Greff, Gomez & Schmidhuber 2014, "A Clockwork RNN", ICML).

The hidden units are split into g modules of k units each, with clock periods
T_1 < T_2 < … < T_g (sorted ascending, as the paper sorts them). At step t a module i is
*active* when ``t mod T_i == 0``; an active module computes the Elman update of its units,
an inactive one copies its previous values (the paper's Eq. 3 and the text before it)::

    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    h_t[i] = tanh(a_t[i])      if t mod T_i == 0   (module i, units i·k … (i+1)·k − 1)
    h_t[i] = h_{t-1}[i]        otherwise

``W_hh`` is block-upper-triangular (section 3 of the paper): with the modules ordered by
increasing period, row block j (the module receiving) has non-zero column blocks i ≥ j
only, so a module hears itself and the *slower* modules; faster modules never feed slower
ones. ``W_ih`` is full. :func:`clockwork_mask` is that block structure as a 0/1 matrix.

Time index: the paper writes the rule as ``t mod T_i = 0`` without fixing where t starts.
Here the clock counts each sequence's own steps from **t = 0**, so the first step updates
every module (each module sees an input before it is first held), and module i is next
updated at steps T_i, 2·T_i, …. Going backward (the reverse direction of a bidirectional
layer) the clock counts the steps of the reversed sequence, so a sequence of length L has
clock L − 1 − t at flat step t; rows of one step may then be on different clocks.

The family computes, from the layout alone, which modules tick at each row (a side input
(N, g), :func:`module_clocks`). BPTT of one step (:class:`ClockworkFused`), with dh =
∂L/∂h_t and ``act`` the active units::

    da[act] = dh[act] ⊙ (1 − h_t[act]²)     (da = 0 on held units)
    ∂L/∂h_{t-1} (direct) = dh ⊙ [unit held],    ∂L/∂ĥ_{t-1} = da W_hh

The C++ step computes only the rows of W_hh up to the last active module of the step (all
of them when the periods divide each other, as the exponential ones: then the active
modules are always the first m).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def clockwork_step(x_t: Tensor, state: State, w: LayerWeights, ticking: Tensor, *,
                   h_in: Tensor | None = None) -> tuple[State, Gates]:
    """One step; ``ticking`` (B, g) bool marks the modules whose clock has come. ``w.w_hh``
    must already be masked block-upper-triangular (see :func:`clockwork_mask`)."""
    (h_prev,) = state                                                      # (B, H)
    h_in = h_prev if h_in is None else h_in
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh, w.b_hh)     # (B, H)
    active = unit_mask(ticking, h_prev.shape[1])
    h_t = torch.where(active, torch.tanh(a), h_prev)
    return (h_t,), {}


def unit_mask(ticking: Tensor, H: int) -> Tensor:
    """(B, H) bool from the per-module (B, g) one: each module's k = H/g units alike."""
    return ticking.repeat_interleave(H // ticking.shape[1], dim=1)


def module_clocks(batch_sizes: list[int], reverse: bool, periods: Sequence[int],
                  device: torch.device) -> Tensor:
    """(N, g) bool: at each flat row, which modules tick (``clock mod T_i == 0``)."""
    T, N, B = len(batch_sizes), sum(batch_sizes), batch_sizes[0]
    period = torch.tensor(periods, device=device)[None, :]
    if batch_sizes[-1] == B:                     # padded: every row of step t on one clock
        t = torch.arange(T, device=device)
        ticks = (T - 1 - t if reverse else t)[:, None] % period == 0           # (T, g)
        return ticks[:, None, :].expand(T, B, len(periods)).reshape(N, len(periods))
    bs = torch.tensor(batch_sizes, device=device)
    t = torch.repeat_interleave(torch.arange(T, device=device), bs, output_size=N)
    b = torch.arange(N, device=device) - (torch.cumsum(bs, 0) - bs)[t]   # sequence of a row
    if reverse:                                   # clock = steps of the reversed sequence
        lengths = (bs[None, :] > torch.arange(B, device=device)[:, None]).sum(1)
        t = lengths[b] - 1 - t
    return t[:, None] % period == 0


def clockwork_mask(periods: Sequence[int], module_size: int, *, device=None, dtype=None
                   ) -> Tensor:
    """(H, H) 0/1: entry [j, i] is 1 when unit i's module is unit j's module or a slower
    one (block-upper-triangular for ascending periods)."""
    g = len(periods)
    blocks = torch.ones(g, g, device=device, dtype=dtype).triu()          # [to, from]
    return blocks.repeat_interleave(module_size, 0).repeat_interleave(module_size, 1)


def exponential_periods(num_modules: int) -> tuple[int, ...]:
    """The paper's default periods 1, 2, 4, …, 2^(g−1)."""
    return tuple(2 ** i for i in range(num_modules))


class ClockworkFused(FusedCell):
    """The step leaves h̃_t (tanh of the active units, the held values elsewhere) in ``a``."""

    cpp = "clockwork"
    output_in_gates = True

    def cpp_options(self, spec):
        return [float(len(spec.option("periods")))]

    def forward_step(self, spec, s: ForwardStep) -> None:
        a = s.a.addmm_(s.h_in, s.w[0].t()).tanh_()
        h_prev = s.prev[0]
        active = unit_mask(s.side[0], h_prev.shape[1])
        torch.where(active, a, h_prev, out=a)
        if s.next[0].data_ptr() != a.data_ptr():
            s.next[0].copy_(a)

    def backward_step(self, spec, s: BackwardStep):
        dh, h_t = s.dnext[0], s.gates
        active = unit_mask(s.side[0], h_t.shape[1])
        torch.mul(dh * (1 - h_t * h_t), active, out=s.dA)
        return [dh * ~active], s.dA @ s.w[0]


def clockwork_spec(periods: Sequence[int]) -> CellSpec:
    periods = tuple(periods)
    return CellSpec(
        family="clockwork",
        step=clockwork_step,
        gate_rows=("h",),
        gates=(),
        n_states=1,
        options=(("periods", periods),),
        fused=ClockworkFused(),
        layout_inputs=partial(_clocks, periods=periods),
    )


def _clocks(batch_sizes: list[int], reverse: bool, device: torch.device, *,
            periods: tuple[int, ...]) -> list[Tensor]:
    return [module_clocks(batch_sizes, reverse, periods, device)]


register("clockwork", clockwork_spec)
