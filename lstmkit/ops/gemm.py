"""The GEMMs of a fused layer call on the C++ loop, and which library runs them.

Two kinds of product run there: the per-step products with the recurrent weights (inside the
C++ loop, ``WeightGemm`` in ``csrc/common.h``) and the large GEMMs of the call (the input
projection ``x W_ihᵀ``, the input gradient ``dA W_ih`` and the weight gradients ``dAᵀ x``,
``dAᵀ ĥ``, through :func:`matmul_into` and :func:`addmm` here). Each can run on ATen's
brgemm (oneDNN's micro-kernels, generated at run time for the CPU: the engine's
``big_gemm`` and ``mm_into``) or on MKL (torch's ``mm``).

Which is faster depends on the machine, and not only on its instruction set: brgemm was 2×
faster for the per-step products on one AVX-512 EPYC, MKL 1.2× faster for the large GEMMs
on another of the same kind, and on an AVX2 one MKL was faster for all but the per-step
products of a batch of one or two rows — until the engine packed its weights in column
panels, after which brgemm won every per-step class there (docs/performance.md). So with
``LSTMKIT_GEMM`` unset or ``auto`` the route of each class — per-step products by size
(tiny: a batch of one or a few rows, which brgemm runs on one thread; small; large; and the
products a row-parallel step runs in parts of rows, one single-threaded product per thread,
timed so) and the
large GEMMs of a call (the projection and input gradient; the weight gradients, whose left
operand is transposed) — is **measured**: the first fused layer call of a process times both
routes on a few shapes of each class (:func:`calibrate`, about a second) and keeps the
faster (MKL in a near-tie). The result is stored beside the compiled extension
(``gemm-routes.json``, per host and thread count; ``$LSTMKIT_GEMM_ROUTES`` names another file), so
later processes on the machine read it instead of measuring again: every process of a
machine computes with the same routes, so results stay reproducible between runs (a resumed
training, say). Delete that file, or call :func:`calibrate` with ``save=True``, to measure
again. A measurement taken while the machine was busy may choose worse; measure again when
quiet.

``LSTMKIT_GEMM=blas`` puts everything on MKL (MKL's packed GEMM for per-step weights of
≥ 1M elements), ``LSTMKIT_GEMM=brgemm`` everything on brgemm; nothing is measured then.

:func:`using_engine` is entered by :mod:`lstmkit.ops.fused` around a layer call whose loop
is the C++ extension; :func:`matmul_into` (and :func:`addmm`) take the engine's path only
then, for float32 CPU tensors, and when the route of the GEMM's class is brgemm. Anything else (the
torch loop backend, float64, other devices, tracing) runs torch's own ops, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from . import workspace

MODES = ("auto", "blas", "brgemm")
ROUTES_FILE = "gemm-routes.json"
ROUTES_ENV = "LSTMKIT_GEMM_ROUTES"     # a routes file to use instead (the tests set one)
# step_class in common.h: 0, 1, 2, 3
STEP_CLASSES = ("step_tiny", "step_small", "step_large", "step_parts")
# the classes a route is chosen for: the per-step ones, then the large GEMMs whose left
# operand is row-major (the projection x W_ihᵀ and the input gradient dA W_ih) and those whose
# left operand is transposed (the weight gradients dAᵀ x, dAᵀ Ĥ: brgemm needs a transposing
# copy of dA, and was 1.5–3× slower than MKL there on every machine measured, while the
# first two ran faster than MKL on an AVX-512 EPYC)
CLASSES = (*STEP_CLASSES, "large", "large_t")
FORMAT = 5                                     # of a stored measurement
# brgemm is chosen where its time is under this share of MKL's. In a near-tie the probe
# misleads: the small class measured 0.98 on an AVX2 EPYC, yet a layer ran 4–15 % slower
# with it on brgemm than on MKL (benchmarks/loop_gemm_ab.py, (100,16,128) rows), so MKL,
# torch's own library, keeps a tie.
BRGEMM_MARGIN = 0.95
# A class whose first ratio falls in this band around the margin is measured twice more and
# the median counts: single calibrations of one class spread over 0.93–1.19 on a quiet
# machine.
RECHECK = (0.8, 1.1)

# Shapes timed for each class. Per-step: (m, n, k, W transposed) as the LSTM loop runs
# them, forward h·W_hhᵀ and backward dA·W_hh, at (B, H) = (1, 64) and (2, 128) for tiny
# (m·n·k < 2¹⁸ multiply-adds, kTinyWork in csrc/common.h), (2, 256) and (4, 128) for small
# (< 2²², kLargeWork), (32, 512) for large (on MKL's packed GEMM, which takes weights of ≥ 1M
# elements), and (16, 128) and (64, 256) for "parts": the products a row-parallel step runs in
# parts of rows, one per thread (runs_in_parts in csrc/common.h: weights of ≤ 2¹⁸ floats, at
# least 4 rows per thread; with several threads, which is when the class exists; with one
# thread they are timed whole). Large GEMMs: (N = T·B rows, H, I) of an LSTM layer (4H gate
# columns): its projection and input gradient ("large"), its weight gradient ("large_t").
STEP_SHAPES = {"step_tiny": ((1, 256, 64, True), (1, 64, 256, False), (2, 512, 128, True)),
               "step_small": ((2, 1024, 256, True), (2, 256, 1024, False),
                              (4, 512, 128, True), (4, 128, 512, False)),
               "step_large": ((32, 2048, 512, True), (32, 512, 2048, False)),
               "step_parts": ((16, 512, 128, True), (16, 128, 512, False),
                              (64, 1024, 256, True), (64, 256, 1024, False))}
LARGE_SHAPES = ((1024, 128, 128), (2048, 256, 256))
ROUNDS = 5                       # interleaved rounds; the least time of each route counts

_state = threading.local()
_lock = threading.RLock()
_routes: dict[tuple[str, int], dict] = {}       # (extension, threads) -> routes


def mode() -> str:
    """``LSTMKIT_GEMM`` (read here only; the engine is told the result): trimmed of spaces,
    tabs and newlines, any case, unset = auto."""
    value = os.environ.get("LSTMKIT_GEMM", "").strip(" \t\n").lower() or "auto"
    if value not in MODES:
        raise RuntimeError(f"lstmkit engine: LSTMKIT_GEMM must be auto, blas or brgemm, "
                           f"got '{value}'")
    return value


@contextlib.contextmanager
def using_engine(module) -> Iterator[None]:
    """Within this block (one layer call), the loop's per-step products run on the routes
    chosen for this machine, and :func:`matmul_into` on ``module``'s ``mm_into`` (the
    compiled engine) where the route of its class of large GEMM is brgemm, else on torch
    (also if ``module`` is None)."""
    saved = getattr(_state, "module", None), getattr(_state, "module_t", None)
    _state.module, _state.module_t = (_prepare(module) if module is not None
                                      else (None, None))
    try:
        yield
    finally:
        _state.module, _state.module_t = saved


def _prepare(module):
    """Give the engine its per-step routes (one call per layer call, so a changed mode,
    thread count or calibration takes effect at the next layer); return, for the large GEMMs
    with a row-major and with a transposed left operand, ``module`` if they go to it, else
    None."""
    chosen = mode()
    if chosen == "auto":
        r = routes(module)
        step = [r[c] == "brgemm" for c in STEP_CLASSES]
        large = [r[c] == "brgemm" for c in ("large", "large_t")]
    else:
        step, large = [chosen == "brgemm"] * len(STEP_CLASSES), [chosen == "brgemm"] * 2
    module.set_gemm_routes(step)
    return tuple(module if on else None for on in large)


def describe() -> dict:
    """What a fused C++ layer's GEMMs run on now: ``{"mode": LSTMKIT_GEMM}`` and, in auto
    mode, ``"routes"`` (:func:`routes`, measured now if this machine has none stored; None
    when the C++ extension is unavailable). For benchmark reports."""
    from .extension import ENGINE, cpp_module
    chosen = mode()
    if chosen != "auto":
        return {"mode": chosen}
    module = cpp_module(ENGINE, required=False)
    return {"mode": chosen, "routes": None if module is None else routes(module)}


def _key(module) -> str:
    return str(getattr(module, "__file__", None) or id(module))


def routes_file(module) -> Path | None:
    """Where the measured routes of ``module`` (the compiled engine) are kept:
    ``$LSTMKIT_GEMM_ROUTES`` if set, else beside its shared library, in its build folder
    (None if it has no file)."""
    override = os.environ.get(ROUTES_ENV, "").strip()
    if override:
        return Path(override)
    path = getattr(module, "__file__", None)
    return Path(path).parent / ROUTES_FILE if path else None


def _entry(threads: int) -> str:
    """An entry of the routes file: per host (a build folder may be shared between hosts,
    e.g. a home over NFS, whose speeds differ) and thread count."""
    return f"{socket.gethostname()}/{threads}"


def routes(module, threads: int | None = None) -> dict:
    """The routes for ``threads`` threads (default: torch's current count): for each class
    of :data:`CLASSES`, ``"brgemm"`` or ``"blas"`` (MKL), with the measurement behind them
    (``"ratios"``: brgemm's time over MKL's, the geometric mean over the class's shapes).
    Read from :func:`routes_file` if it holds them, else measured by :func:`calibrate` and
    stored there — under a lock on the file, so processes that start together measure once
    and share the result."""
    threads = threads or torch.get_num_threads()
    key = (_key(module), threads)
    found = _routes.get(key)
    if found is None:
        with _lock:
            found = _routes.get(key)
            if found is None:
                with _file_lock(routes_file(module)):
                    found = _load(module, threads)
                    if found is None:
                        found = calibrate(module, threads, save=True)
                _routes[key] = found
    return found


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``path`` + ``.lock`` (none where it cannot be made)."""
    handle = None
    if path is not None:
        try:
            import fcntl
            handle = open(path.with_name(path.name + ".lock"), "a")   # noqa: SIM115
            fcntl.flock(handle, fcntl.LOCK_EX)
        except (OSError, ImportError):
            if handle is not None:
                handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()                                 # releases the lock


def _valid(entry: object) -> bool:
    return (isinstance(entry, dict) and entry.get("format") == FORMAT
            and all(entry.get(c) in ("brgemm", "blas") for c in CLASSES))


def _load(module, threads: int) -> dict | None:
    path = routes_file(module)
    try:
        entry = json.loads(path.read_text()).get(_entry(threads)) if path else None
    except (OSError, ValueError, AttributeError):   # absent, unreadable or corrupt: measure
        return None
    return entry if _valid(entry) else None


def _store(module, threads: int, entry: dict) -> None:
    """Add ``entry`` for ``threads`` to the routes file (written whole, then renamed into
    place, so that a reader never sees half a file; readable by all); a folder that cannot
    be written is left alone (the routes then hold for this process only)."""
    path = routes_file(module)
    if path is None:
        return
    tmp = None
    try:
        try:
            stored = json.loads(path.read_text())
            stored = stored if isinstance(stored, dict) else {}
        except (OSError, ValueError):
            stored = {}
        stored[_entry(threads)] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gemm-routes-")
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def calibrate(module, threads: int | None = None, save: bool = False) -> dict:
    """Time both routes of every class on ``module`` (the compiled engine) with ``threads``
    threads (default: torch's current count); return the routes (as :func:`routes` does).
    ``save``: store them in :func:`routes_file` and use them from now on in this process.

    Each shape is timed :data:`ROUNDS` times per route, the routes interleaved, and the
    least time counts; a class goes to brgemm if the geometric mean over its shapes of
    brgemm's time over MKL's is below :data:`BRGEMM_MARGIN` (the median of three such
    measurements if the first lies in :data:`RECHECK`). Runs outside any tensor mode (fake
    tensors, tracing), without autograd, and draws from its own generator: the global random
    state is untouched. Raises ``RuntimeError`` if torch cannot run ``threads`` threads now
    (its thread pool is fixed once it has started)."""
    from torch.utils._python_dispatch import _disable_current_modes

    threads = threads or torch.get_num_threads()
    before = torch.get_num_threads()
    start = time.perf_counter()
    with _disable_current_modes(), torch.no_grad():
        if threads != before:
            torch.set_num_threads(threads)
        try:
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"lstmkit gemm.calibrate: torch runs "
                                   f"{torch.get_num_threads()} threads, not {threads}")
            ratios = {c: _measured(lambda c=c: _step_ratio(module, STEP_SHAPES[c]))
                      for c in STEP_CLASSES}
            ratios["large"] = _measured(lambda: _large_ratio(module, transposed=False))
            ratios["large_t"] = _measured(lambda: _large_ratio(module, transposed=True))
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    entry = {"format": FORMAT, "threads": threads,
             **{c: "brgemm" if ratios[c] < BRGEMM_MARGIN else "blas" for c in CLASSES},
             "ratios": {c: round(ratios[c], 4) for c in CLASSES},
             "seconds": round(time.perf_counter() - start, 3),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if save:
        _store(module, threads, entry)
        with _lock:
            _routes[(_key(module), threads)] = entry
    return entry


def _measured(ratio) -> float:
    """``ratio()``, or the median of three calls if the first is near the margin."""
    first = ratio()
    if not RECHECK[0] < first < RECHECK[1]:
        return first
    return sorted([first, ratio(), ratio()])[1]


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _ratio(run) -> float:
    """brgemm's time over MKL's, ``run(brgemm)`` giving one time: the least of
    :data:`ROUNDS` rounds each, the two interleaved."""
    best = {True: math.inf, False: math.inf}
    for _ in range(ROUNDS):
        for brgemm in (True, False):
            best[brgemm] = min(best[brgemm], run(brgemm))
    return best[True] / best[False]


def _step_ratio(module, shapes) -> float:
    ratios = []
    for m, n, k, transposed in shapes:
        reps = int(min(2000, max(5, 2e7 // (m * n * k))))
        ratios.append(_ratio(lambda brgemm, m=m, n=n, k=k, t=transposed, reps=reps:
                             module.gemm_probe(brgemm, m, n, k, t, reps)))
    return _geomean(ratios)


def _large_ratio(module, transposed: bool) -> float:
    """brgemm over MKL for an LSTM layer's projection and input gradient, or (``transposed``)
    its weight gradient, at :data:`LARGE_SHAPES`."""
    g = torch.Generator().manual_seed(0)
    ratios = []
    for N, H, I in LARGE_SHAPES:
        x, w = torch.randn(N, I, generator=g), torch.randn(4 * H, I, generator=g)
        dA = torch.randn(N, 4 * H, generator=g)
        a, dx, dw = torch.empty(N, 4 * H), torch.empty(N, I), torch.zeros(4 * H, I)
        products = (((dw, dA.t(), x, True),) if transposed
                    else ((a, x, w.t(), False), (dx, dA, w, False)))

        def run(brgemm: bool, products=products) -> float:
            t0 = time.perf_counter()
            for out, p, q, acc in products:
                if brgemm:
                    module.mm_into(out, p, q, acc)
                elif acc:
                    out.addmm_(p, q)
                else:
                    torch.mm(p, q, out=out)
            return time.perf_counter() - t0

        run(True), run(False)                              # kernels generated, caches warm
        ratios.append(_ratio(run))
    return _geomean(ratios)


def _engine(*tensors: Tensor, transposed: bool = False):
    """The engine, if a large GEMM of these tensors runs on it now: within
    :func:`using_engine`, its class (``transposed``: the left operand is a transposed view)
    routed to brgemm, and float32 CPU matrices."""
    module = getattr(_state, "module_t" if transposed else "module", None)
    if module is None:
        return None
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2:
            return None
    return module


def matmul_into(out: Tensor, a: Tensor, b: Tensor, accumulate: bool = False) -> Tensor:
    """``out = a @ b`` (``accumulate``: ``out += a @ b``), in place; returns ``out``."""
    module = _engine(out, a, b, transposed=not _row_major(a))
    if module is None or not _dense_rows(out) or not (_unit(a) and _unit(b)):
        if accumulate:
            return out.addmm_(a, b)
        return torch.mm(a, b, out=out)
    module.mm_into(out, a, b, accumulate)
    return out


def addmm(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """A new ``bias + a @ b`` (``a @ b`` without a bias), as ``torch.addmm`` (a recycled
    buffer under :func:`lstmkit.ops.workspace.recycling`)."""
    out = workspace.empty((a.shape[0], b.shape[1]), a)
    if _engine(a, b, transposed=not _row_major(a)) is None:
        return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
    if bias is None:
        return matmul_into(out, a, b)
    # out is a new tensor, not .contiguous() of a one-row expand (the bias itself, which the
    # accumulation would then overwrite)
    out.copy_(bias.expand_as(out))
    return matmul_into(out, a, b, accumulate=True)


def _row_major(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1


def _unit(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1 or t.shape[0] <= 1 or t.stride(0) == 1


def _dense_rows(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1
