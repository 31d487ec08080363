r"""The fused backend: one ``torch.autograd.Function`` for every cell family, with
hand-derived BPTT.

For one layer and direction, forward is

1. the input side of every step at once, ``a = x W_ihᵀ + b`` (N, G·H): one large GEMM
   (the family's :meth:`~lstmkit.cells.base.FusedCell.project`, e.g. with layer norm);
2. the recurrence: the one time loop (C++, or the torch loop of :mod:`lstmkit.ops.loops`),
   per step the recurrent GEMMs and the family's pointwise step. It saves only what BPTT
   needs: ``a`` overwritten with the gate activations, the state sequences, and the
   family's own per-row buffers.

Backward walks t = T…1 in the same loop, carrying the state gradients, writing the
gradients of the gate pre-activations of every step into a buffer dA (rows, G·H); then a few
large GEMMs give everything else (the family's
:meth:`~lstmkit.cells.base.FusedCell.chunk_grads`; by default)::

    dx = dA W_ih      dW_ih = dAᵀ x      dW_hh = dAᵀ Ĥ_prev      db_ih = db_hh = Σ_rows dA

where Ĥ_prev holds, for each row, the (dropped) state the step started from (see
:func:`prev_rows`). To bound memory the walk is cut into up to 8 time chunks
(:func:`backward_chunks`): the loop runs on one chunk, the GEMMs above consume its dA, and
the carried state gradients go on to the next, so only one chunk's gate gradients exist at a
time. Backward is not itself differentiable (double backward raises a RuntimeError that says
so; ``backend="reference"`` has higher derivatives).

Recurrent dropout and zoneout masks (:mod:`lstmkit.ops.masks`) are extra inputs, constants
without gradient, passed to the loop. The same two functions :func:`layer_forward` and
:func:`layer_backward` serve :class:`RecurrentFunction` (eager) and the custom ops of
:mod:`lstmkit.ops.library` (``torch.compile``/``torch.export``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import WEIGHT_FIELDS, CellSpec, Chunk, Grads, LayerWeights, State
from . import gemm, workspace
from .masks import StepMasks, row_sequences
from .reference import Trace


def prev_rows(batch_sizes: list[int], reverse: bool, device: torch.device) -> Tensor:
    """For each flat row, the row of ``cat([flat, initial])`` its step started from.

    Forward in time, row (t, b) continues (t−1, b); backward (``reverse``) it continues
    (t+1, b) if that sequence was active at t+1, else it starts from initial state b.
    """
    bs = torch.tensor(batch_sizes, device=device)
    T, N = len(batch_sizes), int(sum(batch_sizes))
    offsets = torch.cumsum(bs, 0) - bs
    t = torch.repeat_interleave(torch.arange(T, device=device), bs)
    b = torch.arange(N, device=device) - offsets[t]
    if reverse:
        nxt = (t + 1).clamp(max=T - 1)
        has_prev = (t < T - 1) & (b < bs[nxt])
        return torch.where(has_prev, offsets[nxt] + b, N + b)
    return torch.where(t > 0, offsets[(t - 1).clamp(min=0)] + b, N + b)


MAX_CHUNKS = 8          # backward runs in up to this many time chunks …
# … of at least this many rows. Each chunk costs a few small torch ops and large GEMMs with
# the chunk's rows as one dimension: at (100,16,128) (1600 rows) chunks of 512 rows instead of
# 256 made a training step 0.91× (LSTM), 0.93–0.96× (GRU), 0.84× (RNN) as long (2 threads, AVX2
# EPYC, one process), for a peak memory 0.42 / 0.86 / 1.16 of torch.nn's instead of
# 0.39 / 0.77 / 1.11 (docs/performance.md). Sizes of 4096 rows and more are unaffected.
MIN_CHUNK_ROWS = 512


def backward_chunks(batch_sizes: list[int], reverse: bool,
                    scale: int = 1) -> list[tuple[int, int, int, int]]:
    """(t0, t1, r0, r1): consecutive time chunks of steps [t0, t1), rows [r0, r1), in the
    order backward visits them (the reverse of the forward loop's order), each of at least
    ``scale`` · :data:`MIN_CHUNK_ROWS` rows (the family's
    :meth:`~lstmkit.cells.base.FusedCell.chunk_scale`; the last may be shorter).

    Backward runs the loop chunk by chunk, carrying the state gradients from one chunk to
    the next, and does the weight-gradient GEMMs of each chunk before the next, so the gate
    gradients of only one chunk are alive at a time: memory O(N/chunks) instead of O(N).

    With padded input cut into several chunks, the step that starts from the initial states
    (the first, or the last in reverse) is a chunk of its own: every other chunk's previous
    states are then a view of the state sequence, and the initial one needs no copy of a
    whole chunk's rows with the initial states in front (see :class:`PrevRows`)."""
    return list(_chunks(tuple(batch_sizes), reverse, MIN_CHUNK_ROWS * scale, MAX_CHUNKS))


@functools.lru_cache(maxsize=256)
def _chunks(batch_sizes: tuple[int, ...], reverse: bool, least: int,
            max_chunks: int) -> tuple[tuple[int, int, int, int], ...]:
    """:func:`backward_chunks`, cached (a layer's chunks are the same at every step)."""
    N, T = sum(batch_sizes), len(batch_sizes)
    target = max(least, -(-N // max_chunks))
    padded = T > 1 and batch_sizes[-1] == batch_sizes[0]
    if padded and N > target and max_chunks > 2:
        B = batch_sizes[0]
        rest = max(least, -(-(N - B) // (max_chunks - 1)))
        if reverse:
            inner = _cut(batch_sizes[:-1], rest, 0, 0)
            return (*inner, (T - 1, T, N - B, N))
        inner = _cut(batch_sizes[1:], rest, 1, B)
        return (*inner[::-1], (0, 1, 0, B))
    chunks = _cut(batch_sizes, target, 0, 0)
    return tuple(chunks if reverse else chunks[::-1])


def _cut(batch_sizes: list[int], target: int, t_start: int,
         r_start: int) -> list[tuple[int, int, int, int]]:
    """Consecutive chunks of at least ``target`` rows (the last may be shorter), in time
    order, for steps numbered from ``t_start`` and rows from ``r_start``."""
    chunks, t0, r0, rows = [], t_start, r_start, r_start
    for t, n in enumerate(batch_sizes, start=t_start):
        rows += n
        if rows - r0 >= target or t == t_start + len(batch_sizes) - 1:
            chunks.append((t0, t + 1, r0, rows))
            t0, r0 = t + 1, rows
    return chunks


def _prev_of(flat: Tensor, initial: Tensor, prev: Tensor, r0: int, r1: int) -> Tensor:
    """For rows [r0, r1): the state each row's step started from (rows of ``flat`` or of
    ``initial``, per :func:`prev_rows`), gathered for this chunk only."""
    idx = prev[r0:r1]
    N = flat.shape[0]
    rows = flat.index_select(0, idx.clamp(max=N - 1))
    first = idx >= N
    if bool(first.any()):
        rows[first] = initial.index_select(0, idx[first] - N)
    return rows


class PrevRows:
    """The state each row's step started from, for the rows of one backward chunk.

    Padded input (every step has the same B rows): the rows B before (after, in reverse) —
    a view, with the initial states only at the sequence's first step. Packed input: a
    gather by :func:`prev_rows`."""

    def __init__(self, batch_sizes: list[int], reverse: bool, device: torch.device):
        self.B, self.N = batch_sizes[0], sum(batch_sizes)
        self.reverse = reverse
        self.padded = batch_sizes[-1] == self.B
        self.index = None if self.padded else prev_rows(batch_sizes, reverse, device)

    def __call__(self, flat: Tensor, initial: Tensor, r0: int, r1: int) -> Tensor:
        if not self.padded:
            return _prev_of(flat, initial, self.index, r0, r1)
        B, N = self.B, self.N
        if not self.reverse:
            if r0 >= B:
                return flat[r0 - B:r1 - B]
            return initial.contiguous() if r1 <= B else torch.cat([initial, flat[:r1 - B]])
        if r1 + B <= N:
            return flat[r0 + B:r1 + B]
        return initial.contiguous() if r0 + B >= N else torch.cat([flat[r0 + B:], initial])


def _is_batched(t: Tensor | None) -> bool:
    """A tensor of vmap or of batched gradients (``is_grads_batched``): the kernels cannot
    read its memory."""
    if t is None:
        return False
    functorch = torch._C._functorch
    return functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t)


def reference_grads(call: Call, tensors: tuple, grad_outputs: tuple, needs: tuple) -> list:
    """The layer's input gradients by differentiating the reference loop over the same
    inputs, for the two cases the hand-derived BPTT cannot serve: ``create_graph=True``
    (autograd enables grad mode inside backward only then), where the gradient must itself
    be differentiable (double backward), and batched gradients (``is_grads_batched``,
    ``torch.func``), whose tensors the kernels cannot read. The saved inputs keep their
    history, so the result is connected to the original graph."""
    from . import reference
    inp = Inputs.unflat(call, tensors)
    cell, batch_sizes = call.cell, list(call.batch_sizes)
    n_schedule = len(cell.schedule(batch_sizes, call.reverse, inp.x.device))
    masks = None if all(m is None for m in inp.masks) else inp.masks
    n = cell.n_states
    with torch.enable_grad():
        _, finals, _, seqs = reference.run_layer(
            cell, inp.x, batch_sizes, inp.states0, inp.w, reverse=call.reverse, masks=masks,
            side=inp.side[n_schedule:], sequences=True)
        outs, gouts = [], []
        for out, g in zip((*seqs, *finals), grad_outputs[:2 * n]):
            if g is not None and out.requires_grad:
                outs.append(out)
                gouts.append(g)
        wanted = [i for i, (t, need) in enumerate(zip(tensors, needs))
                  if need and t is not None]
        grads = (torch.autograd.grad(outs, [tensors[i] for i in wanted], gouts,
                                     create_graph=torch.is_grad_enabled(), allow_unused=True)
                 if outs and wanted else [None] * len(wanted))
    result: list = [None] * len(tensors)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(tensors[i]) if g is None else g
    return result


# -- one layer call ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """The non-tensor arguments of one layer and direction."""

    cell: CellSpec
    batch_sizes: tuple[int, ...]
    reverse: bool
    kernels: Any                 # lstmkit.ops.loops or the C++ extension's adapter
    n_extra: int
    n_side: int


class Inputs(NamedTuple):
    """The tensor arguments of one layer call (None where absent)."""

    x: Tensor
    states0: tuple[Tensor, ...]          # the module's states (h_0[, c_0])
    w: LayerWeights
    side: tuple[Tensor, ...]
    masks: StepMasks

    def flat(self) -> list[Tensor | None]:
        return [self.x, *self.states0, *self.w[:6], *self.w.extra, *self.side, *self.masks]

    @classmethod
    def unflat(cls, call: Call, t: list[Tensor | None] | tuple) -> Inputs:
        n = call.cell.n_states
        i = 1 + n
        w = LayerWeights(*t[i:i + 6], extra=tuple(t[i + 6:i + 6 + call.n_extra]))
        i += 6 + call.n_extra
        side = tuple(t[i:i + call.n_side])
        return cls(t[0], tuple(t[1:1 + n]), w, side, StepMasks(*t[i + call.n_side:]))


class Kept(NamedTuple):
    """What forward keeps for backward, beyond the inputs."""

    gates: Tensor                    # (N, G·H) the activations the steps left in ``a``
    seqs: tuple[Tensor, ...]         # every state's sequence, (N, width_k)
    m: Tensor | None                 # (N, H) cell output before the projection
    saved: tuple[Tensor, ...]        # the family's per-row buffers
    aux: tuple                       # what the family's ``project`` returned for backward


def _hidden_size(cell: CellSpec, w: LayerWeights) -> int:
    return w.w_hh.shape[0] // len(cell.gate_rows)


def _initial_states(cell: CellSpec, states0: tuple[Tensor, ...], widths: list[int],
                    like: Tensor) -> list[Tensor]:
    """The module's states, then zeros for the family's internal states."""
    B = states0[0].shape[0]
    return [*states0, *(like.new_zeros(B, widths[k]) for k in range(len(states0), len(widths)))]


def _carry(cell: CellSpec, states0: tuple[Tensor, ...], widths: list[int],
           like: Tensor) -> list[Tensor]:
    """Fresh contiguous copies of the initial states, which the loop overwrites with the
    final ones."""
    return [s.clone(memory_format=torch.contiguous_format)
            for s in _initial_states(cell, states0, widths, like)]


def _widths(cell: CellSpec, H: int, R: int) -> list[int]:
    return [s.width(H, R) for s in cell.states]


def _zones(cell: CellSpec, masks: StepMasks) -> list[Tensor | None]:
    zones = [masks.zone_h, masks.zone_c][: cell.n_states]
    return zones + [None] * (len(cell.states) - len(zones))


def _engine_module(call: Call):
    """The compiled extension when ``call`` runs the C++ loop (its large GEMMs then run on
    the engine's brgemm too, see :mod:`lstmkit.ops.gemm`), else None."""
    from .extension import CppKernels
    return call.kernels.module if isinstance(call.kernels, CppKernels) else None


def layer_forward(call: Call, inp: Inputs) -> tuple[list[Tensor], list[Tensor], Kept]:
    """Forward of one layer and direction: returns the visible state sequences (the first
    is the output), the final states of the module's states, and what backward keeps."""
    with gemm.using_engine(_engine_module(call)):
        return _layer_forward(call, inp)


def _layer_forward(call: Call, inp: Inputs) -> tuple[list[Tensor], list[Tensor], Kept]:
    cell, fused, w = call.cell, call.cell.fused, inp.w
    H, R = _hidden_size(cell, w), inp.states0[0].shape[1]
    widths = _widths(cell, H, R)
    zones = _zones(cell, inp.masks)
    share = fused.output_in_gates and zones[0] is None and w.w_hr is None
    # a shared with the output leaves the layer: not from the buffer cache (a new buffer
    # there would first drop the free ones smaller than it, backward's chunks among them)
    with workspace.recycling(False) if share else contextlib.nullcontext():
        a, aux = fused.project(cell, inp.x, w, list(inp.side))
    N = a.shape[0]
    seqs = [a if k == 0 and share else a.new_empty(N, width) for k, width in enumerate(widths)]
    m = workspace.empty((N, H), a) if w.w_hr is not None else None
    carry = _carry(cell, inp.states0, widths, a)
    saved = fused.saved_buffers(cell, a, H)
    call.kernels.forward(cell, a, seqs, carry, m, w.w_hr, fused.loop_weights(cell, w), saved,
                         list(inp.side), inp.masks.h_drop, zones, list(call.batch_sizes),
                         call.reverse)
    n = cell.n_states
    return seqs[:n], carry[:n], Kept(a, tuple(seqs), m, tuple(saved), aux)


def layer_backward(call: Call, inp: Inputs, kept: Kept, dseqs: list[Tensor | None],
                   dfinals: list[Tensor | None], needs: Inputs) -> Inputs:
    """BPTT of :func:`layer_forward`: the gradients of ``inp`` (None where ``needs`` says
    no gradient is wanted), given those of the visible sequences and final states."""
    with gemm.using_engine(_engine_module(call)):
        return _layer_backward(call, inp, kept, dseqs, dfinals, needs)


def _layer_backward(call: Call, inp: Inputs, kept: Kept, dseqs: list[Tensor | None],
                    dfinals: list[Tensor | None], needs: Inputs) -> Inputs:
    cell, fused, w = call.cell, call.cell.fused, inp.w
    batch_sizes = list(call.batch_sizes)
    H, R = _hidden_size(cell, w), inp.states0[0].shape[1]
    widths = _widths(cell, H, R)
    x, gates = inp.x, kept.gates
    initial = _initial_states(cell, inp.states0, widths, gates)
    dcarry = [torch.zeros_like(s) if d is None else d.contiguous().clone()
              for s, d in zip(initial, [*dfinals, *[None] * (len(initial) - len(dfinals))])]
    dseqs = [None if d is None else d.contiguous() for d in dseqs]
    dseqs += [None] * (len(widths) - len(dseqs))
    g = _accumulators(inp, needs)
    zones = _zones(cell, inp.masks)
    zoned = tuple(z is not None for z in zones)
    h_drop = inp.masks.h_drop
    prev_of = PrevRows(batch_sizes, call.reverse, x.device)
    seq_of_row = row_sequences(batch_sizes, x.device) if h_drop is not None else None
    loop_w = fused.loop_weights(cell, w)
    dw_hr = g.w["w_hr"]
    # the C++ loop lays the recurrent weights out once for all chunks, not once per chunk;
    # the chunks' scratch (dA, dH, the family's gradient buffers) is recycled
    with call.kernels.keep_weight_layouts(), workspace.recycling():
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, call.reverse,
                                              fused.chunk_scale(cell, w)):
            prev = dA = grads = dH = h_in = chunk = None    # free the last chunk's buffers first
            prev = [prev_of(s, s0, r0, r1) for s, s0 in zip(kept.seqs, initial)]
            dA = workspace.empty((r1 - r0, gates.shape[1]), gates)
            grads = fused.grad_buffers(cell, r1 - r0, gates, H, list(inp.side))
            dH = workspace.empty((r1 - r0, R), gates) if w.w_hr is not None else None
            part = functools.partial(_rows_of, r0=r0, r1=r1)
            g_rows, seq_rows = part(gates), [part(s) for s in kept.seqs]
            saved_rows, side_rows = [part(b) for b in kept.saved], [part(s) for s in inp.side]
            call.kernels.backward(
                cell, dA, g_rows, seq_rows, prev, [part(d) for d in dseqs], dcarry, w.w_hr, dH,
                loop_w, grads, saved_rows, side_rows, h_drop, [part(z) for z in zones],
                batch_sizes[t0:t1], call.reverse)
            h_in = (prev[0] if h_drop is None
                    else prev[0] * h_drop.index_select(0, seq_of_row[r0:r1]))
            chunk = Chunk(r0, r1, part(x), dA, grads, g_rows, seq_rows, prev, h_in, saved_rows,
                          side_rows, zoned)
            fused.chunk_grads(cell, chunk, w, kept.aux, g)
            if dw_hr is not None:
                gemm.matmul_into(dw_hr, dH.t(), part(kept.m), accumulate=True)
    n = cell.n_states
    dstates = tuple(d if need else None for d, need in zip(dcarry[:n], needs.states0))
    dw = LayerWeights(*(g.w[k] for k in WEIGHT_FIELDS), extra=tuple(g.extra))
    return Inputs(g.dx, dstates, dw, tuple(g.side), StepMasks())


def _rows_of(t: Tensor | None, r0: int, r1: int) -> Tensor | None:
    """Rows [r0, r1) of a per-row tensor (None stays None; all its rows: the tensor itself,
    no view made, as for a backward of one chunk)."""
    if t is None or (r0 == 0 and r1 == t.shape[0]):
        return t
    return t[r0:r1]


def _accumulators(inp: Inputs, needs: Inputs) -> Grads:
    def zeros(t: Tensor | None, need: bool) -> Tensor | None:
        return torch.zeros_like(t) if t is not None and need else None
    w, nw = inp.w, needs.w
    return Grads(torch.empty_like(inp.x) if needs.x else None,
                 {k: zeros(getattr(w, k), getattr(nw, k)) for k in WEIGHT_FIELDS},
                 [zeros(e, n) for e, n in zip(w.extra, nw.extra)],
                 [zeros(s, n) for s, n in zip(inp.side, needs.side)])


# -- eager: the autograd Function ----------------------------------------------------------------
class RecurrentFunction(Function):
    """One layer and direction of any cell family (see the module docstring)."""

    @staticmethod
    def forward(ctx, call: Call, *tensors):
        inp = Inputs.unflat(call, tensors)
        # the input projection and the family's saved buffers in recycled memory (see
        # lstmkit.ops.workspace; the outputs are new tensors)
        with workspace.recycling():
            seqs, finals, kept = layer_forward(call, inp)
        ctx.call = call
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors, kept.gates, *kept.seqs, kept.m, *kept.saved, *kept.aux)
        ctx.layout = (len(tensors), len(kept.seqs), len(kept.saved))
        gates = kept.gates if kept.gates is not seqs[0] else None
        if gates is not None:
            ctx.mark_non_differentiable(gates)
        return (*seqs, *finals, gates)

    @staticmethod
    def backward(ctx, *grad_outputs):
        call = ctx.call
        n_in, n_seq, n_saved = ctx.layout
        saved = ctx.saved_tensors
        if torch.is_grad_enabled() or any(_is_batched(g) for g in grad_outputs):
            return (None, *reference_grads(call, saved[:n_in], grad_outputs,
                                           ctx.needs_input_grad[1:]))
        inp = Inputs.unflat(call, saved[:n_in])
        i = n_in
        j = i + 2 + n_seq + n_saved
        kept = Kept(saved[i], tuple(saved[i + 1:i + 1 + n_seq]), saved[i + 1 + n_seq],
                    tuple(saved[i + 2 + n_seq:j]), tuple(saved[j:]))
        n = call.cell.n_states
        dseqs, dfinals = list(grad_outputs[:n]), list(grad_outputs[n:2 * n])
        if dseqs[0] is None:
            dseqs[0] = torch.zeros_like(kept.seqs[0])
        needs = Inputs.unflat(call, ctx.needs_input_grad[1:])
        grads = layer_backward(call, inp, kept, dseqs, dfinals, needs)
        return (None, *grads.flat())


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              kernels: Any, masks: StepMasks | None = None, side: tuple[Tensor, ...] = (),
              sequences: bool = False) -> tuple:
    """:func:`lstmkit.ops.reference.run_layer` with hand-derived BPTT, the recurrence run by
    ``kernels`` (the C++ extension or :mod:`lstmkit.ops.loops`)."""
    if cell.fused is None:
        raise ValueError(f"the {cell.family} cell has no fused kernel; use backend='reference'")
    side = (*cell.schedule(batch_sizes, reverse, x.device), *side)
    if not (record or sequences) and _blocked_inference(cell, kernels, x, state0, w, side, masks):
        return _run_inference(cell, x, batch_sizes, state0, w, reverse, kernels)
    call = Call(cell, tuple(batch_sizes), reverse, kernels, len(w.extra), len(side))
    masks = StepMasks(*(None if m is None else m.contiguous() for m in (masks or StepMasks())))
    inp = Inputs(x.contiguous(), tuple(state0), w, side, masks)
    outs = RecurrentFunction.apply(call, *inp.flat())
    n = cell.n_states
    seqs, final, gates = outs[:n], tuple(outs[n:2 * n]), outs[2 * n]
    trace = make_trace(cell, batch_sizes, seqs, seqs[0] if gates is None else gates,
                       _hidden_size(cell, w)) if record else None
    if sequences:
        return seqs[0], final, trace, seqs
    return seqs[0], final, trace


# -- inference: the input projected a block of steps at a time ----------------------------------
# The rows of ``a`` the inference path holds: about this many bytes of projections (at least
# one step's rows), made just before the loop reaches them, instead of the whole layer's
# (N, G·H) at once: a fresh buffer of that size is page-faulted in at every call (39 MB at
# (150,64,256)), and its rows leave the caches before the loop reads them.
INFERENCE_BLOCK_BYTES = 1 << 19


def _blocked_inference(cell: CellSpec, kernels: Any, x: Tensor, state0: State,
                       w: LayerWeights, side: tuple, masks: StepMasks | None) -> bool:
    """Whether this call may take :func:`_run_inference`: the C++ loop, a family that allows
    it (``blocked_inference``; fused cells not derived from FusedCell, as the Grid LSTM's,
    do not), no side inputs or masks, and no gradient wanted (grad mode off, or no input
    needing one; no forward-mode AD level open)."""
    from .extension import CppKernels
    f = cell.fused
    if not getattr(f, "blocked_inference", False) or side or not isinstance(kernels, CppKernels):
        return False
    if masks is not None and any(m is not None for m in masks):
        return False
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return False
    if torch.is_grad_enabled():
        tensors = (x, *state0, *w[:6], *w.extra)
        if any(t is not None and t.requires_grad for t in tensors):
            return False
    return True


def _run_inference(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
                   w: LayerWeights, reverse: bool, kernels: Any) -> tuple:
    """:func:`run_layer` when no gradient is wanted (see :func:`_blocked_inference`): the C++
    loop projects the input a block of steps at a time into a buffer of
    :data:`INFERENCE_BLOCK_BYTES` and keeps only the output's sequence; same numbers as the
    forward of :class:`RecurrentFunction`."""
    f = cell.fused
    H, R = _hidden_size(cell, w), state0[0].shape[1]
    widths = _widths(cell, H, R)
    x = x.contiguous()
    w_ih = w.w_ih.contiguous()
    A = w_ih.shape[0]
    rows = max(max(batch_sizes), INFERENCE_BLOCK_BYTES // (A * x.element_size()))
    a = x.new_empty(min(rows, x.shape[0]), A)
    out = x.new_empty(x.shape[0], R)
    carry = _carry(cell, tuple(state0), widths, x)
    bias = f.input_bias(cell, w)
    t = kernels._t
    with gemm.using_engine(kernels.module):
        kernels.module.forward_inference(
            f.cpp, H, f.cpp_options(cell), x, w_ih, t(bias), a, out, carry, t(w.w_hr),
            [t(v) for v in f.loop_weights(cell, w)], list(batch_sizes), reverse)
    return out, tuple(carry[:cell.n_states]), None


def make_trace(cell: CellSpec, batch_sizes: list[int], seqs, gates: Tensor, H: int) -> Trace:
    """The per-step record of ``reference.run_layer``, as views into the saved buffers."""
    steps = []
    split = [s.detach().split(batch_sizes) for s in seqs]
    for t, g_t in enumerate(gates.detach().split(batch_sizes)):
        record = dict(cell.fused.trace_gates(cell, g_t, H))
        for k in range(1, cell.n_states):                  # c (sLSTM: c, n, m)
            record[cell.states[k].name] = split[k][t]
        record["h"] = split[0][t]
        steps.append(record)
    return steps
