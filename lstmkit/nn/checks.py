"""Argument and input checks with messages that say what was expected and what came."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


class ShapeError(ValueError, RuntimeError):
    """A tensor of the wrong shape: a ValueError (lstmkit's message says what was expected)
    and a RuntimeError (what torch.nn raises there), so either ``except`` clause works."""


class DTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: a TypeError (lstmkit's tradition) and a ValueError (what
    torch.nn raises for an input whose dtype differs from the weights')."""


class DeviceError(ValueError, RuntimeError):
    """A tensor on another device than the parameters: a ValueError and, as torch.nn's, a
    RuntimeError."""


def check_config(
    name: str, input_size: object, hidden_size: object, num_layers: object,
    dropout: object, proj_size: object, *, bias: object = True, batch_first: object = False,
) -> None:
    for arg, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):          # as torch.nn ('False' would mean True)
            raise TypeError(f"{name}: {arg} must be a bool, got {type(value).__name__} "
                            f"{value!r}")
    for arg, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                            ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{name}: {arg} must be an int, got {type(value).__name__} {value!r}")
        if value < low:
            raise ValueError(f"{name}: {arg} must be >= {low}, got {value}")
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError(
            f"{name}: dropout must be a number in [0, 1] (the probability of zeroing an "
            f"element between layers), got {dropout!r}"
        )
    if proj_size and proj_size >= hidden_size:
        raise ValueError(
            f"{name}: proj_size must be smaller than hidden_size (h_t = W_hr (o_t * tanh(c_t)) "
            f"projects H={hidden_size} down to P), got proj_size={proj_size}"
        )


@dataclass
class Sequence:
    """An input batch in the flat form the loops use (see ``lstmkit.ops.reference``)."""

    x: Tensor                          # (sum(batch_sizes), I)
    batch_sizes: list[int]
    batch: int
    packed: PackedSequence | None      # the packed input, to rebuild the output
    unbatched: bool

    @property
    def steps(self) -> int:
        return len(self.batch_sizes)


def check_tensor_dtype(name: str, what: str, t: Tensor, param: Tensor) -> None:
    if not t.is_floating_point():
        raise DTypeError(
            f"{name}: {what} must be a floating-point tensor (the module's dtype is "
            f"{param.dtype}), got dtype {t.dtype}"
        )
    if t.dtype != param.dtype:
        raise DTypeError(
            f"{name}: {what} has dtype {t.dtype} but the module's parameters are "
            f"{param.dtype}; convert one of them (e.g. module.to({t.dtype}) or "
            f"input.to({param.dtype}))"
        )
    if t.device != param.device:
        raise DeviceError(
            f"{name}: {what} is on device {t.device} but the module's parameters are on "
            f"{param.device}; move one of them"
        )


def prepare_input(name: str, input: object, input_size: int, batch_first: bool,
                  param: Tensor) -> Sequence:
    if isinstance(input, PackedSequence):
        x = input.data
        if x.dim() != 2:
            raise ValueError(f"{name}: PackedSequence data must be 2-D (sum of lengths, "
                             f"input_size={input_size}), got shape {tuple(x.shape)}")
        batch_sizes = input.batch_sizes.tolist()
        seq = Sequence(x, batch_sizes, batch_sizes[0] if batch_sizes else 0, input, False)
        what = "PackedSequence data"
    elif isinstance(input, Tensor):
        if input.dim() not in (2, 3):
            layout = "(N, L, H_in)" if batch_first else "(L, N, H_in)"
            raise ValueError(
                f"{name}: input must be 3-D {layout} or unbatched 2-D (L, H_in) with "
                f"H_in={input_size}, got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
            )
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
        T, B = x.shape[0], x.shape[1]
        seq = Sequence(x.reshape(T * B, x.shape[2]), [B] * T, B, None, unbatched)
        what = "input"
    else:
        raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, "
                        f"got {type(input).__name__}")
    if x.shape[-1] != input_size:
        raise ShapeError(f"{name}: input.size(-1) must be equal to input_size={input_size} "
                         f"(the feature size), got {x.shape[-1]} in {what} of shape "
                         f"{tuple((input.data if seq.packed else input).shape)}")
    if seq.steps == 0:                           # an empty batch (B = 0) is fine, as in torch
        raise ShapeError(f"{name}: Expected sequence length to be larger than 0 in RNN: {what} "
                         f"has shape {tuple(x.shape)}; a recurrent layer needs at least one step")
    check_tensor_dtype(name, what, x, param)
    return seq


def prepare_hx(
    name: str, hx: object, seq: Sequence, shapes: list[tuple[int, int]],
    labels: tuple[str, ...], param: Tensor,
) -> tuple[Tensor, ...]:
    """Check the initial states against ``shapes`` [(L·D, size), ...] and return them
    as (L·D, B, size) tensors in the batch order of the loops (sorted, for packed input)."""
    B = seq.batch
    if hx is None:
        return tuple(param.new_zeros(n, B, size) for n, size in shapes)
    if len(shapes) == 1:
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name}: hx must be a Tensor {labels[0]}, got {type(hx).__name__}")
        states = (hx,)
    else:
        if (not isinstance(hx, (tuple, list)) or len(hx) != len(shapes)
                or not all(isinstance(h, Tensor) for h in hx)):
            raise TypeError(f"{name}: hx must be a tuple ({', '.join(labels)}) of Tensors, "
                            f"got {type(hx).__name__}")
        states = tuple(hx)
    out = []
    for h, (n, size), label in zip(states, shapes, labels):
        want = (n, size) if seq.unbatched else (n, B, size)
        if tuple(h.shape) != want:
            form = "unbatched input: (num_layers*num_directions, size)" if seq.unbatched \
                else "(num_layers*num_directions, batch, size)"
            raise ShapeError(f"{name}: Expected hidden size {want} for {label} "
                             f"({form}), got {tuple(h.shape)}")
        check_tensor_dtype(name, label, h, param)
        h = h.unsqueeze(1) if seq.unbatched else h
        if seq.packed is not None and seq.packed.sorted_indices is not None:
            h = h.index_select(1, seq.packed.sorted_indices)
        out.append(h)
    return tuple(out)


_WHY_NOT = {
    "proj_size": "projections (h_t = W_hr h_t) are only defined for LSTM, as in torch.nn",
    "coupled": "coupling f_t = 1 - i_t needs an input and a forget gate, which only LSTM has",
    "peephole": "peepholes connect the cell state c_t to the gates, and only LSTM has a "
                "cell state",
    "reset_after": "reset_after chooses where the GRU's reset gate applies; other cells "
                   "have no reset gate",
    "nonlinearity": "nonlinearity is the activation of the plain RNN; gated cells use "
                    "sigmoid and tanh",
}
_NEUTRAL = {"proj_size": 0, "coupled": False, "peephole": False}


def check_variant_kwargs(name: str, kwargs: dict, why: dict[str, str] | None = None,
                         neutral: dict[str, object] | None = None) -> None:
    """Keywords of other cells that a module does not take: say why (``why``: keyword →
    reason) rather than a bare TypeError; a keyword at its ``neutral`` value is harmless."""
    why = _WHY_NOT if why is None else why
    neutral = _NEUTRAL if neutral is None else neutral
    for key, value in kwargs.items():
        if key not in why:
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
        if key in neutral and value == neutral[key]:
            continue                             # the neutral value is harmless
        raise ValueError(f"{name} does not support {key}={value!r}: {why[key]}")

