"""The fused layers as ``torch.library`` custom ops, for ``torch.compile`` and ``torch.export``.

``lstmkit::lstm_layer``, ``lstmkit::gru_layer`` and ``lstmkit::rnn_layer`` each run one
layer and direction (the forward of :mod:`lstmkit.ops.fused`), with a fake (meta)
implementation giving the output shapes and an autograd formula that calls the matching
``*_backward`` op (the hand-derived BPTT of the same module). To dynamo each layer is then a
single op: no graph break. The kernels — C++ or torch loops — are chosen when the op runs,
by the ``kernels`` argument ("fused_cpp", "fused_py" or "fused" = C++ where it can run).

The modules use these ops while ``torch.compiler.is_compiling()``; eager code calls the
autograd Functions of :mod:`lstmkit.ops.fused` directly (the same computation, without the
dispatcher's per-call cost).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor
from torch.library import custom_op

from ..cells.base import CellSpec, LayerWeights, State
from ..cells.lstm import Greff
from . import _cpp_can_run, fused, loops
from .extension import cpp_kernels


def _kernels(choice: str, x: Tensor):
    if choice == "fused_py":
        return loops
    if choice == "fused_cpp":
        return cpp_kernels(required=True)
    return (cpp_kernels(required=False) if _cpp_can_run(x) else None) or loops


class _Ctx(SimpleNamespace):
    """Stands in for an autograd context when the Functions' bodies run inside an op."""

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors) -> None:
        pass


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def _none_if_empty(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 and t.dim() == 1 else t


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


# -- LSTM ---------------------------------------------------------------------------------
@custom_op("lstmkit::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None,
               peep: Tensor | None, batch_sizes: list[int], reverse: bool, coupled: bool,
               kernels: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx()
    out, h_n, c_n, gates, c = fused.LSTMFunction.forward(
        ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, batch_sizes, reverse, coupled,
        _kernels(kernels, x))
    m = ctx.saved_tensors[-1]
    return out, h_n, c_n, gates, c, _empty_if_none(m, x)


@lstm_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, batch_sizes, reverse, coupled, kernels):
    N, H = x.shape[0], c0.shape[1]
    m = x.new_empty(N, H) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(N, h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0),
            x.new_empty(N, w_ih.shape[0]), x.new_empty(N, H), m)


@custom_op("lstmkit::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                        w_hr: Tensor | None, peep: Tensor | None, out: Tensor, gates: Tensor,
                        c: Tensor, m: Tensor | None, dout: Tensor, dh_n: Tensor, dc_n: Tensor,
                        batch_sizes: list[int], reverse: bool, coupled: bool, kernels: str,
                        needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                    Tensor, Tensor, Tensor]:
    ctx = _Ctx(saved_tensors=(x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m),
               config=(batch_sizes, reverse, coupled, _kernels(kernels, x)),
               needs_input_grad=tuple(needs))
    g = fused.LSTMFunction.backward(ctx, dout, dh_n, dc_n, None, None)
    return tuple(_empty_if_none(t, x) for t in (g[0], g[1], g[2], g[3], g[4], g[5], g[7],
                                                g[8]))


@lstm_layer_backward.register_fake
def _(x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m, dout, dh_n, dc_n, batch_sizes,
      reverse, coupled, kernels, needs):
    def like(t, need):
        return torch.empty_like(t) if need and t is not None else x.new_empty(0)
    db = x.new_empty(w_ih.shape[0]) if needs[5] or needs[6] else x.new_empty(0)
    return (like(x, needs[0]), torch.empty_like(h0), torch.empty_like(c0),
            like(w_ih, needs[3]), like(w_hh, needs[4]), db, like(w_hr, needs[7]),
            like(peep, needs[8]))


def _lstm_setup(ctx, inputs, output) -> None:
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, batch_sizes, reverse, coupled, kernels = inputs
    out, h_n, c_n, gates, c, m = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c,
                          m if w_hr is not None else None)
    ctx.config = (batch_sizes, reverse, coupled, kernels)


def _lstm_backward(ctx, dout, dh_n, dc_n, _dgates, _dc, _dm):
    x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m = ctx.saved_tensors
    batch_sizes, reverse, coupled, kernels = ctx.config
    needs = list(ctx.needs_input_grad[:9])
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, dpeep = lstm_layer_backward(
        x, h0, c0, w_ih, w_hh, w_hr, peep, out, gates, c, m, _zeros_if_none(dout, out),
        _zeros_if_none(dh_n, h0), _zeros_if_none(dc_n, c0), batch_sizes, reverse, coupled,
        kernels, needs)
    db = _none_if_empty(db)
    return (_none_if_empty(dx), dh0, dc0, _none_if_empty(dw_ih), _none_if_empty(dw_hh), db,
            db, _none_if_empty(dw_hr), _none_if_empty(dpeep), None, None, None, None)


lstm_layer.register_autograd(_lstm_backward, setup_context=_lstm_setup)


# -- LSTM ablations of Greff et al. (2015) --------------------------------------------------
@custom_op("lstmkit::lstm_variant_layer", mutates_args=())
def lstm_variant_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None,
                       peep: Tensor | None, w_gg: Tensor | None, batch_sizes: list[int],
                       reverse: bool, coupled: bool, greff: list[bool], kernels: str
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx()
    out, h_n, c_n, gates, c = fused.LSTMVariantFunction.forward(
        ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, w_gg, batch_sizes, reverse, coupled,
        Greff(*greff), _kernels(kernels, x))
    m = ctx.saved_tensors[-1]
    return out, h_n, c_n, gates, c, _empty_if_none(m, x)


@lstm_variant_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, w_gg, batch_sizes, reverse, coupled, greff,
      kernels):
    N, H = x.shape[0], c0.shape[1]
    m = x.new_empty(N, H) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(N, h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0),
            x.new_empty(N, w_ih.shape[0]), x.new_empty(N, H), m)


@custom_op("lstmkit::lstm_variant_layer_backward", mutates_args=())
def lstm_variant_layer_backward(
        x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Tensor | None,
        peep: Tensor | None, w_gg: Tensor | None, out: Tensor, gates: Tensor, c: Tensor,
        m: Tensor | None, dout: Tensor, dh_n: Tensor, dc_n: Tensor, batch_sizes: list[int],
        reverse: bool, coupled: bool, greff: list[bool], kernels: str, needs: list[bool]
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx(saved_tensors=(x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m),
               config=(batch_sizes, reverse, coupled, Greff(*greff), _kernels(kernels, x)),
               needs_input_grad=tuple(needs))
    g = fused.LSTMVariantFunction.backward(ctx, dout, dh_n, dc_n, None, None)
    return tuple(_empty_if_none(t, x) for t in (*g[:6], *g[7:10]))


@lstm_variant_layer_backward.register_fake
def _(x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m, dout, dh_n, dc_n, batch_sizes,
      reverse, coupled, greff, kernels, needs):
    def like(t, need):
        return torch.empty_like(t) if need and t is not None else x.new_empty(0)
    db = x.new_empty(w_ih.shape[0]) if needs[5] or needs[6] else x.new_empty(0)
    return (like(x, needs[0]), torch.empty_like(h0), torch.empty_like(c0),
            like(w_ih, needs[3]), like(w_hh, needs[4]), db, like(w_hr, needs[7]),
            like(peep, needs[8]), like(w_gg, needs[9]))


def _lstm_variant_setup(ctx, inputs, output) -> None:
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, w_gg, batch_sizes, reverse, coupled, greff,
     kernels) = inputs
    out, h_n, c_n, gates, c, m = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c,
                          m if w_hr is not None else None)
    ctx.config = (batch_sizes, reverse, coupled, greff, kernels)


def _lstm_variant_backward(ctx, dout, dh_n, dc_n, _dgates, _dc, _dm):
    x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m = ctx.saved_tensors
    batch_sizes, reverse, coupled, greff, kernels = ctx.config
    g = lstm_variant_layer_backward(
        x, h0, c0, w_ih, w_hh, w_hr, peep, w_gg, out, gates, c, m, _zeros_if_none(dout, out),
        _zeros_if_none(dh_n, h0), _zeros_if_none(dc_n, c0), batch_sizes, reverse, coupled,
        greff, kernels, list(ctx.needs_input_grad[:10]))
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, dpeep, dw_gg = g
    db = _none_if_empty(db)
    return (_none_if_empty(dx), dh0, dc0, _none_if_empty(dw_ih), _none_if_empty(dw_hh), db,
            db, _none_if_empty(dw_hr), _none_if_empty(dpeep), _none_if_empty(dw_gg),
            None, None, None, None, None)


lstm_variant_layer.register_autograd(_lstm_variant_backward, setup_context=_lstm_variant_setup)


# -- GRU ----------------------------------------------------------------------------------
@custom_op("lstmkit::gru_layer", mutates_args=())
def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None, batch_sizes: list[int], reverse: bool, reset_after: bool,
              kernels: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx()
    out, h_n, gates = fused.GRUFunction.forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh,
                                                batch_sizes, reverse, reset_after,
                                                _kernels(kernels, x))
    return out, h_n, gates, _empty_if_none(ctx.saved_tensors[-1], x)


@gru_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, reset_after, kernels):
    N, H = x.shape[0], h0.shape[1]
    return (x.new_empty(N, H), torch.empty_like(h0), x.new_empty(N, w_ih.shape[0]),
            x.new_empty(N, H) if reset_after else x.new_empty(0))


@custom_op("lstmkit::gru_layer_backward", mutates_args=())
def gru_layer_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, out: Tensor,
                       gates: Tensor, hw_n: Tensor | None, dout: Tensor, dh_n: Tensor,
                       batch_sizes: list[int], reverse: bool, reset_after: bool, kernels: str,
                       has_bias: bool, needs: list[bool]
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx(saved_tensors=(x, h0, w_ih, w_hh, out, gates, hw_n),
               config=(batch_sizes, reverse, reset_after, _kernels(kernels, x), has_bias),
               needs_input_grad=tuple(needs))
    g = fused.GRUFunction.backward(ctx, dout, dh_n, None)
    return tuple(_empty_if_none(t, x) for t in g[:6])


@gru_layer_backward.register_fake
def _(x, h0, w_ih, w_hh, out, gates, hw_n, dout, dh_n, batch_sizes, reverse, reset_after,
      kernels, has_bias, needs):
    def like(t, need):
        return torch.empty_like(t) if need else x.new_empty(0)
    bias = x.new_empty(w_ih.shape[0])
    return (like(x, needs[0]), torch.empty_like(h0), like(w_ih, needs[2]),
            like(w_hh, needs[3]), bias if has_bias and needs[4] else x.new_empty(0),
            torch.empty_like(bias) if has_bias and needs[5] else x.new_empty(0))


def _gru_setup(ctx, inputs, output) -> None:
    x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, reset_after, kernels = inputs
    out, h_n, gates, hw_n = output
    ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, hw_n if reset_after else None)
    ctx.config = (batch_sizes, reverse, reset_after, kernels, b_hh is not None)


def _gru_backward(ctx, dout, dh_n, _dgates, _dhw):
    x, h0, w_ih, w_hh, out, gates, hw_n = ctx.saved_tensors
    batch_sizes, reverse, reset_after, kernels, has_bias = ctx.config
    g = gru_layer_backward(x, h0, w_ih, w_hh, out, gates, hw_n, _zeros_if_none(dout, out),
                           _zeros_if_none(dh_n, h0), batch_sizes, reverse, reset_after,
                           kernels, has_bias, list(ctx.needs_input_grad[:6]))
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = g
    return (_none_if_empty(dx), dh0, _none_if_empty(dw_ih), _none_if_empty(dw_hh),
            _none_if_empty(db_ih), _none_if_empty(db_hh), None, None, None, None)


gru_layer.register_autograd(_gru_backward, setup_context=_gru_setup)


# -- RNN ----------------------------------------------------------------------------------
@custom_op("lstmkit::rnn_layer", mutates_args=())
def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None, batch_sizes: list[int], reverse: bool, relu: bool,
              kernels: str) -> tuple[Tensor, Tensor]:
    out, h_n = fused.RNNFunction.forward(_Ctx(), x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                         reverse, relu, _kernels(kernels, x))
    return out, h_n


@rnn_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu, kernels):
    return x.new_empty(x.shape[0], h0.shape[1]), torch.empty_like(h0)


@custom_op("lstmkit::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, out: Tensor,
                       dout: Tensor, dh_n: Tensor, batch_sizes: list[int], reverse: bool,
                       relu: bool, kernels: str, needs: list[bool]
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = _Ctx(saved_tensors=(x, h0, w_ih, w_hh, out),
               config=(batch_sizes, reverse, relu, _kernels(kernels, x)),
               needs_input_grad=tuple(needs))
    g = fused.RNNFunction.backward(ctx, dout, dh_n)
    return tuple(_empty_if_none(t, x) for t in g[:5])


@rnn_layer_backward.register_fake
def _(x, h0, w_ih, w_hh, out, dout, dh_n, batch_sizes, reverse, relu, kernels, needs):
    def like(t, need):
        return torch.empty_like(t) if need else x.new_empty(0)
    return (like(x, needs[0]), torch.empty_like(h0), like(w_ih, needs[2]),
            like(w_hh, needs[3]),
            x.new_empty(w_ih.shape[0]) if needs[4] or needs[5] else x.new_empty(0))


def _rnn_setup(ctx, inputs, output) -> None:
    x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu, kernels = inputs
    ctx.save_for_backward(x, h0, w_ih, w_hh, output[0])
    ctx.config = (batch_sizes, reverse, relu, kernels)


def _rnn_backward(ctx, dout, dh_n):
    x, h0, w_ih, w_hh, out = ctx.saved_tensors
    batch_sizes, reverse, relu, kernels = ctx.config
    dx, dh0, dw_ih, dw_hh, db = rnn_layer_backward(
        x, h0, w_ih, w_hh, out, _zeros_if_none(dout, out), _zeros_if_none(dh_n, h0),
        batch_sizes, reverse, relu, kernels, list(ctx.needs_input_grad[:6]))
    db = _none_if_empty(db)
    return (_none_if_empty(dx), dh0, _none_if_empty(dw_ih), _none_if_empty(dw_hh), db, db,
            None, None, None, None)


rnn_layer.register_autograd(_rnn_backward, setup_context=_rnn_setup)


# -- the layer loop ---------------------------------------------------------------------------
def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              kernels: str = "fused") -> tuple[Tensor, State, object]:
    """:func:`lstmkit.ops.fused.run_layer` through the custom ops."""
    gates = c = None
    x = x.contiguous()
    if cell.family == "lstm" and cell.option("greff") is not None:
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c, _ = lstm_variant_layer(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole,
            w.extra[0] if w.extra else None, list(batch_sizes), reverse,
            bool(cell.option("coupled")), list(cell.option("greff")), kernels)
        final: State = (h_n, c_n)
    elif cell.family == "lstm":
        h0, c0 = (s.contiguous() for s in state0)
        out, h_n, c_n, gates, c, _ = lstm_layer(
            x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole, list(batch_sizes),
            reverse, bool(cell.option("coupled")), kernels)
        final = (h_n, c_n)
    elif cell.family == "gru":
        out, h_n, gates, _ = gru_layer(
            x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh, list(batch_sizes),
            reverse, bool(cell.option("reset_after", True)), kernels)
        final = (h_n,)
    elif cell.family == "rnn":
        out, h_n = rnn_layer(x, state0[0].contiguous(), w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                             list(batch_sizes), reverse,
                             cell.option("nonlinearity") == "relu", kernels)
        final = (h_n,)
    else:
        raise ValueError(f"the fused backend has no kernel for cell family {cell.family!r}")
    trace = fused._trace(cell, batch_sizes, out, gates, c) if record else None
    return out, final, trace
