"""``lstmkit.ClockworkRNN``: the Clockwork RNN with torch.nn.RNN's contract."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..cells.base import LayerWeights
from ..cells.clockwork import clockwork_mask, clockwork_spec, exponential_periods
from . import checks, regularize
from .base import RecurrentBase


class ClockworkRNN(RecurrentBase):
    r"""A multi-layer Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber 2014, ICML).

    The hidden units of each layer form g modules of k = hidden_size / g units with clock
    periods T_1 < … < T_g; at step t (counted from 0 in each sequence) module i updates
    when ``t mod T_i == 0`` and otherwise holds its values::

        h_t[i] = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)[i]   if t mod T_i == 0
        h_t[i] = h_{t-1}[i]                                       otherwise

    ``W_hh`` is block-upper-triangular: a module receives recurrent input from itself and
    from slower modules only (see :mod:`lstmkit.cells.clockwork`). Parameters have
    ``torch.nn.RNN``'s names and shapes (``weight_ih_l{k}`` (H, I), ``weight_hh_l{k}``
    (H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}``); the step uses ``weight_hh ⊙ M`` with the
    fixed 0/1 block mask M (buffer ``hh_mask``, not saved in the state dict), so masked
    entries have no effect and receive zero gradient. They are zero after initialisation;
    a loaded ``torch.nn.RNN`` state dict keeps its values there, unused.

    Arguments as ``torch.nn.RNN`` (tanh only), plus exactly one of:
        periods: the clock periods, positive and strictly increasing, e.g. (1, 2, 4, 8);
        num_modules: g, for the paper's exponential periods 1, 2, 4, …, 2^(g−1).
    hidden_size must be a multiple of the number of modules.

    Directions: the reverse direction of a bidirectional layer reads each sequence from its
    last step to its first and its clock counts *those* steps from 0, i.e. the reverse
    direction is the same Clockwork RNN run on the reversed sequence. Packed input: every
    sequence has its own clock (step 0 is its own first step, in either direction).

    backend: the fused path has hand-derived BPTT; in C++ (``"fused_cpp"``, CPU
    float32/float64) a step computes the recurrent rows of its ticking modules only;
    ``"fused_py"`` runs it as a torch loop (any device), ``"auto"``/``"fused"`` in C++ where
    it can run, else the torch loop; ``"reference"`` is the autograd loop over the cell.
    Returns ``output, h_n`` as ``torch.nn.RNN``.

    Regularisers (off by default; :mod:`lstmkit.nn.regularize`): ``zoneout`` (one rate),
    ``input_dropout``, ``recurrent_dropout``, ``weight_dropout`` (DropConnect on the masked
    ``weight_hh``), as for :class:`lstmkit.RNN`.
    """

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
        periods: Sequence[int] | None = None,
        num_modules: int | None = None,
        backend: str = "auto",
        zoneout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        **unsupported: object,
    ) -> None:
        checks.check_variant_kwargs("ClockworkRNN", unsupported, _UNSUPPORTED, _NEUTRAL)
        self.periods = _resolve_periods(periods, num_modules, hidden_size)
        reg = regularize.resolve("ClockworkRNN", "rnn", zoneout=zoneout,
                                 input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        super().__init__(clockwork_spec(self.periods), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend, regularization=reg)
        p = self.weight_hh_l0
        self.register_buffer("hh_mask", self._mask(p.device, p.dtype), persistent=False)

    @property
    def num_modules(self) -> int:
        """The number g of modules, i.e. of clock periods."""
        return len(self.periods)

    def _mask(self, device, dtype) -> Tensor:
        return clockwork_mask(self.periods, self.hidden_size // self.num_modules,
                              device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) as torch.nn.RNN, then the masked entries of W_hh set to zero."""
        super().reset_parameters()
        with torch.no_grad():
            for layer in range(self.num_layers):
                for direction in range(self.num_directions):
                    w = super().layer_weights(layer, direction).w_hh
                    w.mul_(self._mask(w.device, w.dtype))

    def layer_weights(self, layer: int, direction: int) -> LayerWeights:
        """The parameters as the cell takes them: ``weight_hh ⊙ M`` (masked entries have no
        effect and get zero gradient)."""
        w = super().layer_weights(layer, direction)
        return w._replace(w_hh=w.w_hh * self.hh_mask)

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, (h_n,) = self._forward(input, hx)
        return output, h_n

    def _variant_options(self) -> dict[str, object]:
        return {"periods": self.periods}

    def to_torch(self):
        raise ValueError("ClockworkRNN has no torch.nn equivalent (its modules update on "
                         "their own clocks); its state_dict loads into torch.nn.RNN, which "
                         "would update every unit at every step")

    @classmethod
    def from_torch(cls, module, *, backend: str = "auto"):
        raise ValueError("ClockworkRNN.from_torch is not supported: a torch.nn.RNN has no "
                         "clock periods; build ClockworkRNN(..., periods=...) and load the "
                         "RNN's state_dict")


_UNSUPPORTED = {
    "nonlinearity": "the Clockwork RNN's modules use tanh (the paper's f_H); only "
                    "nonlinearity='tanh' is accepted",
    "proj_size": "projections (h_t = W_hr h_t) are only defined for LSTM, as in torch.nn",
    "peephole": "peepholes connect a cell state to gates; the Clockwork RNN has neither",
    "coupled": "coupling f_t = 1 - i_t needs an input and a forget gate, which the Clockwork "
               "RNN does not have",
    "reset_after": "reset_after chooses where the GRU's reset gate applies; the Clockwork "
                   "RNN has no reset gate",
}
_NEUTRAL = {"nonlinearity": "tanh", "proj_size": 0, "peephole": False, "coupled": False}


def _resolve_periods(periods: object, num_modules: object, hidden_size: object
                     ) -> tuple[int, ...]:
    name = "ClockworkRNN"
    if (periods is None) == (num_modules is None):
        raise ValueError(f"{name}: give exactly one of periods=(T_1, …, T_g) or "
                         f"num_modules=g (periods 1, 2, 4, …), got periods={periods!r}, "
                         f"num_modules={num_modules!r}")
    if num_modules is not None:
        if not isinstance(num_modules, numbers.Integral) or isinstance(num_modules, bool) \
                or num_modules < 1:
            raise ValueError(f"{name}: num_modules must be a positive int, got "
                             f"{num_modules!r}")
        periods = exponential_periods(int(num_modules))
    if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or not periods:
        raise TypeError(f"{name}: periods must be a non-empty sequence of ints, got "
                        f"{periods!r}")
    if not all(isinstance(T, numbers.Integral) and not isinstance(T, bool) and T >= 1
               for T in periods):
        raise ValueError(f"{name}: periods must be positive ints, got {tuple(periods)!r}")
    periods = tuple(int(T) for T in periods)
    if any(a >= b for a, b in zip(periods, periods[1:])):
        raise ValueError(f"{name}: periods must be strictly increasing (modules sorted by "
                         f"period, as in the paper), got {periods!r}")
    if isinstance(hidden_size, numbers.Integral) and hidden_size % len(periods):
        raise ValueError(f"{name}: hidden_size={hidden_size} must be divisible by the number "
                         f"of modules {len(periods)} (periods {periods}), so that every "
                         f"module has the same size")
    return periods
