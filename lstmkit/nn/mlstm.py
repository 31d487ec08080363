"""``lstmkit.mLSTM``: the matrix-memory LSTM of xLSTM (:mod:`lstmkit.cells.mlstm`) as a
module with the contract of torch.nn's recurrent modules.

It is a module family beside the engine (:mod:`lstmkit.nn.base`), not an engine family:
the engine's carried states are vectors of width f(H, R) per row, updated by a pointwise
step after one GEMM with W_hh, and its loop is the only way it runs a sequence. The mLSTM
carries a d×d matrix per head, has no W_hh, and trains fastest not by a time loop at all
but by its parallel and chunkwise forms (:mod:`lstmkit.ops.mlstm`). So this module brings
the front end itself — torch.nn's constructor and call, stacking, both directions, dropout
between layers, ``batch_first``, unbatched and packed input, ``hx``, ``record`` and
``summary`` — and runs the forms of :mod:`lstmkit.ops.mlstm`.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ..cells import mlstm as cell
from ..ops import mlstm as forms
from . import checks

BACKENDS = ("auto", "reference", "parallel", "chunkwise")
ROWS = ("q", "k", "v", "o", "i", "f")            # row blocks of weight_ih: 4 of H, 2 of NH

MLState = tuple[Tensor, Tensor, Tensor]


class mLSTM(nn.Module):  # noqa: N801 (the paper's name)
    r"""``lstmkit.mLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, num_heads=4,
    backend="auto", chunk_size=64, forget_gate="sigmoid")``: the mLSTM of xLSTM (Beck et
    al. 2024) with the contract of torch.nn's recurrent modules:
    ``output, (C_n, n_n, m_n) = m(input, hx=None)``.

    Per layer, direction and head (d = hidden_size / num_heads), from x_t only::

        q_t = W_q x_t + b_q,  k_t = W_k x_t / √d + b_k,  v_t = W_v x_t + b_v
        i_t = exp(w_iᵀ x_t + b_i),  f_t = σ(w_fᵀ x_t + b_f)  (exp with forget_gate="exp")
        o_t = σ(W_o x_t + b_o)
        C_t = f_t C_{t-1} + i_t v_t k_tᵀ,   n_t = f_t n_{t-1} + i_t k_t
        h_t = o_t ⊙ C_t q_t / max(|n_tᵀ q_t|, 1)

    stabilised by m_t = max(log f_t + m_{t-1}, log i_t), the state kept as
    (C' = C e^{−m}, n' = n e^{−m}, m) (see :mod:`lstmkit.cells.mlstm`).

    Parameters, per layer k and direction (suffix ``_reverse``): ``weight_ih_l{k}`` of
    shape (4H + 2·num_heads, I) with row blocks q | k | v | o (H rows each, heads in
    order) | i | f (one row per head), and ``bias_ih_l{k}`` of the same rows (with
    ``bias=True``). There are no recurrent weights. Initialisation: U(−1/√H, 1/√H) as
    torch.nn, except the forget-gate biases, linspace(3, 6) over the heads (as NX-AI's
    xLSTM), so the memory starts out remembering.

    Input ``(L, N, I)`` (``(N, L, I)`` with ``batch_first``), unbatched ``(L, I)`` or a
    ``PackedSequence``; output ``(L, N, D·H)``. The state is the triple
    ``C (num_layers·D, N, num_heads, d, d)``, ``n (num_layers·D, N, num_heads, d)``,
    ``m (num_layers·D, N, num_heads)`` (without N for unbatched input); for packed input
    the state of each sequence at its own end, and the reverse direction runs each sequence
    backwards from its own end. ``hx=None`` starts from C = 0, n = 0, m = 0.

    ``backend``: ``"reference"`` is the recurrent form step by step (the equations);
    ``"parallel"`` the T×T form; ``"chunkwise"`` chunks of ``chunk_size`` steps, parallel
    inside and recurrent between; ``"auto"`` takes the recurrent step for T = 1 (inference
    one step at a time), the parallel form for T ≤ chunk_size and chunkwise beyond. All
    compute the same function.

    ``lstmkit.record`` gives per layer and direction the gates ``i`` and ``f``
    ([T, B, num_heads], the activations exp(ĩ) and σ(f̃)), ``o`` and ``h`` ([T, B, H]) and
    the normaliser ``n`` = max(|n_tᵀ q_t|, 1) ([T, B, num_heads]; ``i`` and ``n`` are in
    true units and may overflow to inf where the stabiliser was needed).
    """

    _recorder = None               # set by ``lstmkit.record``
    _lstmkit_recordable = True     # ``lstmkit.record`` and ``summary`` look for this
    record_family = "mlstm"

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
        backend: str = "auto",
        chunk_size: int = 64,
        forget_gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        checks.check_config(name, input_size, hidden_size, num_layers, dropout, 0,
                            bias=bias, batch_first=batch_first)
        check_options(hidden_size, num_heads, backend, chunk_size, forget_gate, bidirectional)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{name}: dtype must be a floating-point dtype, got {dtype}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} has no effect with num_layers=1: it "
                          "applies between stacked layers", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.num_heads = bidirectional, num_heads
        self.head_size = hidden_size // num_heads
        self.backend, self.chunk_size, self.forget_gate = backend, chunk_size, forget_gate
        factory = {"device": device, "dtype": dtype}
        rows = 4 * hidden_size + 2 * num_heads
        self._names: list[tuple[str, str | None]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                size_in = input_size if layer == 0 else hidden_size * self.num_directions
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                self.register_parameter("weight_ih" + sfx,
                                        nn.Parameter(torch.empty(rows, size_in, **factory)))
                if bias:
                    self.register_parameter("bias_ih" + sfx,
                                            nn.Parameter(torch.empty(rows, **factory)))
                self._names.append(("weight_ih" + sfx, "bias_ih" + sfx if bias else None))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        """2 if ``bidirectional`` else 1, as torch.nn's recurrent modules count directions."""
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter; forget-gate biases over the heads so that
        f = σ(linspace(3, 6)) ≈ 0.95…0.998 at the start (NX-AI's xLSTM initialises the
        sigmoid gate's biases to linspace(3, 6)): the memory starts out keeping what it
        stores. With ``forget_gate="exp"`` (f = exp(f̃)) the same f needs
        f̃ = log σ(linspace(3, 6)) < 0; linspace(3, 6) itself would multiply the memory by
        e³…e⁶ at every step."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        H, NH = self.hidden_size, self.num_heads
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)
            f_bias = torch.linspace(3.0, 6.0, NH)
            if self.forget_gate == "exp":
                f_bias = torch.nn.functional.logsigmoid(f_bias)
            for _, b in self._names:
                if b is not None:
                    getattr(self, b)[4 * H + NH:] = f_bias

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_heads={self.num_heads}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                             ("bidirectional", False), ("backend", "auto"),
                             ("chunk_size", 64), ("forget_gate", "sigmoid")):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    # -- forward ------------------------------------------------------------------------
    def forward(self, input: Tensor | PackedSequence, hx: MLState | None = None):
        name = type(self).__name__
        param = self.weight_ih_l0
        seq = checks.prepare_input(name, input, self.input_size, self.batch_first, param)
        T, B = seq.steps, seq.batch
        if seq.packed is not None:          # (T, B, I) in sorted order, lengths descending
            x, lengths = pad_packed_sequence(PackedSequence(seq.x, seq.packed.batch_sizes))
            lengths = lengths.to(x.device)
            if int(lengths.min()) == T:
                lengths = None
        else:
            x, lengths = seq.x.view(T, B, seq.x.shape[-1]), None
        state0 = self._prepare_hx(hx, seq)
        backend = self._choose_backend(T)
        D = self.num_directions
        valid = None if lengths is None else \
            torch.arange(T, device=x.device)[:, None] < lengths[None, :]       # (T, B)
        finals: list[list[Tensor]] = [[], [], []]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                j = layer * D + direction
                s0 = None if state0 is None else tuple(s[j] for s in state0)
                out, state, trace = self._run_layer(x, lengths, valid, j, direction == 1,
                                                    s0, backend)
                outputs.append(out)
                for f, s in zip(finals, state):
                    f.append(s)
                if self._recorder is not None:
                    self._recorder.add(self, layer, direction, _as_steps(trace, seq), seq)
            x = outputs[0] if D == 1 else torch.cat(outputs, -1)             # (T, B, D·H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return self._format(seq, x, lengths, tuple(torch.stack(f) for f in finals))

    def _choose_backend(self, T: int) -> str:
        if self.backend != "auto":
            return self.backend
        if T == 1:
            return "reference"
        return "parallel" if T <= self.chunk_size else "chunkwise"

    def _run_layer(self, x: Tensor, lengths: Tensor | None, valid: Tensor | None, j: int,
                   reverse: bool, state0: MLState | None, backend: str):
        """One layer and direction over (T, B, I): h (T, B, H), the final state (each
        (B, NH, …)), and what ``record`` shows."""
        T, B, _ = x.shape
        H, NH, d = self.hidden_size, self.num_heads, self.head_size
        w_name, b_name = self._names[j]
        w = getattr(self, w_name)
        b = getattr(self, b_name) if b_name is not None else None
        if reverse:
            x = _reverse(x, lengths)
        scale = torch.ones(w.shape[0], 1, dtype=w.dtype, device=w.device)
        scale[H:2 * H] = 1.0 / math.sqrt(d)                     # k_t = W_k x_t / √d + b_k
        a = F.linear(x, w * scale, b)                           # (T, B, 4H + 2NH)
        q, k, v, o_pre, i_pre, f_pre = a.split([H, H, H, H, NH, NH], -1)
        heads = [t.reshape(T, B, NH, d).permute(1, 2, 0, 3) for t in (q, k, v)]  # (B, NH, T, d)
        log_i = i_pre.permute(1, 2, 0)                          # (B, NH, T)
        log_f = cell.log_forget(f_pre, self.forget_gate).permute(1, 2, 0)
        if backend == "reference":
            keep = None if valid is None else valid.T[:, None, :].expand(B, NH, T)
            h, state, den, m = forms.mlstm_recurrent(*heads, log_i, log_f, state0, keep)
        else:
            if valid is not None:                               # neutral steps past the end
                keep = valid.T[:, None, :]
                log_i = log_i.masked_fill(~keep, float("-inf"))
                log_f = log_f.masked_fill(~keep, 0.0)
            kw = {"chunk_size": self.chunk_size} if backend == "chunkwise" else {}
            h, state, den, m = forms.FORMS[backend](*heads, log_i, log_f, state0, **kw)
        h = torch.sigmoid(o_pre) * h.permute(2, 0, 1, 3).reshape(T, B, H)   # (T, B, H)
        if valid is not None:                                   # zeros past each end
            h = h.masked_fill(~valid[..., None], 0.0)
        trace = None
        if self._recorder is not None:
            f_t = torch.exp(cell.log_forget(f_pre, self.forget_gate))
            trace = {"i": torch.exp(i_pre), "f": f_t,
                     "o": torch.sigmoid(o_pre), "n": torch.exp(den.log() + m).permute(2, 0, 1),
                     "h": h}
            trace = {k: v.detach() for k, v in trace.items()}
        if reverse:
            h = _reverse(h, lengths)
            if trace is not None:
                trace = {k: _reverse(v, lengths) for k, v in trace.items()}
        return h, state, trace

    # -- states ---------------------------------------------------------------------------
    def state_shapes(self, batch: int | None) -> list[tuple[int, ...]]:
        """Shapes of (C, n, m) for a batch of ``batch`` sequences (None: unbatched)."""
        n, NH, d = self.num_layers * self.num_directions, self.num_heads, self.head_size
        b = () if batch is None else (batch,)
        return [(n, *b, NH, d, d), (n, *b, NH, d), (n, *b, NH)]

    def _prepare_hx(self, hx: object, seq: checks.Sequence) -> list[Tensor] | None:
        """None, or (C, n, m) checked and as (L·D, B, …) in the loops' batch order."""
        if hx is None:
            return None
        name = type(self).__name__
        shapes = self.state_shapes(None if seq.unbatched else seq.batch)
        if (not isinstance(hx, (tuple, list)) or len(hx) != 3
                or not all(isinstance(h, Tensor) for h in hx)):
            raise TypeError(f"{name}: hx must be a tuple (C_0, n_0, m_0) of Tensors of shapes "
                            f"{shapes}, got {type(hx).__name__}")
        out = []
        layouts = ("num_heads, head_size, head_size", "num_heads, head_size", "num_heads")
        for h, want, label, layout in zip(hx, shapes, ("C_0", "n_0", "m_0"), layouts):
            if tuple(h.shape) != want:
                batch = "" if seq.unbatched else "batch, "
                raise checks.ShapeError(
                    f"{name}: Expected {label} of shape {want} (num_layers*num_directions, "
                    f"{batch}{layout}), got {tuple(h.shape)}")
            checks.check_tensor_dtype(name, label, h, self.weight_ih_l0)
            h = h.unsqueeze(1) if seq.unbatched else h
            if seq.packed is not None and seq.packed.sorted_indices is not None:
                h = h.index_select(1, seq.packed.sorted_indices)
            out.append(h)
        return out

    def _format(self, seq: checks.Sequence, x: Tensor, lengths: Tensor | None,
                states: tuple[Tensor, ...]):
        packed = seq.packed
        if packed is not None:
            data = torch.cat([x[t, :n] for t, n in enumerate(seq.batch_sizes)])
            if packed.unsorted_indices is not None:
                states = tuple(s.index_select(1, packed.unsorted_indices) for s in states)
            return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                  packed.unsorted_indices), states
        if seq.unbatched:
            return x[:, 0], tuple(s[:, 0] for s in states)
        return (x.transpose(0, 1) if self.batch_first else x), states

    # -- summary --------------------------------------------------------------------------
    def _lstmkit_summary(self, title: str) -> str:
        """The per-layer table of :func:`lstmkit.summary`."""
        H, NH, d = self.hidden_size, self.num_heads, self.head_size
        lines = [f"{title}: {self!r}",
                 f"  heads: {NH} of size d = {d}; matrix memory C: {NH}×{d}×{d} per layer and "
                 "direction; no recurrent weights",
                 "  layer  dir  block        W_ih      bias   params"]
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                for g in ROWS:
                    r = H if g in "qkvo" else NH
                    n = r * I + (r if self.bias else 0)
                    lines.append(f"  {layer:<5}  {'rev' if direction else 'fwd'}  "
                                 f"{g + ' (' + _ROW_NAMES[g] + ')':<11}  {f'{r}x{I}':<8}  "
                                 f"{r if self.bias else '-':<5}  {n:>7,}")
            per = (4 * H + 2 * NH) * (I + (1 if self.bias else 0))
            lines.append(f"  layer {layer} (I={I}): (4H + 2·heads)·(I{' + 1' if self.bias else ''})"
                         f" = {per:,} per direction")
        lines.append(f"  this module: {sum(p.numel() for p in self.parameters()):,} parameters")
        return "\n".join(lines)


_ROW_NAMES = {"q": "query", "k": "key", "v": "value", "o": "output", "i": "input",
              "f": "forget"}


def check_options(hidden_size: int, num_heads: object, backend: object, chunk_size: object,
                  forget_gate: object, bidirectional: object) -> None:
    """ValueError/TypeError naming what was expected, for mLSTM's own options."""
    if not isinstance(bidirectional, bool):
        raise TypeError(f"mLSTM: bidirectional must be a bool, got {bidirectional!r}")
    for arg, value in (("num_heads", num_heads), ("chunk_size", chunk_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"mLSTM: {arg} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        divisors = [k for k in range(1, min(hidden_size, 16) + 1) if hidden_size % k == 0]
        raise ValueError(
            f"mLSTM: hidden_size={hidden_size} must be divisible by num_heads={num_heads} "
            f"(each head has d = hidden_size / num_heads units); e.g. num_heads in {divisors}")
    if backend not in BACKENDS:
        raise ValueError(f"mLSTM: backend must be one of {BACKENDS}, got {backend!r}")
    if forget_gate not in cell.FORGET_GATES:
        raise ValueError(f"mLSTM: forget_gate must be one of {cell.FORGET_GATES} (f_t = σ(f̃_t) "
                         f"or exp(f̃_t)), got {forget_gate!r}")


def _reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Each sequence of (T, B, …) backwards within its own length; padding stays last."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]                        # (T, 1)
    index = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)   # (T, B)
    index = index.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def _as_steps(trace: dict[str, Tensor], seq: checks.Sequence) -> list[dict[str, Tensor]]:
    """[T, B, ·] records as the per-step rows ``Recording.add`` takes (packed: the rows of
    the sequences still running at each step)."""
    return [{k: v[t, :n] for k, v in trace.items()} for t, n in enumerate(seq.batch_sizes)]
