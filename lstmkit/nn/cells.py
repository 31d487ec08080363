"""One-step cells with torch.nn's contract: :class:`LSTMCell`, :class:`GRUCell` and
:class:`RNNCell`, drop-ins for ``torch.nn.LSTMCell``/``GRUCell``/``RNNCell``.

A cell computes one step of the same family as the sequence modules, so a cell and a
one-layer module with the same weights give the same numbers step by step. Its weights are
``weight_ih`` (G·H, I), ``weight_hh`` (G·H, H), ``bias_ih``, ``bias_hh`` (G·H,) as in
torch.nn, plus a variant's own (``peephole`` (3H,), the layer-norm gains and biases)
without a layer suffix; initialisation U(−1/√H, 1/√H) as torch.nn (layer-norm gains 1,
biases 0).

Backends: ``"auto"`` runs torch's own cell function (``torch._VF.lstm_cell`` …) for a plain
cell without masks and not recording, so the numbers are torch.nn's bit for bit (and it was
the fastest for one plain step), and otherwise the engine's fused step: one step of the time
loop of :mod:`lstmkit.ops` with its hand-derived backward, in C++ where it runs (measured
about 7 % faster per step than the equations under autograd for a peephole LSTM at B = 32,
H = 128). ``"reference"`` always runs the equations (:mod:`lstmkit.cells`); ``"fused"``,
``"fused_py"`` and ``"fused_cpp"`` choose the engine's loop as for the modules.

Regularisers inside the recurrence are given per call, since a cell does not know where
a sequence starts: ``dropout_mask`` (B, H) multiplies h_{t-1} where it feeds W_hh
(variational recurrent dropout: draw it once per sequence, e.g. with
:meth:`RecurrentCell.dropout_mask`, and pass the same mask at every step), and
``zoneout_mask`` (B, H), or a pair (d_h, d_c) for the LSTM, holds the previous state where it
is 1 (zoneout: a fresh Bernoulli(z) mask per step in training, the constant z at test; see
:meth:`RecurrentCell.zoneout_mask`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from ..cells import gru_spec, ln_gru_spec, ln_lstm_spec, lstm_spec, rnn_spec
from ..cells.base import CellSpec, LayerWeights, build
from ..cells.lstm import Greff
from ..cells.rnn import NONLINEARITIES
from ..ops.masks import StepMasks
from ..ops.philox import bernoulli_mask
from . import checks
from .regularize import drop_mask


class RecurrentCell(nn.RNNCellBase):
    """Common base of :class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell` (a
    :class:`torch.nn.RNNCellBase`, whose ``__init__`` is not called: the parameters are
    lstmkit's, read through attribute access at every call)."""

    _torch_class: type[nn.Module]
    num_layers = 1
    num_directions = 1
    proj_size = 0

    def __init__(self, cell: CellSpec, input_size: int, hidden_size: int, bias: bool,
                 device: torch.device | str | None, dtype: torch.dtype | None, *,
                 backend: str) -> None:
        nn.Module.__init__(self)
        name = type(self).__name__
        checks.check_config(name, input_size, hidden_size, 1, 0.0, 0)
        bias = bool(bias)             # torch.nn's cells take any truthy value (its own tests do)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{name}: dtype must be a floating-point dtype, got {dtype}")
        self.cell = cell
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.backend = ops.check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        H, G = hidden_size, len(cell.gate_rows)
        shapes = {"weight_ih": (G * H, input_size), "weight_hh": (G * H, H)}
        if bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        if cell.option("peephole", False):
            shapes["peephole"] = ((G - 1) * H,)
        for extra in cell.extra_params:
            if extra.present(0, bias):
                shapes[extra.name] = extra.shape(H, input_size, H)
        for key, shape in shapes.items():
            self.register_parameter(key, nn.Parameter(torch.empty(shape, **factory)))
        self._all_weights = [list(shapes)]
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        """Size of h: ``hidden_size`` (a cell has no projection)."""
        return self.hidden_size

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, as torch.nn; a family's "ones"/"zeros"
        extras (layer-norm gains and biases) start there."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            for e in self.cell.extra_params:
                if e.init != "uniform" and e.name in self._parameters:
                    getattr(self, e.name).fill_(1.0 if e.init == "ones" else 0.0)

    def layer_weights(self, layer: int = 0, direction: int = 0) -> LayerWeights:
        """The weights as the cell equations take them, through attribute access."""
        def get(name: str) -> Tensor | None:
            return getattr(self, name, None)

        return LayerWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                            None, get("peephole"),
                            tuple(get(e.name) for e in self.cell.extra_params))

    # -- masks -------------------------------------------------------------------------------
    def dropout_mask(self, batch: int, p: float) -> Tensor:
        """A variational recurrent-dropout mask (batch, H): Bernoulli(1 − p)/(1 − p). Draw
        one per sequence and pass it as ``dropout_mask`` at every step (training only)."""
        if not 0 <= p < 1:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1), got {p!r}")
        return drop_mask((batch, self.hidden_size), p, self.weight_hh)

    def zoneout_mask(self, batch: int, z: float) -> Tensor:
        """A zoneout mask (batch, H) for one step: Bernoulli(z) in training (1 keeps the
        previous value), the constant z in eval mode."""
        if not 0 <= z < 1:
            raise ValueError(f"{type(self).__name__}: z must be in [0, 1), got {z!r}")
        like = self.weight_hh
        if self.training:
            return bernoulli_mask((batch, self.hidden_size), z, 1.0, like)
        return torch.full((batch, self.hidden_size), z, dtype=like.dtype, device=like.device)

    # -- the step ----------------------------------------------------------------------------
    def _state_labels(self) -> tuple[str, ...]:
        return ("h", "c")[: self.cell.n_states]

    def _step(self, input: Tensor, hx: object, dropout_mask: Tensor | None,
              zoneout_mask: Tensor | tuple[Tensor, Tensor] | None) -> tuple[Tensor, ...]:
        name = type(self).__name__
        w = self.layer_weights()
        x, unbatched = _check_input(name, input, self.input_size, w.w_ih)
        B, H = x.shape[0], self.hidden_size
        state = _check_hx(name, hx, self._state_labels(), B, H, unbatched, w.w_ih)
        masks = _masks(name, dropout_mask, zoneout_mask, self.cell.n_states, B, H, x)
        recorder = self._recorder
        if (masks is None and recorder is None and self.backend == "auto"
                and not self._variant_options()):
            out = self._torch_step(x, state, w)           # torch's own cell function
        elif B == 0:
            out = state
        else:
            run = ops.select_backend(self.backend, self.cell, x, [B], masked=masks is not None,
                                     recording=recorder is not None)
            result = run(self.cell, x, [B], state, w, masks=masks, record=recorder is not None)
            out = tuple(result[1])
            if recorder is not None:                    # one step per call (Recording.steps)
                recorder.add(self, 0, 0, result[2], checks.Sequence(x, [B], B, None, unbatched))
        return tuple(s.squeeze(0) for s in out) if unbatched else tuple(out)

    _recorder = None          # set by ``lstmkit.record`` while recording

    def _torch_step(self, x: Tensor, state: tuple[Tensor, ...], w: LayerWeights) -> tuple:
        """The step by torch's own cell function (plain configurations); every cell class
        (LSTMCell, GRUCell, RNNCell) defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no torch cell function")

    # -- interchange with torch.nn ---------------------------------------------------------
    def _variant_options(self) -> dict[str, object]:
        return {}

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` cell with these weights (plain configurations only)."""
        options = self._variant_options()
        if options:
            raise ValueError(f"{type(self).__name__} with {options} has no torch.nn "
                             "equivalent; only plain configurations convert")
        p = self.weight_ih
        module = self._torch_class(self.input_size, self.hidden_size, bias=self.bias,
                                   device=p.device, dtype=p.dtype, **self._torch_extra())
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def _torch_extra(self) -> dict:
        return {}

    @classmethod
    def from_torch(cls, module: nn.Module, *, backend: str = "auto"):
        """The lstmkit cell equal to a ``torch.nn`` one, weights included."""
        if type(module) is not cls._torch_class:
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn."
                            f"{cls._torch_class.__name__}, got {type(module).__name__}")
        p = module.weight_ih
        extra = {"nonlinearity": module.nonlinearity} if hasattr(module, "nonlinearity") else {}
        ours = cls(module.input_size, module.hidden_size, bias=module.bias, device=p.device,
                   dtype=p.dtype, backend=backend, **extra)
        ours.load_state_dict(module.state_dict())
        return ours.train(module.training)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += f", bias={self.bias}"
        options = dict(self._variant_options())
        if self.backend != "auto":
            options["backend"] = self.backend
        return s + "".join(f", {k}={v!r}" for k, v in options.items())

    # -- pickling: plain data (see RecurrentBase) -------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["cell"] = self.cell.config()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if isinstance(state.get("cell"), tuple):
            state["cell"] = build(*state["cell"])
        nn.Module.__setstate__(self, state)


class LSTMCell(RecurrentCell):
    r"""One LSTM step, a drop-in for :class:`torch.nn.LSTMCell` (equations and variant
    keywords as :class:`lstmkit.LSTM`; see :mod:`lstmkit.nn.cells` for backends and masks).

    ``cell(input, hx=None)`` with input ``(B, I)`` or unbatched ``(I,)`` and ``hx = (h, c)``
    (zeros if omitted) returns ``(h_1, c_1)``. Variant keywords: ``peephole``, ``coupled``,
    ``input_gate``, ``forget_gate``, ``output_gate``, ``input_activation``,
    ``cell_activation`` (Greff et al. 2015) and ``layer_norm`` (Ba et al. 2016).
    ``gate_recurrence`` (FGR) is refused: it carries the previous step's gates, which
    ``(h, c)`` cannot hold; use :class:`lstmkit.LSTM` over the sequence.
    """

    _torch_class = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, peephole: bool = False, coupled: bool = False, input_gate: bool = True,
                 forget_gate: bool = True, output_gate: bool = True,
                 input_activation: str | None = "tanh", cell_activation: str | None = "tanh",
                 gate_recurrence: bool = False, layer_norm: bool = False,
                 backend: str = "auto") -> None:
        if gate_recurrence:
            raise ValueError("LSTMCell does not support gate_recurrence=True: FGR feeds the "
                             "previous step's gates back, a state (h, c) cannot carry; use "
                             "lstmkit.LSTM(gate_recurrence=True) over the whole sequence")
        for key, act in (("input_activation", input_activation),
                         ("cell_activation", cell_activation)):
            if act not in ("tanh", None):
                raise ValueError(f"LSTMCell: {key} must be 'tanh' or None, got {act!r}")
        greff = Greff(bool(input_gate), bool(forget_gate), bool(output_gate),
                      input_activation is not None, cell_activation is not None, False)
        self._options = {k: v for k, v in (
            ("peephole", bool(peephole)), ("coupled", bool(coupled)),
            ("input_gate", bool(input_gate)), ("forget_gate", bool(forget_gate)),
            ("output_gate", bool(output_gate)), ("input_activation", input_activation),
            ("cell_activation", cell_activation), ("layer_norm", bool(layer_norm)))
            if v != {"input_gate": True, "forget_gate": True, "output_gate": True,
                     "input_activation": "tanh", "cell_activation": "tanh"}.get(k, False)}
        if layer_norm and (peephole or coupled or greff != Greff()):
            raise ValueError("LSTMCell(layer_norm=True) is the LN-LSTM of Ba et al. 2016 "
                             "without other variants")
        cell = ln_lstm_spec() if layer_norm else lstm_spec(peephole=bool(peephole),
                                                           coupled=bool(coupled), greff=greff)
        super().__init__(cell, input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, *,
                dropout_mask: Tensor | None = None,
                zoneout_mask: Tensor | tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        h, c = self._step(input, hx, dropout_mask, zoneout_mask)
        return h, c

    def _variant_options(self) -> dict[str, object]:
        return dict(self._options)

    def _torch_step(self, x, state, w):
        return tuple(torch._VF.lstm_cell(x, state, w.w_ih, w.w_hh, w.b_ih, w.b_hh))


class GRUCell(RecurrentCell):
    r"""One GRU step, a drop-in for :class:`torch.nn.GRUCell` (equations as
    :class:`lstmkit.GRU`): ``cell(input, hx=None)`` returns ``h_1``. Keywords:
    ``reset_after`` (False: the reset gate before W_hn, Cho et al. 2014) and ``layer_norm``.
    """

    _torch_class = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, reset_after: bool = True, layer_norm: bool = False,
                 backend: str = "auto") -> None:
        self.reset_after, self.layer_norm = bool(reset_after), bool(layer_norm)
        if layer_norm and not reset_after:
            raise ValueError("GRUCell(layer_norm=True) normalises W_hn h inside the reset "
                             "gate's product, so it needs reset_after=True")
        cell = ln_gru_spec() if layer_norm else gru_spec(reset_after=self.reset_after)
        super().__init__(cell, input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Tensor | None = None, *,
                dropout_mask: Tensor | None = None, zoneout_mask: Tensor | None = None
                ) -> Tensor:
        return self._step(input, hx, dropout_mask, zoneout_mask)[0]

    def _variant_options(self) -> dict[str, object]:
        options: dict[str, object] = {}
        if not self.reset_after:
            options["reset_after"] = False
        if self.layer_norm:
            options["layer_norm"] = True
        return options

    def _torch_step(self, x, state, w):
        return (torch._VF.gru_cell(x, state[0], w.w_ih, w.w_hh, w.b_ih, w.b_hh),)


class RNNCell(RecurrentCell):
    r"""One Elman RNN step, a drop-in for :class:`torch.nn.RNNCell`:
    ``h_1 = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or ReLU)."""

    _torch_class = nn.RNNCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, backend: str = "auto") -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"RNNCell: Unknown nonlinearity {nonlinearity!r}; nonlinearity must "
                             f"be one of {sorted(NONLINEARITIES)}")
        self.nonlinearity = nonlinearity
        super().__init__(rnn_spec(nonlinearity=nonlinearity), input_size, hidden_size, bias,
                         device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Tensor | None = None, *,
                dropout_mask: Tensor | None = None, zoneout_mask: Tensor | None = None
                ) -> Tensor:
        return self._step(input, hx, dropout_mask, zoneout_mask)[0]

    def _torch_extra(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def _torch_step(self, x, state, w):
        fn = torch._VF.rnn_relu_cell if self.nonlinearity == "relu" else torch._VF.rnn_tanh_cell
        return (fn(x, state[0], w.w_ih, w.w_hh, w.b_ih, w.b_hh),)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"


# -- checks -------------------------------------------------------------------------------
def _check_input(name: str, input: object, input_size: int, param: Tensor
                 ) -> tuple[Tensor, bool]:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead "
                         f"(shape {tuple(input.shape)}; a cell takes one step (B, "
                         f"input_size={input_size}) or (input_size,))")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    if x.shape[1] != input_size:
        raise checks.ShapeError(f"{name}: input has inconsistent input_size: got "
                                f"{x.shape[1]} expected {input_size}")
    checks.check_tensor_dtype(name, "input", x, param)
    return x, unbatched


def _check_hx(name: str, hx: object, labels: tuple[str, ...], B: int, H: int,
              unbatched: bool, param: Tensor) -> tuple[Tensor, ...]:
    if hx is None:
        return tuple(param.new_zeros(B, H) for _ in labels)
    if len(labels) == 1:
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
        states = (hx,)
    else:
        if (not isinstance(hx, (tuple, list)) or len(hx) != len(labels)
                or not all(isinstance(h, Tensor) for h in hx)):
            raise TypeError(f"{name}: hx must be a tuple ({', '.join(labels)}) of Tensors, "
                            f"got {type(hx).__name__}")
        states = tuple(hx)
    want = (H,) if unbatched else (B, H)
    out = []
    for h, label in zip(states, labels):
        if tuple(h.shape) != want:
            raise checks.ShapeError(f"{name}: Expected hidden size {want} for {label} (batch, "
                                    f"hidden_size) to go with the input, got {tuple(h.shape)}")
        checks.check_tensor_dtype(name, label, h, param)
        out.append(h.unsqueeze(0) if unbatched else h)
    return tuple(out)


def _masks(name: str, dropout_mask: Tensor | None, zoneout_mask: object, n_states: int,
           B: int, H: int, x: Tensor) -> StepMasks | None:
    if dropout_mask is None and zoneout_mask is None:
        return None
    if isinstance(zoneout_mask, (tuple, list)):
        if n_states != 2 or len(zoneout_mask) != 2:
            raise ValueError(f"{name}: zoneout_mask must be a tensor (B, H)"
                             + (" or a pair (d_h, d_c)" if n_states == 2 else ""))
        zone_h, zone_c = zoneout_mask
    else:
        zone_h = zone_c = zoneout_mask
    for what, m in (("dropout_mask", dropout_mask), ("zoneout_mask", zone_h),
                    ("zoneout_mask", zone_c)):
        if m is not None and (not isinstance(m, Tensor) or tuple(m.shape) != (B, H)):
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise checks.ShapeError(f"{name}: {what} must be a tensor of shape (batch, "
                                    f"hidden_size) = {(B, H)}, got {got}")
    def cast(m: Tensor | None) -> Tensor | None:
        return None if m is None else m.to(x.dtype)

    return StepMasks(cast(dropout_mask), cast(zone_h), cast(zone_c) if n_states == 2 else None)

