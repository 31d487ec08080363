"""Time loops that run a cell over a sequence, and the one place that picks among them.

Every backend has the signature of :func:`lstmkit.ops.reference.run_layer`.
``select_backend`` is the only dispatch: the modules call it and tests may swap it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cells.base import CellSpec
from . import reference

BACKENDS = ("auto", "reference")

LayerFn = Callable[..., tuple]


def check_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}"
        )
    return backend


def select_backend(backend: str, cell: CellSpec, *, recording: bool = False) -> LayerFn:
    """Return the layer loop for ``backend`` and ``cell``.

    ``"reference"`` is the autograd loop over the cell equations. ``"auto"`` picks the
    fastest loop that computes the same function for this cell; today that is the
    reference loop, the only one this version has. Recording needs the per-step gates,
    which every backend returns when asked.
    """
    check_backend(backend)
    return reference.run_layer
