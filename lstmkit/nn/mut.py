"""``lstmkit.MUT``: the MUT1–3 family (:mod:`lstmkit.cells.mut`) as a module. It is the
:func:`~lstmkit.nn.family.module_for` class of the family plus one check at construction:
MUT1 and MUT2 add x_t to an H-vector, so every layer's input must be hidden_size wide."""

from __future__ import annotations

import inspect

import torch

from ..cells import mut as cell
from .family import FamilyModule


class MUT(FamilyModule):
    family = "mut"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        variant: int = 1,
        **kwargs: object,
    ) -> None:
        check_layer_sizes(variant, input_size, hidden_size, num_layers, bidirectional)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, variant=variant, **kwargs)


def check_layer_sizes(variant: object, input_size: int, hidden_size: int, num_layers: int,
                      bidirectional: bool) -> None:
    """ValueError if some layer of a MUT``variant`` stack would read inputs whose width is
    not hidden_size (MUT1, MUT2): layer 0 reads input_size, a layer above reads the layer
    below's output, H wide, or 2H with both directions."""
    if variant not in cell.VARIANTS or not cell.needs_equal_sizes(variant):
        return                               # MUT3 (or a bad variant: the spec says so)
    cell.check_input_size(variant, input_size, hidden_size, " (input_size, layer 0)")
    if num_layers > 1 and bidirectional:
        cell.check_input_size(
            variant, 2 * hidden_size, hidden_size,
            " (2·hidden_size: layer 1 reads both directions of layer 0, since "
            "bidirectional=True; a bidirectional MUT1/MUT2 can have only one layer)")


MUT.__doc__ = (
    "``lstmkit.MUT(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, "
    "dropout=0.0, bidirectional=False, device=None, dtype=None, *, variant=1, "
    "backend='auto', <regularisers>)``: MUT1, MUT2 or MUT3 (``variant``) of Jozefowicz, "
    "Zaremba & Sutskever (2015), with the contract of torch.nn's recurrent modules (see "
    ":mod:`lstmkit.nn.family`): ``output, h_n = m(input, h_0=None)``. Every backend, "
    "stacking, both directions, PackedSequence, ``record`` (gates z, r and the candidate "
    "n), ``summary``, ``torch.compile`` and the regularisers (zoneout, recurrent, input and "
    "weight dropout) come from the engine. Parameters start at U(−1/√H, 1/√H) as in "
    "torch.nn.\n\n" + (inspect.getdoc(cell) or ""))
MUT.__module__ = "lstmkit"
