r"""``lstmkit.GridLSTM``: Grid LSTM networks (Kalchbrenner, Danihelka & Graves 2015,
arXiv:1507.01526) in the 1-D (depth) and 2-D (time × depth) forms, with torch.nn.LSTM's call.

The blocks are :func:`lstmkit.cells.grid.grid_block` (the paper's equations); this module
arranges them into a grid. The 2-D grid (one engine call per layer) and the tied 1-D grid
(one engine call for the whole depth) run on the engine as the cell family ``grid_lstm``
(:func:`lstmkit.cells.grid.grid_spec`, C++ step ``ops/csrc/cells/grid_lstm.h``); the other
configurations run the autograd loop over the blocks (see the class docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from ..cells.grid import (
    ACTIVATIONS,
    CELL_OUTPUTS,
    grid2d_spec,
    grid_block,
    grid_layer_weights,
    grid_spec,
)
from . import checks

_DIMS = {"time-depth": ("time", "depth"), "2d": ("time", "depth"), "depth": ("depth",),
         "1d": ("depth",)}
_BACKENDS = ("auto", "reference", "fused", "fused_py", "fused_cpp")


def _names(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"GridLSTM: {what} must be a dimension name ('time' or 'depth') or a "
                    f"tuple of them, got {value!r}")


class GridLSTM(nn.Module):
    r"""A Grid LSTM network (Kalchbrenner, Danihelka & Graves 2015, arXiv:1507.01526).

    Two layouts of the paper's N-dimensional block (:mod:`lstmkit.cells.grid`):

    * ``dims="time-depth"`` (default): the **2-D Grid LSTM** over time × depth, the paper's
      replacement for a stacked LSTM. The block at step t and layer l (l = 1 … num_layers)
      receives the time vectors (h^t, m^t) of step t − 1 in layer l and the depth vectors
      (h^d, m^d) of layer l − 1 at step t; with H = [h^t; h^d]::

          (h^t', m^t') = LSTM(H, m^t, W^time_l)      passed on to step t + 1 of layer l
          (h^d', m^d') = LSTM(H, m^d, W^depth_l)     passed up to layer l + 1 at step t

      The bottom depth vectors are the input projected, h^d_{t,0} = W_in x_t + b_in, and
      m^d_{t,0} = 0; the output at step t is the top layer's h^d'. Weights are shared along
      time (a recurrence); ``tied=True`` also shares them along depth (every layer uses
      layer 0's). The initial and final states are the time vectors (h^t, m^t) of every
      layer, (num_layers, N, H) each, as torch.nn.LSTM's (h, c).
    * ``dims="depth"``: the **1-D Grid LSTM**, a feed-forward network of LSTM transforms
      along depth, applied to every step of the input independently: h_0 = W_in x_t + b_in,
      m_0 = 0, (h_l, m_l) = LSTM(h_l−1, m_l−1, W_l) for l = 1 … num_layers; the output is
      h_L. ``tied=True`` (the paper's parity network) uses one W for every layer. There is
      no recurrence, so ``hx`` must be None; the returned state is (h_L, m_L) at each
      sequence's last step, (1, N, H) each (m_L zeros for a non-LSTM depth).

    LSTM is the paper's transform: gates u, f, c, o = σ, σ, tanh, σ of W H + b,
    m' = f ⊙ m + u ⊙ c, and ``cell_output="paper"``: h' = tanh(o ⊙ m') as the paper prints
    it, or ``"standard"``: h' = o ⊙ tanh(m') (torch.nn.LSTM's form).

    ``priority``: dimensions computed after the other one, seeing its new hidden vector
    (§3.2): ``priority="depth"`` computes (h^d', m^d') from [h^t'; h^d]; ``"time"`` computes
    (h^t', m^t') from [h^t; h^d']. ``non_lstm="depth"``: the depth transform is
    h^d' = α(V H + b) with no depth memory (§3.3; α = ``activation``: tanh, relu, sigmoid or
    identity); with ``dims="depth"`` this is a plain feed-forward net (the paper's tanh
    baseline for parity). A non-LSTM time dimension is not offered: the module's state is
    the time memory, as torch.nn.LSTM's.

    Parameters (d = hidden_size): ``weight_in`` (d, input_size), ``bias_in`` (d,); per
    layer k (only k = 0 when tied) ``weight_time_l{k}`` (4d, 2d) and ``bias_time_l{k}``
    (4d,) (2-D only), ``weight_depth_l{k}`` (4d, D·d) — (d, D·d) when non-LSTM — and
    ``bias_depth_l{k}``, D the number of dimensions; rows u, f, c, o (torch.nn.LSTM's
    i, f, g, o), columns [h^t; h^d]. All start U(−1/√d, 1/√d) as torch.nn.LSTM.

    Inputs as torch.nn.LSTM: (L, N, input_size), batch_first, unbatched (L, input_size),
    PackedSequence (any order); ``dropout`` applies to h^d between layers (not to m^d).
    Not offered: ``bidirectional`` (a direction is one more grid dimension; use two
    modules), ``proj_size``, the regularisers of the LSTM family. ``backend``:
    "reference" runs the autograd loop over the blocks; every other backend runs the engine
    (:func:`lstmkit.ops.select_backend` with the family ``grid_lstm``): each 2-D layer is one
    call of the engine's autograd Function with the hand-derived BPTT of
    :class:`lstmkit.cells.grid.Grid2DFused` — its C++ step for "fused_cpp" and, on CPU
    float32/float64, for "fused" and "auto"; the torch loop for "fused_py"; the custom op
    ``lstmkit::grid_lstm_layer`` under ``torch.compile``. It covers LSTM transforms in both
    dimensions with no priority or depth priority; other configurations raise with an
    explicit fused backend and run the block loop with "auto". The tied 1-D grid runs as one
    engine call over depth (:class:`lstmkit.cells.grid.Grid1DFused`; recording and dropout
    in training take the block loop); the untied and non-LSTM 1-D grids always run the block
    loop (one batched GEMM per layer). ``lstmkit.record``
    gives per layer the gates ``u_time, f_time, c_time, o_time, u_depth, …`` and the vectors
    ``h_time, m_time, h_depth, m_depth`` (the new ones, [T, B, d]); ``lstmkit.summary`` the
    parameter table.
    """

    _lstmkit_recordable = True          # lstmkit.record and summary take this module
    record_family = "grid_lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, dims: str | tuple[str, ...] = "time-depth", tied: bool = False,
                 priority: str | tuple[str, ...] = (), non_lstm: str | tuple[str, ...] = (),
                 cell_output: str = "paper", activation: str = "tanh",
                 backend: str = "auto", bidirectional: bool = False) -> None:
        super().__init__()
        name = "GridLSTM"
        checks.check_config(name, input_size, hidden_size, num_layers, dropout, 0, bias=bias,
                            batch_first=batch_first)
        if bidirectional:
            raise ValueError("GridLSTM does not support bidirectional=True: a reverse "
                             "direction is one more grid dimension; run a second GridLSTM "
                             "on the reversed input")
        key = dims if isinstance(dims, str) else tuple(dims)
        table = {**_DIMS, ("time", "depth"): ("time", "depth"), ("depth",): ("depth",)}
        if key not in table:
            raise ValueError(f"GridLSTM: dims must be 'time-depth' (2-D, time × depth) or "
                             f"'depth' (1-D), got {dims!r}")
        self.dims = table[key]
        self.priority = _names(priority, "priority")
        self.non_lstm = _names(non_lstm, "non_lstm")
        for what, given in (("priority", self.priority), ("non_lstm", self.non_lstm)):
            bad = [d for d in given if d not in self.dims]
            if bad:
                raise ValueError(f"GridLSTM: {what} names {bad}, but the grid's dimensions "
                                 f"are {list(self.dims)}")
        if len(set(self.priority)) != len(self.priority) or len(self.priority) > 1:
            raise ValueError(f"GridLSTM: priority must name one dimension (the one computed "
                             f"last), got {list(self.priority)}")
        if self.priority and len(self.dims) == 1:
            raise ValueError("GridLSTM: priority needs two dimensions; the 1-D grid has "
                             "only depth")
        if "time" in self.non_lstm:
            raise ValueError("GridLSTM: non_lstm='time' is not offered (the module's state "
                             "is the time memory); non_lstm='depth' is")
        if cell_output not in CELL_OUTPUTS:
            raise ValueError(f"GridLSTM: cell_output must be 'paper' (h' = tanh(g^o ⊙ m')) "
                             f"or 'standard' (h' = g^o ⊙ tanh(m')), got {cell_output!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GridLSTM: activation (α of a non-LSTM dimension) must be one "
                             f"of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(tied, bool):
            raise TypeError(f"GridLSTM: tied must be a bool, got {type(tied).__name__}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.tied = bias, batch_first, dropout, tied
        self.cell_output, self.activation = cell_output, activation
        self.backend = self._check_backend(backend)
        if backend in ("fused", "fused_py", "fused_cpp") and self.fused_supported:
            raise ValueError(f"GridLSTM: backend={backend!r} cannot run this configuration: "
                             f"{self.fused_supported}; use 'auto' or 'reference'")
        d, D = hidden_size, len(self.dims)
        kw = {"device": device, "dtype": dtype}
        self.weight_in = nn.Parameter(torch.empty(d, input_size, **kw))
        self.bias_in = nn.Parameter(torch.empty(d, **kw)) if bias else None
        for k in range(1 if tied else num_layers):
            if "time" in self.dims:
                self._add(f"time_l{k}", 4 * d, D * d, kw)
            self._add(f"depth_l{k}", d if "depth" in self.non_lstm else 4 * d, D * d, kw)
        self.reset_parameters()

    @staticmethod
    def _check_backend(backend: str) -> str:
        if backend not in _BACKENDS:
            raise ValueError(f"GridLSTM: backend must be one of {', '.join(_BACKENDS)}, got "
                             f"{backend!r}")
        return backend

    @property
    def fused_supported(self) -> str | None:
        """None if the fused step computes this configuration, else why not."""
        if self.dims != ("time", "depth") and not self.tied:
            return ("the untied 1-D grid has a weight per layer, which one engine call (one "
                    "weight along its loop) cannot take; its layers are one batched GEMM "
                    "each, by autograd")
        if self.non_lstm:
            return "the fused step has LSTM transforms in both dimensions"
        if self.priority == ("time",):
            return "the fused step prioritises depth or nothing, not time"
        return None

    def _add(self, name: str, rows: int, cols: int, kw: dict) -> None:
        self.register_parameter(f"weight_{name}", nn.Parameter(torch.empty(rows, cols, **kw)))
        self.register_parameter(f"bias_{name}", nn.Parameter(torch.empty(rows, **kw))
                                if self.bias else None)

    def reset_parameters(self) -> None:
        """Draw every parameter from U(−1/√H, 1/√H), torch.nn.LSTM's initialisation."""
        bound = self.hidden_size ** -0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    # -- weights -------------------------------------------------------------------------
    def block_weights(self, layer: int) -> list[tuple[Tensor, Tensor | None]]:
        """[(W, b)] of layer ``layer``'s block, one per dimension in ``self.dims`` order."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"GridLSTM: layer must be in 0 … {self.num_layers - 1}, got "
                             f"{layer}")
        k = 0 if self.tied else layer
        return [(getattr(self, f"weight_{dim}_l{k}"), getattr(self, f"bias_{dim}_l{k}"))
                for dim in self.dims]

    def _block(self, layer: int, h: list[Tensor], m: list[Tensor | None]):
        idx = {d: i for i, d in enumerate(self.dims)}
        return grid_block(h, m, self.block_weights(layer),
                          non_lstm=[idx[d] for d in self.non_lstm],
                          priority=[idx[d] for d in self.priority],
                          cell_output=self.cell_output, activation=self.activation)

    # -- forward -------------------------------------------------------------------------
    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        name = "GridLSTM"
        seq = checks.prepare_input(name, input, self.input_size, self.batch_first,
                                   self.weight_in)
        if not bool(torch.isfinite(seq.x).all()):
            raise ValueError(f"{name}: the input holds NaN or infinite values")
        hd = F.linear(seq.x, self.weight_in, self.bias_in)          # (N, d) depth input
        recorder = self.__dict__.get("_recorder")
        if self.dims == ("depth",):
            if hx is not None:
                raise ValueError(f"{name}: the 1-D (depth) grid has no time recurrence and "
                                 "so no initial state; hx must be None")
            out, states = self._depth_only(hd, seq, recorder)
        else:
            L, d = self.num_layers, self.hidden_size
            h0, m0 = checks.prepare_hx(name, hx, seq, [(L, d), (L, d)], ("h_0", "c_0"),
                                       self.weight_in)
            if self._use_fused(recorder, hd):
                out, states = self._time_depth_fused(hd, seq, h0, m0, recorder)
            else:
                out, states = self._time_depth(hd, seq, h0, m0, recorder)
        return self._format(seq, out, states)

    def _depth_only(self, h: Tensor, seq: checks.Sequence, recorder):
        if (self._use_fused(recorder, h) and recorder is None
                and not (self.dropout and self.training)):
            return self._depth_only_fused(h, seq)
        m = torch.zeros_like(h)
        lstm = "depth" not in self.non_lstm
        for layer in range(self.num_layers):
            (h,), (m_new,), (gates,) = self._block(layer, [h], [m if lstm else None])
            m = m_new if lstm else m
            if recorder is not None:
                vectors = {**{f"{g}_depth": v for g, v in gates.items()}, "h_depth": h,
                           **({"m_depth": m} if lstm else {})}
                recorder.add(self, layer, 0, _by_step(vectors, seq.batch_sizes), seq)
            if self.dropout and self.training and layer < self.num_layers - 1:
                h = F.dropout(h, self.dropout, training=True)
        last = _last_rows(seq.batch_sizes, h.device)
        return h, (h[last].unsqueeze(0), m[last].unsqueeze(0))

    def _depth_only_fused(self, h: Tensor, seq: checks.Sequence):
        """The tied 1-D grid as one engine call: a recurrence over depth of the family
        ``grid_lstm`` with ``dims=1`` (:class:`lstmkit.cells.grid.Grid1DFused`), every input
        row one sequence of num_layers steps, from (h_0, 0) with no other input."""
        from ..cells.base import LayerWeights
        spec = grid_spec(self.cell_output, dims=1)
        N, L, d = h.shape[0], self.num_layers, self.hidden_size
        layout = [N] * L
        run = ops.select_backend(self.backend, spec, h, layout)
        ((w, b),) = self.block_weights(0)
        x = h.new_zeros(N * L, 0)                          # no input beyond h_0
        lw = LayerWeights(h.new_zeros(4 * d, 0), w, b, None)
        _, (h_L, m_L), _ = run(spec, x, layout, (h, torch.zeros_like(h)), lw)
        last = _last_rows(seq.batch_sizes, h.device)
        return h_L, (h_L[last].unsqueeze(0), m_L[last].unsqueeze(0))

    def _time_depth(self, hd: Tensor, seq: checks.Sequence, h0: Tensor, m0: Tensor, recorder):
        md: Tensor | None = torch.zeros_like(hd)
        lstm_depth = "depth" not in self.non_lstm
        finals_h, finals_m = [], []
        for layer in range(self.num_layers):
            h_t, m_t = h0[layer], m0[layer]                   # (B, d) time vectors
            out_h, out_m, trace, r0 = [], [], [], 0
            for n in seq.batch_sizes:
                rows = slice(r0, r0 + n)
                (ht, hdn), (mt, mdn), gates = self._block(
                    layer, [h_t[:n], hd[rows]], [m_t[:n], md[rows] if lstm_depth else None])
                h_t = torch.cat([ht, h_t[n:]]) if n < h_t.shape[0] else ht
                m_t = torch.cat([mt, m_t[n:]]) if n < m_t.shape[0] else mt
                out_h.append(hdn)
                out_m.append(mdn)
                if recorder is not None:
                    step = {f"{g}_{dim}": v for dim, gs in zip(self.dims, gates)
                            for g, v in gs.items()}
                    step.update(h_time=ht, m_time=mt, h_depth=hdn)
                    if lstm_depth:
                        step["m_depth"] = mdn
                    trace.append(step)
                r0 += n
            finals_h.append(h_t)
            finals_m.append(m_t)
            if recorder is not None:
                recorder.add(self, layer, 0, trace, seq)
            hd = torch.cat(out_h)
            md = torch.cat(out_m) if lstm_depth else None
            if self.dropout and self.training and layer < self.num_layers - 1:
                hd = F.dropout(hd, self.dropout, training=True)
        return hd, (torch.stack(finals_h), torch.stack(finals_m))

    def _use_fused(self, recorder, x: Tensor) -> bool:
        """The engine runs the 2-D grid (every backend but "reference", for the
        configurations its step covers); else the autograd loop over the block equations."""
        return self.backend != "reference" and self.fused_supported is None

    def _time_depth_fused(self, hd: Tensor, seq: checks.Sequence, h0: Tensor, m0: Tensor,
                          recorder=None):
        """The same grid on the engine: each layer one call of the layer function that
        :func:`lstmkit.ops.select_backend` picks for the family ``grid_lstm``
        (:class:`lstmkit.cells.grid.Grid2DFused` and ``csrc/cells/grid_lstm.h``: the C++
        step by default, the torch loop for ``"fused_py"``, the custom op under
        ``torch.compile``, the reference loop of the family's step under vmap)."""
        spec = grid2d_spec(self.cell_output, self.priority == ("depth",))
        run = ops.select_backend(self.backend, spec, hd, seq.batch_sizes,
                                 recording=recorder is not None)
        md = torch.zeros_like(hd)
        finals_h, finals_m = [], []
        for layer in range(self.num_layers):
            (w_t, b_t), (w_d, b_d) = self.block_weights(layer)
            w = grid_layer_weights(w_t, b_t, w_d, b_d)
            zeros = h0.new_zeros(h0.shape[1:])
            _, finals, trace, seqs = run(spec, hd, seq.batch_sizes,
                                         (zeros, zeros, h0[layer], m0[layer]), w,
                                         side=(md,), sequences=True,
                                         record=recorder is not None)
            if recorder is not None:          # the engine's "h" of a step is h^d'
                recorder.add(self, layer, 0, [{**{k: v for k, v in step.items() if k != "h"},
                                               "h_depth": step["h"]} for step in trace], seq)
            hd, md = seqs[0], seqs[1]
            finals_h.append(finals[2])
            finals_m.append(finals[3])
            if self.dropout and self.training and layer < self.num_layers - 1:
                hd = F.dropout(hd, self.dropout, training=True)
        return hd, (torch.stack(finals_h), torch.stack(finals_m))

    def _format(self, seq: checks.Sequence, out: Tensor, states: tuple[Tensor, Tensor]):
        packed = seq.packed
        if packed is not None:
            if packed.unsorted_indices is not None:
                states = tuple(s.index_select(1, packed.unsorted_indices) for s in states)
            return PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                                  packed.unsorted_indices), states
        output = out.view(seq.steps, seq.batch, out.shape[-1])
        if seq.unbatched:
            return output.squeeze(1), tuple(s.squeeze(1) for s in states)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, states

    # -- description ---------------------------------------------------------------------
    def _lstmkit_summary(self, title: str) -> str:
        """The per-layer, per-dimension parameter table that ``lstmkit.summary`` prints."""
        rows = [("layer", "dimension", "transform", "weight", "bias", "params")]
        total = self.weight_in.numel() + (self.bias_in.numel() if self.bias_in is not None
                                          else 0)
        rows.append(("input", "—", "h^d_0 = W_in x + b_in", _shape(self.weight_in),
                     _shape(self.bias_in), f"{total:,}"))
        for layer in range(1 if self.tied else self.num_layers):
            for dim, (w, b) in zip(self.dims, self.block_weights(layer)):
                kind = (f"{self.activation}(V H + b)" if dim in self.non_lstm else "LSTM")
                if dim in self.priority:
                    kind += " (priority)"
                n = w.numel() + (b.numel() if b is not None else 0)
                total += n
                label = "all (tied)" if self.tied else str(layer)
                rows.append((label, dim, kind, _shape(w), _shape(b), f"{n:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
        form = "tanh(o ⊙ m')" if self.cell_output == "paper" else "o ⊙ tanh(m')"
        head = (f"{title}: Grid LSTM {'×'.join(self.dims)}, {self.num_layers} layers, "
                f"hidden {self.hidden_size}, {'tied' if self.tied else 'untied'} along depth, "
                f"h' = {form}")
        return "\n".join([head, *lines, f"parameters: {total:,}"])

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        s += f", dims={'-'.join(self.dims)!r}"
        for key, default in (("tied", False), ("priority", ()), ("non_lstm", ()),
                             ("cell_output", "paper"), ("batch_first", False),
                             ("dropout", 0.0), ("bias", True)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s


def _shape(t: Tensor | None) -> str:
    return "—" if t is None else "×".join(map(str, t.shape))


def _by_step(vectors: dict[str, Tensor], batch_sizes: list[int]) -> list[dict[str, Tensor]]:
    steps, r0 = [], 0
    for n in batch_sizes:
        steps.append({k: v[r0:r0 + n] for k, v in vectors.items()})
        r0 += n
    return steps


def _last_rows(batch_sizes: list[int], device) -> Tensor:
    """The flat row of each sequence's last step (sequences in the packed, sorted order)."""
    starts = [0]
    for n in batch_sizes[:-1]:
        starts.append(starts[-1] + n)
    B = batch_sizes[0] if batch_sizes else 0
    rows = []
    for j in range(B):
        length = sum(1 for n in batch_sizes if n > j)
        rows.append(starts[length - 1] + j)
    return torch.tensor(rows, dtype=torch.long, device=device)

