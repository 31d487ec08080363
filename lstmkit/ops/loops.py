r"""The one time loop of the fused backend, written with torch operations.

:mod:`lstmkit.ops.fused` runs it between its large GEMMs; the C++ extension
(``csrc/engine.cpp``) is the same loop with the same two functions and arguments, so either
can be plugged in (``kernels=loops`` or ``kernels=<the extension>``). Every cell family plugs
its fused step into it (:class:`lstmkit.cells.base.FusedCell`): the loop knows nothing about
gates. Everything here is plain torch, so it runs on any device and dtype; Python runs once
per time step.

Conventions shared with the C++ loop (see ``ops/reference.py`` for the flat layout):

* sequences are flat: row block t of an (N, ·) buffer holds step t for the first
  ``batch_sizes[t]`` sequences (non-increasing batch sizes, i.e. sorted by length);
* one *carry* buffer (B, width) per state holds each sequence's running state. At step t
  only its first ``batch_sizes[t]`` rows are read and written. Going forward in time, rows
  of sequences that ended keep their final state; going backward (``reverse``), rows of
  sequences not started yet still hold their initial state. So the carry starts as the
  initial state and ends as the final state, in both directions, with no special cases.
  The backward loop carries the state gradients the same way;
* every buffer is allocated by the caller; the loops write into them and allocate nothing
  beyond per-step temporaries;
* a step: ĥ_{t-1} = m ⊙ h_{t-1} (recurrent dropout, ``h_drop`` (B, R), one row per
  sequence); the family's step writes the new states; with a projection
  h_t = m_t W_hrᵀ (``m`` (N, H) the cell output); with zoneout, per state,
  s_t = d ⊙ s_{t-1} + (1 − d) ⊙ s̃_t (``zones[k]`` (N, width), 1 keeps the previous value);
* backward, per step in reverse order: ds = ∂L/∂s_t (the sequence's own gradient, if any,
  plus the carried one); through zoneout the direct part d ⊙ ds goes to s_{t-1} and
  (1 − d) ⊙ ds to the candidate; through the projection ∂L/∂m = ∂L/∂h W_hr; then the
  family's backward step; its gradient through the recurrent GEMMs, ∂L/∂ĥ_{t-1}, reaches
  h_{t-1} multiplied by the dropout mask.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..cells.base import BackwardStep, CellSpec, ForwardStep


def keep_weight_layouts() -> contextlib.AbstractContextManager[None]:
    """The C++ loop's scope for reusing its weight layouts across one backward's chunks
    (``CppKernels.keep_weight_layouts``); this loop lays nothing out: a no-op."""
    return contextlib.nullcontext()


def step_rows(batch_sizes: list[int], reverse: bool) -> list[tuple[int, int]]:
    """(first row, number of active rows) of every step in processing order."""
    starts, offset = [], 0
    for n in batch_sizes:
        starts.append((offset, n))
        offset += n
    return starts[::-1] if reverse else starts


def forward(cell: CellSpec, a: Tensor, seqs: list[Tensor], carry: list[Tensor],
            m: Tensor | None, w_hr: Tensor | None, w: list[Tensor | None],
            saved: list[Tensor], side: list[Tensor], h_drop: Tensor | None,
            zones: list[Tensor | None], batch_sizes: list[int], reverse: bool) -> None:
    """Run the recurrence forward. ``a`` (N, G·H) the input projection (the family's
    step overwrites it with its saved activations), ``seqs[k]`` (N, width_k) receive every
    step's states (``seqs[0]`` is the layer's output), ``carry[k]`` (B, width_k) the initial
    states, left holding the final ones; ``m`` (N, H) the cell output before the
    projection ``w_hr`` (P, H), or None; ``w`` the family's loop weights; ``saved`` its
    per-row buffers; ``side`` its per-row inputs."""
    fused = cell.fused
    w_hr_t = None if w_hr is None else w_hr.t()
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        prev = [c[:n] for c in carry]
        h_in = prev[0] if h_drop is None else prev[0] * h_drop[:n]
        new = [s[rows] for s in seqs]
        if m is not None:
            new[0] = m[rows]
        fused.forward_step(cell, ForwardStep(a[rows], h_in, prev, new, [b[rows] for b in saved],
                                             [s[rows] for s in side], w))
        if m is not None:
            new[0] = torch.mm(m[rows], w_hr_t, out=seqs[0][rows])     # h_t = m_t W_hrᵀ
        for k, z in enumerate(zones):
            if z is not None:
                new[k].lerp_(prev[k], z[rows])                        # zoneout
        for k, c in enumerate(carry):
            c[:n] = new[k]


def backward(cell: CellSpec, dA: Tensor, gates: Tensor, seqs: list[Tensor],
             prev: list[Tensor], dseqs: list[Tensor | None], dcarry: list[Tensor],
             w_hr: Tensor | None, dH: Tensor | None, w: list[Tensor | None],
             grads: list[Tensor], saved: list[Tensor], side: list[Tensor],
             h_drop: Tensor | None, zones: list[Tensor | None], batch_sizes: list[int],
             reverse: bool) -> None:
    """BPTT through :func:`forward` for the rows of ``batch_sizes`` (one backward chunk:
    every per-row argument holds these rows only). ``dA`` (rows, G·H) receives ∂L/∂a;
    ``prev[k]`` holds, per row, the state its step started from; ``dseqs[k]`` the
    gradient of the state sequence k (None: none); ``dcarry[k]`` (B, width_k) the
    gradient of the states after the chunk, left holding that of the states before it;
    ``dH`` (rows, R) receives ∂L/∂h_t with a projection (for the gradient of ``w_hr``);
    ``grads`` are the family's gradient buffers (per row, then its ``sum_buffers``)."""
    fused = cell.fused
    zoned = tuple(z is not None for z in zones)
    per_row = len(grads) - getattr(fused, "sum_buffers", 0)   # the rest: sums, passed whole
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dnext = [d[:n] if ds is None else d[:n] + ds[rows] for d, ds in zip(dcarry, dseqs)]
        direct: list[Tensor | None] = [None] * len(dnext)
        for k, z in enumerate(zones):
            if z is not None:                                         # zoneout's two paths
                direct[k] = dnext[k] * z[rows]
                dnext[k] = dnext[k] - direct[k]
        if dH is not None:
            dH[rows] = dnext[0]
            dnext[0] = dnext[0] @ w_hr                                # ∂L/∂m
        h_prev = prev[0][rows]
        h_in = h_prev if h_drop is None else h_prev * h_drop[:n]
        dprev, dh_in = fused.backward_step(cell, BackwardStep(
            gates[rows], dA[rows], dnext, [s[rows] for s in seqs], zoned,
            [p[rows] for p in prev], h_in, [b[rows] for b in saved], [s[rows] for s in side],
            w, [b[rows] for b in grads[:per_row]] + grads[per_row:]))
        if dh_in is not None:
            through = dh_in if h_drop is None else dh_in * h_drop[:n]
            dprev[0] = through if dprev[0] is None else dprev[0] + through
        for k, d in enumerate(dcarry):
            total = dprev[k]
            if direct[k] is not None:
                total = direct[k] if total is None else total + direct[k]
            if total is None:
                d[:n] = 0
            else:
                d[:n] = total
