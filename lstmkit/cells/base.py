"""What every cell family declares once, and the registry of families.

A *cell* is one time step of a recurrent network written as its equations:
``step(x_t, state, w, *side) -> (new_state, gates)``. ``state`` is a tuple whose first
entry is the output ``h_t`` of the step (``(h, c)`` for LSTM, ``(h,)`` otherwise);
``gates`` maps gate names to their activations at this step, for recording. This is the
reference: ``lstmkit.ops.reference`` differentiates it by autograd.

A family also declares, in the same file as its equations, its *fused* step: the pointwise
forward and the hand-derived backward of one time step (:class:`FusedCell`, torch
operations), which the one time loop of :mod:`lstmkit.ops.loops` runs, and the same pair in
C++ (``lstmkit/ops/csrc/cells/<family>.h``) for the one C++ loop. Everything else — packed
rows, both directions, recurrent dropout and zoneout, projections, recording, the chunked
backward, the autograd Function, the ``torch.library`` custom op and the dispatch — is
shared by every family (``lstmkit.ops``); adding a family adds nothing there.

Flat layout (as a ``PackedSequence``): N = Σ batch_sizes rows, step t's rows after step
t−1's; B = batch_sizes[0] sequences; H the hidden size; R the width of h (H, or P with a
projection); G the number of H-wide gate blocks in the rows of W_ih.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class LayerWeights(NamedTuple):
    """The parameters of one layer and direction, in torch.nn's layout.

    ``w_ih`` (G·H, I), ``w_hh`` (G·H, H or P), ``b_ih``/``b_hh`` (G·H,) or None,
    ``w_hr`` (P, H) with projections, ``peephole`` (3H,) or (2H,) for coupled LSTM.
    G is the number of gate blocks stacked in the rows (4 for LSTM i|f|g|o, 3 for
    coupled LSTM i|g|o, 3 for GRU r|z|n, 1 for RNN). ``extra`` holds a family's further
    parameters, in the order of :attr:`CellSpec.extra_params` (None where a parameter does
    not exist in this layer, e.g. the depth gate of the lowest Depth-Gated layer).
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None
    w_hr: Tensor | None = None
    peephole: Tensor | None = None
    extra: tuple[Tensor | None, ...] = ()


WEIGHT_FIELDS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peephole")


class ExtraParam(NamedTuple):
    """A family's parameter beyond torch.nn's layout; see :attr:`CellSpec.extra_params`.

    ``shape(H, I, R)`` gives its shape from the hidden size, the layer's input size and
    the width of h; ``init`` its initial value ("uniform" as the other weights, "ones" or
    "zeros"); ``present(layer, bias)`` whether layer ``layer`` has it (e.g. only layers
    above the first, or only with ``bias=True``).
    """

    name: str
    shape: Callable[[int, int, int], tuple[int, ...]]
    init: str = "uniform"
    present: Callable[[int, bool], bool] = lambda layer, bias: True


class StateSpec(NamedTuple):
    """One carried state: its name and width as a function of (H, R)."""

    name: str
    width: Callable[[int, int], int]


H_STATE = StateSpec("h", lambda H, R: R)
C_STATE = StateSpec("c", lambda H, R: H)

State = tuple[Tensor, ...]
Gates = dict[str, Tensor]
Step = Callable[..., tuple[State, Gates]]


@dataclass(frozen=True)
class CellSpec:
    """A configured cell: its equations, its fused step, and what the loops need to know.

    ``gate_rows`` names the row blocks of ``w_ih``/``w_hh`` in order; ``gates`` the
    activations a step reports (for coupled LSTM ``f`` is reported though it has no rows).
    ``input_rows``, where given, names the row blocks of ``w_ih`` (and ``b_ih``) when they
    differ from those of ``w_hh`` (``gate_rows``): a family in which not every gate reads
    x_t through a weight, or not every gate reads h_{t-1} (the MUTs of Jozefowicz et al.).
    ``n_states`` is the number of states the module exposes (2 for (h, c), 1 for (h,));
    ``states`` lists every carried state, the exposed ones first, then internal ones that
    start at zero and are not returned (e.g. the previous gate activations of FGR).
    ``extra_params`` declares a family's further parameters per layer and direction,
    registered by the modules as ``{name}_l{k}[_reverse]`` after the standard ones.
    ``options`` are the keywords that rebuild the spec with :func:`build`.

    Capabilities: ``fused`` (None: the family has only the reference loop), ``native``
    (torch's own LSTM kernel computes it), ``masks`` (recurrent dropout and zoneout take
    effect inside its recurrence), ``projection`` (``proj_size`` allowed),
    ``layer_link`` (the index of a state whose whole sequence a layer passes to the next
    layer as a side input, e.g. the cell of a Depth-Gated LSTM), ``onnx`` (the name of the
    ONNX operator that computes it, or None), ``onednn`` (the oneDNN RNN primitive that
    computes it: "lstm", "lbr_gru", "rnn_tanh" or "rnn_relu"; see :mod:`lstmkit.ops.onednn`).
    ``layout_inputs(batch_sizes, reverse,
    device)`` computes per-row side inputs from the layout (see :meth:`schedule`).
    ``scan(backend, x)``, for a family whose recurrence is linear in its state with
    coefficients from x_t alone (h_t = a_t ⊙ h_{t-1} + b_t: minGRU, minLSTM), returns the
    whole-layer function (the signature of ``ops.reference.run_layer``) that every backend
    but ``"reference"`` runs instead of a step loop (see :mod:`lstmkit.ops.scan`).
    """

    family: str
    step: Step
    gate_rows: tuple[str, ...]
    gates: tuple[str, ...]
    n_states: int
    input_rows: tuple[str, ...] | None = None
    options: tuple[tuple[str, object], ...] = ()
    extra_params: tuple[ExtraParam, ...] = ()
    states: tuple[StateSpec, ...] = (H_STATE,)
    fused: FusedCell | None = field(default=None, compare=False, hash=False)
    native: bool = False
    projection: bool = False
    layer_link: int | None = None
    onnx: str | None = None
    onednn: str | None = None
    layout_inputs: Callable[[list[int], bool, torch.device], list[Tensor]] | None = field(
        default=None, compare=False, hash=False)
    scan: Callable[..., Callable[..., tuple]] | None = field(default=None, compare=False,
                                                             hash=False)

    @property
    def x_rows(self) -> tuple[str, ...]:
        """The row blocks of ``w_ih``: ``input_rows``, or ``gate_rows`` by default."""
        return self.gate_rows if self.input_rows is None else self.input_rows

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)

    def config(self) -> tuple[str, tuple[tuple[str, object], ...]]:
        """The family and options as plain data (named tuples as tuples), such that
        ``build(*spec.config())`` rebuilds the spec (e.g. for pickling)."""
        return self.family, tuple((k, tuple(v) if isinstance(v, tuple) else v)
                                  for k, v in self.options)

    @property
    def key(self) -> str:
        """The family and options as text (for the custom op and caches)."""
        return f"{self.family}:{self.options!r}"

    def schedule(self, batch_sizes: list[int], reverse: bool, device: torch.device
                 ) -> list[Tensor]:
        """Per-row side inputs the family computes from the layout alone (e.g. which
        Clockwork modules tick at each row); they come before any other side input."""
        return [] if self.layout_inputs is None else self.layout_inputs(batch_sizes, reverse,
                                                                          device)


# -- the fused step, in torch ------------------------------------------------------------------
class ForwardStep:
    """One time step of the fused forward, as :meth:`FusedCell.forward_step` sees it.

    ``a`` (n, G·H): the input projection of this step's rows (biases folded as
    :meth:`FusedCell.project` did); the step overwrites it with what its backward needs
    (usually the gate activations). ``h_in`` (n, R): ĥ_{t-1}, the input of the recurrent
    GEMMs (m ⊙ h_{t-1} with recurrent dropout). ``prev[k]`` (n, width_k): the states
    before the step (never written). ``next[k]`` (n, width_k): where the step writes its
    new states; ``next[0]`` is H wide (the cell output before the projection) when the
    layer projects. ``saved``, ``side``: this step's rows of the family's saved buffers and
    side inputs. ``w``: the family's loop weights (:meth:`FusedCell.loop_weights`).
    """

    __slots__ = ("a", "h_in", "prev", "next", "saved", "side", "w")

    def __init__(self, a, h_in, prev, next, saved, side, w):
        self.a, self.h_in, self.prev, self.next = a, h_in, prev, next
        self.saved, self.side, self.w = saved, side, w


class BackwardStep:
    """One time step of the fused backward, as :meth:`FusedCell.backward_step` sees it.

    ``gates`` (n, G·H): what the forward step left in ``a``; ``dA`` (n, G·H): where the
    step writes ∂L/∂a (the gradient of the input projection's rows). ``dnext[k]``: ∂L/∂ of
    the new state k as the step produced it (zoneout and the projection already undone:
    ``dnext[0]`` is ∂L/∂m with a projection). ``next[k]``: the states after the step as
    stored — after zoneout where ``zoned[k]`` (recompute a candidate from the gates if the
    backward needs it). ``prev``, ``h_in``, ``saved``, ``side``, ``w`` as in
    :class:`ForwardStep`; ``grads``: this step's rows of the family's gradient buffers.

    :meth:`FusedCell.backward_step` returns ``(dprev, dh_in)``: ∂L/∂ of each previous
    state through the step's direct paths (None: no direct path), and ∂L/∂ĥ_{t-1}, the
    gradient through the recurrent GEMMs (the loop applies the dropout mask to it).
    """

    __slots__ = ("gates", "dA", "dnext", "next", "zoned", "prev", "h_in", "saved", "side",
                 "w", "grads")

    def __init__(self, gates, dA, dnext, next, zoned, prev, h_in, saved, side, w, grads):
        self.gates, self.dA, self.dnext, self.next, self.zoned = gates, dA, dnext, next, zoned
        self.prev, self.h_in, self.saved, self.side = prev, h_in, saved, side
        self.w, self.grads = w, grads


@dataclass
class Chunk:
    """The rows [r0, r1) of one backward chunk, for :meth:`FusedCell.chunk_grads`:
    ``dA`` and the family's gradient buffers of these rows, and the forward's tensors
    sliced to them (``prev[k]`` the states each row started from, ``h_in`` ĥ_{t-1})."""

    r0: int
    r1: int
    x: Tensor
    dA: Tensor
    grads: list[Tensor]
    gates: Tensor
    seqs: list[Tensor]
    prev: list[Tensor]
    h_in: Tensor
    saved: list[Tensor]
    side: list[Tensor]
    zoned: tuple[bool, ...]


class Grads:
    """Gradient accumulators of one layer call: ``dx`` (written by rows), ``w`` the
    parameter gradients by :data:`WEIGHT_FIELDS` name and ``extra`` by index, ``side``
    the side inputs'. An entry is None where no gradient is wanted; :meth:`add` sums."""

    def __init__(self, dx: Tensor | None, w: dict[str, Tensor | None],
                 extra: list[Tensor | None], side: list[Tensor | None]):
        self.dx, self.w, self.extra, self.side = dx, w, extra, side

    def add(self, name: str, value: Tensor) -> None:
        if self.w.get(name) is not None:
            self.w[name] += value

    def add_extra(self, k: int, value: Tensor) -> None:
        if self.extra[k] is not None:
            self.extra[k] += value


def new_buffer(like: Tensor, *shape: int) -> Tensor:
    """An uninitialised per-row buffer of a fused layer call (``like``'s dtype and device):
    :meth:`FusedCell.saved_buffers` and :meth:`FusedCell.grad_buffers` allocate with it, so
    the fused path can hand out recycled memory (:mod:`lstmkit.ops.workspace`)."""
    from ..ops import workspace
    return workspace.empty(shape, like)


class FusedCell:
    """A family's fused step in torch, and the chunk-level parts of its BPTT.

    The defaults fit a cell whose pre-activations are ``a_t = x_t W_ihᵀ + b_ih + b_hh +
    ĥ_{t-1} W_hhᵀ`` (LSTM, RNN): the input projection is one GEMM for all steps, and the
    weight gradients are ``dW_ih = dAᵀ x``, ``dW_hh = dAᵀ Ĥ_prev``, ``db = Σ dA``,
    ``dx = dA W_ih``. A family overrides what differs. The C++ functor of the family
    (``csrc/cells/<family>.h``) implements the same two steps with the same buffers.
    """

    #: the C++ name of the family (``csrc/cells/<name>.h``); None: no C++ kernel
    cpp: str | None = None
    #: the forward writes h_t into ``a`` as well, so the output may share its buffer
    output_in_gates: bool = False
    #: with no gradient wanted, the C++ loop may project the input a block of steps at a
    #: time and keep only the output's sequence (``forward_inference`` in
    #: ``csrc/engine.cpp``): true for a family whose input side is this class's
    #: :meth:`project` (``x W_ihᵀ`` plus :meth:`input_bias`) and whose C++ step, given no
    #: saved buffers, reads no per-row buffer but ``a`` and the states
    blocked_inference: bool = False
    #: the last this many of :meth:`grad_buffers` are not per row but sums over the chunk's
    #: rows that every backward step adds into (zeroed by :meth:`grad_buffers`): the loops
    #: pass them whole to each step, not sliced to its rows
    sum_buffers: int = 0

    # -- per call ---------------------------------------------------------------------------
    def project(self, spec: CellSpec, x: Tensor, w: LayerWeights, side: list[Tensor]
                ) -> tuple[Tensor, tuple]:
        """The input side of every step at once: returns ``a`` (N, G·H) and what
        :meth:`chunk_grads` needs of this computation."""
        # the engine's GEMM while a C++ layer runs (lstmkit.ops.gemm)
        from ..ops import gemm
        return gemm.addmm(self.input_bias(spec, w), x, w.w_ih.t()), ()

    def input_bias(self, spec: CellSpec, w: LayerWeights) -> Tensor | None:
        """The bias :meth:`project` adds to ``x W_ihᵀ`` (the inference path adds it too)."""
        return None if w.b_ih is None else w.b_ih + w.b_hh

    def loop_weights(self, spec: CellSpec, w: LayerWeights) -> list[Tensor | None]:
        """The tensors the step uses at every step, contiguous, in the order the C++
        functor reads them."""
        return [w.w_hh.contiguous()]

    def saved_buffers(self, spec: CellSpec, a: Tensor, H: int) -> list[Tensor]:
        """Per-row buffers the forward step fills for the backward (beside ``a``)."""
        return []

    def grad_buffers(self, spec: CellSpec, rows: int, like: Tensor, H: int,
                     side: list[Tensor]) -> list[Tensor]:
        """Per-row buffers the backward step fills for :meth:`chunk_grads`."""
        return []

    def cpp_options(self, spec: CellSpec) -> list[float]:
        """The options as numbers, in the order the C++ functor reads them."""
        return []

    def chunk_scale(self, spec: CellSpec, w: LayerWeights) -> int:
        """Backward chunks hold at least this many times
        :data:`lstmkit.ops.fused.MIN_CHUNK_ROWS` rows (see
        :func:`~lstmkit.ops.fused.backward_chunks`). Fewer, longer chunks save the fixed
        cost of each (its GEMM calls and Python work) for the memory of a longer ``dA``;
        a family raises it where its peak memory stays well under torch.nn's."""
        return 1

    # -- per step ---------------------------------------------------------------------------
    def forward_step(self, spec: CellSpec, s: ForwardStep) -> None:
        raise NotImplementedError

    def backward_step(self, spec: CellSpec, s: BackwardStep
                      ) -> tuple[list[Tensor | None], Tensor | None]:
        raise NotImplementedError

    # -- per backward chunk -------------------------------------------------------------------
    def chunk_grads(self, spec: CellSpec, c: Chunk, w: LayerWeights, aux: tuple,
                    g: Grads) -> None:
        """Add this chunk's part of every gradient that sums over rows (and write ``dx``
        of its rows)."""
        from ..ops import gemm
        self.input_grads(c, w, c.dA, g)
        if g.w["w_hh"] is not None:
            gemm.matmul_into(g.w["w_hh"], c.dA.t(), c.h_in, accumulate=True)

    @staticmethod
    def input_grads(c: Chunk, w: LayerWeights, dA: Tensor, g: Grads,
                    b_hh: bool = True) -> None:
        """dx = dA W_ih, dW_ih += dAᵀ x, db_ih += Σ dA (and db_hh: both biases folded)."""
        from ..ops import gemm
        if g.dx is not None:
            gemm.matmul_into(g.dx[c.r0:c.r1], dA, w.w_ih)
        if g.w["w_ih"] is not None:
            gemm.matmul_into(g.w["w_ih"], dA.t(), c.x, accumulate=True)
        if g.w["b_ih"] is not None or (b_hh and g.w["b_hh"] is not None):
            db = dA.sum(0)
            g.add("b_ih", db)
            if b_hh:
                g.add("b_hh", db)

    def trace_gates(self, spec: CellSpec, gates: Tensor, H: int) -> dict[str, Tensor]:
        """The recorded gate activations of one step's rows of the saved ``gates``."""
        if not spec.gates:
            return {}
        return dict(zip(spec.gate_rows, gates.split(H, dim=1)))


# -- the registry ------------------------------------------------------------------------------
_FAMILIES: dict[str, Callable[..., CellSpec]] = {}


def register(family: str, build_spec: Callable[..., CellSpec]) -> Callable[..., CellSpec]:
    """Declare a family: ``build_spec(**options)`` returns its :class:`CellSpec`."""
    _FAMILIES[family] = build_spec
    return build_spec


def families() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def builder(family: str) -> Callable[..., CellSpec]:
    """The spec builder ``family`` was registered with (its keywords are the options)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown cell family {family!r}; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES[family]


def family_module(family: str):
    """The module that declares ``family`` (its docstring holds the equations)."""
    import sys
    return sys.modules[builder(family).__module__]


def build(family: str, options: tuple[tuple[str, object], ...] | dict) -> CellSpec:
    """The spec of ``family`` with ``options`` (as in :attr:`CellSpec.options`)."""
    return builder(family)(**dict(options))
