r"""The Grid LSTM block (Kalchbrenner, Danihelka & Graves 2015, "Grid Long Short-Term Memory",
arXiv:1507.01526, ICLR 2016), written as the paper's equations: the reference.

An N-dimensional block receives N hidden vectors h_1 … h_N and N memory vectors m_1 … m_N
(one pair per dimension of the grid) and concatenates the hidden vectors into one vector::

    H = [h_1; h_2; …; h_N]                                                  (N·d,)

Each dimension k then applies its own transform to H and its own memory, with its own
weights W_k (the paper's §3.1)::

    (h'_k, m'_k) = LSTM(H, m_k, W_k)        k = 1 … N

where LSTM is the paper's §2 transform (gate names as in the paper; the weight rows of W_k
are stacked u, f, c, o — torch.nn.LSTM's i, f, g, o)::

    g^u = σ(W^u H + b^u)          input gate
    g^f = σ(W^f H + b^f)          forget gate
    g^c = tanh(W^c H + b^c)       candidate
    g^o = σ(W^o H + b^o)          output gate
    m'  = g^f ⊙ m + g^u ⊙ g^c
    h'  = tanh(g^o ⊙ m')          (cell_output="paper": the form the paper prints)
    h'  = g^o ⊙ tanh(m')          (cell_output="standard": Hochreiter & Schmidhuber's form,
                                  torch.nn.LSTM's)

The paper writes the transforms without biases ("omitted for brevity" is our reading of
their absence); the biases here are optional (``bias=True`` by default, as in torch.nn).

*Priority dimensions* (§3.2): a prioritised dimension is computed after the others and sees
their new hidden vectors. With dimension 1 prioritised the block first computes the N − 1
other transforms, then::

    H' = [h_1; h'_2; …; h'_N],      (h'_1, m'_1) = LSTM(H', m_1, W_1)

With several prioritised dimensions (in the given order), each sees the new hidden vectors of
every dimension computed before it (our reading; the paper describes one).

*Non-LSTM dimensions* (§3.3): a dimension may use a plain transform instead, with no memory
vector::

    h'_k = α(V_k H + b_k)          α a nonlinearity (tanh, relu, sigmoid) or the identity

With one dimension (N = 1) the block is an LSTM whose input is its own hidden vector: a
1-D Grid LSTM along depth is a feed-forward network of LSTM transforms (§3.4); with a
non-LSTM dimension it is a plain feed-forward net with α as transfer function.

This module computes one block (:func:`grid_block`) and holds an N-D block with its own
parameters (:class:`GridBlock`); :mod:`lstmkit.nn.grid` arranges blocks into the 1-D (depth)
and 2-D (time × depth) networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELL_OUTPUTS = ("paper", "standard")
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
               "identity": lambda a: a}
GATES = ("u", "f", "c", "o")           # the rows of an LSTM transform's weight, in order


def lstm_transform(H: Tensor, m: Tensor, w: Tensor, b: Tensor | None, *,
                   cell_output: str = "paper") -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The paper's LSTM transform: H (B, N·d), m (B, d), w (4d, N·d), b (4d,) or None.
    Returns h' (B, d), m' (B, d) and the gates {u, f, c, o}."""
    a_u, a_f, a_c, a_o = F.linear(H, w, b).chunk(4, dim=-1)
    g_u, g_f, g_o = torch.sigmoid(a_u), torch.sigmoid(a_f), torch.sigmoid(a_o)
    g_c = torch.tanh(a_c)
    m_new = g_f * m + g_u * g_c
    h_new = torch.tanh(g_o * m_new) if cell_output == "paper" else g_o * torch.tanh(m_new)
    return h_new, m_new, {"u": g_u, "f": g_f, "c": g_c, "o": g_o}


def plain_transform(H: Tensor, v: Tensor, b: Tensor | None, activation: str = "tanh"
                    ) -> Tensor:
    """A non-LSTM dimension: h' = α(V H + b), V (d, N·d)."""
    return ACTIVATIONS[activation](F.linear(H, v, b))


def grid_block(h: Sequence[Tensor], m: Sequence[Tensor | None],
               weights: Sequence[tuple[Tensor, Tensor | None]], *,
               non_lstm: Sequence[int] = (), priority: Sequence[int] = (),
               cell_output: str = "paper", activation: str = "tanh",
               ) -> tuple[list[Tensor], list[Tensor | None], list[dict[str, Tensor]]]:
    """One N-dimensional block. ``h[k]``, ``m[k]`` (B, d): the incoming vectors of dimension
    k (``m[k]`` None for a non-LSTM dimension); ``weights[k]`` = (W_k, b_k): (4d, N·d) for an
    LSTM dimension, (d, N·d) for a non-LSTM one. ``priority`` lists the dimensions computed
    last, in order, each seeing every new hidden vector computed before it. Returns the new
    h'_k, m'_k (None for non-LSTM dimensions) and each dimension's gates."""
    N = len(h)
    if len(m) != N or len(weights) != N:
        raise ValueError(f"grid_block: {N} hidden vectors need {N} memory vectors and {N} "
                         f"weights, got {len(m)} and {len(weights)}")
    order = [k for k in range(N) if k not in priority] + list(priority)
    H_in = list(h)                       # what later (priority) dimensions see
    H0 = torch.cat(list(h), dim=-1)      # every non-priority dimension sees the incoming H
    h_new: list[Tensor | None] = [None] * N
    m_new: list[Tensor | None] = [None] * N
    gates: list[dict[str, Tensor]] = [{} for _ in range(N)]
    for k in order:
        H = torch.cat(H_in, dim=-1) if k in priority else H0
        w, b = weights[k]
        if k in non_lstm:
            h_new[k] = plain_transform(H, w, b, activation)
        else:
            h_new[k], m_new[k], gates[k] = lstm_transform(H, m[k], w, b,
                                                          cell_output=cell_output)
        H_in[k] = h_new[k]
    return h_new, m_new, gates


class GridBlock(nn.Module):
    """An N-dimensional Grid LSTM block with its own weights (one transform per dimension).

    ``block(h, m)`` takes lists of N hidden and N memory vectors (B, d) (None as the memory
    of a non-LSTM dimension) and returns the lists (h', m'). Parameters ``weight_k`` (4d, N·d)
    or (d, N·d) for non-LSTM dimensions, and ``bias_k``, initialised U(−1/√d, 1/√d) as
    torch.nn.LSTM.
    """

    def __init__(self, num_dims: int, hidden_size: int, *, non_lstm: Sequence[int] = (),
                 priority: Sequence[int] = (), cell_output: str = "paper",
                 activation: str = "tanh", bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_block_options("GridBlock", num_dims, non_lstm, priority, cell_output,
                            activation)
        self.num_dims, self.hidden_size = num_dims, hidden_size
        self.non_lstm, self.priority = tuple(non_lstm), tuple(priority)
        self.cell_output, self.activation = cell_output, activation
        d = hidden_size
        for k in range(num_dims):
            rows = d if k in self.non_lstm else 4 * d
            self.register_parameter(f"weight_{k}", nn.Parameter(
                torch.empty(rows, num_dims * d, device=device, dtype=dtype)))
            self.register_parameter(f"bias_{k}", nn.Parameter(
                torch.empty(rows, device=device, dtype=dtype)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.hidden_size ** -0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def weights(self) -> list[tuple[Tensor, Tensor | None]]:
        return [(getattr(self, f"weight_{k}"), getattr(self, f"bias_{k}"))
                for k in range(self.num_dims)]

    def forward(self, h: Sequence[Tensor], m: Sequence[Tensor | None]
                ) -> tuple[list[Tensor], list[Tensor | None]]:
        if len(h) != self.num_dims or len(m) != self.num_dims:
            raise ValueError(f"GridBlock: expected {self.num_dims} hidden and memory vectors, "
                             f"got {len(h)} and {len(m)}")
        for k, v in enumerate(h):
            if v.shape[-1] != self.hidden_size:
                raise ValueError(f"GridBlock: hidden vector {k} must have size "
                                 f"{self.hidden_size}, got shape {tuple(v.shape)}")
        h_new, m_new, _ = grid_block(h, m, self.weights(), non_lstm=self.non_lstm,
                                     priority=self.priority, cell_output=self.cell_output,
                                     activation=self.activation)
        return h_new, m_new


def check_block_options(name: str, num_dims: int, non_lstm, priority, cell_output: str,
                        activation: str) -> None:
    if num_dims < 1:
        raise ValueError(f"{name}: a block needs at least one dimension, got {num_dims}")
    for what, dims in (("non_lstm", non_lstm), ("priority", priority)):
        bad = [k for k in dims if not 0 <= k < num_dims]
        if bad:
            raise ValueError(f"{name}: {what} names dimensions {bad}, but the block has "
                             f"dimensions 0 … {num_dims - 1}")
    if len(set(priority)) != len(priority):
        raise ValueError(f"{name}: priority lists a dimension twice: {list(priority)}")
    if cell_output not in CELL_OUTPUTS:
        raise ValueError(f"{name}: cell_output must be 'paper' (h' = tanh(g^o ⊙ m')) or "
                         f"'standard' (h' = g^o ⊙ tanh(m')), got {cell_output!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation (α of the non-LSTM dimensions) must be one of "
                         f"{', '.join(ACTIVATIONS)}, got {activation!r}")
