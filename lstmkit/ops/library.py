"""The fused layers as ``torch.library`` custom ops, for ``torch.compile`` and ``torch.export``.

One factory, :func:`make_layer_op`, makes for every registered cell family the op
``lstmkit::<family>_layer`` (one layer and direction: :func:`lstmkit.ops.fused.layer_forward`),
with a fake implementation for the output shapes (the same function, its loop replaced by
nothing) and an autograd formula that calls ``lstmkit::<family>_layer_backward``
(:func:`lstmkit.ops.fused.layer_backward`). To dynamo each layer is then a single op: no
graph break, masks (recurrent dropout, zoneout) included. The kernels — C++ or torch loops —
are chosen when the op runs, by the ``kernels`` argument ("fused_cpp", "fused_py" or
"fused" = C++ where it can run).

The op's arguments: ``x``; the module's initial states; the weights present, in the order of
:class:`lstmkit.cells.LayerWeights` (``config`` says which are present); the side inputs;
the masks present (h_drop, zone_h, zone_c); ``batch_sizes``; ``reverse``; ``config`` (the
family's options and what is present, as JSON); ``kernels``. Its outputs: every state's
sequence, the module's final states, the saved activations (empty when they are the output
itself), the cell output before the projection (empty without one), the family's saved
buffers and what its input projection keeps.

The modules use these ops while ``torch.compiler.is_compiling()``; eager code calls
:class:`lstmkit.ops.fused.RecurrentFunction` directly (the same computation, without the
dispatcher's per-call cost).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor
from torch.library import custom_op

from ..cells.base import CellSpec, LayerWeights, State, build, families
from . import fused
from .fused import Call, Inputs, Kept
from .masks import StepMasks

# -- ONNX export: which cells run as their op --------------------------------------------------
_onnx_export = [False]


def onnx_exporting() -> bool:
    """True while :func:`lstmkit.interop.onnx.export` runs: a cell without an ONNX operator
    then runs its reference equations (see :func:`lstmkit.ops.select_backend`)."""
    return _onnx_export[0]


@contextmanager
def exporting_onnx() -> Iterator[None]:
    previous, _onnx_export[0] = _onnx_export[0], True
    try:
        yield
    finally:
        _onnx_export[0] = previous


# -- packing the arguments -------------------------------------------------------------------------
def config_of(cell: CellSpec, w: LayerWeights, n_side: int, masks: StepMasks) -> str:
    """The op's ``config``: the cell's options and which arguments are present."""
    return _config(cell.options, tuple(t is not None for t in (*w[:6], *w.extra)), n_side,
                   tuple(m is not None for m in masks))


@torch.compiler.assume_constant_result
def _config(options: tuple, weights: tuple, n_side: int, masks: tuple) -> str:
    return json.dumps({"options": [list(o) for o in options], "weights": list(weights),
                       "side": n_side, "masks": list(masks)})


@lru_cache(maxsize=256)
def _spec(family: str, options: str) -> CellSpec:
    return build(family, {k: tuple(v) if isinstance(v, list) else v
                          for k, v in json.loads(options)})


class _NoLoop:
    """Kernels that leave the buffers as allocated: the fake (shape) implementations."""

    @staticmethod
    def forward(*args) -> None:
        pass

    @staticmethod
    def backward(*args) -> None:
        pass

    @staticmethod
    def keep_weight_layouts() -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def parse_config(family: str, config: str, weights: list) -> tuple[CellSpec, LayerWeights]:
    """The cell and the weights (None where absent) of an op call."""
    c = json.loads(config)
    present = iter(weights)
    ws = [next(present) if here else None for here in c["weights"]]
    return _spec(family, json.dumps(c["options"])), LayerWeights(*ws[:6], extra=tuple(ws[6:]))


def _unpack(family, x, states0, weights, side, masks, batch_sizes, reverse, config, kernels):
    c = json.loads(config)
    cell, w = parse_config(family, config, weights)
    if not batch_sizes:                  # traced padded input: the layout from the shapes
        batch_sizes, side = _padded_layout(cell, x, states0, side, reverse)
    given = iter(masks)
    m = StepMasks(*(next(given) if here else None for here in c["masks"]))
    from . import kernels_for
    kern = kernels if isinstance(kernels, _NoLoop) else kernels_for(kernels, cell, x)
    call = Call(cell, tuple(batch_sizes), reverse, kern, len(w.extra), c["side"])
    return call, Inputs(x, tuple(states0), w, tuple(side), m)


def _padded_layout(cell: CellSpec, x: Tensor, states0, side, reverse: bool):
    """``batch_sizes=[]``: a padded input of ``x.shape[0] // B`` steps of ``B`` rows (``B``
    from the initial state), with the family's schedule computed here rather than passed
    in. :func:`torch.jit.trace` records the op this way, so that the traced graph runs on
    any length and batch size."""
    B = states0[0].shape[0]
    batch_sizes = [B] * (x.shape[0] // B) if B else []
    return batch_sizes, (*cell.schedule(batch_sizes, reverse, x.device), *side)


def _n_derived(config: str, n_side: int) -> int:
    """How many side inputs :func:`_padded_layout` adds (the op was given ``n_side``)."""
    return json.loads(config)["side"] - n_side


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _outputs(call: Call, inp: Inputs) -> list[Tensor]:
    seqs, finals, kept = fused.layer_forward(call, inp)
    gates = _empty(inp.x) if kept.gates is kept.seqs[0] else kept.gates
    m = _empty(inp.x) if kept.m is None else kept.m
    return [*kept.seqs, *finals, gates, m, *kept.saved, *kept.aux]


def _kept(call: Call, outs: list[Tensor]) -> Kept:
    """Split the op's outputs back into the sequences, final states and :class:`Kept`."""
    n_all, n = len(call.cell.states), call.cell.n_states
    seqs = tuple(outs[:n_all])
    gates, m = outs[n_all + n], outs[n_all + n + 1]
    n_saved = len(call.cell.fused.saved_buffers(call.cell, gates.new_empty(0, 0), 0))
    i = n_all + n + 2
    saved, aux = tuple(outs[i:i + n_saved]), tuple(outs[i + n_saved:])
    return Kept(seqs[0] if gates.numel() == 0 else gates, seqs,   # empty: shared with seqs[0]
                None if m.numel() == 0 else m, saved, aux)


# -- the factory ----------------------------------------------------------------------------------
_OPS: dict[str, object] = {}


def make_layer_op(family: str):
    """Register ``lstmkit::<family>_layer`` and its backward; return the forward op."""
    if family in _OPS:
        return _OPS[family]
    name = f"lstmkit::{family}_layer"

    def forward(x: Tensor, states0: list[Tensor], weights: list[Tensor], side: list[Tensor],
                masks: list[Tensor], batch_sizes: list[int], reverse: bool, config: str,
                kernels: str) -> list[Tensor]:
        call, inp = _unpack(family, x, states0, weights, side, masks, batch_sizes, reverse,
                            config, kernels)
        return _outputs(call, inp)

    def fake(x, states0, weights, side, masks, batch_sizes, reverse, config, kernels):
        call, inp = _unpack(family, x, states0, weights, side, masks, batch_sizes, reverse,
                            config, _NoLoop())
        return _outputs(call, inp)

    def backward_op(x: Tensor, states0: list[Tensor], weights: list[Tensor],
                    side: list[Tensor], masks: list[Tensor], kept: list[Tensor],
                    dseqs: list[Tensor], dfinals: list[Tensor], batch_sizes: list[int],
                    reverse: bool, config: str, kernels: str, needs: list[bool]
                    ) -> list[Tensor]:
        derived = _n_derived(config, len(side)) if not batch_sizes else 0
        call, inp = _unpack(family, x, states0, weights, side, masks, batch_sizes, reverse,
                            config, kernels)
        if not derived:
            return _backward(call, inp, kept, dseqs, dfinals, needs)
        k = len(needs) - len(side)             # the derived schedule takes no gradient
        grads = _backward(call, inp, kept, dseqs, dfinals,
                          [*needs[:k], *[False] * derived, *needs[k:]])
        return grads[:k] + grads[k + derived:]

    def backward_fake(x, states0, weights, side, masks, kept, dseqs, dfinals, batch_sizes,
                      reverse, config, kernels, needs):
        tensors = [x, *states0, *weights, *side]
        return [torch.empty_like(t) if need else _empty(x) for t, need in zip(tensors, needs)]

    op = custom_op(name, forward, mutates_args=())
    op.register_fake(fake)
    back = custom_op(f"{name}_backward", backward_op, mutates_args=())
    back.register_fake(backward_fake)

    def setup_context(ctx, inputs, output) -> None:
        x, states0, weights, side, masks, batch_sizes, reverse, config, kernels = inputs
        ctx.args = (batch_sizes, reverse, config, kernels)
        ctx.n = (len(states0), len(weights), len(side), len(masks), len(output))
        ctx.save_for_backward(x, *states0, *weights, *side, *masks, *output)

    def autograd(ctx, grads):
        if torch.is_grad_enabled():          # create_graph=True: only the eager path can
            raise RuntimeError(
                "lstmkit's custom ops (used under torch.compile and torch.export) cannot "
                "differentiate twice (create_graph=True); run the module eagerly, where the "
                "gradient is differentiated through the reference loop")
        batch_sizes, reverse, config, kernels = ctx.args
        n_s, n_w, n_side, n_m, n_out = ctx.n
        t = ctx.saved_tensors
        x, states0 = t[0], list(t[1:1 + n_s])
        i = 1 + n_s
        weights, side = list(t[i:i + n_w]), list(t[i + n_w:i + n_w + n_side])
        i += n_w + n_side
        masks, outs = list(t[i:i + n_m]), list(t[i + n_m:])
        n_all = len(_spec_of(config, family).states)
        n = n_s
        dseqs = [_empty(x) if g is None else g for g in grads[:n]]
        dfinals = [_empty(x) if g is None else g for g in grads[n_all:n_all + n]]
        needs = [bool(v) for v in (ctx.needs_input_grad[0], *ctx.needs_input_grad[1],
                                   *ctx.needs_input_grad[2], *ctx.needs_input_grad[3])]
        g = back(x, states0, weights, side, masks, outs, dseqs, dfinals, batch_sizes, reverse,
                 config, kernels, needs)
        g = [None if (not need or v.numel() == 0 and v.dim() == 1) else v
             for v, need in zip(g, needs)]
        return (g[0], g[1:1 + n_s], g[1 + n_s:1 + n_s + n_w], g[1 + n_s + n_w:],
                [None] * n_m, None if batch_sizes else [], None, None, None)

    op.register_autograd(autograd, setup_context=setup_context)
    _OPS[family] = op
    return op


def _spec_of(config: str, family: str) -> CellSpec:
    return _spec(family, json.dumps(json.loads(config)["options"]))


def _backward(call: Call, inp: Inputs, outs: list[Tensor], dseqs: list[Tensor],
              dfinals: list[Tensor], needs: list[bool]) -> list[Tensor]:
    kept = _kept(call, outs)
    n = call.cell.n_states
    ds = [None if d.numel() == 0 and d.dim() == 1 else d for d in dseqs]
    if ds[0] is None:
        ds[0] = torch.zeros_like(kept.seqs[0])
    df = [None if d.numel() == 0 and d.dim() == 1 else d for d in dfinals]
    flags = iter(needs)
    need_x = next(flags)
    need_states = tuple(next(flags) for _ in range(n))
    w_present = [t is not None for t in (*inp.w[:6], *inp.w.extra)]
    need_w = [next(flags) if here else False for here in w_present]
    need_side = tuple(next(flags) for _ in inp.side)
    want = Inputs(need_x, need_states, LayerWeights(*need_w[:6], extra=tuple(need_w[6:])),
                  need_side, StepMasks())
    grads = fused.layer_backward(call, inp, kept, ds, df, want)
    x = inp.x
    out = [grads.x, *grads.states0,
           *(g for g, here in zip((*grads.w[:6], *grads.w.extra), w_present) if here),
           *grads.side]
    return [_empty(x) if g is None else g for g in out]


for _family in families():
    make_layer_op(_family)


def traced_padded(x: Tensor, batch_sizes: list, state0: State) -> bool:
    """:func:`torch.jit.trace` is recording a padded input: the op then gets no
    ``batch_sizes`` (a traced list of sizes would fix the length and the batch)."""
    return (torch.jit.is_tracing() and len(batch_sizes) > 0
            and all(b is batch_sizes[0] for b in batch_sizes))


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False, kernels: str,
              masks: StepMasks | None = None, side: tuple[Tensor, ...] = (),
              sequences: bool = False) -> tuple:
    """:func:`lstmkit.ops.fused.run_layer` through the custom op of the cell's family."""
    schedule = cell.schedule(batch_sizes, reverse, x.device)
    masks = masks or StepMasks()
    op = make_layer_op(cell.family)
    config = config_of(cell, w, len(schedule) + len(side), masks)
    if traced_padded(x, batch_sizes, state0):
        layout: list = []                # the op derives the layout and schedule when it runs
    else:
        side, layout = (*schedule, *side), list(batch_sizes)
    outs = op(x.contiguous(), list(state0), [t for t in (*w[:6], *w.extra) if t is not None],
              list(side), [m for m in masks if m is not None], layout, reverse,
              config, kernels)
    n_all, n = len(cell.states), cell.n_states
    seqs, final = outs[:n], tuple(outs[n_all:n_all + n])
    gates = outs[n_all + n]
    trace = None
    if record:
        H = w.w_hh.shape[0] // len(cell.gate_rows)
        trace = fused.make_trace(cell, batch_sizes, seqs, seqs[0] if gates.numel() == 0
                                 else gates, H)
    if sequences:
        return seqs[0], final, trace, seqs
    return seqs[0], final, trace
