"""``lstmkit.sLSTM``: the sLSTM of xLSTM (:mod:`lstmkit.cells.slstm`) as a module. It is the
:func:`~lstmkit.nn.family.module_for` class of the family with three differences: four
states (h, c, n, m) instead of torch.nn.LSTM's two, the head-wise recurrent weight
``weight_hh_l{k}`` of shape (4H, H/num_heads), and the check that num_heads divides
hidden_size."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..cells import slstm as cell
from .family import FamilyModule


class sLSTM(FamilyModule):  # noqa: N801 - the paper's name
    family = "slstm"

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
        num_heads: int = 4,
        forget_gate: str = "sigmoid",
        **kwargs: object,
    ) -> None:
        if isinstance(hidden_size, int) and not isinstance(hidden_size, bool) and hidden_size > 0:
            cell.check_heads(hidden_size, num_heads)
        zoneout = kwargs.get("zoneout", 0.0)
        if isinstance(zoneout, (tuple, list)):
            raise ValueError("sLSTM: zoneout must be one number (it zones out h only; c, n "
                             f"and m are kept consistent with each other), got {zoneout!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, num_heads=num_heads,
                         forget_gate=forget_gate, **kwargs)

    @property
    def num_heads(self) -> int:
        """The number of heads K: the recurrent weights are K blocks of (H/K)² on the diagonal."""
        return int(self.cell.option("num_heads"))

    @property
    def head_size(self) -> int:
        """The size H/K of one head."""
        return self.hidden_size // self.num_heads

    def _build_parameters(self, factory: dict) -> None:
        """torch.nn's parameters, then weight_hh re-made head-wise: (4H, H/num_heads)."""
        super()._build_parameters(factory)
        shape = (4 * self.hidden_size, self.hidden_size // int(self.cell.option("num_heads")))
        for names in self._all_weights:
            for name in names:
                if name.startswith("weight_hh_l"):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))

    def _state_shapes(self) -> list[tuple[int, int]]:
        n = self.num_layers * self.num_directions
        return [(n, self.hidden_size)] * 4

    def _state_labels(self) -> tuple[str, ...]:
        return ("h_0", "c_0", "n_0", "m_0")

    def recurrent_matrix(self, layer: int = 0, direction: int = 0) -> torch.Tensor:
        """The dense (4H, H) block-diagonal recurrent matrix of one layer and direction."""
        return cell.recurrent_matrix(self.layer_weights(layer, direction).w_hh)


sLSTM.__doc__ = (
    "``lstmkit.sLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, "
    "dropout=0.0, bidirectional=False, device=None, dtype=None, *, num_heads=4, "
    "forget_gate='sigmoid', backend='auto', <regularisers>)``: the scalar-memory LSTM of "
    "xLSTM (Beck et al. 2024), with the contract of torch.nn's recurrent modules: "
    "``output, (h_n, c_n, n_n, m_n) = m(input, hx=None)``, hx a tuple (h_0, c_0, n_0, m_0) "
    "of (num_layers·num_directions, batch, hidden_size) tensors (None: zeros, an empty "
    "memory). ``num_heads`` must divide hidden_size; ``forget_gate`` is 'sigmoid' (NX-AI's "
    "default) or 'exp'. Every backend, stacking, both directions, PackedSequence, "
    "``record`` (gates i, f, z, o; states c, n, m, h), ``summary`` and the regularisers "
    "(zoneout of h, recurrent, input and weight dropout) come from the engine. Parameters "
    "start at U(−1/√H, 1/√H) as in torch.nn.\n\n" + (inspect.getdoc(cell) or ""))
sLSTM.__module__ = "lstmkit"
