"""The C++ extension's build folder: keyed by the sources and the torch build, shared by
checkouts of the same sources, never rebuilt over by another version or environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lstmkit.ops import extension


@pytest.fixture
def csrc_copy(tmp_path, monkeypatch):
    """A second checkout's csrc/ (same files, another place)."""
    copy = tmp_path / "checkout2" / "csrc"
    shutil.copytree(extension.CSRC, copy)
    return copy


def test_key_depends_on_sources_not_on_where_they_are(csrc_copy, monkeypatch):
    key = extension.build_key()
    monkeypatch.setattr(extension, "CSRC", csrc_copy)
    assert extension.build_key() == key                      # another checkout: same build
    header = csrc_copy / "cells" / "rnn.h"
    header.write_text(header.read_text() + "\n// edited\n")
    assert extension.build_key() != key                      # edited sources: a new build


def test_key_depends_on_the_torch_build(monkeypatch):
    import torch
    key = extension.build_key()
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert extension.build_key() != key


def test_sources_are_staged_inside_the_build_folder(tmp_path, csrc_copy, monkeypatch):
    monkeypatch.setattr(extension, "CSRC", csrc_copy)
    source = extension._stage_sources(tmp_path / "build")
    assert source == tmp_path / "build" / "src" / "engine.cpp"
    staged = sorted(p.relative_to(source.parent).as_posix()
                    for p in source.parent.rglob("*") if p.is_file())
    wanted = sorted(p.relative_to(csrc_copy).as_posix() for p in extension._sources())
    assert staged == sorted([*wanted, "cells.inc"])
    assert (source.parent / "cells.inc").read_text().splitlines() == [
        f'#include "{h}"' for h in extension.cell_headers()]
    again = extension._stage_sources(tmp_path / "build")     # staged once: left as it is
    assert again == source


def test_the_built_engine_never_names_the_checkout():
    """The ninja file of the real build refers to the staged copy, so a build from another
    checkout of the same sources finds nothing to do."""
    extension.cpp_kernels(required=True)
    folder = extension.build_root() / f"{extension.ENGINE}-{extension.build_key()}"
    ninja = (folder / "build.ninja").read_text()
    assert str(folder / "src") in ninja
    assert str(extension.CSRC) not in ninja


def test_first_build_says_what_and_why(tmp_path, monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp
    calls = []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp, "load", lambda **kw: calls.append(kw) or "module")
    assert extension._build("engine") == "module"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiling the C++ kernels" in err[0] and "torch" in err[0]
    folder = Path(calls[0]["build_directory"])
    assert folder.parent == tmp_path / "lstmkit" and folder.name.startswith("engine-")
    (folder / f"{calls[0]['name']}.so").write_bytes(b"")       # built: nothing said any more
    extension._build("engine")
    assert capsys.readouterr().err == ""


def test_each_extension_is_keyed_by_its_own_source(csrc_copy, monkeypatch):
    """Editing the tiny 1997 trainer (csrc/tiny1997.cpp) rebuilds it, not the engine."""
    monkeypatch.setattr(extension, "CSRC", csrc_copy)
    engine, tiny = extension.build_key(), extension.build_key("tiny1997")
    assert engine != tiny
    source = csrc_copy / "tiny1997.cpp"
    source.write_text(source.read_text() + "\n// edited\n")
    assert extension.build_key() == engine
    assert extension.build_key("tiny1997") != tiny


def test_a_lock_left_by_an_interrupted_build_is_removed(tmp_path, monkeypatch, capsys):
    """torch's build waits without end for the folder's ``lock`` to go; one left by a build
    killed midway (older than STALE_LOCK_SECONDS) is removed with a warning, a young one
    (another process building now) is kept and the wait is said on stderr."""
    import os
    import time

    import torch.utils.cpp_extension as cpp
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    seen = []
    monkeypatch.setattr(cpp, "load", lambda **kw: seen.append(
        (Path(kw["build_directory"]) / "lock").exists()) or "module")
    folder = extension.build_root() / f"{extension.ENGINE}-{extension.build_key()}"
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.touch()
    old = time.time() - extension.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="did not finish"):
        extension._build("engine")
    assert seen == [False] and not lock.exists()
    lock.touch()                                        # young: another build is running
    capsys.readouterr()
    extension._build("engine")
    assert seen[-1] is True and lock.exists()
    assert "waiting for another process's build" in capsys.readouterr().err
