"""Shared test helpers: tolerances by dtype, building twin modules, comparing all gradients."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstmkit

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

LENGTHS = {3: [4, 6, 2], 1: [5]}           # unsorted on purpose (enforce_sorted=False)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def make_input(T: int, B: int, I: int, dtype: torch.dtype, *, batch_first: bool,
               packed: bool, generator: torch.Generator):
    """A leaf input tensor and what to feed the module (itself or its PackedSequence)."""
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype, generator=generator).requires_grad_()
    if not packed:
        return x, x
    lengths = (torch.tensor(LENGTHS[B]) if B in LENGTHS
               else torch.randint(1, T + 1, (B,), generator=generator))
    feed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    return x, feed


def output_tensor(out) -> torch.Tensor:
    return out.data if isinstance(out, PackedSequence) else out


def backward_with_random_grads(out, states: tuple[torch.Tensor, ...], seed: int) -> None:
    """loss = <out, g> + Σ <state_k, g_k> with fixed random upstream gradients g."""
    g = torch.Generator().manual_seed(seed)
    tensors = [output_tensor(out), *states]
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=g)).sum() for t in tensors)
    loss.backward()


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def compare_modules(ours: nn.Module, theirs: nn.Module, tol: float) -> None:
    """Every parameter gradient of two modules with the same parameter names."""
    mine = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert name in mine, f"parameter {name} missing from {type(ours).__name__}"
        assert p.grad is not None and mine[name].grad is not None, f"no gradient for {name}"
        assert_close(mine[name].grad, p.grad, f"grad {name}", tol)


def lstmkit_twin(module: nn.Module, backend: str) -> nn.Module:
    cls = {nn.LSTM: lstmkit.LSTM, nn.GRU: lstmkit.GRU, nn.RNN: lstmkit.RNN}[type(module)]
    return cls.from_torch(module, backend=backend)
