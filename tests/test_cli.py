"""The ``lstmkit`` command: the demo of the README's quick start."""

from __future__ import annotations

import re

import pytest

from lstmkit.cli import main


def test_demo_runs_every_cell_and_matches_torch(capsys):
    assert main(["demo", "--steps", "7", "--batch", "2", "--hidden", "6"]) == 0
    text = capsys.readouterr().out
    titles = re.findall(r"^== (.+?):", text, flags=re.M)
    assert len(titles) == 21 and "GRU, reset_after=False" in titles
    for name in ("layer_norm", "ClockworkRNN, 3 modules", "DepthGatedLSTM", "LSTM1997",
                 "MUT3", "sLSTM", "mLSTM", "minGRU", "minLSTM", "GridLSTM"):
        assert any(name in t for t in titles), name     # every engine family is shown
    diffs = [float(d) for d in re.findall(r"max \|output − torch\.nn\.\w+\| = (\S+)", text)]
    assert len(diffs) == 6                       # plain configurations have a torch.nn twin
    assert max(diffs) < 1e-5


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--steps", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    assert main([]) == 2
