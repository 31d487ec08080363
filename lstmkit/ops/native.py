"""torch's own LSTM kernel as a layer loop, for the one configuration where it is fastest.

On the CPU, ``torch.nn.LSTM`` runs oneDNN's fused LSTM for a plain float32 LSTM on padded
input (no projection, no PackedSequence). It computes exactly the function of
``cells.lstm`` without variants, and measured faster than lstmkit's C++ kernels there at
small and medium sizes (see ``lstmkit bench``), so ``backend="auto"`` uses it for that
configuration. It cannot record gates; ``select_backend`` does not pick it when recording.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.base import CellSpec, LayerWeights, State


def can_run(cell: CellSpec, x: Tensor, batch_sizes: list[int], projected: bool) -> bool:
    """``cell.native`` (the cell declares that torch's LSTM computes it), on padded float32
    CPU input without a projection."""
    padded = batch_sizes[0] == batch_sizes[-1]
    return (cell.native and padded and not projected and x.device.type == "cpu"
            and x.dtype == torch.float32)


def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False):
    if record:
        raise ValueError("torch's LSTM kernel cannot record gates")
    T, B = len(batch_sizes), batch_sizes[0]
    seq = x.view(T, B, x.shape[1])
    if reverse:
        seq = seq.flip(0)
    params = [w.w_ih, w.w_hh] + ([w.b_ih, w.b_hh] if w.b_ih is not None else [])
    h0, c0 = state0
    out, h_n, c_n = torch.lstm(seq, (h0[None], c0[None]), params, w.b_ih is not None, 1, 0.0,
                               torch.is_grad_enabled(), False, False)
    if reverse:
        out = out.flip(0)
    return out.reshape(T * B, -1), (h_n[0], c_n[0]), None
