r"""Masks inside the recurrence: variational recurrent dropout and zoneout, for every backend.

The modules sample the masks (:mod:`lstmkit.nn.regularize`) and hand the same tensors to
whichever backend runs, so every backend computes the same numbers for the same masks.
One step of a cell with masks, around the cell's own equations (``cells/``)::

    ĥ_{t-1} = m ⊙ h_{t-1}                      recurrent dropout: only where h_{t-1} feeds W_hh
    (h̃_t, c̃_t) = cell(x_t, h_{t-1}, c_{t-1})   the plain step, its recurrent weights fed
                                                ĥ_{t-1} (the GRU's direct path z_t ⊙ h_{t-1}
                                                and Clockwork's held units keep h_{t-1})
    c_t = d^c_t ⊙ c_{t-1} + (1 − d^c_t) ⊙ c̃_t    zoneout (LSTM cell state)
    h_t = d^h_t ⊙ h_{t-1} + (1 − d^h_t) ⊙ h̃_t    zoneout (hidden state)

``m`` is one mask per sequence, the same at every step (Gal & Ghahramani 2016, §4);
``d^c_t, d^h_t`` are per step and per unit (Krueger et al. 2016, §3.2: 1 keeps the
previous value). ``h̃_t = o_t ⊙ tanh(c̃_t)``: the output gate reads the candidate cell, as in
the paper's equations, not the zoned-out c_t.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..cells.base import CellSpec, Gates, LayerWeights, State


class StepMasks(NamedTuple):
    """The masks of one layer and direction; any may be None (that regulariser is off).

    ``h_drop`` (B, R): multiplies h_{t-1} where it feeds W_hh, one row per sequence (sorted
    order, like the carry), already scaled by 1/(1 − p). ``zone_h`` (N, R) and ``zone_c``
    (N, H): flat like the input rows, the weight of the previous state (0/1 in training,
    the zoneout probability at test time).
    """

    h_drop: Tensor | None = None
    zone_h: Tensor | None = None
    zone_c: Tensor | None = None

    @property
    def active(self) -> bool:
        return any(m is not None for m in self)


def row_sequences(batch_sizes: list[int], device: torch.device) -> Tensor:
    """(N,) the sequence (batch row) of every flat row: rows of step t are 0 … n_t − 1."""
    bs = torch.tensor(batch_sizes, device=device)
    offsets = torch.cumsum(bs, 0) - bs
    t = torch.repeat_interleave(torch.arange(len(batch_sizes), device=device), bs)
    return torch.arange(int(bs.sum()), device=device) - offsets[t]


def mul_per_row(x: Tensor, mask: Tensor, batch_sizes: list[int]) -> Tensor:
    """x (N, K) ⊙ a per-sequence mask (B, K), the same mask row at every step."""
    T, B = len(batch_sizes), batch_sizes[0]
    if batch_sizes[-1] == B:                                  # padded: every step has B rows
        return (x.reshape(T, B, x.shape[1]) * mask).view(x.shape)
    return x * mask.index_select(0, row_sequences(batch_sizes, mask.device))


def zoneout(d: Tensor | None, old: Tensor, new: Tensor) -> Tensor:
    """d ⊙ old + (1 − d) ⊙ new (``new`` itself when d is None)."""
    return new if d is None else torch.lerp(new, old, d)


def masked_step(cell: CellSpec, x_t: Tensor, state: State, w: LayerWeights,
                masks: StepMasks, rows: slice, side: list[Tensor] | tuple = ()
                ) -> tuple[State, Gates]:
    """One step of ``cell`` with the masks of the module docstring, by autograd (the
    reference); ``rows`` are this step's flat rows (for the per-step zoneout masks). The
    dropped state ĥ_{t-1} goes to the cell as ``h_in``: it multiplies the recurrent weights,
    while the cell's other uses of h_{t-1} (the GRU's z_t ⊙ h_{t-1}) keep the state itself."""
    h_prev, n = state[0], state[0].shape[0]
    h_in = None if masks.h_drop is None else h_prev * masks.h_drop[:n]
    new, gates = cell.step(x_t, state, w, *side, h_in=h_in)
    zones = (masks.zone_h, masks.zone_c)
    zoned = tuple(fresh if k >= len(zones) or zones[k] is None         # h and c only
                  else zoneout(zones[k][rows], state[k], fresh) for k, fresh in enumerate(new))
    return zoned, gates
