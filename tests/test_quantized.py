"""Dynamic quantization of lstmkit modules through torch's own ``quantize_dynamic``: plain
LSTM/GRU become torch's quantized modules (checked equal to torch quantizing its own twin);
every other module and cell keeps its float forward on int8 (or float16) weights."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import lstmkit
from lstmkit.quantized import DynamicQuantized

I, H = 6, 16


class Tagger(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        width = (getattr(rnn, "proj_size", 0) or rnn.hidden_size) * getattr(rnn,
                                                                            "num_directions", 1)
        self.rnn, self.head = rnn, nn.Linear(width, 3)

    def forward(self, x):
        out = self.rnn(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out)


def _bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU])
def test_plain_modules_become_torchs_quantized_modules(cls):
    torch.manual_seed(0)
    ours = Tagger(cls(I, H, 2)).eval()
    twin = Tagger(getattr(nn, cls.__name__)(I, H, 2)).eval()
    twin.load_state_dict(ours.state_dict())
    q_ours = torch.ao.quantization.quantize_dynamic(ours, {cls, nn.Linear}, dtype=torch.qint8)
    q_twin = torch.ao.quantization.quantize_dynamic(twin, {getattr(nn, cls.__name__), nn.Linear},
                                                    dtype=torch.qint8)
    assert type(q_ours.rnn) is type(q_twin.rnn)
    assert type(ours.rnn) is cls                              # the original is untouched
    x = torch.randn(7, 3, I)
    with torch.no_grad():
        torch.testing.assert_close(q_ours(x), q_twin(x), atol=0, rtol=0)


VARIANTS = [
    lambda: lstmkit.LSTM(I, H, proj_size=8),                  # torch's quantized LSTM has none
    lambda: lstmkit.LSTM(I, H, 2, peephole=True, bidirectional=True),
    lambda: lstmkit.LSTM(I, H, layer_norm=True),
    lambda: lstmkit.GRU(I, H, reset_after=False),
    lambda: lstmkit.RNN(I, H, nonlinearity="relu"),
    lambda: lstmkit.ClockworkRNN(I, H, num_modules=4),
    lambda: lstmkit.LSTM1997(I, H),
    lambda: lstmkit.MUT(I, H, variant=3),
    lambda: lstmkit.LSTMCell(I, H, coupled=True),
]


@pytest.mark.parametrize("make", VARIANTS, ids=range(len(VARIANTS)))
@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16], ids=["qint8", "float16"])
def test_variants_keep_their_forward_on_quantized_weights(make, dtype):
    torch.manual_seed(0)
    rnn = make()
    model = Tagger(rnn).eval()
    q = lstmkit.quantize_dynamic(model, dtype=dtype)
    assert isinstance(q.rnn, DynamicQuantized)
    stored = [b for n, b in q.rnn.named_buffers() if n.startswith("q_")]
    assert stored and all((b.is_quantized if dtype == torch.qint8 else b.dtype == torch.float16)
                          for b in stored)
    assert not any(p.dim() == 2 for p in q.rnn.parameters())   # no float matrix left
    x = torch.randn(5, 2, I) if not isinstance(rnn, nn.RNNCellBase) else torch.randn(2, I)
    with torch.no_grad():
        want, got = model(x), q(x)
    err = (got - want).abs().max().item()
    assert 0 < err < (3e-2 if dtype == torch.qint8 else 3e-3), err  # the weights' rounding
    # exactly the float module's forward on the dequantized weights
    deq = make().eval()
    state = rnn.state_dict()
    for name in q.rnn.names:
        w = getattr(q.rnn, f"q_{name}")
        state[name] = w.dequantize() if w.is_quantized else w.float()
    deq.load_state_dict(state)
    with torch.no_grad():
        a, b = q.rnn(x), deq(x)
    a, b = (a[0] if isinstance(a, tuple) else a), (b[0] if isinstance(b, tuple) else b)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_int8_storage_shrinks_the_file_and_loads_safely():
    torch.manual_seed(0)
    model = Tagger(lstmkit.LSTM(64, 128, 2, proj_size=64)).eval()
    q = torch.ao.quantization.quantize_dynamic(model, {lstmkit.LSTM}, dtype=torch.qint8)
    assert _bytes(q.rnn) < 0.35 * _bytes(model.rnn)          # int8 + a scale per row
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([Tagger, nn.Linear]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(4, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), atol=0, rtol=0)


def test_quantized_wrapper_rejects_other_dtypes():
    with pytest.raises(ValueError, match="torch.qint8 or torch.float16"):
        DynamicQuantized(lstmkit.LSTM(2, 3), dtype=torch.quint8)
