"""``lstmkit.LSTM``: torch.nn.LSTM's contract, with the LSTM variants as keywords."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells import ln_lstm_spec, lstm_spec
from ..cells.lstm import Greff
from . import regularize
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
        input_gate, forget_gate, output_gate, input_activation, cell_activation,
        gate_recurrence: the ablations of Greff et al., "LSTM: A Search Space Odyssey"
            (2015/2017): ``input_gate=False`` NIG (i_t = 1), ``forget_gate=False`` NFG
            (f_t = 1), ``output_gate=False`` NOG (o_t = 1), ``input_activation=None`` NIAF
            (g_t = its pre-activation), ``cell_activation=None`` NOAF (h_t = o_t ⊙ c_t),
            ``gate_recurrence=True`` FGR: i, f, o also receive i_{t-1}, f_{t-1}, o_{t-1}
            through ``weight_gg_l{k}`` (3H, 3H) (rows: target gate i, f, o; columns:
            source gate i, f, o; zeros before the first step, at every call). An absent
            gate has no weight rows and no peephole entry: the rows are the remaining ones
            of i, f, g, o in that order (NIG: f, g, o), the peephole those of i, f, o.
            Greff's "vanilla" LSTM is ``peephole=True``; NP is the default; CIFG is
            ``coupled=True``. Refused (ValueError): ``coupled`` with ``input_gate=False``
            or ``forget_gate=False``; ``gate_recurrence`` with ``coupled`` or an absent
            gate; ``peephole`` with no gate i, f, o left. Such modules have no torch.nn,
            ONNX or Keras equivalent.
        layer_norm: the LN-LSTM of Ba, Kiros & Hinton 2016: layer normalisation of
            ``W_ih x_t`` and of ``W_hh h_{t-1}`` (each over all 4H rows) and of ``c_t`` before
            the output tanh; parameters ``ln_ih_weight/bias_l{k}``, ``ln_hh_weight/bias_l{k}``
            (4H,) and ``ln_c_weight/bias_l{k}`` (H,), gains 1 and biases 0 at init (see
            :mod:`lstmkit.cells.layernorm`). Not combinable with peephole, coupled,
            proj_size or the ablations (the paper's LN-LSTM has none of them); takes every
            regulariser. ``to_torch`` refuses it (torch.nn has no such module).
        backend: ``"auto"`` (the fastest that computes the same function: torch's own
            kernel for a plain float32 LSTM, else the C++ kernels, else the torch loop),
            ``"fused"`` (C++ where it can run, else the torch loop), ``"fused_cpp"``,
            ``"fused_py"`` (hand-derived BPTT, the recurrence in C++ or as a torch loop) or
            ``"reference"`` (the autograd loop over the equations); see :mod:`lstmkit.ops`.
        zoneout, input_dropout, recurrent_dropout, weight_dropout: regularisers, off by
            default (``zoneout`` a rate or a pair (z_c, z_h)); see :mod:`lstmkit.nn.regularize`.

    Shapes: input ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, unbatched
    ``(L, H_in)`` or a ``PackedSequence``; ``hx = (h_0, c_0)`` with h_0
    ``(D·num_layers, N, P or H)`` and c_0 ``(D·num_layers, N, H)`` (without N when
    unbatched), zeros if omitted. Returns ``output, (h_n, c_n)`` as torch.nn.LSTM.
    """

    _torch_class = nn.LSTM

    def _torch_mode(self) -> str:
        return "LSTM"

    # torch.nn.LSTM's own argument checks, for code (and torch.nn.LSTM.forward, which
    # _runs_as_torch calls) that expects them on an LSTM
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    get_expected_cell_size = nn.LSTM.get_expected_cell_size

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
        input_gate: bool = True,
        forget_gate: bool = True,
        output_gate: bool = True,
        input_activation: str | None = "tanh",
        cell_activation: str | None = "tanh",
        gate_recurrence: bool = False,
        layer_norm: bool = False,
        backend: str = "auto",
        zoneout: float | tuple[float, float] = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        self.peephole = bool(peephole)
        self.coupled = bool(coupled)
        for key, act in (("input_activation", input_activation),
                         ("cell_activation", cell_activation)):
            if act not in ("tanh", None):
                raise ValueError(f"LSTM: {key} must be 'tanh' or None, got {act!r}")
        self.input_gate, self.forget_gate = bool(input_gate), bool(forget_gate)
        self.output_gate, self.gate_recurrence = bool(output_gate), bool(gate_recurrence)
        self.input_activation, self.cell_activation = input_activation, cell_activation
        greff = Greff(self.input_gate, self.forget_gate, self.output_gate,
                      input_activation is not None, cell_activation is not None,
                      self.gate_recurrence)
        reg = regularize.resolve("LSTM", "lstm", zoneout=zoneout, input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        self.layer_norm = bool(layer_norm)
        if self.layer_norm and (self.peephole or self.coupled or proj_size or greff != Greff()):
            raise ValueError(
                "LSTM(layer_norm=True) is the LN-LSTM of Ba et al. 2016 without variants; "
                f"got peephole={peephole!r}, coupled={coupled!r}, proj_size={proj_size!r}, "
                f"Greff options {greff != Greff()} (expected False, False, 0, False)")
        cell = (ln_lstm_spec() if self.layer_norm
                else lstm_spec(peephole=self.peephole, coupled=self.coupled, greff=greff))
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend,
                         regularization=reg)

    def forward(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return self._forward(input, hx)

    def _variant_options(self) -> dict[str, object]:
        options = {k: True for k in ("peephole", "coupled", "gate_recurrence", "layer_norm")
                   if getattr(self, k)}
        options.update({k: False for k in ("input_gate", "forget_gate", "output_gate")
                        if not getattr(self, k)})
        options.update({k: None for k in ("input_activation", "cell_activation")
                        if getattr(self, k) is None})
        return options

    def _torch_config(self) -> dict:
        return {**self._config(), "proj_size": self.proj_size}

    @classmethod
    def _from_torch_extra(cls, module: nn.Module) -> dict:
        return {"proj_size": module.proj_size}
