"""Checkpoints: written atomically, read without running code.

A checkpoint is a ``torch.save`` file whose content is only tensors, numbers, strings,
lists and dicts (model and optimizer state, step, RNG states, the carried hidden state,
the configuration and vocabulary as JSON text). It is read with
``torch.load(weights_only=True)``, which refuses anything else, so a checkpoint from an
untrusted place cannot execute code. Writing goes to a temporary file in the same folder,
which is synced and then renamed over the old one: a run killed at any moment leaves the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "lstmkit-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not an lstmkit checkpoint."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())                 # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if
    it is missing, truncated, corrupt, or something else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                  # zip, unpickling and EOF errors all mean corrupt
        raise CheckpointError(f"{path} is not a readable lstmkit checkpoint (corrupt or "
                              f"truncated): {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lstmkit checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version "
                              f"{payload.get('version')}; this lstmkit reads {VERSION}")
    return payload
