"""Building and loading the C++ kernels (``csrc/``) on first use.

Each ``csrc/<name>.cpp`` is its own extension module (``kernels`` holds LSTM, GRU and
RNN; other cell families add their own file), loaded with :func:`cpp_module`. Each is
compiled by ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) the first time a fused
CPU layer needs it — about a minute with ninja — and loaded from the cache afterwards.
It is compiled for the machine it runs on (``-march=native``); the cache name includes a
hash of the source and flags, so edited sources or another CPU build anew.

Set ``LSTMKIT_NO_EXTENSION=1`` to never build or load any: the fused backend then runs
its recurrences as torch loops (:mod:`lstmkit.ops.loops`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).parent / "csrc"
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp-simd", "-std=c++17"]
ENV_DISABLE = "LSTMKIT_NO_EXTENSION"

_lock = threading.Lock()
_states: dict[str, dict[str, object]] = {}   # per source: "module" or "error", once tried


class ExtensionUnavailable(RuntimeError):
    """The C++ kernels could not be built or loaded (the message says why)."""


def disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no")


def _build_name(name: str) -> str:
    digest = hashlib.sha256()
    digest.update((CSRC / f"{name}.cpp").read_bytes())
    for header in sorted(CSRC.glob("*.h")):          # shared by every extension
        digest.update(header.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_flags().encode())            # -march=native differs by CPU
    try:
        import torch
        digest.update(torch.__version__.encode())
    except ImportError:                                   # pragma: no cover
        pass
    return f"lstmkit_{name}_" + digest.hexdigest()[:12]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build(name: str) -> ModuleType:
    from torch.utils.cpp_extension import load
    return load(name=_build_name(name), sources=[str(CSRC / f"{name}.cpp")],
                extra_cflags=CFLAGS, verbose=os.environ.get("LSTMKIT_VERBOSE_BUILD") == "1")


def cpp_kernels(required: bool) -> ModuleType | None:
    """The compiled LSTM/GRU/RNN kernels (``csrc/kernels.cpp``); see :func:`cpp_module`."""
    return cpp_module("kernels", required)


def cpp_module(name: str, required: bool) -> ModuleType | None:
    """The extension compiled from ``csrc/<name>.cpp``, building it on first call.

    With ``required=False`` a missing compiler or failed build gives one warning and
    ``None`` (callers fall back to the torch loops); with ``required=True`` it raises
    :class:`ExtensionUnavailable`.
    """
    _state = _states.setdefault(name, {})
    if "module" not in _state and "error" not in _state:
        with _lock:
            if "module" not in _state and "error" not in _state:
                if disabled():
                    _state["error"] = f"disabled by the environment variable {ENV_DISABLE}"
                else:
                    try:
                        _state["module"] = _build(name)
                    except Exception as e:   # compiler missing, build or import failure
                        _state["error"] = f"{type(e).__name__}: {e}"
                        warnings.warn(
                            f"lstmkit: the C++ kernels {name}.cpp could not be built, so "
                            "the fused backend runs its recurrences as torch loops (slower at "
                            "small sizes). "
                            f"Reason: {str(_state['error'])[:2000]}", RuntimeWarning,
                            stacklevel=3)
    if "module" in _state:
        return _state["module"]          # type: ignore[return-value]
    if required:
        raise ExtensionUnavailable(f"backend='fused_cpp' needs the C++ kernels {name}.cpp, "
                                   f"which are unavailable: {_state['error']}")
    return None
