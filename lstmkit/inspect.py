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
        return list(self.tensors)

    @property
    def gates(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.tensors.items() if k not in ("c", "h")}


@dataclass
class Recording:
    """The records of one ``lstmkit.record`` block: ``layers`` in the order computed —
    per forward call, per module, layer by layer, forward direction before reverse."""

    layers: list[LayerRecord] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def add(self, module: RecurrentBase, layer: int, direction: int,
            trace: list[dict[str, Tensor]], seq: Sequence) -> None:
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
        self.layers.append(LayerRecord(self.names.get(id(module), ""), layer, direction,
                                       module.cell.family, tensors, mask))

    def clear(self) -> None:
        self.layers.clear()


@contextmanager
def record(model: nn.Module) -> Iterator[Recording]:
    """Record gates, ``c`` and ``h`` of every lstmkit layer inside ``model`` (which may be
    an lstmkit module itself or any ``nn.Module`` containing them) while the block runs.
    Recorded tensors are detached; gradients flow as without recording."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"record expects an nn.Module, got {type(model).__name__}")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, RecurrentBase)]
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
