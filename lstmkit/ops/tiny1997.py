r"""Tiny 1997-LSTM networks trained in C++ one sequence per call (``csrc/tiny1997.cpp``).

The network of Hochreiter & Schmidhuber (1997)'s adding experiment (§5.4, Exp. 4) is 93
weights: a whole sequence costs less than one BLAS call would, so the engine's per-step
GEMMs are the wrong tool. :class:`Tiny1997` keeps the weights in one contiguous float64
vector and runs the forward, the paper's truncated gradient and the SGD update in scalar
C++ loops (no allocation per step).

The network (``B`` memory blocks of ``S`` cells, ``C = B·S`` cells; each block has one
input gate and one output gate; σ the logistic function)::

    u(t)    = [1, x_t, y^c(t−1), y^in(t−1), y^out(t−1)]      sources (gate feedback)
            = [1, x_t, y^c(t−1)]                             (gate_feedback=False)
    in_j    = σ(W_in_j · u(t)),  out_j = σ(W_out_j · u(t))   gates of block j
    g_c     = 4σ(W_c · u(t)) − 2                             cell input, g ∈ [−2, 2]
    s_c(t)  = s_c(t−1) + in_j g_c                            the CEC (c in block j)
    y^c(t)  = out_j · (2σ(s_c(t)) − 1)                       h ∈ [−1, 1]
    y       = σ(w_k · [1, y^c(L−1)])                         the output unit, last step
    loss    = ½ (y − target)²

Weight layout (``M = len(u)``; rows of M weights): C cell rows, B input-gate rows, B
output-gate rows, then the output row ``[bias, w_1 … w_C]``; ``n = (C + 2B)·M + 1 + C``
(93 for the paper's I = 2, B = 2, S = 2 with gate feedback).

The gradient is the paper's truncated one: every source in u(t) is a constant, so error
flows back in time only along the CEC (``∂s_c(t)/∂s_c(t−1) = 1``). It equals autograd's
gradient of the same network with u(t)'s recurrent part detached (tested against
:class:`lstmkit.LSTM1997` with ``truncate=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .extension import cpp_module

_TOL = 0.04


def _module():
    return cpp_module("tiny1997", required=True)


@dataclass(frozen=True)
class Shape1997:
    """Sizes of a tiny 1997 network: ``input_size`` inputs, ``blocks`` memory blocks of
    ``block_size`` cells, one output unit; ``gate_feedback`` feeds the gates' activations
    back as sources (the paper's fully connected hidden layer)."""

    input_size: int = 2
    blocks: int = 2
    block_size: int = 2
    gate_feedback: bool = True

    def __post_init__(self):
        for name in ("input_size", "blocks", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Shape1997: {name} must be an int ≥ 1, got {v!r}")

    @property
    def cells(self) -> int:
        return self.blocks * self.block_size

    @property
    def sources(self) -> int:
        """M: bias, inputs, cell outputs (and the gates' activations with feedback)."""
        return 1 + self.input_size + self.cells + (2 * self.blocks if self.gate_feedback else 0)

    @property
    def rows(self) -> int:
        return self.cells + 2 * self.blocks

    @property
    def n_weights(self) -> int:
        return self.rows * self.sources + 1 + self.cells

    def args(self) -> tuple[int, int, int, bool]:
        return (self.input_size, self.blocks, self.block_size, self.gate_feedback)


PAPER_SHAPE = Shape1997()        # the adding experiment's net: 2 blocks of 2 cells, 93 weights


class Tiny1997:
    """A tiny 1997 LSTM with one logistic output unit, trained online in C++.

    ``weights`` is the flat float64 vector described in the module docstring (a fresh one
    from :meth:`init` unless given). Use :meth:`grad` for one sequence's output and
    truncated gradient, :meth:`train` for online SGD over a batch of sequences (one update
    per sequence, as the paper), :meth:`predict` for outputs.
    """

    def __init__(self, shape: Shape1997 = Shape1997(), weights: Tensor | None = None):
        self.shape = shape
        if weights is None:
            weights = torch.zeros(shape.n_weights, dtype=torch.float64)
        if not isinstance(weights, Tensor) or weights.dim() != 1 or \
                weights.numel() != shape.n_weights:
            got = tuple(weights.shape) if isinstance(weights, Tensor) else repr(weights)
            raise ValueError(f"Tiny1997: weights must be a 1-D tensor of {shape.n_weights} "
                             f"entries for {shape}, got {got}")
        if not torch.isfinite(weights).all():
            raise ValueError("Tiny1997: weights must be finite")
        self.weights = weights.detach().to(torch.float64).contiguous().clone()

    # ---- views of the flat vector ---------------------------------------------------
    def rows(self) -> Tensor:
        """The hidden rows as a (C + 2B, M) view: cells, input gates, output gates."""
        s = self.shape
        return self.weights[: s.rows * s.sources].view(s.rows, s.sources)

    def output_row(self) -> Tensor:
        s = self.shape
        return self.weights[s.rows * s.sources:]

    @classmethod
    def init(cls, shape: Shape1997 = Shape1997(), *, gen: torch.Generator | None = None,
             scale: float = 0.1, input_gate_bias: tuple[float, ...] | None = (-3.0, -6.0),
             output_gate_bias: tuple[float, ...] | None = None) -> Tiny1997:
        """Weights uniform in [−scale, scale]; then, when given, block j's input-gate bias
        is ``input_gate_bias[j]`` (the paper's adding experiment: −3.0 and −6.0) and
        likewise ``output_gate_bias``. A tuple shorter than ``blocks`` is cycled."""
        w = (torch.rand(shape.n_weights, generator=gen, dtype=torch.float64) * 2 - 1) * scale
        net = cls(shape, w)
        rows = net.rows()
        C, B = shape.cells, shape.blocks
        for biases, first in ((input_gate_bias, C), (output_gate_bias, C + B)):
            if biases:
                for j in range(B):
                    rows[first + j, 0] = float(biases[j % len(biases)])
        return net

    # ---- the C++ calls ---------------------------------------------------------------
    def _batch(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[2] != self.shape.input_size:
            raise ValueError(f"Tiny1997: x must be (N, L, {self.shape.input_size}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"Tiny1997: x is empty {tuple(x.shape)}")
        x = x.detach().to(torch.float64).contiguous()
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        lengths = torch.as_tensor(lengths).to(torch.int64).contiguous()
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"Tiny1997: lengths must be ({x.shape[0]},), got "
                             f"{tuple(lengths.shape)}")
        if (lengths < 1).any() or (lengths > x.shape[1]).any():
            raise ValueError(f"Tiny1997: lengths must lie in [1, {x.shape[1]}]")
        return x, lengths

    def grad(self, x: Tensor, target: float) -> tuple[float, Tensor]:
        """Output and truncated gradient of ½(y − target)² for one sequence ``x`` (L, I)."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.shape.input_size \
                or x.shape[0] == 0:
            raise ValueError(f"Tiny1997.grad: x must be (L ≥ 1, {self.shape.input_size}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not math.isfinite(float(target)):
            raise ValueError(f"Tiny1997.grad: target must be finite, got {target!r}")
        y, g = _module().grad(self.weights, x.detach().to(torch.float64).contiguous(),
                              float(target), *self.shape.args())
        return y, g

    def train(self, x: Tensor, targets: Tensor, lengths: Tensor | None = None, *,
              lr: float = 0.5, streak: int = 0, stop_streak: int = 0,
              tol: float = _TOL) -> tuple[Tensor, int]:
        """Online SGD: for each sequence in turn, its output, the truncated gradient and
        ``weights −= lr · grad``. Returns the outputs (each before its own update) and the
        streak of consecutive sequences with |y − target| < ``tol`` (carried in with
        ``streak``). With ``stop_streak > 0`` it stops right after the sequence where the
        streak reaches it; the outputs tensor is then shorter than N."""
        x, lengths = self._batch(x, lengths)
        targets = torch.as_tensor(targets).detach().to(torch.float64).contiguous().view(-1)
        if targets.numel() != x.shape[0] or not torch.isfinite(targets).all():
            raise ValueError(f"Tiny1997.train: targets must be {x.shape[0]} finite numbers")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"Tiny1997.train: lr must be a positive number, got {lr!r}")
        out = torch.empty(x.shape[0], dtype=torch.float64)
        done, streak = _module().train(self.weights, x, lengths, targets, out, float(lr),
                                       *self.shape.args(), int(streak), int(stop_streak),
                                       float(tol))
        return out[:done], streak

    def predict(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The output unit at each sequence's last step, (N,) float64."""
        x, lengths = self._batch(x, lengths)
        return _module().predict(self.weights, x, lengths, *self.shape.args())
