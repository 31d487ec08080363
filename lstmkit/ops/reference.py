"""The reference backend: a plain Python time loop over a cell, differentiated by autograd.

This is the ground truth every other backend is tested against. It runs in any
floating dtype (float64 included) on any device, for every cell in ``lstmkit.cells``.

Sequences come *flat*, as in a ``PackedSequence``: ``x`` is (sum(batch_sizes), I), the
rows of step t following those of step t−1, and ``batch_sizes`` is non-increasing
(sequences sorted by length, longest first). A padded batch (T, B, I) is the special case
``x.reshape(T*B, I)`` with ``batch_sizes = [B] * T``. At step t only the first
``batch_sizes[t]`` sequences are active. Going forward in time, sequences end and their
final states are set aside; going backward (``reverse=True``), sequences start, each
from its own initial state.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import Tensor

from ..cells.base import CellSpec, LayerWeights, State
from .masks import StepMasks, masked_step

# Per step t: gate activations, c (LSTM) and h, each (batch_sizes[t], ·).
Trace = list[dict[str, Tensor]]


def run_layer(
    cell: CellSpec,
    x: Tensor,                    # (sum(batch_sizes), I)
    batch_sizes: list[int],
    state0: State,                # each (B, ·), B = batch_sizes[0]
    w: LayerWeights,
    *,
    reverse: bool = False,
    record: bool = False,
    masks: StepMasks | None = None,
    side: tuple[Tensor, ...] = (),
    sequences: bool = False,
) -> tuple:
    """Run ``cell`` over one sequence batch in one direction.

    Returns the outputs ``h_t`` of all steps, flat like ``x``; the final state of each
    sequence (each (B, ·), B in sorted order); and, with ``record``, the trace of every step.
    ``masks`` (recurrent dropout, zoneout) change each step as :mod:`lstmkit.ops.masks` says.
    ``side`` are per-row inputs of the cell (flat like ``x``), after those the cell computes
    from the layout (:meth:`~lstmkit.cells.base.CellSpec.schedule`). With ``sequences``,
    the sequences of the module's states (flat) are returned fourth.
    """
    side = (*cell.schedule(batch_sizes, reverse, x.device), *side)
    side_steps = [s.split(batch_sizes) for s in side]
    steps = x.split(batch_sizes)
    T = len(batch_sizes)
    order = range(T - 1, -1, -1) if reverse else range(T)
    state = tuple(s[: batch_sizes[order[0]]] for s in state0)
    ended: list[State] = []       # final states of sequences that ended (forward direction)
    outputs: list[list[Tensor]] = [[x.new_empty(0)] * T for _ in range(cell.n_states)]
    trace: Trace | None = [{} for _ in range(T)] if record else None
    starts = list(accumulate([0, *batch_sizes[:-1]]))          # first flat row of each step

    for t in order:
        active, n = batch_sizes[t], state[0].shape[0]
        if active < n:            # forward: sequences n-1 … active have ended
            ended.append(tuple(s[active:] for s in state))
            state = tuple(s[:active] for s in state)
        elif active > n:          # reverse: sequences n … active-1 start here
            state = tuple(torch.cat([s, _initial(state0, k, s)[n:active]])
                          for k, s in enumerate(state))
        side_t = [s[t] for s in side_steps]
        if masks is None:
            state, gates = cell.step(steps[t], state, w, *side_t)
        else:
            rows = slice(starts[t], starts[t] + active)
            state, gates = masked_step(cell, steps[t], state, w, masks, rows, side_t)
        for k, out in enumerate(outputs):
            out[t] = state[k]
        if trace is not None:
            trace[t] = {**gates, **{cell.states[k].name: state[k] for k in range(1, cell.n_states)},
                        "h": state[0]}

    ended.append(state)
    final = tuple(torch.cat([e[k] for e in reversed(ended)]) for k in range(len(state0)))
    seqs = [torch.cat(out) for out in outputs]
    if sequences:
        return seqs[0], final, trace, seqs
    return seqs[0], final, trace


def _initial(state0: State, k: int, like: Tensor) -> Tensor:
    """Initial value of state entry k: given, or zeros for an internal state a cell carries
    beyond the module's states (e.g. the previous gate activations of FGR, Greff et al.)."""
    if k < len(state0):
        return state0[k]
    return like.new_zeros(state0[0].shape[0], *like.shape[1:])
