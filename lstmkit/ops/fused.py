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

Recurrent dropout and zoneout masks (:mod:`lstmkit.ops.masks`) are extra, optional inputs
of the Functions, passed to the kernels; they are constants (no gradient). With recurrent
dropout the GEMM ``dW_hh = dAᵀ H_prev`` takes the dropped states ``m ⊙ h_{t-1}``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import CellSpec, LayerWeights, State
from . import loops
from .masks import StepMasks, row_sequences
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


def _mask_rows(mask: Tensor | None, r0: int, r1: int) -> Tensor | None:
    return None if mask is None else mask[r0:r1]


def _dropped(h_prev: Tensor, h_drop: Tensor | None, seq: Tensor | None, r0: int,
             r1: int) -> Tensor:
    """m ⊙ h_{t-1} for rows [r0, r1) (m has one row per sequence; ``seq`` maps rows)."""
    return h_prev if h_drop is None else h_prev * h_drop.index_select(0, seq[r0:r1])


def _masks(ctx, n: int) -> tuple:
    """The masks a Function's forward kept (the custom ops of ``library`` keep none)."""
    return getattr(ctx, "masks", (None,) * n)


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
                coupled, kernels, h_drop=None, zone_h=None, zone_c=None):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        ctx.masks = (h_drop, zone_h, zone_c)
        out, c, m, h_n, c_n = kernels.lstm_forward(xw, w_hh, w_hr, peep, h0, c0, batch_sizes,
                                                   reverse, coupled, *ctx.masks)
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
        h_drop, zone_h, zone_c = _masks(ctx, 3)
        need = ctx.needs_input_grad
        H = c.shape[1]
        dout, dh, dc = dout.contiguous(), dh_n.contiguous(), dc_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=need[5] or need[6])
        dw_hh = torch.zeros_like(w_hh) if need[4] else None
        dw_hr = torch.zeros_like(w_hr) if w_hr is not None and need[7] else None
        dpeep = torch.zeros_like(peep) if peep is not None and need[8] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        seq = row_sequences(batch_sizes, x.device) if h_drop is not None else None
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            c_prev = _prev_of(c, c0, prev, r0, r1)
            dA, dh, dc, dH = kernels.lstm_backward(
                dout[r0:r1], dh, dc, gates[r0:r1], c[r0:r1], c_prev, w_hh, w_hr, peep,
                batch_sizes[t0:t1], reverse, coupled, h_drop, _mask_rows(zone_h, r0, r1),
                _mask_rows(zone_c, r0, r1))
            grads.add(dA, r0, r1)
            if dw_hh is not None:
                h_prev = _prev_of(out, h0, prev, r0, r1)
                dw_hh.addmm_(dA.t(), _dropped(h_prev, h_drop, seq, r0, r1))
            if dw_hr is not None:
                dw_hr.addmm_(dH.t(), m[r0:r1])
            if dpeep is not None:
                parts = [(dA[:, :H] * c_prev).sum(0)]
                if not coupled:
                    parts.append((dA[:, H:2 * H] * c_prev).sum(0))
                c_t = c[r0:r1] if zone_c is None else _candidate(gates[r0:r1], c_prev, coupled)
                parts.append((dA[:, -H:] * c_t).sum(0))
                dpeep += torch.cat(parts)
        return (grads.dx, dh, dc, grads.dw_ih, dw_hh, grads.db, grads.db, dw_hr, dpeep,
                None, None, None, None, None, None, None)


def _candidate(gates: Tensor, c_prev: Tensor, coupled: bool) -> Tensor:
    """c̃_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t from the saved activations (zoneout saves c_t)."""
    if coupled:
        i_t, g_t, _ = gates.chunk(3, dim=1)
        return (1 - i_t) * c_prev + i_t * g_t
    i_t, f_t, g_t, _ = gates.chunk(4, dim=1)
    return f_t * c_prev + i_t * g_t


class LSTMVariantFunction(Function):
    """:class:`LSTMFunction` for the ablations of Greff et al. (2015) (``cells.lstm.Greff``:
    absent gates, no input/cell activation, full gate recurrence with ``w_gg``), through the
    kernels' ``lstm_variant_forward``/``lstm_variant_backward`` (derivation in
    :func:`lstmkit.ops.loops.lstm_variant_backward`). With FGR, besides the GEMMs of the
    module docstring, ``dW_gg = Σ_rows [da_i, da_f, da_o]ᵀ q_{t-1}``, q the gate
    activations i, f, o of the row's previous step (zeros before the first)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, w_gg, batch_sizes, reverse,
                coupled, greff, kernels):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        out, c, m, h_n, c_n = kernels.lstm_variant_forward(
            xw, w_hh, w_hr, peep, w_gg, h0, c0, batch_sizes, reverse, coupled, greff)
        gates = xw                                           # activations, written in place
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m)
        ctx.config = (batch_sizes, reverse, coupled, greff, kernels)
        ctx.mark_non_differentiable(gates, c)
        return out, h_n, c_n, gates, c

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dgates, _dc):
        _refuse_double_backward()
        x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m = ctx.saved_tensors
        batch_sizes, reverse, coupled, greff, kernels = ctx.config
        need = ctx.needs_input_grad
        H = c.shape[1]
        dout, dh, dc = dout.contiguous(), dh_n.contiguous(), dc_n.contiguous()
        dq = c.new_zeros(h0.shape[0], 3 * H) if w_gg is not None else None
        grads = _Accumulators(x, w_ih, need, bias=need[5] or need[6])
        dw_hh = torch.zeros_like(w_hh) if need[4] else None
        dw_hr = torch.zeros_like(w_hr) if w_hr is not None and need[7] else None
        dpeep = torch.zeros_like(peep) if peep is not None and need[8] else None
        dw_gg = torch.zeros_like(w_gg) if w_gg is not None and need[9] else None
        cols = loops.gate_columns(coupled, greff, H)
        prev = prev_rows(batch_sizes, reverse, x.device)
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            c_prev = _prev_of(c, c0, prev, r0, r1)
            dA, dh, dc, dq, dH = kernels.lstm_variant_backward(
                dout[r0:r1], dh, dc, dq, gates[r0:r1], c[r0:r1], c_prev, w_hh, w_hr, peep,
                w_gg, batch_sizes[t0:t1], reverse, coupled, greff)
            grads.add(dA, r0, r1)
            if dw_hh is not None:
                dw_hh.addmm_(dA.t(), _prev_of(out, h0, prev, r0, r1))
            if dw_hr is not None:
                dw_hr.addmm_(dH.t(), m[r0:r1])
            if dpeep is not None:                  # i, f see c_{t-1}; o sees c_t
                dpeep += torch.cat([(dA[:, cols[k]] * (c[r0:r1] if k == "o" else c_prev)).sum(0)
                                    for k in cols if k != "g"])
            if dw_gg is not None:                  # all four gates present: i, f, g, o
                q_prev = _prev_of(gates, gates.new_zeros(h0.shape[0], 4 * H), prev, r0, r1)
                dw_gg.addmm_(torch.cat([dA[:, : 2 * H], dA[:, 3 * H:]], dim=1).t(),
                             torch.cat([q_prev[:, : 2 * H], q_prev[:, 3 * H:]], dim=1))
        return (grads.dx, dh, dc, grads.dw_ih, dw_hh, grads.db, grads.db, dw_hr, dpeep, dw_gg,
                None, None, None, None, None)


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
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, reset_after, kernels,
                h_drop=None, zone_h=None):
        xw = _input_projection(x, w_ih, b_ih)
        ctx.masks = (h_drop, zone_h)
        out, hw_n, h_n = kernels.gru_forward(xw, w_hh, b_hh, h0, batch_sizes, reverse,
                                             reset_after, h_drop, zone_h)
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
        h_drop, zone_h = _masks(ctx, 2)
        need = ctx.needs_input_grad
        H = h0.shape[1]
        dout, dh = dout.contiguous(), dh_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=has_bias and need[4], i_w=2)
        db_hh = w_hh.new_zeros(w_hh.shape[0]) if has_bias and need[5] else None
        dw_hh = torch.zeros_like(w_hh) if need[3] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        seq = row_sequences(batch_sizes, x.device) if h_drop is not None else None
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            h_prev = _prev_of(out, h0, prev, r0, r1)
            dA_x, dA_h, dh = kernels.gru_backward(
                dout[r0:r1], dh, gates[r0:r1], hw_n[r0:r1] if hw_n is not None else None,
                h_prev, w_hh, batch_sizes[t0:t1], reverse, reset_after, h_drop,
                _mask_rows(zone_h, r0, r1))
            grads.add(dA_x, r0, r1)
            if db_hh is not None:
                db_hh += dA_h.sum(0)
            if dw_hh is None:
                continue
            h_prev = _dropped(h_prev, h_drop, seq, r0, r1)          # what W_hh multiplied
            if reset_after:
                dw_hh.addmm_(dA_h.t(), h_prev)
            else:                              # the n rows multiply r ⊙ h_{t-1}
                q = gates[r0:r1, :H] * h_prev
                dw_hh[: 2 * H].addmm_(dA_h[:, : 2 * H].t(), h_prev)
                dw_hh[2 * H:].addmm_(dA_h[:, 2 * H:].t(), q)
        return (grads.dx, dh, grads.dw_ih, dw_hh, grads.db, db_hh, None, None, None, None,
                None, None)


class RNNFunction(Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu, kernels,
                h_drop=None, zone_h=None):
        xw = _input_projection(x, w_ih, _sum_biases(b_ih, b_hh))
        ctx.masks = (h_drop, zone_h)
        out, h_n = kernels.rnn_forward(xw, w_hh, h0, batch_sizes, reverse, relu, h_drop, zone_h)
        # xw now holds h̃_t = act(a_t); it is ``out`` itself unless zoneout mixed h_{t-1} in
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, *([xw] if zone_h is not None else []))
        ctx.config = (batch_sizes, reverse, relu, kernels)
        return out, h_n

    @staticmethod
    def backward(ctx, dout, dh_n):
        _refuse_double_backward()
        x, h0, w_ih, w_hh, out, *act = ctx.saved_tensors
        act = act[0] if act else out                                   # h̃_t
        batch_sizes, reverse, relu, kernels = ctx.config
        h_drop, zone_h = _masks(ctx, 2)
        need = ctx.needs_input_grad
        dout, dh = dout.contiguous(), dh_n.contiguous()
        grads = _Accumulators(x, w_ih, need, bias=need[4] or need[5], i_w=2)
        dw_hh = torch.zeros_like(w_hh) if need[3] else None
        prev = prev_rows(batch_sizes, reverse, x.device)
        seq = row_sequences(batch_sizes, x.device) if h_drop is not None else None
        for t0, t1, r0, r1 in backward_chunks(batch_sizes, reverse):
            dA, dh = kernels.rnn_backward(dout[r0:r1], dh, act[r0:r1], w_hh,
                                          batch_sizes[t0:t1], reverse, relu, h_drop,
                                          _mask_rows(zone_h, r0, r1))
            grads.add(dA, r0, r1)
            if dw_hh is not None:
                h_prev = _prev_of(out, h0, prev, r0, r1)
                dw_hh.addmm_(dA.t(), _dropped(h_prev, h_drop, seq, r0, r1))
        return (grads.dx, dh, grads.dw_ih, dw_hh, grads.db, grads.db, None, None, None, None,
                None, None)


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
            acts = dict(zip(cell.gate_rows, g_t.chunk(len(cell.gate_rows), dim=1)))
            for k in cell.gates:                 # absent LSTM gates: f = 1 − i (coupled), or 1
                record[k] = acts.get(k)
                if record[k] is None:
                    record[k] = (1 - acts["i"] if k == "f" and cell.option("coupled")
                                 else torch.ones_like(acts["g"]))
        if c_t is not None:
            record["c"] = c_t
        record["h"] = h_t
        steps.append(record)
    return steps


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              kernels: ModuleType, masks: StepMasks | None = None
              ) -> tuple[Tensor, State, Trace | None]:
    """:func:`lstmkit.ops.reference.run_layer` with hand-derived BPTT, using ``kernels``
    (the C++ extension or :mod:`lstmkit.ops.loops`) for the recurrence."""
    if cell.option("layer_norm"):                  # LN-LSTM / LN-GRU: their own Functions
        from . import fused_ln
        return fused_ln.run_layer(cell, x, batch_sizes, state0, w, reverse=reverse,
                                  record=record, kernels=fused_ln.kernels_for(kernels))
    gates = c = None
    h_drop, zone_h, zone_c = (None if m is None else m.contiguous()
                              for m in (masks or StepMasks()))
    x = x.contiguous()
    if cell.family == "lstm" and cell.option("greff") is not None:
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c = LSTMVariantFunction.apply(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole,
            w.extra[0] if w.extra else None, batch_sizes, reverse, bool(cell.option("coupled")),
            cell.option("greff"), kernels)
        final: State = (h_n, c_n)
    elif cell.family == "lstm":
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c = LSTMFunction.apply(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole, batch_sizes,
            reverse, bool(cell.option("coupled")), kernels, h_drop, zone_h, zone_c)
        final = (h_n, c_n)
    elif cell.family == "gru":
        out, h_n, gates = GRUFunction.apply(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, batch_sizes, reverse,
            bool(cell.option("reset_after", True)), kernels, h_drop, zone_h)
        final = (h_n,)
    elif cell.family == "rnn":
        out, h_n = RNNFunction.apply(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, batch_sizes, reverse,
            cell.option("nonlinearity") == "relu", kernels, h_drop, zone_h)
        final = (h_n,)
    else:
        raise ValueError(f"the fused backend has no kernel for cell family {cell.family!r}")
    trace = _trace(cell, batch_sizes, out, gates, c) if record else None
    return out, final, trace
