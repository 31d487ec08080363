r"""The fused backend: one ``torch.autograd.Function`` per cell family with hand-derived BPTT.

For one layer and direction, forward is

1. one large GEMM for the input projection of all steps, ``xw = x W_ihᵀ + b`` (N, G·H);
2. the recurrence: per step one GEMM with the recurrent weights and one pointwise update,
   run by a *kernel* (the C++ extension, or the torch loop of :mod:`lstmkit.ops.loops`);
   it saves only the gate activations and states that BPTT needs.

Backward walks t = T…1 in the kernel, carrying dh (and dc), writing the gradients of the
gate pre-activations of every step into one buffer dA (N, G·H); then a few large GEMMs
give everything else::

    dx = dA W_ih      dW_ih = dAᵀ x      dW_hh = dAᵀ H_prev      db_ih = db_hh = Σ_rows dA

where H_prev (N, ·) holds, for each row, the state the step started from (gathered after
the loop by :func:`states_before`). The per-cell derivations are in the docstrings of the
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


def _gather_prev(flat: Tensor, initial: Tensor, prev: Tensor) -> Tensor:
    return torch.cat([flat, initial]).index_select(0, prev)


def states_before(flat: Tensor, initial: Tensor, batch_sizes: list[int], reverse: bool) -> Tensor:
    """(N, ·): for each flat row, the state its step started from (see :func:`prev_rows`);
    for padded input simply the initial state followed by all but the last step."""
    B = batch_sizes[0]
    if batch_sizes[-1] == B:
        return torch.cat([flat[B:], initial]) if reverse else torch.cat([initial, flat[:-B]])
    return _gather_prev(flat, initial, prev_rows(batch_sizes, reverse, flat.device))


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


def _weight_grads(ctx, i_x: int, dA: Tensor, x: Tensor, w_ih: Tensor) -> tuple:
    """dx = dA W_ih, dW_ih = dAᵀ x, db = Σ dA, each only if needed."""
    need = ctx.needs_input_grad
    dx = dA @ w_ih if need[i_x] else None
    dw_ih = dA.t() @ x if need[3] else None
    db = dA.sum(0) if need[5] or need[6] else None
    return dx, dw_ih, db


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
        H = c.shape[1]
        c_prev = states_before(c, c0, batch_sizes, reverse)
        dA, dh0, dc0, dH = kernels.lstm_backward(
            dout.contiguous(), dh_n.contiguous(), dc_n.contiguous(), gates, c, c_prev, w_hh,
            w_hr, peep, batch_sizes, reverse, coupled)
        need = ctx.needs_input_grad
        dx, dw_ih, db = _weight_grads(ctx, 0, dA, x, w_ih)
        dw_hh = dA.t() @ states_before(out, h0, batch_sizes, reverse) if need[4] else None
        dw_hr = dH.t() @ m if w_hr is not None and need[7] else None
        dpeep = None
        if peep is not None and need[8]:
            dA_i, dA_o = dA[:, :H], dA[:, -H:]
            parts = [(dA_i * c_prev).sum(0)]
            if not coupled:
                parts.append((dA[:, H:2 * H] * c_prev).sum(0))
            parts.append((dA_o * c).sum(0))
            dpeep = torch.cat(parts)
        return (dx, dh0, dc0, dw_ih, dw_hh, db, db, dw_hr, dpeep, None, None, None, None)


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
        H = h0.shape[1]
        h_prev = states_before(out, h0, batch_sizes, reverse)
        dA_x, dA_h, dh0 = kernels.gru_backward(dout.contiguous(), dh_n.contiguous(), gates,
                                               hw_n, h_prev, w_hh, batch_sizes, reverse,
                                               reset_after)
        need = ctx.needs_input_grad
        dx = dA_x @ w_ih if need[0] else None
        dw_ih = dA_x.t() @ x if need[2] else None
        db_ih = dA_x.sum(0) if has_bias and need[4] else None
        db_hh = dA_h.sum(0) if has_bias and need[5] else None
        dw_hh = None
        if need[3]:
            if reset_after:
                dw_hh = dA_h.t() @ h_prev
            else:                              # the n rows multiply r ⊙ h_{t-1}
                q = gates[:, :H] * h_prev
                dw_hh = torch.cat([dA_h[:, : 2 * H].t() @ h_prev, dA_h[:, 2 * H:].t() @ q])
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


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
        dA, dh0 = kernels.rnn_backward(dout.contiguous(), dh_n.contiguous(), out, w_hh,
                                       batch_sizes, reverse, relu)
        dx, dw_ih, db = _weight_grads(ctx, 0, dA, x, w_ih)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            dw_hh = dA.t() @ states_before(out, h0, batch_sizes, reverse)
        return dx, dh0, dw_ih, dw_hh, db, db, None, None, None, None


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
