"""Polyphonic music (lstmkit.data.music, lstmkit.train.music, ``lstmkit music``).

The piano roll is checked against music21's own queries of the score (which notes sound at
an offset) and against facts read off the score of BWV 66.6; the NLL against
torch.nn.functional.binary_cross_entropy_with_logits and a NumPy transcription of the
Bernoulli likelihood; the split and resume by their definitions. Tests that parse scores
need music21 and are skipped without it (it is in requirements.lock, so CI runs them).
Nothing here parses the whole corpus: the corpus list is cut to a few pieces where a test
goes through ``load_chorales``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings

import numpy as np
import pytest
import torch

from lstmkit.data import music as dm
from lstmkit.data.music import KEYS, LOWEST, ChoraleSet, MusicDataError
from lstmkit.train.music import (
    MusicConfig,
    MusicModel,
    MusicTrainer,
    batch_tensors,
    frame_nll,
    match_hidden,
    n_parameters,
    nll_per_step,
    sample_roll,
)

needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason="music21 is not installed")


@pytest.fixture(scope="module")
def bwv66():
    music21 = pytest.importorskip("music21")
    return music21.corpus.parse("bach/bwv66.6")


def sounding(score, offset: float) -> set[int]:
    """MIDI pitches sounding at ``offset``, by music21's own offset query (notes that
    start at or before it and end after it)."""
    flat = score.flatten()
    found = flat.getElementsByOffset(offset, offset, mustBeginInSpan=False,
                                     includeEndBoundary=True,
                                     includeElementsThatEndAtStart=False).notes
    return {p.midi for n in found if n.quarterLength > 0 for p in n.pitches}


# -- the piano roll ---------------------------------------------------------------------------

@needs_music21
@pytest.mark.parametrize("grid", [1.0, 0.5])
def test_roll_matches_music21_offset_queries(bwv66, grid):
    roll = dm.piano_roll(bwv66, grid, "bwv66.6")
    assert roll.shape == (round(36 / grid), KEYS) and roll.dtype == np.uint8
    for k in range(len(roll)):
        assert set((np.flatnonzero(roll[k]) + LOWEST).tolist()) == sounding(bwv66, k * grid)


@needs_music21
def test_roll_facts_of_bwv66_6(bwv66):
    q, e = dm.piano_roll(bwv66, 1.0), dm.piano_roll(bwv66, 0.5)
    # the score's first chord: soprano C#5, alto E4, tenor and bass both A3 (one key)
    assert set(np.flatnonzero(q[0]) + LOWEST) == {73, 64, 57}
    # at 0.5 the soprano, tenor and bass move by eighths (B4, B3, G#3) while the alto's
    # quarter-note E4 still sounds: on the eighth grid only, not on the quarter grid
    assert set(np.flatnonzero(e[1]) + LOWEST) == {71, 64, 59, 56}
    assert np.array_equal(e[0], q[0]) and np.array_equal(e[::2], q)
    # four voices: never more than four keys at once, and the score is 36 quarters long
    assert q.sum(1).max() <= 4 and len(q) == 36


@needs_music21
def test_roll_round_trips_through_a_score():
    rng = np.random.default_rng(3)
    roll = (rng.random((12, KEYS)) < 0.05).astype(np.uint8)
    roll[:, 40] = [1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1]       # held notes and gaps
    for grid in (1.0, 0.5):
        back = dm.piano_roll(dm.roll_to_score(roll, grid), grid)
        last = np.flatnonzero(roll.any(1)).max() + 1           # trailing silence is not a note
        assert np.array_equal(back, roll[:last])


@needs_music21
def test_roll_errors():
    music21 = pytest.importorskip("music21")
    s = music21.stream.Stream()
    s.insert(0, music21.note.Note(110, quarterLength=1))       # above C8
    with pytest.raises(MusicDataError, match=r"MIDI 110.*outside the piano's 88 keys"):
        dm.piano_roll(s, 1.0, "high")
    with pytest.raises(MusicDataError, match="no duration"):
        dm.piano_roll(music21.stream.Stream(), 1.0, "empty")
    with pytest.raises(MusicDataError, match="grid must be one of"):
        dm.piano_roll(s, 0.25)
    with pytest.raises(MusicDataError, match=r"\(T, 88\)"):
        dm.roll_to_score(np.zeros((3, 12)))
    assert dm.grid_of("eighth") == 0.5 and dm.grid_of("quarter") == 1.0


@needs_music21
def test_chorale_list_is_the_riemenschneider_set():
    names = dm.chorale_names()
    assert len(names) == len(set(names)) == 350
    assert all(n.startswith("bach/bwv") for n in names)
    # Riemenschneider no. 1 is BWV 269; the Well-Tempered Clavier prelude BWV 846, also
    # in music21's "bach" folder, is not a chorale and is not listed
    assert names[0] == "bach/bwv269" and "bach/bwv846" not in names


# -- cache and selection -----------------------------------------------------------------------

def tiny_set(n: int = 4, seed: int = 0) -> ChoraleSet:
    rng = np.random.default_rng(seed)
    rolls = [(rng.random((int(rng.integers(5, 12)), KEYS)) < 0.05).astype(np.uint8)
             for _ in range(n)]
    return ChoraleSet([f"bach/bwv{i}" for i in range(n)], rolls, 1.0, {"bach/x": "no notes"})


def test_cache_round_trip_and_corruption(tmp_path):
    data, path = tiny_set(), tmp_path / "c.npz"
    dm.write_cache(data, path)
    back = dm.read_cache(path)
    assert back.names == data.names and back.skipped == data.skipped and back.grid == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(back.rolls, data.rolls))
    # a flipped note with the old checksum
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files}
    fields["rolls"] = fields["rolls"].copy()
    fields["rolls"][0, 0] ^= 1
    np.savez(path, **fields)
    with pytest.raises(MusicDataError, match="fails its checksum"):
        dm.read_cache(path)
    path.write_bytes(path.read_bytes()[:100])                  # truncated
    with pytest.raises(MusicDataError, match="unreadable"):
        dm.read_cache(path)
    with pytest.raises(MusicDataError, match="no chorale cache"):
        dm.read_cache(tmp_path / "missing.npz")
    fields["rolls"] = fields["rolls"][:, :80]                  # wrong width
    np.savez(tmp_path / "w.npz", **fields)
    with pytest.raises(MusicDataError, match="inconsistent"):
        dm.read_cache(tmp_path / "w.npz")


@pytest.fixture
def few_chorales(monkeypatch, tmp_path):
    """load_chorales over three real chorales, cached in a temporary folder."""
    pytest.importorskip("music21")
    names = ["bach/bwv66.6", "bach/bwv1.6", "bach/bwv10.7"]
    monkeypatch.setattr(dm, "chorale_names", lambda: list(names))
    monkeypatch.setenv("LSTMKIT_CACHE_DIR", str(tmp_path))
    return names


def test_load_chorales_caches_and_rebuilds_a_corrupt_cache(few_chorales, tmp_path, bwv66):
    data = dm.load_chorales(1.0)
    path = dm.cache_path(1.0)
    assert path.is_file() and tmp_path in path.parents and data.names == few_chorales
    assert np.array_equal(data.rolls[0], dm.piano_roll(bwv66, 1.0))
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        again = dm.load_chorales(1.0)
    assert again.sha256() == data.sha256()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # the rebuilt cache reads cleanly
        assert dm.load_chorales(1.0).sha256() == data.sha256()


def test_select(few_chorales):
    assert dm.load_chorales(1.0, select="bach/bwv1*").names == ["bach/bwv1.6", "bach/bwv10.7"]
    with pytest.raises(MusicDataError, match="no chorale name matches 'bach/mozart\\*'"):
        dm.load_chorales(1.0, select="bach/mozart*")


def test_missing_music21_is_a_clear_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "music21":
            raise ImportError("no music21")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(dm.DatasetUnavailable, match="pip install"):
        dm.chorale_names()


# -- the split ---------------------------------------------------------------------------------

def test_split_by_piece_disjoint_and_seeded():
    tr, va, te = dm.split_pieces(350, 0.2, 0.2, seed=0)
    assert (len(tr), len(va), len(te)) == (210, 70, 70)
    assert set(tr).isdisjoint(va) and set(tr).isdisjoint(te) and set(va).isdisjoint(te)
    assert sorted(tr + va + te) == list(range(350))
    assert dm.split_pieces(350, 0.2, 0.2, seed=0) == (tr, va, te)
    assert dm.split_pieces(350, 0.2, 0.2, seed=1)[2] != te
    with pytest.raises(MusicDataError, match="a part would be empty"):
        dm.split_pieces(2, 0.2, 0.2)
    with pytest.raises(MusicDataError, match="fractions"):
        dm.split_pieces(10, 0.6, 0.5)


# -- the likelihood ----------------------------------------------------------------------------

def test_nll_against_binary_cross_entropy_and_numpy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, KEYS, dtype=torch.float64)
    y = (torch.rand(3, 7, KEYS) < 0.1).double()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    total, frames = frame_nll(logits, y, mask)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    assert frames == 7 + 5 + 2
    assert torch.allclose(total, bce.sum(-1)[mask].sum(), rtol=1e-12)
    # the Bernoulli likelihood written out: −Σ_k [y log σ(a) + (1 − y) log(1 − σ(a))]
    a, t, m = logits.numpy(), y.numpy(), mask.numpy()
    p = 1 / (1 + np.exp(-a))
    hand = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(-1)[m].sum()
    assert math.isclose(total.item(), hand, rel_tol=1e-10)


def test_nll_per_step_pools_frames_and_ignores_padding():
    torch.manual_seed(1)
    cfg = MusicConfig(cell="gru", hidden=8)
    model = MusicModel(cfg).eval()
    rolls = tiny_set(5).rolls
    got = nll_per_step(model, rolls, batch=2)            # padded batches of 2
    total, frames = 0.0, 0
    for r in rolls:                                      # one piece at a time, no padding
        y = torch.from_numpy(r.astype(np.float32))[None]
        x = torch.cat([torch.zeros(1, 1, KEYS), y[:, :-1]], 1)
        with torch.no_grad():
            logits, _ = model(x)
        total += torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, reduction="sum").item()
        frames += len(r)
    assert math.isclose(got, total / frames, rel_tol=1e-5)


def test_untrained_output_bias_gives_the_base_rate_nll():
    # with zero output weights the model predicts σ(b_k) for key k at every step, so its
    # NLL per step is the mean over frames of −Σ_k [x_k log σ(b_k) + (1 − x_k) log(1 − σ(b_k))]
    rolls = tiny_set(3).rolls
    model = MusicModel(MusicConfig(cell="lstm", hidden=4))
    rate = np.concatenate(rolls).mean(0).clip(1e-3, 1 - 1e-3)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.from_numpy(np.log(rate / (1 - rate))))
    all_frames = np.concatenate(rolls)
    hand = -(all_frames * np.log(rate) + (1 - all_frames) * np.log(1 - rate)).sum(1).mean()
    assert math.isclose(nll_per_step(model, rolls), hand, rel_tol=1e-5)


def test_batch_tensors_shift_and_mask():
    rolls = tiny_set(2).rolls
    x, y, mask = batch_tensors(rolls)
    assert torch.equal(x[:, 0], torch.zeros(2, KEYS))
    for i, r in enumerate(rolls):
        assert torch.equal(y[i, :len(r)], torch.from_numpy(r).float())
        assert torch.equal(x[i, 1:len(r)], torch.from_numpy(r[:-1]).float())
        assert mask[i].sum() == len(r)
    with pytest.raises(MusicDataError, match="at least one piece"):
        batch_tensors([])


# -- the model and the trainer -----------------------------------------------------------------

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mut1", "mut2", "mut3"])
def test_every_cell_builds_and_mut12_get_a_projection(cell):
    cfg = MusicConfig(cell=cell, hidden=12)
    model = MusicModel(cfg)
    assert (model.proj is not None) == (cell in ("mut1", "mut2"))
    logits, _ = model(torch.zeros(2, 5, KEYS))
    assert logits.shape == (2, 5, KEYS)
    assert MusicModel(MusicConfig(cell=cell, hidden=12, project=True)).proj is not None


def test_forget_bias_and_parameter_matching():
    torch.manual_seed(0)
    a = MusicModel(MusicConfig(cell="lstm", hidden=6))
    torch.manual_seed(0)
    b = MusicModel(MusicConfig(cell="lstm", hidden=6, forget_bias=1.0))
    f = b.rnn.cell.gate_rows.index("f")
    diff = (b.rnn.bias_ih_l0 - a.rnn.bias_ih_l0).detach()
    assert torch.allclose(diff[f * 6:(f + 1) * 6], torch.ones(6))
    assert diff.abs().sum().item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="forget_bias needs an LSTM"):
        MusicConfig(cell="gru", forget_bias=1.0)
    with pytest.raises(ValueError, match="grid must be one of"):
        MusicConfig(grid=0.3)
    # LSTM, H = 36: 4·(88·36 + 36·36 + 2·36) + (36·88 + 88) parameters
    target = n_parameters(MusicConfig(cell="lstm", hidden=36))
    assert target == 4 * (88 * 36 + 36 * 36 + 2 * 36) + 36 * 88 + 88
    h = match_hidden(MusicConfig(cell="gru"), target)
    count = lambda k: n_parameters(MusicConfig(cell="gru", hidden=k))  # noqa: E731
    assert abs(count(h) - target) <= min(abs(count(h - 1) - target), abs(count(h + 1) - target))


def small_data():
    return tiny_set(6, 1), tiny_set(2, 2), tiny_set(2, 3)


def train(tmp_path, name, steps, resume=False, **kw):
    cfg = MusicConfig(cell="lstm", hidden=8, steps=steps, batch=3, eval_every=2,
                      log_every=1, quiet=True, dropout=0.0, **kw)
    return MusicTrainer(cfg, tmp_path / name, resume=resume, data=small_data())


def test_resume_is_exact(tmp_path):
    straight = train(tmp_path, "a", 6)
    straight.fit()
    train(tmp_path, "b", 3).fit()
    resumed = train(tmp_path, "b", 6, resume=True)
    result = resumed.fit()
    for (k, v), (_, w) in zip(straight.model.state_dict().items(),
                              resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text()
           .splitlines()]
    assert [r["step"] for r in log if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["test_nll_per_step"] == pytest.approx(result.test_nll)
    # the test score is the best checkpoint's NLL on the test pieces
    model = MusicModel(resumed.cfg)
    model.load_state_dict(torch.load(tmp_path / "b" / "checkpoints" / "best.pt",
                                     weights_only=True)["model"])
    assert result.test_nll == pytest.approx(nll_per_step(model, small_data()[2].rolls))


def test_resume_refuses_other_data(tmp_path):
    train(tmp_path, "c", 2).fit()
    other = (tiny_set(6, 9), tiny_set(2, 2), tiny_set(2, 3))
    cfg = MusicConfig(cell="lstm", hidden=8, steps=4, batch=3, quiet=True)
    with pytest.raises(MusicDataError, match="differs from the one the run was started on"):
        MusicTrainer(cfg, tmp_path / "c", resume=True, data=other)


def test_sample_roll():
    torch.manual_seed(0)
    model = MusicModel(MusicConfig(cell="gru", hidden=8)).eval()
    a, b = sample_roll(model, 10, seed=4), sample_roll(model, 10, seed=4)
    assert a.shape == (10, KEYS) and np.array_equal(a, b) and set(np.unique(a)) <= {0, 1}
    with torch.no_grad():
        model.out.bias.fill_(-50.0)                            # every key surely off
    assert sample_roll(model, 5).sum() == 0
    with pytest.raises(ValueError, match="temperature"):
        sample_roll(model, 5, temperature=0)


# -- the command -------------------------------------------------------------------------------

def test_cli_train_evaluate_sample(few_chorales, tmp_path, capsys):
    from lstmkit.cli import main
    run = tmp_path / "run"
    assert main(["music", "train", "--cell", "mut2", "--hidden", "6", "--steps", "4",
                 "--batch", "1", "--valid-fraction", "0.34", "--test-fraction", "0.34",
                 "--out", str(run), "--quiet"]) == 0
    assert "test NLL" in capsys.readouterr().out
    assert main(["music", "evaluate", str(run), "--split", "valid"]) == 0
    assert "valid: NLL" in capsys.readouterr().out
    assert main(["music", "sample", str(run), "--steps", "6", "--out",
                 str(tmp_path / "s.json")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["roll"]) == 6
    assert main(["music", "sample", str(run), "--out", str(tmp_path / "s.txt")]) == 2
    assert main(["music", "evaluate", str(tmp_path)]) == 2
    assert "not an lstmkit music run" in capsys.readouterr().err
    assert main(["music", "train", "--select", "nothing*", "--out",
                 str(tmp_path / "r2")]) == 2
    assert "no chorale name matches" in capsys.readouterr().err


def test_base_rate_nll_is_the_memoryless_model():
    from lstmkit.train.music import base_rate_nll
    train_rolls, test_rolls = tiny_set(4, 5).rolls, tiny_set(3, 6).rolls
    q = np.concatenate(train_rolls).mean(0).clip(1e-4, 1 - 1e-4)
    model = MusicModel(MusicConfig(cell="rnn", hidden=3))
    with torch.no_grad():                  # zero output weights: σ(b_k) = q_k at every step
        model.out.weight.zero_()
        model.out.bias.copy_(torch.from_numpy(np.log(q / (1 - q))))
    assert math.isclose(base_rate_nll(train_rolls, test_rolls),
                        nll_per_step(model, test_rolls), rel_tol=1e-5)


def test_empty_corpus_and_unparsable_pieces(monkeypatch, tmp_path):
    pytest.importorskip("music21")
    monkeypatch.setenv("LSTMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dm, "chorale_names", lambda: [])
    with pytest.raises(MusicDataError, match="gave no usable pieces"):
        dm.load_chorales(1.0)
    monkeypatch.setattr(dm, "chorale_names", lambda: ["bach/bwv66.6", "bach/no-such-file"])
    data = dm.load_chorales(1.0, cache=False)
    assert data.names == ["bach/bwv66.6"]
    assert "could not parse" in data.skipped["bach/no-such-file"]
    assert not (tmp_path / "music").exists()              # cache=False writes nothing
