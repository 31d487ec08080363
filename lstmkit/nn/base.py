"""The module front end shared by every recurrent module (LSTM, GRU, RNN, ClockworkRNN,
DepthGatedLSTM): parameters in torch.nn's layout, stacking, both directions, dropout
between layers, PackedSequence, initial states, regularisers and backend dispatch. The math
lives in ``lstmkit.cells``, the loops in ``lstmkit.ops``; a cell family's declared
capabilities (e.g. ``layer_link``) are all this module reads of it."""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from ..cells.base import CellSpec, LayerWeights, build
from . import checks, regularize

_TORCH_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


class RecurrentBase(nn.RNNBase):
    """Common base of the recurrent modules: :class:`lstmkit.LSTM`, :class:`lstmkit.GRU`,
    :class:`lstmkit.RNN`, :class:`lstmkit.ClockworkRNN`, :class:`lstmkit.DepthGatedLSTM` and
    the :func:`~lstmkit.nn.family.module_for` classes.

    It is a :class:`torch.nn.RNNBase` (``isinstance`` holds, as code written for torch.nn
    expects), but none of torch's flat-weight machinery runs: ``RNNBase.__init__`` is not
    called, the weights are read through attribute access at every call (so
    parametrizations, weight norm and weight-drop wrappers that replace ``weight_hh_l0``
    take effect), and ``_flat_weights`` is derived from ``_flat_weights_names`` on each read.
    Dynamo treats it as an ordinary module (it refuses only ``nn.LSTM``/``GRU``/``RNN``
    themselves).
    """

    _recorder = None          # set by ``lstmkit.record`` while recording; None costs nothing

    def __init__(
        self,
        cell: CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
        regularization: regularize.Regularization | None = None,
    ) -> None:
        nn.Module.__init__(self)               # not RNNBase.__init__: no flat weights
        name = type(self).__name__
        checks.check_config(name, input_size, hidden_size, num_layers, dropout, proj_size,
                            bias=bias, batch_first=batch_first)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{name}: dtype must be a floating-point dtype, got {dtype}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{name}: dropout={dropout} has no effect with num_layers=1: it applies "
                "between stacked layers, to the outputs of all but the last", stacklevel=3)
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self.mode = self._torch_mode()
        self.backend = ops.check_backend(backend)
        self.regularization = regularization or regularize.Regularization()
        self._build_parameters({"device": device, "dtype": dtype})
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        """2 if ``bidirectional`` else 1, as torch.nn's recurrent modules count directions."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of h_t: ``proj_size`` if projecting, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _build_parameters(self, factory: dict) -> None:
        """torch.nn's parameters of every layer and direction first, in torch.nn's order (so
        the same seed gives the same weights as torch.nn), then a variant's own (peepholes,
        the family's extra parameters), layer by layer."""
        H, G = self.hidden_size, len(self.cell.gate_rows)
        G_x = len(self.cell.x_rows)                       # row blocks of W_ih (usually G)
        peephole = self.cell.option("peephole", False)
        standard, variant = [], []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                size_in = self.input_size if layer == 0 else self.output_size * self.num_directions
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (G_x * H, size_in),
                          "weight_hh": (G * H, self.output_size)}
                if self.bias:
                    shapes.update(bias_ih=(G_x * H,), bias_hh=(G * H,))
                if self.proj_size:
                    shapes["weight_hr"] = (self.proj_size, H)
                extras = {}
                if peephole:                  # i, f, o (coupled: i, o)
                    extras["peephole"] = ((len(self.cell.gate_rows) - 1) * H,)
                for extra in self.cell.extra_params:
                    if extra.present(layer, self.bias):
                        extras[extra.name] = extra.shape(H, size_in, self.output_size)
                standard.append({key + sfx: shape for key, shape in shapes.items()})
                variant.append({key + sfx: shape for key, shape in extras.items()})
        for group in (*standard, *variant):
            for name, shape in group.items():
                self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self._all_weights = [[*a, *b] for a, b in zip(standard, variant)]

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, as torch.nn.

        Same order as torch.nn, so the same seed gives the same weights. A family's extra
        parameters declared "ones" or "zeros" (e.g. layer-norm gains and biases) start there.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        fixed = {e.name: e.init for e in self.cell.extra_params if e.init != "uniform"}
        if fixed:
            with torch.no_grad():
                for names in self._all_weights:
                    for name in names:
                        init = fixed.get(name.rsplit("_l", 1)[0])
                        if init is not None:
                            getattr(self, name).fill_(1.0 if init == "ones" else 0.0)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer and direction, as torch.nn's ``all_weights``."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    @property
    def _flat_weights_names(self) -> list[str]:
        """Every weight's name, layer by layer and direction by direction (torch.nn's order,
        then a variant's own per layer and direction)."""
        return [n for names in self._all_weights for n in names]

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """The weights as attribute access gives them now (parametrized, weight-dropped, …);
        assigning to it has no effect, since lstmkit reads the attributes at every call."""
        return [getattr(self, n, None) for n in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, value: object) -> None:
        pass                                  # derived: see the getter

    def _init_flat_weights(self) -> None:
        """Nothing to refresh: :attr:`_flat_weights` is read from the attributes."""

    def _update_flat_weights(self) -> None:
        """Nothing to refresh (see :meth:`_init_flat_weights`)."""

    def _weights_have_changed(self) -> bool:
        return False

    def _apply(self, fn, recurse=True):
        return nn.Module._apply(self, fn, recurse)

    def _torch_mode(self) -> str:
        """torch.nn's ``mode`` string ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"); other families
        give their class name."""
        return type(self).__name__

    def layer_weights(self, layer: int, direction: int) -> LayerWeights:
        """The parameters of one layer and direction as the cells take them (None for a
        family's extra parameter this layer does not have), read through attribute access
        so that parametrizations and weight-drop wrappers apply."""
        sfx = f"_l{layer}" + ("_reverse" if direction else "")

        def get(name: str) -> Tensor | None:
            return getattr(self, name + sfx, None)

        extra = tuple(get(e.name) for e in self.cell.extra_params)
        return LayerWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                            get("weight_hr"), get("peephole"), extra)

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn (lstmkit keeps no flat cuDNN buffer)."""

    # -- pickling: plain data only, so torch.load(weights_only=True) can rebuild it ---------
    def __getstate__(self) -> dict:
        """The module's state with the cell as (family, options) and the regularisers as a
        dict: no functions or partials, so the safe loader needs only the module class."""
        state = self.__dict__.copy()
        state["cell"] = self.cell.config()
        state["regularization"] = dataclasses.asdict(self.regularization)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        cell = state.get("cell")
        if isinstance(cell, tuple):
            family, options = cell
            state["cell"] = build(family, options)
        reg = state.get("regularization")
        if isinstance(reg, dict):
            state["regularization"] = regularize.Regularization(**reg)
        nn.Module.__setstate__(self, state)

    # -- forward ------------------------------------------------------------------------
    def _state_shapes(self) -> list[tuple[int, int]]:
        n = self.num_layers * self.num_directions
        shapes = [(n, self.output_size)]
        if self.cell.n_states == 2:
            shapes.append((n, self.hidden_size))
        return shapes

    def _state_labels(self) -> tuple[str, ...]:
        return ("h_0", "c_0")[: self.cell.n_states]

    def _runs_as_torch(self) -> bool:
        """While tracing, under CPU autocast or in a plain ``torch.onnx.export``, a plain
        configuration runs torch.nn's own forward on these parameters: the same function,
        traced into one ``aten::lstm`` (``gru``, ``rnn_*``) node that runs on any length and
        batch size as torch.nn's trace does, autocast as torch.nn does it, and exported to
        ONNX's own operator as torch.nn's is. Only with ``backend="auto"``."""
        if not (torch.jit.is_tracing() or torch.is_autocast_enabled("cpu")
                or ops.plain_onnx_export()):
            return False
        return (self.backend == "auto" and self._torch_mode() in _TORCH_MODES
                and not self._variant_options() and not self.regularization.active
                and self._recorder is None)

    def _forward(self, input: Tensor | PackedSequence, hx: object):
        if self._runs_as_torch():
            output, state = self._torch_class.forward(self, input, hx)
            return output, (state if isinstance(state, tuple) else (state,))
        name = type(self).__name__
        param = self.weight_ih_l0
        seq = checks.prepare_input(name, input, self.input_size, self.batch_first, param)
        state0 = checks.prepare_hx(name, hx, seq, self._state_shapes(), self._state_labels(), param)
        if seq.batch == 0:                     # an empty batch: empty outputs, as torch.nn,
            width = self.output_size * self.num_directions   # in the graph of x and weights
            link = sum((w[:0].sum() for w in self._flat_weights if w is not None), seq.x[:0].sum())
            return self._format(seq, seq.x.new_zeros(0, width) + link,
                                tuple(s + link for s in state0))
        recorder = self._recorder
        reg = self.regularization
        run_layer = ops.select_backend(self.backend, self.cell, seq.x, seq.batch_sizes,
                                       projected=bool(self.proj_size),
                                       recording=recorder is not None,
                                       masked=reg.in_recurrence(self.training),
                                       hidden=self.hidden_size)
        link = self.cell.layer_link        # a state sequence that feeds the layer above
        D, x = self.num_directions, seq.x
        below: list[Tensor | None] = [None] * D
        finals: list[list[Tensor]] = [[] for _ in state0]
        for layer in range(self.num_layers):
            outputs, linked = [], []
            for direction in range(D):
                k = layer * D + direction
                x_in, w, masks = x, self.layer_weights(layer, direction), None
                if reg.active:
                    x_in, w, masks = regularize.apply(reg, self.training, x, seq.batch_sizes, w,
                                                      self.hidden_size)
                options: dict[str, object] = {} if masks is None else {"masks": masks}
                if link is not None:
                    options["sequences"] = True
                    if below[direction] is not None:
                        options["side"] = (below[direction],)
                result = run_layer(
                    self.cell, x_in, seq.batch_sizes, tuple(s[k] for s in state0), w,
                    reverse=direction == 1, record=recorder is not None, **options)
                out, state_n, trace = result[:3]
                if link is not None:
                    linked.append(result[3][link])
                outputs.append(out)
                for f, s in zip(finals, state_n):
                    f.append(s)
                if recorder is not None:
                    recorder.add(self, layer, direction, trace, seq)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=1)     # (N, D·H_out)
            below = linked or below
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return self._format(seq, x, tuple(torch.stack(f) for f in finals))

    def _format(self, seq: checks.Sequence, out: Tensor, states: tuple[Tensor, ...]):
        """Put outputs and final states back in the form the input came in."""
        packed = seq.packed
        if packed is not None:
            if packed.unsorted_indices is not None:
                states = tuple(s.index_select(1, packed.unsorted_indices) for s in states)
            output = PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                                    packed.unsorted_indices)
            return output, states
        # (T, B, D·H_out); T as -1 so that a trace follows the input's length
        output = out.view(-1 if out.numel() else seq.steps, seq.batch, out.shape[-1])
        if seq.unbatched:
            return output.squeeze(1), tuple(s.squeeze(1) for s in states)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, states

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False,
                    "dropout": 0.0, "bidirectional": False, "backend": "auto"}
        for key, default in defaults.items():
            value = getattr(self, key)
            if value != default:                             # torch.nn's order and format
                s += f", {key}={value!r}" if isinstance(value, str) else f", {key}={value}"
        options = {**self._variant_options(), **self.regularization.keywords()}
        return s + "".join(f", {k}={v!r}" for k, v in options.items())

    def _variant_options(self) -> dict[str, object]:
        """Keywords that set this module's cell variant, where they differ from the default."""
        return {}

    # -- interchange with torch.nn --------------------------------------------------------
    _torch_class: type[nn.Module]

    def _config(self) -> dict:
        p = self.weight_ih_l0
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional, "device": p.device, "dtype": p.dtype}

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` module with these weights (plain configurations only)."""
        options = self._variant_options()
        if self.regularization.zoneout_c or self.regularization.zoneout_h:
            options["zoneout"] = self.regularization.keywords()["zoneout"]   # eval differs
        if options:
            raise ValueError(
                f"{type(self).__name__} with {options} has no torch.nn equivalent; "
                f"only plain configurations convert")
        module = self._torch_class(**self._torch_config())
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def _torch_config(self) -> dict:
        return self._config()

    @classmethod
    def from_torch(cls, module: nn.Module, *, backend: str = "auto"):
        """Build the lstmkit module equal to a ``torch.nn`` one, weights included."""
        if type(module) is not cls._torch_class:
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn."
                            f"{cls._torch_class.__name__}, got {type(module).__name__}")
        p = module.weight_ih_l0
        config = {"input_size": module.input_size, "hidden_size": module.hidden_size,
                  "num_layers": module.num_layers, "bias": module.bias,
                  "batch_first": module.batch_first, "dropout": float(module.dropout),
                  "bidirectional": module.bidirectional, "device": p.device, "dtype": p.dtype}
        config.update(cls._from_torch_extra(module))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # torch.nn already warned about dropout
            ours = cls(**config, backend=backend)
        ours.load_state_dict(module.state_dict())
        return ours.train(module.training)

    @classmethod
    def _from_torch_extra(cls, module: nn.Module) -> dict:
        return {}
