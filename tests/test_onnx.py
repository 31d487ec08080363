"""lstmkit modules exported to ONNX's LSTM/GRU/RNN operators, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit
from lstmkit.interop.onnx import export_module

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

I, H, T, N = 4, 5, 7, 3
LENGTHS = [7, 3, 5]

MODELS = {
    "lstm": lambda **kw: lstmkit.LSTM(I, H, **kw),
    "lstm_peephole": lambda **kw: lstmkit.LSTM(I, H, peephole=True, **kw),
    "lstm_coupled": lambda **kw: lstmkit.LSTM(I, H, coupled=True, **kw),
    "lstm_coupled_peephole": lambda **kw: lstmkit.LSTM(I, H, coupled=True, peephole=True, **kw),
    "lstm_nobias": lambda **kw: lstmkit.LSTM(I, H, bias=False, **kw),
    "gru": lambda **kw: lstmkit.GRU(I, H, **kw),
    "gru_reset_before": lambda **kw: lstmkit.GRU(I, H, reset_after=False, **kw),
    "rnn_tanh": lambda **kw: lstmkit.RNN(I, H, **kw),
    "rnn_relu": lambda **kw: lstmkit.RNN(I, H, nonlinearity="relu", **kw),
}
FORMS = [dict(), dict(bidirectional=True), dict(num_layers=2),
         dict(num_layers=2, bidirectional=True, batch_first=True)]


@pytest.mark.parametrize("lens, init", [(False, False), (True, True)],
                         ids=["plain", "lens-and-state"])
@pytest.mark.parametrize("form", FORMS, ids=["1", "bi", "2layers", "2layers-bi-bf"])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_equals_lstmkit(name, form, lens, init, tmp_path):
    torch.manual_seed(0)
    m = MODELS[name](**form).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
    x = torch.randn((N, T, I) if m.batch_first else (T, N, I))
    n_states = m.num_layers * (2 if m.bidirectional else 1)
    states = [torch.randn(n_states, N, H) for _ in range(2 if name.startswith("lstm") else 1)]
    hx = (tuple(states) if len(states) == 2 else states[0]) if init else None
    with torch.no_grad():
        if lens:
            packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=m.batch_first,
                                          enforce_sorted=False)
            out, final = m(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
        else:
            out, final = m(x, hx)
    final = final if isinstance(final, tuple) else (final,)

    path = export_module(m, tmp_path / "m.onnx", sequence_lens=lens, initial_state=init)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    if lens:
        feed["sequence_lens"] = np.array(LENGTHS, np.int32)
    if init:
        feed.update(zip(["h0", "c0"], (s.numpy() for s in states)))
    got = session.run(None, feed)
    np.testing.assert_allclose(got[0], out.numpy(), atol=1e-5, rtol=1e-5)
    for g, f in zip(got[1:], final, strict=True):
        np.testing.assert_allclose(g, f.numpy(), atol=1e-5, rtol=1e-5)


def test_unsupported_configurations_say_why(tmp_path):
    with pytest.raises(ValueError, match="no projection"):
        export_module(lstmkit.LSTM(I, H, proj_size=2), tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="takes an lstmkit LSTM, GRU or RNN"):
        export_module(torch.nn.LSTM(I, H), tmp_path / "t.onnx")


# -- whole models through torch.onnx.export ---------------------------------------------------
class _Model(torch.nn.Module):
    def __init__(self, rnn: torch.nn.Module, with_state: bool):
        super().__init__()
        self.rnn, self.with_state = rnn, with_state
        width = rnn.hidden_size * rnn.num_directions
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x, *state):
        hx = (state if len(state) == 2 else state[0]) if self.with_state else None
        out, _ = self.rnn(x, hx)
        return self.head(torch.tanh(out))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "initial-state"])
@pytest.mark.parametrize("form", [dict(), dict(num_layers=2, bidirectional=True)],
                         ids=["1", "2layers-bi"])
@pytest.mark.parametrize("name", list(MODELS) + ["lstm_fused"])
def test_whole_model_export(name, form, with_state, tmp_path):
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export

    torch.manual_seed(1)
    rnn = (lstmkit.LSTM(I, H, backend="fused", **form) if name == "lstm_fused"
           else MODELS[name](**form))
    model = _Model(rnn, with_state).eval()
    x = torch.randn(T, N, I)
    n = rnn.num_layers * rnn.num_directions
    states = tuple(torch.randn(n, N, H) for _ in range(2 if name.startswith("lstm") else 1))
    args = (x, *states) if with_state else (x,)
    path = export(model, args, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    (got,) = session.run(None, feed)
    with torch.no_grad():
        expected = model(*args)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)
    import onnx
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops & {"LSTM", "GRU", "RNN"}, ops                    # the standard operators


def test_whole_model_export_refuses_packed_and_projection(tmp_path):
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export
    model = _Model(lstmkit.LSTM(I, 6, proj_size=3, backend="fused"), False)
    model.head = torch.nn.Linear(3, 2)
    with pytest.raises(Exception, match="no projection"):
        export(model, (torch.randn(T, N, I),), tmp_path / "p.onnx")
