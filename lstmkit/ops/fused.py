r"""The fused backend: one ``torch.autograd.Function`` per cell family with hand-derived BPTT.

For one layer and direction, forward is

1. one large GEMM for the input projection of all steps, ``xw = x W_ihᵀ + b`` (N, G·H);
2. the recurrence: per step one GEMM with the recurrent weights and one pointwise update,
   run by a *kernel* (the C++ extension, or the torch loop of :mod:`lstmkit.ops.loops`);
   it saves only the gate activations and states that BPTT needs.

Backward walks t = T…1 in the kernel, carrying dh (and dc), writing the gradients of the
gate pre-activations of every step into a buffer dA (rows, G·H); then a few large GEMMs
give everything else::

    dx = dA W_ih      dW_ih = dAᵀ x      dW_hh = dAᵀ H_prev      db_ih = db_hh = Σ_rows dA

where H_prev holds, for each row, the state the step started from (see
:func:`prev_rows`). To bound memory the walk is cut into up to 8 time chunks
(:func:`backward_chunks`): the kernel runs on one chunk, the GEMMs above consume its dA,
and the carried dh (dc) go on to the next, so only one chunk's gate gradients exist at a
time. The per-cell derivations are in the docstrings of the
backward loops in :mod:`lstmkit.ops.loops`. Backward is not itself differentiable
(double backward raises a RuntimeError that says so; ``backend="reference"`` has
higher derivatives).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import CellSpec, LayerWeights, State
from .reference import Trace


def prev_rows(batch_sizes: list[int], reverse: bool, device: torch.device) -> Tensor:
    """For each flat row, the row of ``cat([flat, initial])`` its step started from.

    Forward in time, row (t, b) continues (t−1, b); backward (``reverse``) it continues
    (t+1, b) if that sequence was active at t+1, else it starts from initial state b.
    """
    bs = torch.tensor(batch_sizes, device=device)
    T, N = len(batch_sizes), int(bs.sum())
    offsets = torch.cumsum(bs, 0) - bs
    t = torch.repeat_interleave(torch.arange(T, device=device), bs)
    b = torch.arange(N, device=device) - offsets[t]
    if reverse:
        nxt = (t + 1).clamp(max=T - 1)
        has_prev = (t < T - 1) & (b < bs[nxt])
        return torch.where(has_prev, offsets[nxt] + b, N + b)
    return torch.where(t > 0, offsets[(t - 1).clamp(min=0)] + b, N + b)


MAX_CHUNKS = 8          # backward runs in up to this many time chunks …
MIN_CHUNK_ROWS = 256    # … of at least this many rows


def backward_chunks(batch_sizes: list[int], reverse: bool) -> list[tuple[int, int, int, int]]:
    """(t0, t1, r0, r1): consecutive time chunks of steps [t0, t1), rows [r0, r1), in the
    order backward visits them (the reverse of the forward loop's order).

    Backward runs the kernel chunk by chunk, carrying dh (and dc) from one chunk to the
    next, and does the weight-gradient GEMMs of each chunk before the next, so the gate
    gradients of only one chunk are alive at a time: memory O(N/chunks) instead of O(N)."""
    N = sum(batch_sizes)
    target = max(MIN_CHUNK_ROWS, -(-N // MAX_CHUNKS))
    chunks, t0, r0, rows = [], 0, 0, 0
    for t, n in enumerate(batch_sizes):
        rows += n
        if rows - r0 >= target or t == len(batch_sizes) - 1:
            chunks.append((t0, t + 1, r0, rows))
            t0, r0 = t + 1, rows
    return chunks if reverse else chunks[::-1]


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


def _input_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    return torch.mm(x, w_ih.t()) if bias is None else torch.addmm(bias, x, w_ih.t())


def _sum_biases(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    return None if b_ih is None else b_ih + b_hh


def _refuse_double_backward() -> None:
    # autograd enables grad mode inside backward only for create_graph=True
    if torch.is_grad_enabled():
        raise RuntimeError(
            "lstmkit's fused backend computes BPTT by hand and cannot differentiate twice "
            "(double backward / create_graph=True); build the model with "
            "backend='reference' for higher-order gradients")


class LSTMFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, batch_sizes, reverse,
                coupled, kernels):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        out, c, m, h_n, c_n = kernels.lstm_forward(xw, w_hh, w_hr, peep, h0, c0, batch_sizes,
                                                   reverse, coupled)
        gates = xw                                           # activations, written in place
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m)
        ctx.config = (batch_sizes, reverse, coupled, kernels)
        ctx.mark_non_differentiable(gates, c)
        return out, h_n, c_n, gates, c

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dgates, _dc):
        _refuse_double_backward()
        x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m = ctx.saved_tensors
        batch_sizes, reverse, coupled, kernels = ctx.config
        need = ctx.needs_input_grad
        H = c.shape[1]
        dout, dh, dc = dout.contiguous(), dh_n.contiguous(), dc_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=need[5] or need[6])
        dw_hh = torch.zeros_like(w_hh) if need[4] else None
        dw_hr = torch.zeros_like(w_hr) if w_hr is not None and need[7] else None
        dpeep = torch.zeros_like(peep) if peep is not None and need[8] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            c_prev = _prev_of(c, c0, prev, r0, r1)
            dA, dh, dc, dH = kernels.lstm_backward(
                dout[r0:r1], dh, dc, gates[r0:r1], c[r0:r1], c_prev, w_hh, w_hr, peep,
                batch_sizes[t0:t1], reverse, coupled)
            grads.add(dA, r0, r1)
            if dw_hh is not None:
                dw_hh.addmm_(dA.t(), _prev_of(out, h0, prev, r0, r1))
            if dw_hr is not None:
                dw_hr.addmm_(dH.t(), m[r0:r1])
            if dpeep is not None:
                parts = [(dA[:, :H] * c_prev).sum(0)]
                if not coupled:
                    parts.append((dA[:, H:2 * H] * c_prev).sum(0))
                parts.append((dA[:, -H:] * c[r0:r1]).sum(0))
                dpeep += torch.cat(parts)
        return (grads.dx, dh, dc, grads.dw_ih, dw_hh, grads.db, grads.db, dw_hr, dpeep,
                None, None, None, None)


class _Accumulators:
    """dx (rows written chunk by chunk), dW_ih and db (summed over chunks) of one layer."""

    def __init__(self, x: Tensor, w_ih: Tensor, need: tuple, *, bias: bool, i_x: int = 0,
                 i_w: int = 3):
        self.x, self.w_ih = x, w_ih
        self.dx = torch.empty_like(x) if need[i_x] else None
        self.dw_ih = torch.zeros_like(w_ih) if need[i_w] else None
        self.db = w_ih.new_zeros(w_ih.shape[0]) if bias else None

    def add(self, dA: Tensor, r0: int, r1: int) -> None:
        """dx = dA W_ih, dW_ih += dAᵀ x, db += Σ dA for rows [r0, r1)."""
        if self.dx is not None:
            torch.mm(dA, self.w_ih, out=self.dx[r0:r1])
        if self.dw_ih is not None:
            self.dw_ih.addmm_(dA.t(), self.x[r0:r1])
        if self.db is not None:
            self.db += dA.sum(0)


class GRUFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, reset_after, kernels):
        xw = _input_projection(x, w_ih, b_ih)
        out, hw_n, h_n = kernels.gru_forward(xw, w_hh, b_hh, h0, batch_sizes, reverse,
                                             reset_after)
        gates = xw
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, hw_n)
        ctx.config = (batch_sizes, reverse, reset_after, kernels, b_hh is not None)
        ctx.mark_non_differentiable(gates)
        return out, h_n, gates

    @staticmethod
    def backward(ctx, dout, dh_n, _dgates):
        _refuse_double_backward()
        x, h0, w_ih, w_hh, out, gates, hw_n = ctx.saved_tensors
        batch_sizes, reverse, reset_after, kernels, has_bias = ctx.config
        need = ctx.needs_input_grad
        H = h0.shape[1]
        dout, dh = dout.contiguous(), dh_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=has_bias and need[4], i_w=2)
        db_hh = w_hh.new_zeros(w_hh.shape[0]) if has_bias and need[5] else None
        dw_hh = torch.zeros_like(w_hh) if need[3] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            h_prev = _prev_of(out, h0, prev, r0, r1)
            dA_x, dA_h, dh = kernels.gru_backward(
                dout[r0:r1], dh, gates[r0:r1], hw_n[r0:r1] if hw_n is not None else None,
                h_prev, w_hh, batch_sizes[t0:t1], reverse, reset_after)
            grads.add(dA_x, r0, r1)
            if db_hh is not None:
                db_hh += dA_h.sum(0)
            if dw_hh is None:
                continue
            if reset_after:
                dw_hh.addmm_(dA_h.t(), h_prev)
            else:                              # the n rows multiply r ⊙ h_{t-1}
                q = gates[r0:r1, :H] * h_prev
                dw_hh[: 2 * H].addmm_(dA_h[:, : 2 * H].t(), h_prev)
                dw_hh[2 * H:].addmm_(dA_h[:, 2 * H:].t(), q)
        return grads.dx, dh, grads.dw_ih, dw_hh, grads.db, db_hh, None, None, None, None


class RNNFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu, kernels):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        out, h_n = kernels.rnn_forward(xw, w_hh, h0, batch_sizes, reverse, relu)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.config = (batch_sizes, reverse, relu, kernels)
        return out, h_n

    @staticmethod
    def backward(ctx, dout, dh_n):
        _refuse_double_backward()
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        batch_sizes, reverse, relu, kernels = ctx.config
        need = ctx.needs_input_grad
        dout, dh = dout.contiguous(), dh_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=need[4] or need[5], i_w=2)
        dw_hh = torch.zeros_like(w_hh) if need[3] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            dA, dh = kernels.rnn_backward(dout[r0:r1], dh, out[r0:r1], w_hh,
                                          batch_sizes[t0:t1], reverse, relu)
            grads.add(dA, r0, r1)
            if dw_hh is not None:
                dw_hh.addmm_(dA.t(), _prev_of(out, h0, prev, r0, r1))
        return grads.dx, dh, grads.dw_ih, dw_hh, grads.db, grads.db, None, None, None, None


def _trace(cell: CellSpec, batch_sizes: list[int], out: Tensor, gates: Tensor | None,
           c: Tensor | None) -> Trace:
    """The per-step record of ``reference.run_layer``, as views into the saved buffers."""
    steps = []
    outs = out.detach().split(batch_sizes)
    g_steps = gates.detach().split(batch_sizes) if gates is not None else [None] * len(outs)
    c_steps = c.detach().split(batch_sizes) if c is not None else [None] * len(outs)
    for h_t, g_t, c_t in zip(outs, g_steps, c_steps):
        record: dict[str, Tensor] = {}
        if g_t is not None:
            record.update(zip(cell.gate_rows, g_t.chunk(len(cell.gate_rows), dim=1)))
            if cell.option("coupled"):
                record = {"i": record["i"], "f": 1 - record["i"], "g": record["g"],
                          "o": record["o"]}
        if c_t is not None:
            record["c"] = c_t
        record["h"] = h_t
        steps.append(record)
    return steps


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              kernels: ModuleType) -> tuple[Tensor, State, Trace | None]:
    """:func:`lstmkit.ops.reference.run_layer` with hand-derived BPTT, using ``kernels``
    (the C++ extension or :mod:`lstmkit.ops.loops`) for the recurrence."""
    if cell.option("layer_norm"):                  # LN-LSTM / LN-GRU: their own Functions
        from . import fused_ln
        return fused_ln.run_layer(cell, x, batch_sizes, state0, w, reverse=reverse,
                                  record=record, kernels=fused_ln.kernels_for(kernels))
    gates = c = None
    x = x.contiguous()
    if cell.family == "lstm":
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c = LSTMFunction.apply(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole, batch_sizes,
            reverse, bool(cell.option("coupled")), kernels)
        final: State = (h_n, c_n)
    elif cell.family == "gru":
        out, h_n, gates = GRUFunction.apply(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, batch_sizes, reverse,
            bool(cell.option("reset_after", True)), kernels)
        final = (h_n,)
    elif cell.family == "rnn":
        out, h_n = RNNFunction.apply(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, batch_sizes, reverse,
            cell.option("nonlinearity") == "relu", kernels)
        final = (h_n,)
    else:
        raise ValueError(f"the fused backend has no kernel for cell family {cell.family!r}")
    trace = _trace(cell, batch_sizes, out, gates, c) if record else None
    return out, final, trace
