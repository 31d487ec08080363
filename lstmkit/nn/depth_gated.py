"""``lstmkit.DepthGatedLSTM``: the Depth-Gated LSTM stack with torch.nn.LSTM's contract."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..cells.depth_gated import depth_gated_spec
from . import checks, regularize
from .base import RecurrentBase

_UNSUPPORTED = {
    "proj_size": "a projection would make h_t smaller than c_t, while the depth gate "
                 "needs the cells of adjacent layers of one size",
    "peephole": "the depth-gated stack here uses PyTorch's LSTM gates (no peepholes)",
    "coupled": "the depth-gated stack here uses PyTorch's LSTM gates (no coupling)",
}


class DepthGatedLSTM(RecurrentBase):
    r"""A Depth-Gated LSTM stack (Yao, Cohn, Vylomova, Duh & Dyer 2015, arXiv:1508.03790).

    Layer 0 is a plain LSTM. Each higher layer is an LSTM whose cell also receives the cell
    c^L_t of the layer below at the same step, through a depth gate::

        d_t = σ(b_d + W_xd x_t + w_cd ⊙ c_{t-1} + w_ld ⊙ c^L_t)
        c_t = d_t ⊙ c^L_t + f_t ⊙ c_{t-1} + i_t ⊙ g_t,     h_t = o_t ⊙ tanh(c_t)

    (i, f, g, o as :class:`lstmkit.LSTM`; x_t the layer's input, i.e. the output of the
    layer below after dropout). Parameters: ``torch.nn.LSTM``'s, under the same names, so a
    torch.nn.LSTM state dict loads with ``strict=False``; and for every layer k ≥ 1 and
    direction: ``weight_xd_l{k}`` (H, I_k) = W_xd, ``bias_d_l{k}`` (H,) = b_d (with
    ``bias``), ``weight_cd_l{k}`` (H,) = w_cd, ``weight_ld_l{k}`` (H,) = w_ld, registered
    after the LSTM ones (``_reverse`` for the second direction). All start U(−1/√H, 1/√H).

    Bidirectional: direction D of layer k+1 gets the cell of direction D of layer k (same
    step, same reading direction). Dropout applies to h between layers, not to c^L.
    ``proj_size``, ``peephole`` and ``coupled`` raise ValueError.

    Regularisers (off by default; :mod:`lstmkit.nn.regularize`): ``zoneout`` (a rate or a
    pair (z_c, z_h); the zoned-out c_t is what the layer above receives as c^L_t),
    ``input_dropout``, ``recurrent_dropout``, ``weight_dropout``, as for :class:`lstmkit.LSTM`.

    backend: the fused path has hand-derived BPTT with the depth gate as a fifth gate
    block; ``"fused_cpp"`` runs its recurrence in C++ (CPU float32/float64; raises if it
    cannot), ``"fused_py"`` as a torch loop (any device), ``"auto"``/``"fused"`` in C++
    where it can run, else the torch loop; ``"reference"`` is the autograd loop over the
    cell. Returns ``output, (h_n, c_n)`` as ``torch.nn.LSTM``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 2,
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
        **unsupported: object,
    ) -> None:
        checks.check_variant_kwargs("DepthGatedLSTM", unsupported, _UNSUPPORTED)
        reg = regularize.resolve("DepthGatedLSTM", "lstm", zoneout=zoneout,
                                 input_dropout=input_dropout,
                                 recurrent_dropout=recurrent_dropout,
                                 weight_dropout=weight_dropout)
        super().__init__(depth_gated_spec(), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend, regularization=reg)

    def depth_weights(self, layer: int, direction: int) -> tuple[Tensor | None, ...]:
        """(W_xd, b_d or None, w_cd, w_ld) of a layer above the first."""
        return self.layer_weights(layer, direction).extra

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return self._forward(input, hx)

    def to_torch(self):
        raise ValueError("DepthGatedLSTM has no torch.nn equivalent (torch.nn.LSTM has no "
                         "depth gates); its LSTM parameters load into torch.nn.LSTM with "
                         "load_state_dict(..., strict=False)")

    @classmethod
    def from_torch(cls, module, *, backend: str = "auto"):
        raise ValueError("DepthGatedLSTM.from_torch is not supported: a torch.nn.LSTM has no "
                         "depth gates; build DepthGatedLSTM(...) and load the LSTM's "
                         "state_dict with strict=False")
