"""``lstmkit.DepthGatedLSTM``: the Depth-Gated LSTM stack with torch.nn.LSTM's contract."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells.depth_gated import depth_gated_spec
from ..ops import fused_depth_gated
from . import checks
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

    backend: the fused path has hand-derived BPTT with the depth gate as a fifth gate
    block; ``"fused_cpp"`` runs its recurrence in C++ (``csrc/depth_gated.cpp``, CPU
    float32/float64; raises if it cannot), ``"fused_py"`` as a torch loop (any device),
    ``"auto"``/``"fused"`` in C++ where it can run, else the torch loop; ``"reference"``
    is the autograd loop over the cell.
    Returns ``output, (h_n, c_n)`` as ``torch.nn.LSTM``.
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
        **unsupported: object,
    ) -> None:
        checks.check_variant_kwargs("DepthGatedLSTM", unsupported, _UNSUPPORTED)
        super().__init__(depth_gated_spec(), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend)

    def _build_parameters(self, factory: dict) -> None:
        super()._build_parameters(factory)
        H = self.hidden_size
        for layer in range(1, self.num_layers):
            for direction in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_xd": (H, H * self.num_directions)}
                if self.bias:
                    shapes["bias_d"] = (H,)
                shapes.update(weight_cd=(H,), weight_ld=(H,))
                for key, shape in shapes.items():
                    self.register_parameter(key + sfx, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights[layer * self.num_directions + direction] += [
                    key + sfx for key in shapes]

    def depth_weights(self, layer: int, direction: int) -> tuple[Tensor | None, ...]:
        """(W_xd, b_d or None, w_cd, w_ld) of a layer above the first."""
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        get = self._parameters.get
        return (get("weight_xd" + sfx), get("bias_d" + sfx), get("weight_cd" + sfx),
                get("weight_ld" + sfx))

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return self._forward(input, hx)

    def _forward(self, input: Tensor | PackedSequence, hx: object):
        name = type(self).__name__
        param = self.weight_ih_l0
        seq = checks.prepare_input(name, input, self.input_size, self.batch_first, param)
        h0, c0 = checks.prepare_hx(name, hx, seq, self._state_shapes(), ("h_0", "c_0"), param)
        recorder = self._recorder
        run = (fused_depth_gated.reference_layer if self.backend == "reference"
               else partial(fused_depth_gated.fused_layer, backend=self.backend))
        D, x = self.num_directions, seq.x
        c_low: list[Tensor | None] = [None] * D
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs, cells = [], []
            for direction in range(D):
                k = layer * D + direction
                w = self.layer_weights(layer, direction)
                if layer:
                    w = w._replace(extra=self.depth_weights(layer, direction))
                out, c, (h, c_last), trace = run(
                    x, c_low[direction], seq.batch_sizes, h0[k], c0[k], w,
                    reverse=direction == 1, record=recorder is not None)
                outputs.append(out)
                cells.append(c)
                h_n.append(h)
                c_n.append(c_last)
                if recorder is not None:
                    recorder.add(self, layer, direction, trace, seq)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=1)     # (N, D·H)
            c_low = cells
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return self._format(seq, x, (torch.stack(h_n), torch.stack(c_n)))

    def to_torch(self):
        raise ValueError("DepthGatedLSTM has no torch.nn equivalent (torch.nn.LSTM has no "
                         "depth gates); its LSTM parameters load into torch.nn.LSTM with "
                         "load_state_dict(..., strict=False)")

    @classmethod
    def from_torch(cls, module, *, backend: str = "auto"):
        raise ValueError("DepthGatedLSTM.from_torch is not supported: a torch.nn.LSTM has no "
                         "depth gates; build DepthGatedLSTM(...) and load the LSTM's "
                         "state_dict with strict=False")
