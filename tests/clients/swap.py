"""Run a third-party script with torch.nn's recurrent modules, or with lstmkit's swapped in.

    python swap.py torch   SCRIPT [ARGS...]
    python swap.py lstmkit SCRIPT [ARGS...]

With ``lstmkit``, ``torch.nn.LSTM``, ``GRU``, ``RNN``, ``LSTMCell``, ``GRUCell`` and
``RNNCell`` are replaced by lstmkit's classes before the script runs, as a user would swap
them in; the script itself is run unchanged (``runpy``, as ``__main__``, from its own folder
so that its local imports resolve). Written for lstmkit's tests of real clients.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

SWAPPED = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


def main() -> None:
    which, script, *args = sys.argv[1:]
    if which not in ("torch", "lstmkit"):
        raise SystemExit(f"swap.py: expected 'torch' or 'lstmkit', got {which!r}")
    if which == "lstmkit":
        import lstmkit
        for name in SWAPPED:
            setattr(torch.nn, name, getattr(lstmkit, name))
    path = Path(script).resolve()
    sys.path.insert(0, str(path.parent))
    sys.argv = [str(path), *args]
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
