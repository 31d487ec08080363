"""``lstmkit.minGRU`` and ``lstmkit.minLSTM``: the minimal GRU and LSTM of Feng et al. (2024)
(:mod:`lstmkit.cells.minrnn`) as modules with torch.nn's contract.

They are :class:`~lstmkit.nn.base.RecurrentBase` modules — stacking, both directions,
dropout between layers, ``batch_first``, unbatched and packed input, ``hx``, ``record`` and
``summary`` come from the front end — with two differences: there is no ``weight_hh`` (no
gate reads h_{t-1}), and every backend but ``"reference"`` runs the whole layer as a scan
(:mod:`lstmkit.ops.scan`) instead of a step loop. Recurrent dropout and zoneout are not
offered: they would make the recurrence non-linear in h and forfeit the scan.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells import minrnn as cell
from ..cells.base import build
from .base import RecurrentBase


class _MinRNN(RecurrentBase):
    family = ""

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
        log_space: bool = False,
    ) -> None:
        spec = build(self.family, {"log_space": log_space})
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)

    def _build_parameters(self, factory: dict) -> None:
        """torch.nn's parameters without ``weight_hh``/``bias_hh`` (the family has no rows
        there): ``weight_ih_l{k}`` (K·H, I) and ``bias_ih_l{k}`` (K·H,)."""
        super()._build_parameters(factory)
        for names in self._all_weights:
            for name in [n for n in names if n.startswith(("weight_hh", "bias_hh"))]:
                delattr(self, name)
                names.remove(name)

    @property
    def log_space(self) -> bool:
        return bool(self.cell.option("log_space"))

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        """``output, h_n = m(input, hx=None)`` as torch.nn.GRU: input (T, B, I) (B first with
        ``batch_first``), (T, I) unbatched or a PackedSequence; hx and h_n
        (num_layers · num_directions, B, H)."""
        output, states = self._forward(input, hx)
        return output, states[0]

    def _variant_options(self) -> dict[str, object]:
        return {"log_space": True} if self.log_space else {}

    def to_torch(self) -> nn.Module:
        raise ValueError(f"{type(self).__name__} has no torch.nn equivalent")

    @classmethod
    def from_torch(cls, module: nn.Module, *, backend: str = "auto"):
        raise ValueError(f"{cls.__name__}.from_torch is not supported: torch.nn has no "
                         f"{cls.family} cell")


_CONTRACT = (
    "``lstmkit.{name}(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, "
    "dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend='auto', "
    "log_space=False)``, called as ``output, h_n = m(input, hx=None)`` like torch.nn.GRU. "
    "Backends: ``'reference'`` the step-by-step loop over the equations (autograd), "
    "``'fused_py'`` the log-space parallel scan in torch ops (logcumsumexp), ``'fused_cpp'`` "
    "the C++ kernel (one vectorised pass over time per sequence, hand-derived backward), "
    "``'fused'``/``'auto'`` the C++ kernel where it runs, else the torch scan. ``log_space`` "
    "selects the paper's log-space form (positive candidates h̃ = g(·)); the default is the "
    "plain form of the paper's equations. Parameters start at U(−1/√H, 1/√H) as in torch.nn; "
    "there is no ``weight_hh``.\n\n")


class minGRU(_MinRNN):  # noqa: N801  (the paper's name)
    family = "mingru"


class minLSTM(_MinRNN):  # noqa: N801
    family = "minlstm"


for _cls in (minGRU, minLSTM):
    _cls.__doc__ = _CONTRACT.format(name=_cls.__name__) + (cell.__doc__ or "")
    _cls.__module__ = "lstmkit"
