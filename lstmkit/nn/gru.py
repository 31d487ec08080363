"""``lstmkit.GRU``: torch.nn.GRU's contract, plus the paper's ``reset_after=False`` form."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells import gru_spec, ln_gru_spec
from . import checks, regularize
from .base import RecurrentBase


class GRU(RecurrentBase):
    r"""A multi-layer GRU, a drop-in for :class:`torch.nn.GRU`.

    For each step, with gate order r, z, n in the weight rows::

        r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    ``reset_after=False`` uses the form of Cho et al. 2014 (ONNX ``linear_before_reset=0``),
    ``n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)``, with the same parameters.
    ``z_t`` here keeps the old state, as in PyTorch; texts that write
    ``h_t = (1 − z_t) h_{t-1} + z_t h̃_t`` (colah's blog among them) swap its role.

    ``layer_norm=True``: the LN-GRU of Ba, Kiros & Hinton 2016 (reset_after form): layer
    normalisation of the input and of the recurrent projections, r|z rows together and n
    rows apart; parameters ``ln_ih_weight/bias_l{k}`` and ``ln_hh_weight/bias_l{k}`` (3H,),
    gains 1 and biases 0 at init (see :mod:`lstmkit.cells.layernorm`). Needs
    ``reset_after=True``; ``to_torch`` refuses it.

    Arguments, shapes, parameter names (``weight_ih_l{k}`` (3H, I) = (W_ir|W_iz|W_in), ...)
    and initialisation are those of ``torch.nn.GRU``; returns ``output, h_n``.

    Regularisers (off by default; :mod:`lstmkit.nn.regularize`): ``zoneout`` (one rate: the
    GRU has only h), ``input_dropout``, ``recurrent_dropout`` (on h_{t-1} where it meets
    W_hh; the direct path z_t ⊙ h_{t-1} is not dropped), ``weight_dropout`` (DropConnect
    on ``weight_hh``).
    """

    _torch_class = nn.GRU

    def _torch_mode(self) -> str:
        return "GRU"

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
        reset_after: bool = True,
        layer_norm: bool = False,
        backend: str = "auto",
        zoneout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        **unsupported: object,
    ) -> None:
        checks.check_variant_kwargs("GRU", unsupported)
        reg = regularize.resolve("GRU", "gru", zoneout=zoneout, input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        self.reset_after = bool(reset_after)
        self.layer_norm = bool(layer_norm)
        if self.layer_norm and not self.reset_after:
            raise ValueError("GRU(layer_norm=True) is the LN-GRU of Ba et al. 2016, whose reset "
                             "gate multiplies the normalised W_hn h_{t-1}: expected "
                             "reset_after=True, got reset_after=False")
        cell = ln_gru_spec() if self.layer_norm else gru_spec(reset_after=self.reset_after)
        super().__init__(cell, input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend, regularization=reg)

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, (h_n,) = self._forward(input, hx)
        return output, h_n

    def _variant_options(self) -> dict[str, object]:
        options: dict[str, object] = {} if self.reset_after else {"reset_after": False}
        return {**options, "layer_norm": True} if self.layer_norm else options
