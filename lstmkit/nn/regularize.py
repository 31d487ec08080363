r"""Regularisers of the recurrent modules: zoneout, variational dropout, DropConnect.

Keywords of :class:`lstmkit.LSTM`, :class:`lstmkit.GRU` and :class:`lstmkit.RNN` (all off by
default; rates are probabilities in [0, 1)):

``input_dropout=p`` — variational dropout on the input of every layer (Gal & Ghahramani
    2016, "A Theoretically Grounded Application of Dropout in Recurrent Neural Networks",
    §4): ``x_t ↦ m_x ⊙ x_t`` with ONE Bernoulli(1 − p)/(1 − p) mask per sequence, the same
    at every step; a separate mask per layer and direction.
``recurrent_dropout=p`` — the same on the recurrent state where it feeds W_hh:
    ``W_hh h_{t-1} ↦ W_hh (m_h ⊙ h_{t-1})`` (the GRU's direct path ``z_t ⊙ h_{t-1}`` and the
    LSTM's cell state are not dropped).
``weight_dropout=p`` — DropConnect on the recurrent weights, the weight-dropped LSTM of
    Merity, Keskar & Socher 2017 ("Regularizing and Optimizing LSTM Language Models", §2):
    ``W_hh ↦ M ⊙ W_hh / (1 − p)``, one mask per weight matrix and forward call. The
    parameter is never changed; its gradient is the masked one.
``zoneout=z`` — zoneout (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly
    Preserving Hidden Activations", §3, eqs. for the LSTM in §3.2)::

        c_t = d^c_t ⊙ c_{t-1} + (1 − d^c_t) ⊙ (f_t ⊙ c_{t-1} + i_t ⊙ g_t)
        h_t = d^h_t ⊙ h_{t-1} + (1 − d^h_t) ⊙ (o_t ⊙ tanh(f_t ⊙ c_{t-1} + i_t ⊙ g_t))

    with Bernoulli(z) masks d drawn afresh at every step (the paper's "at each timestep").
    For LSTM ``zoneout`` is z for both states or a pair ``(z_c, z_h)``; GRU and RNN have only
    h (a pair raises). Test time (``eval()``): as in the paper, the masks are replaced by
    their expectation, ``h_t = z_h h_{t-1} + (1 − z_h) h̃_t`` (and c alike), so an eval-mode
    module with zoneout is deterministic but NOT the plain cell.

In eval mode the dropouts are off (identity; they are inverted dropouts, scaled in
training). Masks are sampled in the module from torch's global generator (so
``torch.manual_seed`` makes a run repeatable), one set per forward call, layer and direction,
in this order: input, weights, recurrent, zoneout c, zoneout h; the backend gets them as
tensors (:class:`lstmkit.ops.masks.StepMasks`), so every backend gives the same numbers.
With packed input the per-sequence masks have one row per sequence.

How they combine: ``dropout`` (torch.nn's: fresh mask per element and step, on the outputs of
all but the last layer) still applies; an upper layer's input then passes both. Every cell
variant takes every regulariser, on every backend: the shared time loop applies the masks
around each family's step. Recurrent dropout and zoneout need the recurrence, so
``backend="auto"`` does not pick torch's own LSTM kernel while they are active (input and
weight dropout happen outside the kernel and go with any backend).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..cells.base import LayerWeights
from ..ops.masks import StepMasks, mul_per_row
from ..ops.philox import bernoulli_mask


@dataclass(frozen=True)
class Regularization:
    """The resolved regulariser rates of a module (all 0 = plain module)."""

    zoneout_c: float = 0.0
    zoneout_h: float = 0.0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def in_recurrence(self, training: bool) -> bool:
        """Whether masks enter the time loop (zoneout acts at test time too)."""
        return bool(self.zoneout_c or self.zoneout_h or (training and self.recurrent_dropout))

    def keywords(self) -> dict[str, object]:
        """The non-default constructor keywords that give this configuration."""
        out: dict[str, object] = {}
        if self.zoneout_c or self.zoneout_h:
            same = self.zoneout_c == self.zoneout_h
            out["zoneout"] = self.zoneout_h if same else (self.zoneout_c, self.zoneout_h)
        for key in ("input_dropout", "recurrent_dropout", "weight_dropout"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


def _rate(name: str, key: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name}: {key} must be a number in [0, 1) (a probability), "
                         f"got {value!r}")
    return float(value)


def resolve(name: str, family: str, *, zoneout: object = 0.0, input_dropout: object = 0.0,
            recurrent_dropout: object = 0.0, weight_dropout: object = 0.0) -> Regularization:
    """Check the keywords of module ``name`` (cell ``family``) and resolve them."""
    if isinstance(zoneout, (tuple, list)):
        if family != "lstm":
            raise ValueError(f"{name}: zoneout must be one number (the {name} has only the "
                             f"hidden state h to zone out), got the pair {zoneout!r}")
        if len(zoneout) != 2:
            raise ValueError(f"{name}: zoneout must be a number or a pair (z_c, z_h), "
                             f"got {zoneout!r}")
        z_c, z_h = (_rate(name, "zoneout", z) for z in zoneout)
    else:
        z_h = _rate(name, "zoneout", zoneout)
        z_c = z_h if family == "lstm" else 0.0
    return Regularization(z_c, z_h, _rate(name, "input_dropout", input_dropout),
                          _rate(name, "recurrent_dropout", recurrent_dropout),
                          _rate(name, "weight_dropout", weight_dropout))


def drop_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Bernoulli(1 − p) / (1 − p): inverted dropout's mask, expectation 1
    (:func:`lstmkit.ops.philox.bernoulli_mask`)."""
    return bernoulli_mask(shape, 1.0 - p, 1.0 / (1.0 - p), like)


def zone_mask(shape: tuple[int, ...], z: float, like: Tensor, training: bool) -> Tensor | None:
    """Bernoulli(z) (1 keeps the previous state) in training, its expectation z at test."""
    if not z:
        return None
    if training:
        return bernoulli_mask(shape, z, 1.0, like)
    return torch.full(shape, z, dtype=like.dtype, device=like.device)


def apply(reg: Regularization, training: bool, x: Tensor, batch_sizes: list[int],
          w: LayerWeights, H: int) -> tuple[Tensor, LayerWeights, StepMasks | None]:
    """Sample the masks of one layer and direction; return the (dropped) input ``x`` (N, I),
    the weights with W_hh dropped, and the masks for the time loop (None if none)."""
    B, N = batch_sizes[0], x.shape[0]
    R = H if w.w_hr is None else w.w_hr.shape[0]          # the width of h
    if training and reg.input_dropout:
        x = mul_per_row(x, drop_mask((B, x.shape[1]), reg.input_dropout, x), batch_sizes)
    if training and reg.weight_dropout:
        w = w._replace(w_hh=w.w_hh * drop_mask(tuple(w.w_hh.shape), reg.weight_dropout, x))
    if not reg.in_recurrence(training):
        return x, w, None
    h_drop = (drop_mask((B, R), reg.recurrent_dropout, x)
              if training and reg.recurrent_dropout else None)
    zone_c = zone_mask((N, H), reg.zoneout_c, x, training)
    zone_h = zone_mask((N, R), reg.zoneout_h, x, training)
    return x, w, StepMasks(h_drop, zone_h, zone_c)
