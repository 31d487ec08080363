r"""Time loops for the Clockwork RNN (see :mod:`lstmkit.cells.clockwork`): the reference
(autograd through the cell) and the fused path (hand-derived BPTT).

Sequences are flat as everywhere in :mod:`lstmkit.ops` (``batch_sizes`` non-increasing).
The clock counts each sequence's own steps from 0: going forward, every sequence starts at
flat step 0, so all rows of flat step t have clock t; going backward (``reverse``), a
sequence of length L starts at flat step L − 1, so its clock at flat step t is L − 1 − t,
and rows of one flat step may have different clocks.

The fused path computes only the active units of each step. With the rows of a step on one
clock and periods where each divides the next (the exponential 1, 2, 4, …), the active
modules are always the first m, i.e. units ``[0, m·k)``: a step is one GEMM
``h_{t-1} W_hh[:m·k]ᵀ`` of m·k rows instead of H and a copy of the held units. Any other
active set (periods like 1, 3, 4, or rows on different clocks) is gathered by index, with a
per-row mask where the rows disagree. BPTT, with ``dh`` = ∂L/∂h_t (output + carried) and
``act`` the active units::

    da[act]        = dh[act] ⊙ (1 − h_t[act]²)         (da = 0 on held units)
    dh_{t-1}       = dh ⊙ [unit held] + da[act] W_hh[act]
    dx = dA W_ih,  dW_ih = dAᵀ x,  dW_hh = dAᵀ H_prev,  db_ih = db_hh = Σ dA

``W_hh`` arrives already multiplied by the fixed block mask, so autograd multiplies its
gradient by the mask too: masked entries get exactly zero gradient.

Kernels: the torch loop here takes every case; the C++ extension (``csrc/clockwork.cpp``)
takes periods that each divide the next, with a per-row count of active leading units
(:func:`prefix_schedule`), so it also covers rows on different clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType, SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import LayerWeights
from ..cells.clockwork import active_units, clockwork_step
from . import _cpp_can_run
from .extension import cpp_module
from .fused import _input_projection, _prev_of, _refuse_double_backward, _sum_biases, prev_rows
from .loops import step_rows

# One step of the plan: (first row, rows, selected units, per-row mask or None).
# The selected units are a slice [0, a) or an index tensor; the mask (rows, units) bool is
# None when every row of the step updates all selected units.
PlanStep = tuple[int, int, slice | Tensor, Tensor | None]


def sequence_lengths(batch_sizes: list[int]) -> list[int]:
    """Length of each sequence b (sorted order) from the flat layout's batch sizes."""
    lengths = [0] * batch_sizes[0]
    for n in batch_sizes:
        for b in range(n):
            lengths[b] += 1
    return lengths


def step_ticks(batch_sizes: list[int], reverse: bool) -> list[list[int]]:
    """For every flat step t, the clock of each of its rows (see the module docstring)."""
    if not reverse:
        return [[t] * n for t, n in enumerate(batch_sizes)]
    lengths = sequence_lengths(batch_sizes)
    return [[lengths[b] - 1 - t for b in range(n)] for t, n in enumerate(batch_sizes)]


def clock_plan(batch_sizes: list[int], reverse: bool, periods: Sequence[int], k: int,
               device: torch.device) -> list[PlanStep]:
    """The active units of every step, in processing order (see the module docstring)."""
    ticks = step_ticks(batch_sizes, reverse)
    cache: dict[tuple, tuple[slice | Tensor, Tensor | None]] = {}
    plan = []
    for t, (start, n) in enumerate(step_rows(batch_sizes, False)):
        sets = tuple(dict.fromkeys(tuple(i for i, T in enumerate(periods) if s % T == 0)
                                   for s in ticks[t]))            # distinct active sets
        key = sets if len(sets) == 1 else tuple(ticks[t])
        if key not in cache:
            cache[key] = _selection(sets, ticks[t], periods, k, device)
        plan.append((start, n, *cache[key]))
    return plan[::-1] if reverse else plan


def _selection(sets: tuple[tuple[int, ...], ...], ticks: list[int], periods: Sequence[int],
               k: int, device: torch.device) -> tuple[slice | Tensor, Tensor | None]:
    union = sorted(set().union(*sets))
    if len(sets) == 1 and union == list(range(len(union))):
        return slice(0, len(union) * k), None
    units = torch.tensor([i * k + u for i in union for u in range(k)], dtype=torch.int64,
                         device=device)
    if len(sets) == 1:
        return units, None
    rows = active_units(torch.tensor(ticks, device=device), periods, k)    # (n, H)
    return units, rows.index_select(1, units)


# -- reference --------------------------------------------------------------------------
def reference_layer(x: Tensor, batch_sizes: list[int], h0: Tensor, w: LayerWeights,
                    periods: Sequence[int], *, reverse: bool = False, record: bool = False):
    """The autograd loop over :func:`clockwork_step`: returns (out (N, H), h_n (B, H),
    trace or None). The carry keeps the rows of sequences that ended (forward) or have not
    started (reverse), so it starts as h0 and ends as the final state."""
    H = h0.shape[1]
    k = H // len(periods)
    steps = x.split(batch_sizes)
    ticks = step_ticks(batch_sizes, reverse)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    outputs: list[Tensor] = [x] * len(batch_sizes)
    h = h0
    for t in order:
        n = batch_sizes[t]
        active = active_units(torch.tensor(ticks[t], device=x.device), periods, k)
        (h_t,), _ = clockwork_step(steps[t], (h[:n],), w, active=active)
        h = torch.cat([h_t, h[n:]])
        outputs[t] = h_t
    trace = [{"h": o} for o in outputs] if record else None
    return torch.cat(outputs), h, trace


# -- fused: the torch loop ----------------------------------------------------------------
def clockwork_forward(xw: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: list[int],
                      reverse: bool, plan: list[PlanStep]):
    """Returns (out, h_n); ``out`` is ``xw`` overwritten with h_t. The steps and their rows
    come from ``plan`` (``batch_sizes`` and ``reverse`` are there for the C++ signature)."""
    h_carry = h0.clone()
    w_t = w_hh.t()
    for start, n, sel, mask in plan:
        rows = slice(start, start + n)
        h_prev, out = h_carry[:n], xw[rows]
        if isinstance(sel, slice):
            out[:, sel].addmm_(h_prev, w_t[:, sel]).tanh_()                    # active
            out[:, sel.stop:] = h_prev[:, sel.stop:]
        else:
            a = out.index_select(1, sel).addmm_(h_prev, w_t.index_select(1, sel)).tanh_()
            if mask is not None:
                a = torch.where(mask, a, h_prev.index_select(1, sel))
            out.copy_(h_prev)
            out.index_copy_(1, sel, a)
        h_carry[:n] = out
    return xw, h_carry


def clockwork_backward(dout: Tensor, dh_n: Tensor, out: Tensor, w_hh: Tensor,
                       batch_sizes: list[int], reverse: bool, plan: list[PlanStep]):
    """BPTT (see the module docstring). Returns (dA (N, H), dh_0)."""
    dA = torch.zeros_like(out)
    dh_carry = dh_n.clone()
    for start, n, sel, mask in reversed(plan):
        rows = slice(start, start + n)
        dh = dh_carry[:n].add_(dout[rows])                                 # ∂L/∂h_t
        if isinstance(sel, slice):
            h_t = out[rows, sel]
            da = torch.mul(dh[:, sel], 1 - h_t * h_t, out=dA[rows, sel])
            dh[:, sel] = 0
            dh.addmm_(da, w_hh[sel])
        else:
            h_t = out[rows].index_select(1, sel)
            da = dh.index_select(1, sel) * (1 - h_t * h_t)
            if mask is not None:
                da = da * mask
                kept = dh.index_select(1, sel) * ~mask
            else:
                kept = torch.zeros_like(da)
            dA[rows] = dA[rows].index_copy(1, sel, da)
            dh.index_copy_(1, sel, kept)
            dh.addmm_(da, w_hh.index_select(0, sel))
    return dA, dh_carry


TORCH_LOOPS = SimpleNamespace(clockwork_forward=clockwork_forward,
                              clockwork_backward=clockwork_backward)


# -- the C++ kernels: rows whose active modules are a prefix -------------------------------
def is_divisor_chain(periods: Sequence[int]) -> bool:
    """Each period divides the next (1, 2, 4, …): then the modules active at any clock are
    the first m, so the active units of a row are a prefix."""
    return all(b % a == 0 for a, b in zip(periods, periods[1:]))


def prefix_schedule(batch_sizes: list[int], reverse: bool, periods: Sequence[int], k: int
                    ) -> Tensor:
    """(N,) int64: for each flat row, the number of leading units its step updates (for
    periods forming a divisor chain; see :func:`is_divisor_chain`)."""
    counts = [k * sum(1 for T in periods if s % T == 0)
              for row in step_ticks(batch_sizes, reverse) for s in row]
    return torch.tensor(counts, dtype=torch.int64)


def kernels_for(backend: str, x: Tensor, periods: Sequence[int]
                ) -> ModuleType | SimpleNamespace:
    """The recurrence kernels for ``backend``: the C++ extension (``csrc/clockwork.cpp``)
    for "fused_cpp" (required) and, where it can run, "fused"/"auto"; else the torch loop,
    which takes every period pattern and device."""
    if backend == "fused_py":
        return TORCH_LOOPS
    chain = is_divisor_chain(periods)
    if backend == "fused_cpp":
        if not (_cpp_can_run(x) and chain):
            raise ValueError(
                "ClockworkRNN: backend='fused_cpp' runs on CPU float32/float64 tensors with "
                f"periods that each divide the next, got {x.dtype} on {x.device} with periods "
                f"{tuple(periods)}; use backend='fused' or 'auto'")
        return cpp_module("clockwork", required=True)
    module = cpp_module("clockwork", required=False) if chain and _cpp_can_run(x) else None
    return module or TORCH_LOOPS


class ClockworkFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, schedule, batch_sizes, reverse, kernels):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        out, h_n = kernels.clockwork_forward(xw, w_hh, h0, batch_sizes, reverse, schedule)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.config = (schedule, batch_sizes, reverse, b_ih is not None, kernels)
        return out, h_n

    @staticmethod
    def backward(ctx, dout, dh_n):
        _refuse_double_backward()
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        schedule, batch_sizes, reverse, has_bias, kernels = ctx.config
        need = ctx.needs_input_grad
        dA, dh0 = kernels.clockwork_backward(dout.contiguous(), dh_n.contiguous(), out, w_hh,
                                             batch_sizes, reverse, schedule)
        dx = dA @ w_ih if need[0] else None
        dw_ih = dA.t() @ x if need[2] else None
        dw_hh = None
        if need[3]:
            h_prev = _prev_of(out, h0, prev_rows(batch_sizes, reverse, x.device), 0, x.shape[0])
            dw_hh = dA.t() @ h_prev
        db = dA.sum(0) if has_bias else None
        return dx, dh0, dw_ih, dw_hh, db, db, None, None, None, None


def fused_layer(x: Tensor, batch_sizes: list[int], h0: Tensor, w: LayerWeights,
                periods: Sequence[int], *, reverse: bool = False, record: bool = False,
                backend: str = "fused"):
    """:func:`reference_layer` with hand-derived BPTT, computing only the active units;
    ``backend`` picks the recurrence kernels (see :func:`kernels_for`)."""
    x = x.contiguous()
    k = h0.shape[1] // len(periods)
    kernels = kernels_for(backend, x, periods)
    if kernels is TORCH_LOOPS:
        schedule = clock_plan(batch_sizes, reverse, periods, k, x.device)
    else:
        schedule = prefix_schedule(batch_sizes, reverse, periods, k)
    out, h_n = ClockworkFunction.apply(x, h0.contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                                       schedule, batch_sizes, reverse, kernels)
    trace = [{"h": o} for o in out.detach().split(batch_sizes)] if record else None
    return out, h_n, trace
