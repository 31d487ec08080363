"""torch.compile and torch.export of models with lstmkit layers: one custom op per fused
layer (lstmkit.ops.library), no graph breaks, same outputs and gradients as eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

import lstmkit

LAYERS = {
    "lstm-peephole": lambda: lstmkit.LSTM(4, 6, peephole=True),
    "lstm-coupled-proj-fused_py": lambda: lstmkit.LSTM(4, 6, coupled=True, proj_size=3,
                                                        backend="fused_py"),
    "lstm-fused_cpp-bidirectional": lambda: lstmkit.LSTM(4, 6, bidirectional=True,
                                                          backend="fused_cpp"),
    "gru-reset-before-2-layers": lambda: lstmkit.GRU(4, 6, reset_after=False, num_layers=2),
    "gru-bidirectional": lambda: lstmkit.GRU(4, 6, bidirectional=True, bias=False),
    "rnn-relu": lambda: lstmkit.RNN(4, 6, nonlinearity="relu", num_layers=2),
}


class Model(nn.Module):
    """A recurrent layer inside a bigger model: the case torch.compile users have."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        width = (rnn.proj_size or rnn.hidden_size) * rnn.num_directions
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(torch.tanh(out))


def _grads(model, x, g):
    x = x.clone().requires_grad_()
    model.zero_grad()
    (model(x) * g).sum().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_graph_breaks_and_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = Model(LAYERS[name]())
    x, g = torch.randn(9, 3, 4), torch.randn(9, 3, 2)
    dynamo.reset()
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    eager_out, eager_grads = model(x), _grads(model, x, g)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager_out, rtol=1e-6, atol=1e-6)
    for a, b in zip(_grads(compiled, x, g), eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_inductor_compile_matches_eager():
    torch.manual_seed(1)
    model = Model(lstmkit.LSTM(4, 6, peephole=True, num_layers=2))
    x, g = torch.randn(7, 2, 4), torch.randn(7, 2, 2)
    compiled = torch.compile(model, fullgraph=True)                      # inductor
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(compiled, x, g), _grads(model, x, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm-peephole", "gru-reset-before-2-layers", "rnn-relu"])
def test_torch_export(name):
    torch.manual_seed(2)
    model = Model(LAYERS[name]()).eval()
    x = torch.randn(5, 2, 4)
    exported = torch.export.export(model, (x,))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(op.startswith("lstmkit.") for op in ops), ops
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-6, atol=1e-6)
