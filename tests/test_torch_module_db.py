"""PyTorch's own test inputs for its recurrent modules, run against lstmkit's.

``torch.testing._internal.common_modules.module_db`` (shipped with torch) declares, for
``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``, ``nn.GRUCell`` and ``nn.RNNCell``, the
sample constructions and inputs its ``TestModule`` suite runs (every combination of bias,
batch_first, bidirectional, proj_size and nonlinearity, unbatched inputs with their
no-batch-dim reference functions, PackedSequence) and the bad constructions and inputs with
the exception type each must raise. This file imports those declarations from the installed
torch and runs them on lstmkit's modules: built from the same arguments and loaded with the
torch.nn module's weights, each must give torch.nn's outputs and gradients (and its own
batched reference function's), and each bad input must raise torch.nn's exception type.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import lstmkit

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

PAIRS = {nn.LSTM: lstmkit.LSTM, nn.GRU: lstmkit.GRU, nn.RNN: lstmkit.RNN,
         nn.LSTMCell: lstmkit.LSTMCell, nn.GRUCell: lstmkit.GRUCell, nn.RNNCell: lstmkit.RNNCell}
INFOS = [info for info in common_modules.module_db if info.module_cls in PAIRS]
F64 = torch.float64


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, PackedSequence as its data."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _fresh(value):
    """The same inputs as new leaves (so both modules get their own gradients)."""
    if isinstance(value, PackedSequence):
        return PackedSequence(value.data.detach().clone().requires_grad_(value.data.requires_grad),
                              value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, tuple):
        return tuple(_fresh(v) for v in value)
    return value


def _samples(info, training: bool):
    kwargs = {"with_packed_sequence": True} if info.module_cls in (nn.GRU, nn.RNN) else {}
    return info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True,
                                   training=training, **kwargs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.module_cls.__name__)
def test_torch_module_inputs(info, training):
    samples = _samples(info, training)
    assert samples
    for k, sample in enumerate(samples):
        c = sample.constructor_input
        torch.manual_seed(k)
        ref = info.module_cls(*c.args, **c.kwargs).to(F64).train(training)
        ours = PAIRS[info.module_cls].from_torch(ref).train(training)
        args = sample.forward_input.args
        runs = []
        for m in (ref, ours):
            inputs = _fresh(args)
            outs = _tensors(m(*inputs, **sample.forward_input.kwargs))
            g = torch.Generator().manual_seed(k)
            sum(o.mul(torch.randn(o.shape, dtype=F64, generator=g)).sum() for o in outs).backward()
            runs.append((outs, [t.grad for t in _tensors(inputs) if t.requires_grad],
                         [p.grad for p in m.parameters()]))
        (o1, x1, p1), (o2, x2, p2) = runs
        what = f"{info.module_cls.__name__} sample {k}: {c.kwargs or c.args}"
        for group, a, b in (("output", o1, o2), ("input grad", x1, x2), ("param grad", p1, p2)):
            assert len(a) == len(b), what
            for u, v in zip(a, b):
                torch.testing.assert_close(v, u, atol=1e-10, rtol=1e-10,
                                           msg=lambda m, g=group, w=what: f"{w}: {g}: {m}")
        packed = any(isinstance(a, PackedSequence) for a in args)
        if sample.reference_fn is not None and not packed:   # unbatched vs torch's batched
            inputs = _fresh(args)                     # reference function
            got = _tensors(ours(*inputs))
            want = _tensors(sample.reference_fn(ours, *_fresh(args)))     # copies the module
            for u, v in zip(got, want, strict=True):
                torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10, msg=what)


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.module_cls.__name__)
def test_torch_module_error_inputs(info):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    ours = PAIRS[info.module_cls]
    for err in errors:
        c, f = err.module_error_input.constructor_input, err.module_error_input.forward_input
        what = f"{info.module_cls.__name__}({c.args}, {c.kwargs}) expecting {err.error_type}"
        if err.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(err.error_type):
                ours(*c.args, **c.kwargs)
            continue
        m = ours(*c.args, **c.kwargs)
        with pytest.raises(err.error_type):
            m(*f.args, **f.kwargs)
        assert what
