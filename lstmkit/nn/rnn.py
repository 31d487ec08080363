"""``lstmkit.RNN``: torch.nn.RNN's contract (Elman network, tanh or relu)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells import rnn_spec
from ..cells.rnn import NONLINEARITIES
from . import checks, regularize
from .base import RecurrentBase


class RNN(RecurrentBase):
    r"""A multi-layer Elman RNN, a drop-in for :class:`torch.nn.RNN`::

        h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      (or relu)

    Arguments (``nonlinearity`` fourth, as in torch.nn), shapes, parameter names and
    initialisation are those of ``torch.nn.RNN``; returns ``output, h_n``.

    Regularisers (off by default; :mod:`lstmkit.nn.regularize`): ``zoneout`` (one rate),
    ``input_dropout``, ``recurrent_dropout``, ``weight_dropout`` (DropConnect on
    ``weight_hh``).
    """

    _torch_class = nn.RNN

    def _torch_mode(self) -> str:
        return "RNN_" + self.nonlinearity.upper()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
        zoneout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        **unsupported: object,
    ) -> None:
        checks.check_variant_kwargs("RNN", unsupported)
        reg = regularize.resolve("RNN", "rnn", zoneout=zoneout, input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"RNN: Unknown nonlinearity {nonlinearity!r}; nonlinearity must "
                             f"be one of {sorted(NONLINEARITIES)}")
        self.nonlinearity = nonlinearity
        super().__init__(rnn_spec(nonlinearity=nonlinearity), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend, regularization=reg)

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, (h_n,) = self._forward(input, hx)
        return output, h_n

    def _torch_config(self) -> dict:
        return {**self._config(), "nonlinearity": self.nonlinearity}

    @classmethod
    def _from_torch_extra(cls, module: nn.Module) -> dict:
        return {"nonlinearity": module.nonlinearity}

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"
