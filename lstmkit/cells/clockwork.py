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
updated at steps T_i, 2·T_i, ….
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State


def clockwork_step(x_t: Tensor, state: State, w: LayerWeights, *, active: Tensor
                   ) -> tuple[State, Gates]:
    """One step; ``active`` (B, H) bool marks the units whose module's clock has come.
    ``w.w_hh`` must already be masked block-upper-triangular (see :func:`clockwork_mask`)."""
    (h_prev,) = state                                                      # (B, H)
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_prev, w.w_hh, w.b_hh)   # (B, H)
    h_t = torch.where(active, torch.tanh(a), h_prev)
    return (h_t,), {}


def active_units(ticks: Tensor, periods: Sequence[int], module_size: int) -> Tensor:
    """(B, H) bool: unit u of row b is updated when ``ticks[b] mod T_{module(u)} == 0``."""
    T = torch.tensor(periods, device=ticks.device)
    return (ticks[:, None] % T[None, :] == 0).repeat_interleave(module_size, dim=1)


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


def clockwork_spec(periods: Sequence[int]) -> CellSpec:
    return CellSpec(
        family="clockwork",
        step=clockwork_step,
        gate_rows=("h",),
        gates=(),
        n_states=1,
        options=(("periods", tuple(periods)),),
    )
