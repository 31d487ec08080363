"""``lstmkit.LSTM``: torch.nn.LSTM's contract, with the LSTM variants as keywords."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells import ln_lstm_spec, lstm_spec
from .base import RecurrentBase


class LSTM(RecurrentBase):
    r"""A multi-layer LSTM, a drop-in for :class:`torch.nn.LSTM`.

    For each step of each layer, with gate order i, f, g, o in the weight rows::

        i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)

    Arguments, inputs, outputs, parameter names, shapes and initialisation are those of
    ``torch.nn.LSTM``: ``weight_ih_l{k}`` (4H, I) = (W_ii|W_if|W_ig|W_io), ``weight_hh_l{k}``
    (4H, H or P), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), ``weight_hr_l{k}`` (P, H) with
    ``proj_size=P``, and ``_reverse`` for the second direction. A torch.nn.LSTM's
    ``state_dict`` loads as it is.

    Variant keywords:
        peephole: add ``p_i ⊙ c_{t-1}`` to i_t, ``p_f ⊙ c_{t-1}`` to f_t and ``p_o ⊙ c_t``
            to o_t (Gers & Schmidhuber 2000); parameter ``peephole_l{k}`` of shape (3H,),
            order i, f, o.
        coupled: CIFG, ``f_t = 1 − i_t`` (Greff et al. 2015; ONNX ``input_forget``). The
            forget-gate rows are absent: weights are (3H, ·) in the order i, g, o, and a
            peephole is (2H,), order i, o.
        layer_norm: the LN-LSTM of Ba, Kiros & Hinton 2016: layer normalisation of
            ``W_ih x_t`` and of ``W_hh h_{t-1}`` (each over all 4H rows) and of ``c_t`` before
            the output tanh; parameters ``ln_ih_weight/bias_l{k}``, ``ln_hh_weight/bias_l{k}``
            (4H,) and ``ln_c_weight/bias_l{k}`` (H,), gains 1 and biases 0 at init (see
            :mod:`lstmkit.cells.layernorm`). Not combinable with peephole, coupled or
            proj_size; ``to_torch`` refuses it (torch.nn has no such module).
        backend: ``"auto"`` (fastest available that computes the same function) or
            ``"reference"`` (the autograd loop over the equations).

    Shapes: input ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, unbatched
    ``(L, H_in)`` or a ``PackedSequence``; ``hx = (h_0, c_0)`` with h_0
    ``(D·num_layers, N, P or H)`` and c_0 ``(D·num_layers, N, H)`` (without N when
    unbatched), zeros if omitted. Returns ``output, (h_n, c_n)`` as torch.nn.LSTM.
    """

    _torch_class = nn.LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        peephole: bool = False,
        coupled: bool = False,
        layer_norm: bool = False,
        backend: str = "auto",
    ) -> None:
        self.peephole = bool(peephole)
        self.coupled = bool(coupled)
        self.layer_norm = bool(layer_norm)
        if self.layer_norm and (self.peephole or self.coupled or proj_size):
            raise ValueError(
                "LSTM(layer_norm=True) is the LN-LSTM of Ba et al. 2016 without variants; "
                f"got peephole={peephole!r}, coupled={coupled!r}, proj_size={proj_size!r} "
                "(expected False, False, 0)")
        cell = (ln_lstm_spec() if self.layer_norm
                else lstm_spec(peephole=self.peephole, coupled=self.coupled))
        super().__init__(cell, input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)

    def forward(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return self._forward(input, hx)

    def _variant_options(self) -> dict[str, object]:
        return {k: True for k in ("peephole", "coupled", "layer_norm") if getattr(self, k)}

    def _torch_config(self) -> dict:
        return {**self._config(), "proj_size": self.proj_size}

    @classmethod
    def _from_torch_extra(cls, module: nn.Module) -> dict:
        return {"proj_size": module.proj_size}
