"""count_parameters and summary against torch.nn's own parameter counts and the formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lstmkit


def _torch_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("make", [
    lambda: nn.LSTM(100, 256), lambda: nn.LSTM(7, 9, 3, bidirectional=True),
    lambda: nn.LSTM(7, 9, 2, proj_size=4, bias=False), lambda: nn.GRU(7, 9, 2),
    lambda: nn.RNN(7, 9, bidirectional=True),
])
def test_count_equals_torch(make):
    theirs = make()
    ours = {nn.LSTM: lstmkit.LSTM, nn.GRU: lstmkit.GRU, nn.RNN: lstmkit.RNN}[
        type(theirs)].from_torch(theirs)
    assert lstmkit.count_parameters(ours) == _torch_count(theirs)
    assert lstmkit.count_parameters(theirs) == _torch_count(theirs)


def test_textbook_and_pytorch_formulas_for_lstm_100_256():
    text = lstmkit.summary(lstmkit.LSTM(100, 256))
    assert "365,568" in text                       # 4·(H² + H·I + H), the textbook count
    assert "366,592" in text                       # 4·(H·I + H·H + 2H), PyTorch's two biases
    assert lstmkit.count_parameters(nn.LSTM(100, 256)) == 366_592


def test_variant_counts():
    I, H = 6, 8
    plain = lstmkit.count_parameters(lstmkit.LSTM(I, H))
    assert lstmkit.count_parameters(lstmkit.LSTM(I, H, peephole=True)) == plain + 3 * H
    assert lstmkit.count_parameters(lstmkit.LSTM(I, H, coupled=True)) == 3 * (H * I + H * H + 2 * H)
    assert lstmkit.count_parameters(lstmkit.LSTM(I, H, coupled=True, peephole=True)) == \
        3 * (H * I + H * H + 2 * H) + 2 * H
    gru = lstmkit.GRU(I, H, reset_after=False)
    assert lstmkit.count_parameters(gru) == _torch_count(nn.GRU(I, H))


def test_summary_rows_per_layer_direction_and_gate():
    m = lstmkit.LSTM(5, 4, num_layers=2, bidirectional=True, peephole=True)
    text = lstmkit.summary(m)
    gate_rows = [ln for ln in text.splitlines() if ln[:1].isdigit()]
    assert len(gate_rows) == 2 * 2 * 4
    assert any(ln.split()[:3] == ["1", "rev", "f"] and ln.split()[4] == "4x8" for ln in gate_rows)
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text


def test_summary_of_model_containing_layers_and_errors():
    model = nn.Sequential(nn.Linear(3, 5), lstmkit.GRU(5, 4, reset_after=False))
    text = lstmkit.summary(model)
    assert "r (reset)" in text and "other parameters: 20" in text
    assert lstmkit.count_parameters(model, trainable_only=True) == _torch_count(model)
    model[0].weight.requires_grad_(False)
    assert lstmkit.count_parameters(model, trainable_only=True) == _torch_count(model) - 15
    with pytest.raises(ValueError, match="contains no lstmkit"):
        lstmkit.summary(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expects an nn.Module"):
        lstmkit.count_parameters(torch.zeros(2))


def test_record_detaches_and_leaves_module_clean():
    m = lstmkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with lstmkit.record(m) as rec:
        out, _ = m(x)
    assert "_recorder" not in m.__dict__
    assert not rec.layers[0]["c"].requires_grad
    assert torch.equal(rec.layers[0]["h"], out.detach())
    with pytest.raises(ValueError, match="no lstmkit"):
        with lstmkit.record(nn.LSTM(3, 4)):
            pass
