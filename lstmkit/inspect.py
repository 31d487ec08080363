"""Recording every gate and state of every step: ``lstmkit.record``.

    with lstmkit.record(model) as rec:
        model(x)
    rec.layers[0]["f"]          # forget gate of the first layer, [T, B, H]

Recording costs nothing when it is off: a module checks one attribute per forward call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .nn.base import RecurrentBase
from .nn.checks import Sequence


@dataclass
class LayerRecord:
    """What one layer and direction of one lstmkit module computed during one forward call.

    ``tensors`` holds the gate activations (``i, f, g, o`` for LSTM — ``f = 1 − i`` when
    coupled —, ``r, z, n`` for GRU, none for RNN), ``c`` (LSTM) and ``h`` (the step output:
    projected with ``proj_size``), each ``[T, B, size]`` with time in step order (also for
    the reverse direction) and the batch in the caller's order (also for an unsorted
    PackedSequence; ``B = 1`` for unbatched input). Padded positions of a PackedSequence
    (steps past a sequence's length) hold NaN; ``mask`` ``[T, B]`` is True at real steps.
    Index it like a dict (``rec["f"]``) or by attribute (``rec.f``).
    """

    module: str                  # the module's name inside the recorded model ("" for itself)
    layer: int
    direction: int               # 0 forward, 1 reverse
    cell: str                    # "lstm" | "gru" | "rnn"
    tensors: dict[str, Tensor]
    mask: Tensor

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __getattr__(self, key: str) -> Tensor:
        tensors = self.__dict__.get("tensors")
        if tensors is not None and key in tensors:
            return tensors[key]
        raise AttributeError(f"LayerRecord has no {key!r}; it holds {list(tensors or [])}")

    def keys(self) -> list[str]:
        """The names of the recorded tensors: the gates, then ``c`` (where the cell has one) and
        ``h``."""
        return list(self.tensors)

    @property
    def gates(self) -> dict[str, Tensor]:
        """The gate tensors alone (everything recorded except ``c`` and ``h``), by name."""
        return {k: v for k, v in self.tensors.items() if k not in ("c", "h")}


@dataclass
class Recording:
    """The records of one ``lstmkit.record`` block: ``layers`` in the order computed —
    per forward call, per module, layer by layer, forward direction before reverse."""

    layers: list[LayerRecord] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def add(self, module: RecurrentBase, layer: int, direction: int,
            trace: list[dict[str, Tensor]], seq: Sequence) -> None:
        """Append the record of one layer and direction from its per-step ``trace`` (called by the
        modules while recording; padded steps of packed input become NaN, the batch is put back
        in the caller's order)."""
        T, B = seq.steps, seq.batch
        mask = torch.zeros(T, B, dtype=torch.bool)
        for t, n in enumerate(seq.batch_sizes):
            mask[t, :n] = True
        tensors = {}
        for key in trace[0]:
            steps = [step[key].detach() for step in trace]
            if seq.packed is None:
                tensors[key] = torch.stack(steps)                          # [T, B, ·]
                continue
            full = steps[0].new_full((T, B, steps[0].shape[-1]), float("nan"))
            for t, s in enumerate(steps):
                full[t, : s.shape[0]] = s
            tensors[key] = full
        if seq.packed is not None and seq.packed.unsorted_indices is not None:
            order = seq.packed.unsorted_indices
            tensors = {k: v.index_select(1, order) for k, v in tensors.items()}
            mask = mask.index_select(1, order.cpu())
        family = getattr(module, "record_family", None) or module.cell.family
        self.layers.append(LayerRecord(self.names.get(id(module), ""), layer, direction,
                                       family, tensors, mask))

    def clear(self) -> None:
        """Forget every record (the block keeps recording into the emptied list)."""
        self.layers.clear()

    def steps(self, module: str = "") -> LayerRecord:
        """The one-step records of the cell named ``module`` (an ``LSTMCell``, ``GRUCell`` or
        ``RNNCell`` inside the recorded model; "" for the model itself), each call a step,
        joined along time into one record ``[T, B, ·]`` (every call with the same batch)."""
        parts = [r for r in self.layers if r.module == module and r.mask.shape[0] == 1]
        if not parts:
            raise KeyError(f"no one-step records of {module!r}; recorded modules: "
                           f"{sorted({r.module for r in self.layers})}")
        tensors = {k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors}
        return LayerRecord(module, 0, 0, parts[0].cell, tensors,
                           torch.cat([p.mask for p in parts]))


@contextmanager
def record(model: nn.Module) -> Iterator[Recording]:
    """Record gates, ``c`` and ``h`` of every lstmkit layer inside ``model`` (which may be
    an lstmkit module itself or any ``nn.Module`` containing them) while the block runs.
    Recorded tensors are detached; gradients flow as without recording."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"record expects an nn.Module, got {type(model).__name__}")
    from .nn.cells import RecurrentCell
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, (RecurrentBase, RecurrentCell))
               or getattr(m, "_lstmkit_recordable", False)]     # modules beside the engine
    if not targets:
        raise ValueError(f"record: {type(model).__name__} contains no lstmkit LSTM, GRU or "
                         "RNN layer (torch.nn layers cannot be recorded; convert them with "
                         "lstmkit.LSTM.from_torch)")
    rec = Recording(names={id(m): n for n, m in targets})
    previous = [(m, m.__dict__.get("_recorder")) for _, m in targets]
    for _, m in targets:
        m._recorder = rec
    try:
        yield rec
    finally:
        for m, prev in previous:
            if prev is None:
                m.__dict__.pop("_recorder", None)
            else:
                m._recorder = prev


# -- gradient flow --------------------------------------------------------------------------
@dataclass
class LayerGradients:
    """‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖ for LSTM) for every step t of one layer and direction:
    the norm over batch and units of the total derivative of the loss with respect to the
    state at step t, through every later step. Shape [T], time in step order."""

    module: str
    layer: int
    direction: int
    cell: str
    dh: Tensor
    dc: Tensor | None


class _GradientRecorder(Recording):
    """Keeps the per-step states of the reference loop in the graph, retaining their
    gradients, instead of recording detached values."""

    def __init__(self, names: dict[int, str]):
        super().__init__(names=names)
        self.kept: list[tuple[RecurrentBase, int, int, list[Tensor], list[Tensor] | None]] = []

    def add(self, module, layer, direction, trace, seq) -> None:
        hs = [step["h"] for step in trace]
        cs = [step["c"] for step in trace] if "c" in trace[0] else None
        for t in hs + (cs or []):
            if t.requires_grad:
                t.retain_grad()
        self.kept.append((module, layer, direction, hs, cs))

    def norms(self) -> list[LayerGradients]:
        def norm(ts: list[Tensor]) -> Tensor:
            return torch.stack([t.grad.norm() if t.grad is not None else t.new_zeros(())
                                for t in ts]).detach()
        return [LayerGradients(self.names.get(id(m), ""), layer, d, m.cell.family, norm(hs),
                               norm(cs) if cs is not None else None)
                for m, layer, d, hs, cs in self.kept]


def gradient_flow(model: nn.Module, inputs, loss_fn=None) -> list[LayerGradients]:
    """How far back the gradient of a loss reaches: ‖∂L/∂h_t‖ and ‖∂L/∂c_t‖ at every step.

    Runs ``model(inputs)`` once with every lstmkit layer on the reference backend (so that
    each step's state is a node of the autograd graph), computes ``L = loss_fn(output)`` and
    backpropagates. With no ``loss_fn`` and an lstmkit module as ``model``, L is the sum of
    the last step's output, so the curve shows how the last output depends on earlier
    states — the picture of vanishing gradients. The model's parameter gradients are left
    as they were.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, RecurrentBase)]
    if not targets:
        raise ValueError(f"gradient_flow: {type(model).__name__} contains no lstmkit layer")
    if loss_fn is None:
        if not isinstance(model, RecurrentBase):
            raise ValueError("gradient_flow needs loss_fn(output) -> scalar for a model that "
                             "is not itself an lstmkit LSTM, GRU or RNN")
        loss_fn = _last_step_sum(model)
    rec = _GradientRecorder({id(m): n for n, m in targets})
    saved = [(m, m.backend, m.__dict__.get("_recorder")) for _, m in targets]
    grads = {p: p.grad for p in model.parameters()}
    try:
        for _, m in targets:
            m.backend, m._recorder = "reference", rec
        with torch.enable_grad():
            loss = loss_fn(model(inputs))
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            params = [p for p in model.parameters() if p.requires_grad]
            states = [t for *_, hs, cs in rec.kept for t in hs + (cs or []) if t.requires_grad]
            torch.autograd.backward(loss, inputs=states or params)
    finally:
        for m, backend, prev in saved:
            m.backend = backend
            if prev is None:
                m.__dict__.pop("_recorder", None)
            else:
                m._recorder = prev
        for p, g in grads.items():
            p.grad = g
    return rec.norms()


def _last_step_sum(model: RecurrentBase):
    def loss(output):
        out = output[0]
        if isinstance(out, nn.utils.rnn.PackedSequence):
            raise ValueError("gradient_flow: give loss_fn for PackedSequence input")
        if out.dim() == 2:                                  # unbatched (L, H)
            return out[-1].sum()
        return (out[:, -1] if model.batch_first else out[-1]).sum()
    return loss
