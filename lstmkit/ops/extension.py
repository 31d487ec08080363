"""Building and loading the C++ kernels (``csrc/``) on first use.

All of ``csrc/`` is one extension module: ``engine.cpp`` (the one time loop and its Python
binding) includes ``common.h`` and every ``cells/<family>.h``, each of which registers its
family with the loop. It is compiled by ``torch.utils.cpp_extension.load`` the first time a
fused CPU layer needs it — about a minute with ninja — and loaded from the build folder
afterwards. It is compiled for the machine it runs on (``-march=native``).

The build folder is ``<root>/lstmkit/engine-<key>``, where root is
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and the key hashes the
sources, the flags, the CPU, the Python version and the torch build (its version and
where it is installed). The sources are copied into the folder and built from there, so
two checkouts of the same sources share one build, and two environments (or two versions
of the sources) get two folders: nothing ever rebuilds over another's build. The first
build prints one line saying what it builds and why.

Another extension may need headers and a library from outside torch (``onednn_rnn.cpp``
needs oneDNN's, see :mod:`lstmkit.ops.onednn`): its caller passes :class:`BuildOptions`,
whose ``key`` (the library's location and version) enters the build key too.

Set ``LSTMKIT_NO_EXTENSION=1`` to never build or load it: the fused backend then runs its
recurrences as torch loops (:mod:`lstmkit.ops.loops`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).parent / "csrc"
ENGINE = "engine"
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp", "-std=c++17"]   # OpenMP: at::parallel_for (torch's own libgomp.so.1)
# linked with OpenMP too, so the .so names libgomp.so.1 itself (the one torch has loaded)
# instead of relying on torch having loaded it with RTLD_GLOBAL
LDFLAGS = ["-fopenmp"]
ENV_DISABLE = "LSTMKIT_NO_EXTENSION"

_lock = threading.Lock()
_states: dict[str, dict[str, object]] = {}   # per extension: "module" or "error", once tried


class ExtensionUnavailable(RuntimeError):
    """The C++ kernels could not be built or loaded (the message says why)."""


@dataclass(frozen=True)
class BuildOptions:
    """What an extension needs beyond torch: include folders, linker flags (e.g. a library
    and its rpath), a text that identifies them for the build key (location and version),
    and what to say if the build fails (the consequence, e.g. which backend is missing)."""

    include_paths: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    key: str = ""
    fallback: str = ("the fused backend runs its recurrences as torch loops (slower at "
                     "small sizes)")


def disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no")


def _sources() -> list[Path]:
    """Every file of csrc/, in a fixed order: what the build depends on."""
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".cpp", ".h"))


def cell_headers() -> list[str]:
    """The family headers ``cells/<family>.h`` the engine includes."""
    return [p.relative_to(CSRC).as_posix() for p in _sources() if p.parent.name == "cells"]


def _sources_of(name: str) -> list[Path]:
    """What extension ``name`` is built from: its own ``<name>.cpp`` and every header (the
    other extensions' top-level ``.cpp`` files are left out, so that editing one extension
    does not rebuild the others)."""
    return [p for p in _sources()
            if p.suffix != ".cpp" or p.parent != CSRC or p.stem == name]


def build_key(name: str = ENGINE, options: BuildOptions | None = None) -> str:
    """Hash of extension ``name``'s sources, the flags, CPU, Python and torch build, and the
    ``options`` (see the module docstring)."""
    import torch
    digest = hashlib.sha256()
    for path in _sources_of(name):
        digest.update(path.relative_to(CSRC).as_posix().encode())
        digest.update(path.read_bytes())
    for part in (" ".join(CFLAGS), " ".join(LDFLAGS), platform.machine(), _cpu_flags(), sys.version,
                 torch.__version__, str(Path(torch.__file__).resolve().parent)):
        digest.update(part.encode())
    if options is not None:
        digest.update(repr((options.include_paths, options.ldflags, options.key)).encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def build_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "lstmkit"


def _stage_sources(folder: Path, name: str = ENGINE) -> Path:
    """Copy csrc/ into ``folder/src`` (once, atomically) with the generated list of family
    headers, ``cells.inc``; return the path there of extension ``name``'s source."""
    src = folder / "src"
    if not (src / f"{ENGINE}.cpp").exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix="src-"))
        for path in _sources():
            target = tmp / path.relative_to(CSRC)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        (tmp / "cells.inc").write_text("".join(f'#include "{h}"\n' for h in cell_headers()))
        try:
            tmp.rename(src)
        except OSError:                      # another process staged them first
            shutil.rmtree(tmp, ignore_errors=True)
    return src / f"{name}.cpp"


# torch's build (cpp_extension.load) holds the file ``lock`` in the build folder while it
# compiles, and a process that finds it waits, silently and without end, for it to go; a
# build killed midway (Ctrl-C, a timeout) leaves it behind. A build takes about a minute, so
# a lock older than this is taken for such a leftover.
STALE_LOCK_SECONDS = 900


def _clear_stale_lock(folder: Path) -> None:
    """Remove ``folder/lock`` if it is older than :data:`STALE_LOCK_SECONDS` (a build that
    was interrupted), with a warning; say so on stderr if a younger one makes this process
    wait for another's build."""
    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:                          # no lock: nobody is building here
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(f"lstmkit: removing {lock}, left {age / 60:.0f} minutes ago by a build "
                      "that did not finish (interrupted?); building again", RuntimeWarning,
                      stacklevel=4)
        with contextlib.suppress(OSError):
            lock.unlink()
    else:
        print(f"lstmkit: waiting for another process's build in {folder} (its lock is "
              f"{age:.0f} s old; if no build is running, delete {lock})", file=sys.stderr,
              flush=True)


def _build(name: str, options: BuildOptions | None = None) -> ModuleType:
    from torch.utils.cpp_extension import load
    options = options or BuildOptions()
    key = build_key(name, options if options.key else None)
    module = f"lstmkit_{name}_{key}"
    folder = build_root() / f"{name}-{key}"
    source = _stage_sources(folder, name)
    _clear_stale_lock(folder)
    if not (folder / f"{module}.so").exists():
        what = (f"the C++ kernels ({len(cell_headers())} cell families)" if name == ENGINE
                else f"the C++ extension {name}.cpp")
        print(f"lstmkit: compiling {what} into "
              f"{folder} — first use of these sources with torch {_torch_version()}; "
              "about a minute, once", file=sys.stderr, flush=True)
    return load(name=module, sources=[str(source)], extra_cflags=CFLAGS,
                extra_include_paths=[str(source.parent), *options.include_paths],
                extra_ldflags=[*LDFLAGS, *options.ldflags], build_directory=str(folder),
                verbose=os.environ.get("LSTMKIT_VERBOSE_BUILD") == "1")


def _torch_version() -> str:
    import torch
    return torch.__version__


def cpp_module(name: str, required: bool, options: BuildOptions | None = None
               ) -> ModuleType | None:
    """The extension ``name`` (``"engine"``, ``"tiny1997"``: the tiny-network trainer of
    :mod:`lstmkit.ops.tiny1997`, or ``"onednn_rnn"``: :mod:`lstmkit.ops.onednn`, with its
    ``options``), building it on first call.

    With ``required=False`` a missing compiler or failed build gives one warning and
    ``None`` (callers fall back to the torch loops); with ``required=True`` it raises
    :class:`ExtensionUnavailable`.
    """
    state = _states.setdefault(name, {})
    if "module" not in state and "error" not in state:
        with _lock:
            if "module" not in state and "error" not in state:
                if disabled():
                    state["error"] = f"disabled by the environment variable {ENV_DISABLE}"
                else:
                    try:
                        state["module"] = (_build(name) if options is None
                                           else _build(name, options))
                    except Exception as e:   # compiler missing, build or import failure
                        state["error"] = f"{type(e).__name__}: {e}"
                        warnings.warn(
                            f"lstmkit: the C++ kernels ({name}.cpp) could not be built, so "
                            f"{(options or BuildOptions()).fallback}. "
                            f"Reason: {str(state['error'])[:2000]}", RuntimeWarning,
                            stacklevel=3)
    if "module" in state:
        return state["module"]          # type: ignore[return-value]
    if required:
        needed_by = "backend='fused_cpp'" if options is None else "this backend"
        raise ExtensionUnavailable(f"{needed_by} needs the C++ kernels ({name}.cpp), "
                                   f"which are unavailable: {state['error']}")
    return None


class CppKernels:
    """The C++ loop with the signature of :mod:`lstmkit.ops.loops` (``forward`` and
    ``backward``): absent tensors travel as empty ones, the cell as its C++ name and
    options."""

    def __init__(self, module: ModuleType):
        import torch
        self.module = module
        self._none = torch.empty(0)

    def _t(self, t):
        return self._none if t is None else t

    def forward(self, cell, a, seqs, carry, m, w_hr, w, saved, side, h_drop, zones,
                batch_sizes, reverse) -> None:
        f = cell.fused
        self.module.forward(f.cpp, _hidden(cell, w), f.cpp_options(cell), a, seqs, carry,
                            self._t(m), self._t(w_hr), [self._t(t) for t in w], saved, side,
                            self._t(h_drop), [self._t(z) for z in zones], batch_sizes, reverse)

    @contextlib.contextmanager
    def keep_weight_layouts(self) -> Iterator[None]:
        """Within this block, the loop lays out (or packs) each recurrent weight once and
        reuses it in every :meth:`backward` call, instead of once per call: the time
        chunks of one layer's backward (the weights must not change inside the block)."""
        self.module.keep_weight_layouts(True)
        try:
            yield
        finally:
            self.module.keep_weight_layouts(False)

    def backward(self, cell, dA, gates, seqs, prev, dseqs, dcarry, w_hr, dH, w, grads, saved,
                 side, h_drop, zones, batch_sizes, reverse) -> None:
        f = cell.fused
        self.module.backward(f.cpp, _hidden(cell, w), f.cpp_options(cell), dA, gates, seqs, prev,
                             [self._t(d) for d in dseqs], dcarry, self._t(w_hr), self._t(dH),
                             [self._t(t) for t in w], grads, saved, side, self._t(h_drop),
                             [self._t(z) for z in zones], batch_sizes, reverse)


def _hidden(cell, w) -> int:
    return w[0].shape[0] // len(cell.gate_rows)          # w[0] is W_hh (G·H, R)


_adapters: dict[int, CppKernels] = {}


def cpp_kernels(required: bool) -> CppKernels | None:
    """The compiled time loop (``csrc/engine.cpp``) as a kernel set; see :func:`cpp_module`."""
    module = cpp_module(ENGINE, required)
    if module is None:
        return None
    adapter = _adapters.get(id(module))
    if adapter is None:
        adapter = _adapters[id(module)] = CppKernels(module)
    return adapter
