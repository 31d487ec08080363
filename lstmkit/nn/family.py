"""A module for any registered cell family: :func:`module_for`.

    LSTM1997 = module_for("lstm1997", "LSTM1997")

gives a class with the contract of ``torch.nn``'s recurrent modules — ``Cls(input_size,
hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
device=None, dtype=None, *, backend="auto", <the family's options>, <regularisers>)``,
called as ``output, state = m(input, hx=None)`` — built on :class:`RecurrentBase`, so
stacking, both directions, PackedSequence, initial states, every backend, ``record``,
``summary``, ``torch.compile`` and the regularisers come with it. A family with its own
front-end needs (LSTM's ``proj_size``, Clockwork's periods) has its own class instead.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..cells.base import build, family_module
from . import regularize
from .base import RecurrentBase


class FamilyModule(RecurrentBase):
    """Base of the classes :func:`module_for` makes; ``family`` names the cell family."""

    family: str = ""

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
        backend: str = "auto",
        zoneout: float | tuple[float, float] = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        **options: object,
    ) -> None:
        name = type(self).__name__
        known = _options(self.family)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{name}: unexpected keyword argument(s) {unknown}; the "
                            f"{self.family} cell takes {sorted(known) or 'no options'}")
        cell = build(self.family, options)
        self._given = {k: v for k, v in options.items() if v != known[k]}
        reg = regularize.resolve(name, "lstm" if cell.n_states == 2 else self.family,
                                 zoneout=zoneout, input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, regularization=reg)

    def forward(self, input: Tensor | PackedSequence, hx: object = None):
        output, states = self._forward(input, hx)
        return output, (states if len(states) > 1 else states[0])

    def _variant_options(self) -> dict[str, object]:
        return dict(self._given)

    def to_torch(self):
        raise ValueError(f"{type(self).__name__} has no torch.nn equivalent")

    @classmethod
    def from_torch(cls, module, *, backend: str = "auto"):
        raise ValueError(f"{cls.__name__}.from_torch is not supported: torch.nn has no "
                         f"{cls.family} cell")


def _options(family: str) -> dict[str, object]:
    """The family's options and their defaults (its spec builder's keywords)."""
    from ..cells.base import builder
    return {k: p.default for k, p in inspect.signature(builder(family)).parameters.items()}


def module_for(family: str, name: str) -> type[FamilyModule]:
    """A module class for the registered cell ``family``, named ``name``; its docstring is
    the family's (the equations) after the contract."""
    cell_doc = inspect.getdoc(family_module(family)) or ""
    doc = (f"``lstmkit.{name}``: the {family} cell family with the contract of torch.nn's "
           "recurrent modules (see :mod:`lstmkit.nn.family`).\n\n" + cell_doc)
    return type(name, (FamilyModule,), {"family": family, "__doc__": doc,
                                        "__module__": "lstmkit"})
