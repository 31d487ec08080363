"""What every cell shares: the weights of one layer and direction, and the cell spec.

A *cell* is one time step of a recurrent network written as its equations:
``step(x_t, state, w) -> (new_state, gates)``. ``state`` is a tuple whose first
entry is the output ``h_t`` of the step (``(h, c)`` for LSTM, ``(h,)`` otherwise);
``gates`` maps gate names to their activations at this step, for recording.
The time loops in ``lstmkit.ops`` run any cell over a sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor


class LayerWeights(NamedTuple):
    """The parameters of one layer and direction, in torch.nn's layout.

    ``w_ih`` (G·H, I), ``w_hh`` (G·H, H or P), ``b_ih``/``b_hh`` (G·H,) or None,
    ``w_hr`` (P, H) with projections, ``peephole`` (3H,) or (2H,) for coupled LSTM.
    G is the number of gate blocks stacked in the rows (4 for LSTM i|f|g|o, 3 for
    coupled LSTM i|g|o, 3 for GRU r|z|n, 1 for RNN). ``extra`` holds a variant's further
    parameters, in the order of :attr:`CellSpec.extra_params`.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None
    w_hr: Tensor | None = None
    peephole: Tensor | None = None
    extra: tuple[Tensor, ...] = ()


class ExtraParam(NamedTuple):
    """A variant's parameter beyond torch.nn's layout; see :attr:`CellSpec.extra_params`."""

    name: str
    shape: Callable[[int, int, int], tuple[int, ...]]
    init: str = "uniform"                  # "uniform" | "ones" | "zeros"


State = tuple[Tensor, ...]
Gates = dict[str, Tensor]
Step = Callable[[Tensor, State, LayerWeights], tuple[State, Gates]]


@dataclass(frozen=True)
class CellSpec:
    """A configured cell: its step function and what the loops need to know about it.

    ``gate_rows`` names the row blocks of ``w_ih``/``w_hh`` in order; ``gates`` the
    activations a step reports (for coupled LSTM ``f`` is reported though it has no rows).
    ``n_states`` is 2 for (h, c) and 1 for (h,). ``extra_params`` declares a variant's
    further parameters per layer and direction, registered by the modules as
    ``{name}_l{k}[_reverse]`` after the standard ones and passed to the step as
    ``LayerWeights.extra``: each :class:`ExtraParam` gives its name, its shape as a
    function of (hidden size H, layer input size I, recurrent input size R) and its
    initial value ("uniform" as the other weights, "ones" or "zeros").
    """

    family: str                  # "lstm" | "gru" | "rnn"
    step: Step
    gate_rows: tuple[str, ...]
    gates: tuple[str, ...]
    n_states: int
    options: tuple[tuple[str, object], ...] = ()
    extra_params: tuple[ExtraParam, ...] = ()

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)
