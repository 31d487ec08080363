r"""The Grid LSTM block (Kalchbrenner, Danihelka & Graves 2015, "Grid Long Short-Term Memory",
arXiv:1507.01526, ICLR 2016), written as the paper's equations: the reference.

An N-dimensional block receives N hidden vectors h_1 … h_N and N memory vectors m_1 … m_N
(one pair per dimension of the grid) and concatenates the hidden vectors into one vector::

    H = [h_1; h_2; …; h_N]                                                  (N·d,)

Each dimension k then applies its own transform to H and its own memory, with its own
weights W_k::

    (h'_k, m'_k) = LSTM(H, m_k, W_k)        k = 1 … N

where LSTM is the paper's LSTM transform (gate names as in the paper; the weight rows of W_k
are stacked u, f, c, o — torch.nn.LSTM's i, f, g, o)::

    g^u = σ(W^u H + b^u)          input gate
    g^f = σ(W^f H + b^f)          forget gate
    g^c = tanh(W^c H + b^c)       candidate
    g^o = σ(W^o H + b^o)          output gate
    m'  = g^f ⊙ m + g^u ⊙ g^c
    h'  = tanh(g^o ⊙ m')          (cell_output="paper": the form the paper prints)
    h'  = g^o ⊙ tanh(m')          (cell_output="standard": Hochreiter & Schmidhuber's form,
                                  torch.nn.LSTM's)

The transforms as we recall them from the paper have no bias terms (not re-checked here);
the biases here are optional (``bias=True`` by default, as in torch.nn). The output form
``"paper"`` is likewise our recollection of the paper's equations (and the project's brief),
not re-read here; see docs/architectures.md.

*Priority dimensions* (§3.2; the section numbers as TensorFlow's GridRNN cell cites them):
a prioritised dimension is computed after the others and sees
their new hidden vectors. With dimension 1 prioritised the block first computes the N − 1
other transforms, then::

    H' = [h_1; h'_2; …; h'_N],      (h'_1, m'_1) = LSTM(H', m_1, W_1)

With several prioritised dimensions (in the given order), each sees the new hidden vectors of
every dimension computed before it (our reading; the paper describes one).

*Non-LSTM dimensions* (§3.3): a dimension may use a plain transform instead, with no memory
vector::

    h'_k = α(V_k H + b_k)          α a nonlinearity (tanh, relu, sigmoid) or the identity

With one dimension (N = 1) the block is an LSTM whose input is its own hidden vector: a
1-D Grid LSTM along depth is a feed-forward network of LSTM transforms; with a
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

from .base import new_buffer, register

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


# -- the 2-D (time × depth) layer on the engine's loop --------------------------------------------
# One layer of the 2-D grid is a recurrence over time. Its carried states, in the engine's
# order: h^d' (the layer's output, passed up as the next layer's input x), m^d' (passed up
# as the next layer's side input, like the Depth-Gated LSTM's cell: ``layer_link``), h^t
# and m^t (the time vectors, which are the recurrence). The step reads h^t_{t−1} (not the
# output h^d'_{t−1}: it does its own recurrent GEMM) and never reads h^d'_{t−1}, m^d'_{t−1}.
# Layer weights in the engine's layout, rows [time u f c o; depth u f c o] (8d):
#   w_ih = [W^time[:, d:]; W^depth[:, d:]]   (8d, d)  the columns of h^d (the input side)
#   w_hh = [W^time[:, :d]; W^depth[:, :d]]   (8d, d)  the columns of h^t (the recurrence)
#   b_ih = [b^time; b^depth] (8d,) or None,  b_hh = None.
GRID_STATES = ("h_depth", "m_depth", "h_time", "m_time")
GRID_ROWS = tuple(f"{g}_{dim}" for dim in ("time", "depth") for g in GATES)


def _split_cols(w: Tensor, d: int) -> tuple[Tensor, Tensor]:
    return w[:, :d], w[:, d:]


def grid_layer_weights(w_time: Tensor, b_time: Tensor | None, w_depth: Tensor,
                       b_depth: Tensor | None):
    """The engine's :class:`~lstmkit.cells.base.LayerWeights` of one 2-D grid layer."""
    from .base import LayerWeights
    d = w_time.shape[0] // 4
    (t_h, t_x), (d_h, d_x) = _split_cols(w_time, d), _split_cols(w_depth, d)
    b = None if b_time is None else torch.cat([b_time, b_depth])
    return LayerWeights(torch.cat([t_x, d_x]), torch.cat([t_h, d_h]), b, None)


def grid2d_step(x_t: Tensor, state, w, m_low: Tensor, *, h_in: Tensor | None = None,
                cell_output: str = "paper", priority_depth: bool = False):
    """One block of a 2-D grid layer in the engine's step form (the reference): ``x_t`` is
    h^d of the layer below, ``m_low`` its m^d, ``state`` = (h^d', m^d', h^t, m^t)."""
    _, _, h_t, m_t = state
    d = h_t.shape[1]
    b_t = b_d = None
    if w.b_ih is not None:
        b_t, b_d = w.b_ih[:4 * d], w.b_ih[4 * d:]
    W_t = torch.cat([w.w_hh[:4 * d], w.w_ih[:4 * d]], 1)                 # columns [h^t; h^d]
    W_d = torch.cat([w.w_hh[4 * d:], w.w_ih[4 * d:]], 1)
    (ht, hd), (mt, md), gates = grid_block([h_t, x_t], [m_t, m_low], [(W_t, b_t), (W_d, b_d)],
                                           priority=(1,) if priority_depth else (),
                                           cell_output=cell_output)
    rec = {f"{g}_{dim}": v for dim, gs in zip(("time", "depth"), gates) for g, v in gs.items()}
    return (hd, md, ht, mt), rec


def _lstm_forward(a: Tensor, m_prev: Tensor, h_out: Tensor, m_out: Tensor, paper: bool) -> None:
    """The pointwise LSTM transform on one row block a (n, 4d), in place: a becomes the
    gates u, f, c, o; writes m' and h'."""
    d = m_prev.shape[1]
    u, f, c, o = (a[:, j * d:(j + 1) * d] for j in range(4))
    u.sigmoid_()
    f.sigmoid_()
    o.sigmoid_()
    c.tanh_()
    torch.addcmul(f * m_prev, u, c, out=m_out)
    if paper:
        torch.tanh(o * m_out, out=h_out)
    else:
        torch.mul(o, m_out.tanh(), out=h_out)


def _lstm_backward(gates: Tensor, da: Tensor, m_prev: Tensor, m_new: Tensor, h_new: Tensor,
                   dh: Tensor, dm: Tensor, paper: bool) -> Tensor:
    """BPTT of :func:`_lstm_forward`: writes ∂L/∂a into ``da`` and returns ∂L/∂m_prev.

        paper:    s = o ⊙ m', h' = tanh(s):  ds = dh ⊙ (1 − h'²), do = ds ⊙ m',
                  dm' = dm + ds ⊙ o
        standard: h' = o ⊙ tanh(m'):         do = dh ⊙ tanh m', dm' = dm + dh ⊙ o ⊙ (1 − tanh² m')
        da_o = do ⊙ o(1 − o),   da_u = dm' ⊙ c ⊙ u(1 − u),   da_c = dm' ⊙ u ⊙ (1 − c²),
        da_f = dm' ⊙ m ⊙ f(1 − f),   ∂L/∂m = dm' ⊙ f
    """
    d = m_prev.shape[1]
    u, f, c, o = (gates[:, j * d:(j + 1) * d] for j in range(4))
    da_u, da_f, da_c, da_o = (da[:, j * d:(j + 1) * d] for j in range(4))
    if paper:
        ds = dh * (1 - h_new * h_new)
        d_o = ds * m_new
        dm_new = dm + ds * o
    else:
        tm = m_new.tanh()
        d_o = dh * tm
        dm_new = dm + dh * o * (1 - tm * tm)
    torch.mul(d_o, o * (1 - o), out=da_o)
    torch.mul(dm_new * c, u * (1 - u), out=da_u)
    torch.mul(dm_new * u, 1 - c * c, out=da_c)
    torch.mul(dm_new * m_prev, f * (1 - f), out=da_f)
    return dm_new * f


class Grid2DFused:
    """The fused step of a 2-D grid layer for the engine's torch loop
    (:mod:`lstmkit.ops.loops`) and its one autograd Function (:mod:`lstmkit.ops.fused`).

    Forward per step (no priority): a += h^t_{t−1} w_hhᵀ (8d), then the time and depth
    transforms pointwise. With the depth dimension prioritised: a_time += h^t_{t−1}
    W^time_hᵀ, the time transform, then a_depth += h^t' W^depth_hᵀ and the depth transform.

    Backward per step, with dh^d', dm^d' the gradients from above (the output and the side
    of the layer above) and dh^t', dm^t' the carried ones: the depth transform's BPTT
    (:func:`_lstm_backward`) gives da_depth and ∂L/∂m^d_low (into the gradient buffer, for
    the layer below); with priority, dh^t' += da_depth W^depth_h; the time transform's BPTT
    gives da_time and ∂L/∂m^t_{t−1}; ∂L/∂h^t_{t−1} = da w_hh (no priority) or
    da_time W^time_h. Per chunk: dx = dA w_ih, dw_ih = dAᵀ x, db = Σ dA,
    dw_hh = dAᵀ H^t_prev (no priority) or [da_timeᵀ H^t_prev; da_depthᵀ H^t_new].
    """

    cpp = "grid_lstm"          # csrc/cells/grid_lstm.h: the same step in C++
    output_in_gates = False

    def __init__(self, paper: bool, priority_depth: bool):
        self.paper, self.priority_depth = paper, priority_depth

    def project(self, spec, x, w, side):
        xw = torch.mm(x, w.w_ih.t()) if w.b_ih is None else torch.addmm(w.b_ih, x, w.w_ih.t())
        return xw, ()

    def loop_weights(self, spec, w):
        return [w.w_hh.contiguous()]

    def saved_buffers(self, spec, a, H):
        return []

    def grad_buffers(self, spec, rows, like, H, side):
        return [new_buffer(like, rows, H)]

    def cpp_options(self, spec):
        return [float(self.paper), float(self.priority_depth)]

    def chunk_scale(self, spec, w):
        return 1                   # backward chunks of MIN_CHUNK_ROWS (FusedCell's default)

    def forward_step(self, spec, s) -> None:
        (w_hh,) = s.w
        d = w_hh.shape[1]
        a, h_t = s.a, s.prev[2]
        if self.priority_depth:
            a[:, :4 * d].addmm_(h_t, w_hh[:4 * d].t())
        else:
            a.addmm_(h_t, w_hh.t())
        _lstm_forward(a[:, :4 * d], s.prev[3], s.next[2], s.next[3], self.paper)
        if self.priority_depth:
            a[:, 4 * d:].addmm_(s.next[2], w_hh[4 * d:].t())
        _lstm_forward(a[:, 4 * d:], s.side[0], s.next[0], s.next[1], self.paper)

    def backward_step(self, spec, s):
        (w_hh,) = s.w
        d = w_hh.shape[1]
        g, da = s.gates, s.dA
        dm_low = _lstm_backward(g[:, 4 * d:], da[:, 4 * d:], s.side[0], s.next[1], s.next[0],
                                s.dnext[0], s.dnext[1], self.paper)
        s.grads[0].copy_(dm_low)
        dh_t = s.dnext[2]
        if self.priority_depth:
            dh_t = dh_t + da[:, 4 * d:] @ w_hh[4 * d:]
        dm_t = _lstm_backward(g[:, :4 * d], da[:, :4 * d], s.prev[3], s.next[3], s.next[2],
                              dh_t, s.dnext[3], self.paper)
        dh_prev = (da[:, :4 * d] @ w_hh[:4 * d]) if self.priority_depth else da @ w_hh
        return [None, None, dh_prev, dm_t], None

    def chunk_grads(self, spec, c, w, aux, g) -> None:
        from .base import FusedCell
        FusedCell.input_grads(c, w, c.dA, g, b_hh=False)
        d = w.w_hh.shape[1]
        if g.w["w_hh"] is not None:
            if self.priority_depth:
                g.w["w_hh"][:4 * d].addmm_(c.dA[:, :4 * d].t(), c.prev[2])
                g.w["w_hh"][4 * d:].addmm_(c.dA[:, 4 * d:].t(), c.seqs[2])
            else:
                g.w["w_hh"].addmm_(c.dA.t(), c.prev[2])
        if g.side and g.side[0] is not None:
            g.side[0][c.r0:c.r1] = c.grads[0]

    def trace_gates(self, spec, gates, H):
        return dict(zip(GRID_ROWS, gates.split(H, dim=1)))


# -- the 1-D (depth) tied grid on the engine's loop -----------------------------------------------
# With one dimension the block is (h', m') = LSTM(h, m, W): a tied 1-D grid of L layers is
# this transform run for L steps from h_0 = W_in x + b_in, m_0 = 0, with no other input. On
# the engine it is a recurrence over depth: every input row (every step of every sequence)
# is one "sequence" of L steps (batch_sizes = [N] * L), x is empty (N·L, 0), the states are
# (h, m), w_hh = W (4d, d), b_ih = b (4d,) or None, w_ih = (4d, 0), b_hh = None.
GRID1D_STATES = ("h_depth", "m_depth")
GRID1D_ROWS = tuple(f"{g}_depth" for g in GATES)


def grid1d_step(x_t: Tensor, state, w, *, h_in: Tensor | None = None,
                cell_output: str = "paper"):
    """One layer of the tied 1-D grid in the engine's step form (the reference):
    ``state`` = (h, m), ``x_t`` (n, 0) (nothing: its projection is just the bias)."""
    h, m = state
    h_in = h if h_in is None else h_in
    a = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h_in, w.w_hh)
    a_u, a_f, a_c, a_o = a.chunk(4, dim=-1)
    g_u, g_f, g_o, g_c = a_u.sigmoid(), a_f.sigmoid(), a_o.sigmoid(), a_c.tanh()
    m_new = g_f * m + g_u * g_c
    h_new = torch.tanh(g_o * m_new) if cell_output == "paper" else g_o * torch.tanh(m_new)
    return (h_new, m_new), {"u_depth": g_u, "f_depth": g_f, "c_depth": g_c, "o_depth": g_o}


class Grid1DFused(Grid2DFused):
    """The fused step of the tied 1-D grid: a += ĥ w_hhᵀ (ĥ = h_{l−1}, the engine's own
    recurrent input), the LSTM transform pointwise (:func:`_lstm_forward`); backward
    :func:`_lstm_backward`, ∂L/∂h_{l−1} = dA w_hh, and the engine's default weight gradients
    (dW_hh = dAᵀ Ĥ_prev, db = Σ dA). The C++ step is the same functor as the 2-D grid's
    (``csrc/cells/grid_lstm.h`` with its option one_dim)."""

    def __init__(self, paper: bool):
        super().__init__(paper, False)

    def grad_buffers(self, spec, rows, like, H, side):
        return []

    def cpp_options(self, spec):
        return [float(self.paper), 0.0, 1.0]

    def forward_step(self, spec, s) -> None:
        (w_hh,) = s.w
        s.a.addmm_(s.h_in, w_hh.t())
        _lstm_forward(s.a, s.prev[1], s.next[0], s.next[1], self.paper)

    def backward_step(self, spec, s):
        (w_hh,) = s.w
        dm = _lstm_backward(s.gates, s.dA, s.prev[1], s.next[1], s.next[0], s.dnext[0],
                            s.dnext[1], self.paper)
        return [None, dm], s.dA @ w_hh

    def chunk_grads(self, spec, c, w, aux, g) -> None:
        from .base import FusedCell
        FusedCell.input_grads(c, w, c.dA, g, b_hh=False)          # db = Σ dA (dx: empty)
        if g.w["w_hh"] is not None:
            g.w["w_hh"].addmm_(c.dA.t(), c.h_in)                  # dW = dAᵀ H_{l−1}

    def trace_gates(self, spec, gates, H):
        return dict(zip(GRID1D_ROWS, gates.split(H, dim=1)))


def grid_spec(cell_output: str = "paper", priority_depth: bool = False, dims: int = 2):
    """The engine's :class:`~lstmkit.cells.base.CellSpec` of a grid layer (the family
    ``grid_lstm``): ``dims=2`` one layer of the 2-D time × depth grid
    (:func:`grid2d_spec`), ``dims=1`` the whole tied 1-D grid as a recurrence over depth
    (see :class:`Grid1DFused`)."""
    if dims == 2:
        return grid2d_spec(cell_output, priority_depth)
    if dims != 1 or priority_depth:
        raise ValueError(f"grid_lstm: dims must be 1 or 2 (priority only with 2), got "
                         f"dims={dims!r}, priority_depth={priority_depth!r}")
    if cell_output not in CELL_OUTPUTS:
        raise ValueError(f"grid_lstm: cell_output must be 'paper' or 'standard', got "
                         f"{cell_output!r}")
    from functools import partial

    from .base import CellSpec, StateSpec
    return CellSpec(
        family="grid_lstm", step=partial(grid1d_step, cell_output=cell_output),
        gate_rows=GRID1D_ROWS, gates=GRID1D_ROWS, n_states=2,
        options=(("cell_output", cell_output), ("priority_depth", False), ("dims", 1)),
        states=tuple(StateSpec(n, lambda H, R: H) for n in GRID1D_STATES),
        fused=Grid1DFused(cell_output == "paper"))


def grid2d_spec(cell_output: str = "paper", priority_depth: bool = False):
    """The engine's :class:`~lstmkit.cells.base.CellSpec` of a 2-D grid layer, registered as
    the family ``grid_lstm``: every backend of :func:`lstmkit.ops.select_backend` runs it
    (the C++ step is ``csrc/cells/grid_lstm.h``; the custom op ``lstmkit::grid_lstm_layer``
    serves ``torch.compile``). The GridLSTM module calls it once per layer, the depth
    vectors of the layer below as input and side input."""
    from functools import partial

    from .base import CellSpec, StateSpec
    if cell_output not in CELL_OUTPUTS:
        raise ValueError(f"grid_lstm: cell_output must be 'paper' or 'standard', got "
                         f"{cell_output!r}")
    return CellSpec(
        family="grid_lstm",
        step=partial(grid2d_step, cell_output=cell_output, priority_depth=priority_depth),
        gate_rows=GRID_ROWS, gates=GRID_ROWS, n_states=4,
        options=(("cell_output", cell_output), ("priority_depth", priority_depth)),
        states=tuple(StateSpec(n, lambda H, R: H) for n in GRID_STATES),
        fused=Grid2DFused(cell_output == "paper", priority_depth),
        layer_link=1)


register("grid_lstm", grid_spec)
