"""Benchmark lstmkit's fused kernels against torch.nn and the reference loop.

For each configuration (cell, T, B, I = H) it measures, in one process:

* forward time (``torch.no_grad()``) and forward+backward time of a training step
  (``loss = (output * g).sum()`` with a fixed random ``g``; the input requires grad);
  2 warm-up runs, then the median of ``repeats`` runs, the implementations interleaved
  (lstmkit, torch.nn, [reference], GEMMs alone; the starting one rotating per repeat); a
  run starts with ``gc.collect()`` and one untimed call (:data:`SETTLE`: the first call
  after the collection's pause pays the machine's wake-up), and a run of a call shorter
  than :data:`MIN_RUN_MS` makes as many calls back to back as fill that time and counts
  their mean;
* peak memory of one training step, from the allocation events of
  ``torch.profiler.profile(profile_memory=True)`` (running sum of allocation sizes, max);
* the largest absolute error of the output against the float64 reference loop
  (``backend="reference"``, the same weights in float64);
* the GEMM share: the time of the same GEMMs alone (the input projection, the per-step
  recurrent GEMMs forward and backward, the weight/input-gradient GEMMs) over lstmkit's
  forward+backward time;
* the share of the machine's float32 GEMM peak each implementation reaches: the training
  FLOPs 3·2·N·G·H·(I + H) of the row (N = T·B rows; :func:`train_gflop`) over its time, against
  the rate of one 2048³ ``torch.mm`` measured in the same run at the same thread count
  (:func:`sgemm_peak`).

With ``inference=True`` (``lstmkit bench --inference``) it times the forward pass alone
under ``torch.no_grad()`` (:func:`bench_inference_config`): lstmkit, torch.nn and
onnxruntime's CPU session on the same weights (exported by
:func:`lstmkit.interop.onnx.export_module`, intra-op threads = torch's threads), with the
error of each against the float64 reference and its share of the GEMM peak (2·N·G·H·(I + H)
FLOPs).

Any extra lstmkit backend named in :data:`EXTRA_BACKENDS` (``"onednn"``) that
``lstmkit.ops.BACKENDS`` lists at run time is timed as one more implementation: the same
lstmkit module with ``backend`` set to it.

Implementations: lstmkit (``backend="fused_cpp"`` or ``"fused_py"``), torch.nn (the same
configuration where torch.nn has it; torch.nn.LSTM of the same size for peephole and
coupled LSTMs, marked ``*``) and the reference loop in float32 (by default only for
T·B·H <= 100·16·128).

    python benchmarks/run.py [--quick] [--only S] [--repeats N] [--threads N] [--json PATH]
    lstmkit bench ...                               (the same options)
    lstmkit bench --inference ...                   (forward only, with onnxruntime)
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn
from torch._C._profiler import _EventType  # the profiler event tree: every allocation
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstmkit
from lstmkit import ops

REFERENCE_LIMIT = 100 * 16 * 128        # T·B·H up to which the reference loop runs by default
BACKENDS = ("fused_cpp", "fused_py")
EXTRA_BACKENDS = ("onednn",)            # timed as a column when lstmkit.ops.BACKENDS has it
WARMUP = 2
MIN_RUN_MS = 5.0                        # shorter calls are repeated within one timed run
#: Each timed run starts with one untimed call. The first call after the collection's pause
#: (45 ms here) pays the machine's wake-up, not the code's cost: on the Xeon (2026-12-04) a
#: training step at (100,16,128) took 1.2–1.8 ms longer when it came after a 45 ms
#: ``time.sleep`` as after ``gc.collect()``, torch.nn's and lstmkit's alike (torch.nn.LSTM
#: 6.5 → 7.7–8.4 ms, the LN-LSTM 7.4–7.8 → 9.6 ms), which training loops calling back to
#: back never pay. Before 2026-12-04 a run of one call measured it (docs/performance.md).
SETTLE = True
PEAK_N = 2048                           # the sgemm whose rate is the peak: PEAK_N³


@dataclass(frozen=True)
class Config:
    """One benchmark row: a single-layer, unidirectional module with I = H."""

    cell: str                 # "lstm", "gru" or "rnn"
    T: int
    B: int
    H: int
    proj: int = 0             # LSTM proj_size
    variant: str = ""         # "", "peephole", "coupled" or "layer_norm" (LSTM)
    packed: bool = False      # PackedSequence input, lengths uniform in [T/2, T]

    @property
    def name(self) -> str:
        words = [self.cell.upper()]
        words += [self.variant] if self.variant else []
        words += ["proj"] if self.proj else []
        words += ["packed"] if self.packed else []
        size = f"{self.T},{self.B},{self.H}" + (f"→{self.proj}" if self.proj else "")
        return f"{' '.join(words)} ({size})"

    @property
    def gates(self) -> int:
        return {"lstm": 3 if self.variant == "coupled" else 4, "gru": 3, "rnn": 1}[self.cell]

    @property
    def torch_has_it(self) -> bool:
        """Whether torch.nn computes the same function (else it gets a plain LSTM)."""
        return not self.variant

    @property
    def small(self) -> bool:
        return self.T * self.B * self.H <= REFERENCE_LIMIT


MATRIX = (
    Config("lstm", 50, 1, 64), Config("lstm", 100, 16, 128), Config("lstm", 150, 64, 256),
    Config("lstm", 25, 64, 512), Config("lstm", 100, 32, 1024),
    Config("gru", 100, 16, 128), Config("gru", 150, 64, 256),
    Config("rnn", 100, 16, 128), Config("rnn", 150, 64, 256),
    Config("lstm", 100, 16, 128, proj=64),
    Config("lstm", 100, 16, 128, variant="peephole"),
    Config("lstm", 150, 64, 256, variant="peephole"),
    Config("lstm", 100, 16, 128, variant="coupled"),
    Config("lstm", 150, 64, 256, variant="coupled"),
    Config("lstm", 100, 16, 128, variant="layer_norm"),
    Config("lstm", 150, 64, 256, variant="layer_norm"),
    Config("lstm", 100, 32, 256, packed=True), Config("gru", 100, 32, 256, packed=True),
)
QUICK = (
    Config("lstm", 50, 1, 64), Config("lstm", 100, 16, 128), Config("gru", 100, 16, 128),
    Config("lstm", 100, 16, 128, variant="peephole"),
)


def select_configs(quick: bool = False, only: str | None = None) -> list[Config]:
    """The full or quick matrix, keeping the rows whose name contains ``only``."""
    configs = QUICK if quick else MATRIX
    return [c for c in configs if not only or only.lower() in c.name.lower()]


# -- models and inputs ------------------------------------------------------------------
_LSTMKIT = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
_TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def build_models(cfg: Config, backend: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(lstmkit module, torch.nn baseline), with the same weights where torch.nn has it."""
    torch.manual_seed(seed)
    extra = {"proj_size": cfg.proj} if cfg.proj else {}
    baseline = _TORCH[cfg.cell](cfg.H, cfg.H, **extra)
    if cfg.variant:
        ours = lstmkit.LSTM(cfg.H, cfg.H, backend=backend, **{cfg.variant: True})
    else:
        ours = _LSTMKIT[cfg.cell].from_torch(baseline, backend=backend)
    return ours, baseline


def reference_twin(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype`` running the reference autograd loop."""
    twin = copy.deepcopy(module).to(dtype)
    twin.backend = "reference"
    return twin


@dataclass
class Inputs:
    feed: Tensor | PackedSequence     # what the modules take
    leaf: Tensor                      # the tensor whose gradient backward computes
    grad_out: Tensor                  # fixed upstream gradient of the output (its data if packed)
    batch_sizes: list[int]

    def as_dtype(self, dtype: torch.dtype) -> Tensor | PackedSequence:
        x = self.leaf.detach().to(dtype)
        if isinstance(self.feed, PackedSequence):
            f = self.feed
            return PackedSequence(x, f.batch_sizes, f.sorted_indices, f.unsorted_indices)
        return x


def make_inputs(cfg: Config, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.T, cfg.B, cfg.H, generator=g)
    if cfg.packed:
        lengths = torch.randint(cfg.T // 2, cfg.T + 1, (cfg.B,), generator=g)
        p = pack_padded_sequence(x, lengths, enforce_sorted=False)
        leaf = p.data.clone().requires_grad_()
        feed = PackedSequence(leaf, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        batch_sizes = p.batch_sizes.tolist()
    else:
        leaf = feed = x.requires_grad_()
        batch_sizes = [cfg.B] * cfg.T
    grad_out = torch.randn(*leaf.shape[:-1], cfg.proj or cfg.H, generator=g)
    return Inputs(feed, leaf, grad_out, batch_sizes)


def _output(result: tuple) -> Tensor:
    out = result[0]
    return out.data if isinstance(out, PackedSequence) else out


def forward(module: nn.Module, feed: Tensor | PackedSequence) -> Tensor:
    with torch.no_grad():
        return _output(module(feed))


def clear_grads(module: nn.Module, inp: Inputs) -> None:
    for p in module.parameters():
        p.grad = None
    inp.leaf.grad = None


def train_step(module: nn.Module, inp: Inputs) -> None:
    clear_grads(module, inp)
    (_output(module(inp.feed)) * inp.grad_out).sum().backward()


# -- timing -----------------------------------------------------------------------------
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = {"name": "wall"}


@contextlib.contextmanager
def using_clock(name: str) -> Iterator[None]:
    """Time with ``name`` inside this block: ``"wall"`` (default) or ``"cpu"``, the CPU time
    of the process (on a loaded machine, with one thread, the work done rather than the
    waiting for a core; with several threads it adds up their times)."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {name!r}")
    saved = _clock["name"]
    _clock["name"] = name
    try:
        yield
    finally:
        _clock["name"] = saved


def _time_ms(fn: Callable[[], object], calls: int = 1) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn`` back to back, after a garbage
    collection and one untimed call (:data:`SETTLE`)."""
    gc.collect()
    if SETTLE:
        fn()
    clock = CLOCKS[_clock["name"]]
    start = clock()
    for _ in range(calls):
        fn()
    return 1e3 * (clock() - start) / calls


def calls_per_run(fn: Callable[[], object]) -> int:
    """How many calls of ``fn`` fill :data:`MIN_RUN_MS` (1 for a call that long or longer),
    from the time of one call, at most 1000."""
    one = _time_ms(fn)
    return max(1, min(1000, math.ceil(MIN_RUN_MS / max(one, 1e-3))))


def measure_times(tasks: dict[str, dict[str, Callable[[], object]]], repeats: int,
                  warmup: int = WARMUP) -> dict[str, dict[str, list[float]]]:
    """Run every task ``warmup`` times, then ``repeats`` timed rounds over all of them,
    interleaved, the first implementation rotating; milliseconds per call (a run of a short
    call makes :func:`calls_per_run` calls)."""
    for fns in tasks.values():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
    names = list(tasks)
    calls = {n: {label: calls_per_run(fn) if repeats else 1 for label, fn in tasks[n].items()}
             for n in names}
    times = {n: {label: [] for label in tasks[n]} for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            for label, fn in tasks[n].items():
                times[n][label].append(_time_ms(fn, calls[n][label]))
    return times


def model_tasks(module: nn.Module, inp: Inputs) -> dict[str, Callable[[], object]]:
    return {"fwd": partial(forward, module, inp.feed), "fb": partial(train_step, module, inp)}


# -- GEMMs alone ------------------------------------------------------------------------
def gemm_buffers(cfg: Config, batch_sizes: Sequence[int]) -> dict[str, Tensor]:
    """Operands and outputs of the GEMMs of one training step of the fused backend."""
    N, B, I, H, GH = sum(batch_sizes), batch_sizes[0], cfg.H, cfg.H, cfg.gates * cfg.H
    Ho = cfg.proj or H
    r = torch.randn
    t = {"x": r(N, I), "w_ih": r(GH, I), "b": r(GH), "xw": r(N, GH), "w_hh": r(GH, Ho),
         "h": r(B, Ho), "step": r(B, GH), "dA": r(N, GH), "dh": r(B, Ho), "dx": r(N, I),
         "dw_ih": r(GH, I), "h_prev": r(N, Ho), "dw_hh": r(GH, Ho)}
    if cfg.proj:
        t.update(w_hr=r(Ho, H), m=r(N, H), hp=r(B, Ho), dH=r(N, Ho), dm=r(B, H),
                 dw_hr=r(Ho, H))
    return t


def gemm_pass(t: dict[str, Tensor], batch_sizes: Sequence[int]) -> None:
    """The GEMMs of a forward+backward pass, into preallocated outputs."""
    proj = "w_hr" in t
    torch.addmm(t["b"], t["x"], t["w_ih"].t(), out=t["xw"])
    for b in batch_sizes:                                          # h_{t-1} W_hhᵀ (, m W_hrᵀ)
        torch.mm(t["h"][:b], t["w_hh"].t(), out=t["step"][:b])
        if proj:
            torch.mm(t["m"][:b], t["w_hr"].t(), out=t["hp"][:b])
    for b in reversed(batch_sizes):                                # dA_t W_hh (, dH_t W_hr)
        torch.mm(t["dA"][:b], t["w_hh"], out=t["dh"][:b])
        if proj:
            torch.mm(t["dH"][:b], t["w_hr"], out=t["dm"][:b])
    torch.mm(t["dA"], t["w_ih"], out=t["dx"])
    torch.mm(t["dA"].t(), t["x"], out=t["dw_ih"])
    torch.mm(t["dA"].t(), t["h_prev"], out=t["dw_hh"])
    if proj:
        torch.mm(t["dH"].t(), t["m"], out=t["dw_hr"])


def train_gflop(cfg: Config, batch_sizes: Sequence[int]) -> float:
    """3 · 2·N·G·H·(I + H_out): forward, input/state gradients, weight gradients."""
    Ho = cfg.proj or cfg.H
    flop = 3 * 2 * sum(batch_sizes) * cfg.gates * cfg.H * (cfg.H + Ho)
    if cfg.proj:
        flop += 3 * 2 * sum(batch_sizes) * cfg.H * Ho
    return flop / 1e9


def infer_gflop(cfg: Config, batch_sizes: Sequence[int]) -> float:
    """The forward pass alone: a third of :func:`train_gflop` (2·N·G·H·(I + H_out))."""
    return train_gflop(cfg, batch_sizes) / 3


def baseline_config(cfg: Config) -> Config:
    """What torch.nn runs for ``cfg``: the same, or the plain LSTM of the same size."""
    return cfg if cfg.torch_has_it else replace(cfg, variant="")


_peaks: dict[tuple[int, int], dict] = {}


def sgemm_peak(n: int | None = None, repeats: int = 3, cached: bool = False) -> dict:
    """The machine's float32 GEMM rate at torch's current thread count: the fastest of
    ``repeats`` ``torch.mm`` of two n×n matrices into a preallocated output (one warm-up
    first), as 2·n³ FLOPs over its time. ``cached``: reuse an earlier measurement at the same
    thread count and size (one per process). ``n``: default :data:`PEAK_N`."""
    n = PEAK_N if n is None else n
    if n < 1 or repeats < 1:
        raise ValueError(f"sgemm_peak needs n >= 1 and repeats >= 1, got n={n}, "
                         f"repeats={repeats}")
    key = (torch.get_num_threads(), n)
    if cached and key in _peaks:
        return _peaks[key]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    runs = [_time_ms(partial(torch.mm, a, b, out=out)) for _ in range(repeats)]
    best = min(runs)
    _peaks[key] = peak = {"n": n, "threads": key[0], "ms": best, "ms_runs": runs,
                          "gflop_per_s": 2 * n ** 3 / best / 1e6}
    return peak


def pct_of_peak(gflop: float, ms: float, peak_gflop_per_s: float) -> float:
    """The rate ``gflop`` in ``ms`` milliseconds as a percentage of the peak rate."""
    return 100 * gflop / (ms / 1e3) / peak_gflop_per_s


def extra_backends() -> list[str]:
    """The backends of :data:`EXTRA_BACKENDS` this lstmkit has (``lstmkit.ops.BACKENDS``)."""
    return [b for b in EXTRA_BACKENDS if b in ops.BACKENDS]


def backend_twin(module: nn.Module, backend: str) -> nn.Module:
    """A copy of the lstmkit ``module`` (same weights) running ``backend``."""
    twin = copy.deepcopy(module)
    twin.backend = backend
    return twin


# -- memory -----------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop log lines (file descriptor 2)."""
    try:
        saved = os.dup(2)
    except OSError:                                     # pragma: no cover
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocation_events(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """(time ns, bytes) of every allocation (> 0) and free (< 0) the profiler saw."""
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    return sorted(events)


def peak_bytes(events: Sequence[tuple[int, int]]) -> int:
    """The maximum of the running sum of allocation sizes (memory held above the start)."""
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


def peak_memory_mb(step: Callable[[], object]) -> float:
    """Peak CPU memory allocated by torch during ``step()`` above what was held before, in
    MB (2**20 bytes). ``step`` must not free memory allocated before it (the profiler
    reports such frees only for memory allocated while an earlier profiler ran)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr(), torch.profiler.profile(activities=activities, profile_memory=True) as p:
        step()
    return peak_bytes(_allocation_events(p)) / 2**20


def train_step_peak_mb(module: nn.Module, inp: Inputs) -> float:
    """Peak memory of one training step, gradients included (freed before it starts). The
    fused path's buffer cache is emptied first (:mod:`lstmkit.ops.workspace`), so that the
    step's own buffers are counted, as on a first call."""
    from .ops import workspace
    clear_grads(module, inp)
    workspace.clear()
    return peak_memory_mb(partial(train_step, module, inp))


# -- one configuration ------------------------------------------------------------------
def max_error(module: nn.Module, inp: Inputs, expected: Tensor) -> float:
    return (forward(module, inp.feed).double() - expected).abs().max().item()


def _impl_result(times: dict[str, list[float]], module: nn.Module, inp: Inputs,
                 expected: Tensor | None) -> dict:
    return {"module": _describe(module),
            "fwd_ms": statistics.median(times["fwd"]), "fb_ms": statistics.median(times["fb"]),
            "fwd_ms_runs": times["fwd"], "fb_ms_runs": times["fb"],
            "peak_mb": train_step_peak_mb(module, inp),
            "max_err": None if expected is None else max_error(module, inp, expected)}


def _describe(module: nn.Module) -> str:
    package = "lstmkit" if type(module) in _LSTMKIT.values() else "torch.nn"
    backend = getattr(module, "backend", None)
    shown = module.extra_repr()
    extra = (f", backend={backend!r}" if package == "lstmkit" and backend
             and "backend=" not in shown else "")
    return f"{package}.{type(module).__name__}({shown}{extra})"


def _extra_twins(ours: nn.Module, run: Callable[[nn.Module], object]
                 ) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """Twins of ``ours`` on every extra backend (:func:`extra_backends`) that can run this row
    (``run(twin)`` once), and the reason for each one that cannot: an explicit backend
    refuses a configuration it does not take with a ``ValueError`` (e.g. oneDNN's
    ``OneDNNUnavailable``), a missing extension with ``ExtensionUnavailable``."""
    from .ops.extension import ExtensionUnavailable
    models, skipped = {}, {}
    for extra in extra_backends():
        twin = backend_twin(ours, extra)
        try:
            run(twin)
        except (ValueError, ExtensionUnavailable) as e:
            skipped[extra] = {"skipped": True, "reason": f"{extra} cannot run this row: "
                              f"{type(e).__name__}: {e}"[:300]}
        else:
            models[extra] = twin
    return models, skipped


def bench_config(cfg: Config, *, backend: str = "fused_cpp", repeats: int = 5,
                 warmup: int = WARMUP, reference: bool | None = None,
                 peak: dict | None = None) -> dict:
    """Every measurement for one configuration, as a JSON-ready dict.

    ``reference``: time the float32 reference loop too (None: only for small configs).
    ``peak``: the :func:`sgemm_peak` the percentages refer to (None: measure it now, once
    per process and thread count).
    """
    peak = peak or sgemm_peak(cached=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        return _bench_config(cfg, backend, repeats, warmup, reference, peak)


def _bench_config(cfg: Config, backend: str, repeats: int, warmup: int,
                  reference: bool | None, peak: dict) -> dict:
    ours, baseline = build_models(cfg, backend)
    inp = make_inputs(cfg)
    expected = forward(reference_twin(ours, torch.float64), inp.as_dtype(torch.float64))
    extras, skipped = _extra_twins(ours, lambda twin: train_step(twin, inp))
    models = {"lstmkit": ours, "torch": baseline, **extras}
    if cfg.small if reference is None else reference:
        models["reference"] = reference_twin(ours, torch.float32)
    buffers = gemm_buffers(cfg, inp.batch_sizes)
    tasks = {n: model_tasks(m, inp) for n, m in models.items()}
    tasks["gemm"] = {"fb": partial(gemm_pass, buffers, inp.batch_sizes)}
    times = measure_times(tasks, repeats, warmup)
    impls = {n: _impl_result(times[n], m, inp,
                             expected if n != "torch" or cfg.torch_has_it else None)
             for n, m in models.items()}
    impls["torch"]["same_function"] = cfg.torch_has_it
    impls.setdefault("reference", {"skipped": True,
                                   "reason": f"T·B·H > {REFERENCE_LIMIT} (use --reference all)"})
    impls.update(skipped)
    return _summarise(cfg, backend, impls, times["gemm"]["fb"], inp.batch_sizes, peak)


def _summarise(cfg: Config, backend: str, impls: dict, gemm_runs: list[float],
               batch_sizes: list[int], peak: dict) -> dict:
    ours = impls["lstmkit"]
    gemm_ms = statistics.median(gemm_runs)
    ref = impls["reference"]
    gflop = train_gflop(cfg, batch_sizes)
    rate = peak["gflop_per_s"]
    for name, impl in impls.items():
        if impl.get("skipped"):
            continue
        # torch.nn runs the plain LSTM for a variant row: its own FLOPs
        impl["train_gflop"] = (train_gflop(baseline_config(cfg), batch_sizes)
                               if name == "torch" else gflop)
        impl["pct_of_peak"] = pct_of_peak(impl["train_gflop"], impl["fb_ms"], rate)
    ratios = {"lstmkit_over_torch_fb": ours["fb_ms"] / impls["torch"]["fb_ms"],
              "lstmkit_over_torch_fwd": ours["fwd_ms"] / impls["torch"]["fwd_ms"],
              "lstmkit_over_reference_fb": (None if ref.get("skipped")
                                            else ours["fb_ms"] / ref["fb_ms"]),
              "lstmkit_over_torch_peak_mb": ours["peak_mb"] / impls["torch"]["peak_mb"]}
    for extra in extra_backends():
        e = impls.get(extra, {"skipped": True})
        ratios[f"{extra}_over_torch_fb"] = (None if e.get("skipped")
                                            else e["fb_ms"] / impls["torch"]["fb_ms"])
    return {
        "name": cfg.name, "config": asdict(cfg), "backend": backend, "rows": sum(batch_sizes),
        "impls": impls,
        "gemm": {"ms": gemm_ms, "ms_runs": gemm_runs, "share": gemm_ms / ours["fb_ms"]},
        "train_gflop": gflop, "lstmkit_gflop_per_s": gflop / (ours["fb_ms"] / 1e3),
        "sgemm_peak_gflop_per_s": rate,
        "ratios": ratios,
    }


# -- forward only (inference) ----------------------------------------------------------
INFERENCE_MATRIX = (
    Config("lstm", 50, 1, 64), Config("lstm", 100, 16, 128), Config("lstm", 150, 64, 256),
    Config("lstm", 100, 16, 128, variant="peephole"),
    Config("lstm", 150, 64, 256, variant="peephole"),
    Config("lstm", 100, 16, 128, variant="layer_norm"),
    Config("lstm", 150, 64, 256, variant="layer_norm"),
    Config("gru", 100, 16, 128), Config("gru", 150, 64, 256),
    Config("rnn", 100, 16, 128), Config("rnn", 150, 64, 256),
)
INFERENCE_QUICK = (
    Config("lstm", 50, 1, 64), Config("lstm", 100, 16, 128),
    Config("lstm", 100, 16, 128, variant="peephole"), Config("gru", 100, 16, 128),
    Config("rnn", 100, 16, 128),
)


def onnxruntime_runner(module: nn.Module, x: Tensor) -> tuple[Callable[[], object] | None, str]:
    """(a function running ``module``'s forward in onnxruntime on ``x``, "") — the module
    exported by :func:`lstmkit.interop.onnx.export_module` (same weights), one CPU session
    with intra-op threads = torch's threads — or (None, why not)."""
    try:
        import onnxruntime as ort

        from lstmkit.interop import onnx as lk_onnx
    except ImportError as e:
        return None, f"onnxruntime or onnx is not installed ({e}); pip install onnx onnxruntime"
    import tempfile
    from pathlib import Path
    try:
        with tempfile.TemporaryDirectory() as folder:
            model = lk_onnx.export_module(module, Path(folder) / "model.onnx").read_bytes()
    except ValueError as e:                  # no ONNX operator for it (e.g. a projection)
        return None, f"no ONNX export: {e}"[:300]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.detach().contiguous().numpy()}
    return partial(session.run, ["output"], feed), ""


def bench_inference_config(cfg: Config, *, backend: str = "fused_cpp", repeats: int = 5,
                           warmup: int = WARMUP, peak: dict | None = None) -> dict:
    """Forward-only times (``torch.no_grad()``) of one configuration, as a JSON-ready dict:
    lstmkit, torch.nn (plain LSTM of the same size for a variant, marked), onnxruntime on the
    same weights and any :func:`extra_backends`, interleaved as in :func:`measure_times`;
    each with its error against the float64 reference and its share of the sgemm peak."""
    if cfg.packed:
        raise ValueError(f"the inference benchmark takes padded input; {cfg.name} is packed")
    peak = peak or sgemm_peak(cached=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        ours, baseline = build_models(cfg, backend)
        x = make_inputs(cfg).leaf.detach()
        expected = forward(reference_twin(ours, torch.float64), x.double())
        extras, impls = _extra_twins(ours, lambda twin: forward(twin, x))
        models: dict[str, nn.Module] = {"lstmkit": ours, "torch": baseline, **extras}
        tasks = {n: {"fwd": partial(forward, m, x)} for n, m in models.items()}
        ort_run, why = onnxruntime_runner(ours, x)
        if ort_run is not None:
            tasks["onnxruntime"] = {"fwd": ort_run}
        else:
            impls["onnxruntime"] = {"skipped": True, "reason": why}
        times = measure_times(tasks, repeats, warmup)
        for name, m in models.items():
            same = name != "torch" or cfg.torch_has_it
            err = (forward(m, x).double() - expected).abs().max().item() if same else None
            impls[name] = {"module": _describe(m), "max_err": err}
        if ort_run is not None:
            out = torch.from_numpy(ort_run()[0]).reshape(expected.shape)
            impls["onnxruntime"] = {"module": f"onnxruntime {_ort_version()} CPU session of "
                                              f"{_describe(ours)}",
                                    "max_err": (out.double() - expected).abs().max().item()}
    gflop = infer_gflop(cfg, [cfg.B] * cfg.T)
    rate = peak["gflop_per_s"]
    for name, runs in times.items():
        impl = impls[name]
        impl["fwd_ms_runs"] = runs["fwd"]
        impl["fwd_ms"] = statistics.median(runs["fwd"])
        impl["infer_gflop"] = (infer_gflop(baseline_config(cfg), [cfg.B] * cfg.T)
                               if name == "torch" else gflop)
        impl["pct_of_peak"] = pct_of_peak(impl["infer_gflop"], impl["fwd_ms"], rate)
    impls["torch"]["same_function"] = cfg.torch_has_it
    ours_ms = impls["lstmkit"]["fwd_ms"]
    ratios = {f"lstmkit_over_{n}": (None if impls[n].get("skipped")
                                    else ours_ms / impls[n]["fwd_ms"])
              for n in ("torch", "onnxruntime")}
    for extra in extra_backends():
        for n in ("torch", "onnxruntime"):
            ok = not impls[extra].get("skipped") and not impls[n].get("skipped")
            ratios[f"{extra}_over_{n}"] = (impls[extra]["fwd_ms"] / impls[n]["fwd_ms"]
                                           if ok else None)
    return {"name": cfg.name, "config": asdict(cfg), "backend": backend, "rows": cfg.T * cfg.B,
            "kind": "inference", "infer_gflop": gflop, "sgemm_peak_gflop_per_s": rate,
            "impls": impls, "ratios": ratios}


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def select_inference_configs(quick: bool = False, only: str | None = None) -> list[Config]:
    """The inference matrix (or its quick part), keeping the rows whose name contains
    ``only``."""
    configs = INFERENCE_QUICK if quick else INFERENCE_MATRIX
    return [c for c in configs if not only or only.lower() in c.name.lower()]


# -- the whole run ----------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(backend: str, repeats: int, peak: dict | None = None) -> dict:
    meta = {"lstmkit": lstmkit.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "backend": backend, "repeats": repeats,
            "warmup": WARMUP, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "extra_backends": extra_backends(), "clock": _clock["name"],
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if peak is not None:
        meta["sgemm_peak"] = peak
    if backend in ("auto", "fused", "fused_cpp"):          # those that run the C++ loop
        from lstmkit.ops import gemm
        meta["gemm"] = gemm.describe()
    return meta


def run_benchmark(configs: Sequence[Config], *, backend: str = "fused_cpp", repeats: int = 5,
                  reference: bool | None = None,
                  on_result: Callable[[dict], None] | None = None,
                  peak: dict | None = None, inference: bool = False,
                  clock: str = "wall") -> dict:
    """Benchmark every configuration (``inference``: forward only, with onnxruntime);
    ``on_result`` sees each row as it is done. ``peak``: the :func:`sgemm_peak` measured
    before (None: measure it now); it is measured again at the end (``sgemm_peak_after``
    in the metadata: how much the machine's speed drifted during the run). ``clock``: see
    :func:`using_clock` (the peak passed in should be measured with the same clock)."""
    with using_clock(clock):
        return _run_benchmark(configs, backend, repeats, reference, on_result, peak,
                              inference)


def _run_benchmark(configs, backend, repeats, reference, on_result, peak, inference) -> dict:
    peak = peak or sgemm_peak()
    meta = environment(backend, repeats, peak)
    meta["kind"] = "inference" if inference else "training"
    results = []
    for cfg in configs:
        if inference:
            results.append(bench_inference_config(cfg, backend=backend, repeats=repeats,
                                                  peak=peak))
        else:
            results.append(bench_config(cfg, backend=backend, repeats=repeats,
                                        reference=reference, peak=peak))
        if on_result is not None:
            on_result(results[-1])
    meta["sgemm_peak_after"] = sgemm_peak(n=peak["n"])
    return {"meta": meta, "results": results}


# -- the table --------------------------------------------------------------------------
def _ms(impl: dict, key: str, star: str = "") -> str:
    return "skipped" if impl.get("skipped") else f"{impl[key]:.2f}{star}"


def _ratio(x: float | None, digits: int = 2) -> str:
    return "skipped" if x is None else f"{x:.{digits}f}"


def _pct(impl: dict) -> str:
    if impl.get("skipped"):
        return "skipped"
    pct = impl["pct_of_peak"]
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def _star(r: dict) -> str:
    return "" if r["impls"]["torch"]["same_function"] else "*"


Column = tuple[str, int, Callable[[dict], str]]


def columns(extras: Sequence[str] | None = None) -> list[Column]:
    """The training table's columns: (header, width, cell of a result); one f+b time and
    ratio per extra backend (default: :func:`extra_backends`)."""
    extras = extra_backends() if extras is None else extras
    lk = lambda r: r["impls"]["lstmkit"]                                   # noqa: E731
    th = lambda r: r["impls"]["torch"]                                     # noqa: E731
    cols: list[Column] = [
        ("config", 30, lambda r: r["name"]),
        ("lk fwd ms", 10, lambda r: f"{lk(r)['fwd_ms']:.2f}"),
        ("lk f+b ms", 10, lambda r: f"{lk(r)['fb_ms']:.2f}"),
        ("torch f+b ms", 13, lambda r: _ms(th(r), "fb_ms", _star(r))),
        ("lk/torch", 9, lambda r: _ratio(r["ratios"]["lstmkit_over_torch_fb"])),
    ]
    for e in extras:
        cols += [(f"{e} f+b ms", max(10, len(e) + 7),
                  lambda r, e=e: _ms(r["impls"].get(e, {"skipped": True}), "fb_ms")),
                 (f"{e}/torch", max(9, len(e) + 6),
                  lambda r, e=e: _ratio(r["ratios"].get(f"{e}_over_torch_fb")))]
    cols += [
        ("lk/ref", 8, lambda r: _ratio(r["ratios"]["lstmkit_over_reference_fb"], 3)),
        ("lk %pk", 7, lambda r: _pct(lk(r))),
        ("torch %pk", 9, lambda r: _pct(th(r))),
        ("peak MB lk/torch", 17, lambda r: f"{lk(r)['peak_mb']:.1f}/{th(r)['peak_mb']:.1f}"),
        ("mem lk/torch", 12, lambda r: _ratio(r["ratios"]["lstmkit_over_torch_peak_mb"])),
        ("max err", 9, lambda r: f"{lk(r)['max_err']:.1e}"),
        ("gemm share", 10, lambda r: f"{r['gemm']['share']:.0%}"),
    ]
    return cols


def inference_columns(extras: Sequence[str] | None = None) -> list[Column]:
    """The inference table's columns (see :func:`columns`)."""
    extras = extra_backends() if extras is None else extras
    imp = lambda r, n: r["impls"].get(n, {"skipped": True})                # noqa: E731
    cols: list[Column] = [
        ("config", 30, lambda r: r["name"]),
        ("lk ms", 8, lambda r: _ms(imp(r, "lstmkit"), "fwd_ms")),
        ("torch ms", 9, lambda r: _ms(imp(r, "torch"), "fwd_ms", _star(r))),
        ("ort ms", 8, lambda r: _ms(imp(r, "onnxruntime"), "fwd_ms")),
    ]
    cols += [(f"{e} ms", max(8, len(e) + 3), lambda r, e=e: _ms(imp(r, e), "fwd_ms"))
             for e in extras]
    cols += [
        ("lk/torch", 9, lambda r: _ratio(r["ratios"]["lstmkit_over_torch"])),
        ("lk/ort", 7, lambda r: _ratio(r["ratios"]["lstmkit_over_onnxruntime"])),
    ]
    cols += [(f"{e}/ort", max(7, len(e) + 4),
              lambda r, e=e: _ratio(r["ratios"].get(f"{e}_over_onnxruntime")))
             for e in extras]
    cols += [
        ("lk %pk", 7, lambda r: _pct(imp(r, "lstmkit"))),
        ("torch %pk", 9, lambda r: _pct(imp(r, "torch"))),
        ("ort %pk", 8, lambda r: _pct(imp(r, "onnxruntime"))),
        ("lk err", 8, lambda r: f"{imp(r, 'lstmkit')['max_err']:.1e}"),
        ("ort err", 8, lambda r: ("skipped" if imp(r, "onnxruntime").get("skipped")
                                  else f"{imp(r, 'onnxruntime')['max_err']:.1e}")),
    ]
    return cols


def _line(cells: Sequence[str], cols: Sequence[Column]) -> str:
    return "  ".join(f"{c:>{w}}" if i else f"{c:<{w}}"
                     for i, (c, (_, w, _f)) in enumerate(zip(cells, cols)))


def format_header(inference: bool = False) -> str:
    cols = inference_columns() if inference else columns()
    head = _line([name for name, _, _ in cols], cols)
    return head + "\n" + "-" * len(head)


def format_row(r: dict) -> str:
    """One result as a table line (training or inference, by the result's kind)."""
    cols = inference_columns() if r.get("kind") == "inference" else columns()
    return _line([cell(r) for _, _, cell in cols], cols)


def format_meta(meta: dict) -> str:
    text = (f"lstmkit {meta['lstmkit']} (backend={meta['backend']}) vs torch {meta['torch']}; "
            f"{meta['cpu_model']}, {meta['threads']} threads; float32; median of "
            f"{meta['repeats']} runs after {meta['warmup']} warm-up, interleaved; "
            f"{meta.get('clock', 'wall')} clock")
    peak = meta.get("sgemm_peak")
    if peak:
        text += (f"\nsgemm peak ({peak['n']}³ torch.mm, {peak['threads']} threads, best of "
                 f"{len(peak['ms_runs'])}): {peak['gflop_per_s']:.1f} GFLOP/s")
    if meta.get("gemm"):
        text += "\n" + format_gemm(meta["gemm"])
    return text


def format_gemm(gemm: dict) -> str:
    """One line: which library the C++ loop's GEMMs run on (see :mod:`lstmkit.ops.gemm`)."""
    if gemm["mode"] != "auto":
        return f"GEMMs: LSTMKIT_GEMM={gemm['mode']}"
    routes = gemm.get("routes")
    if routes is None:
        return "GEMMs: auto (the C++ extension is unavailable)"
    names = {"step_tiny": "per-step tiny", "step_small": "small", "step_large": "large",
             "step_parts": "in parts of rows",
             "large": "layer GEMMs x·W/dA·W", "large_t": "dAᵀ·x"}
    parts = [f"{names[c]} {'MKL' if routes[c] == 'blas' else 'brgemm'} "
             f"({routes['ratios'][c]:.2f})" for c in names if c in routes.get("ratios", {})]
    return ("GEMMs (auto, measured on this machine; brgemm time / MKL time): "
            + ", ".join(parts))


FOOTNOTE = ("fwd: forward under no_grad; f+b: forward+backward of (out*g).sum(), input "
            "requires grad; lk/ref: lstmkit over the float32 reference loop (f+b);\n"
            "%pk: training FLOPs 3·2·N·G·H·(I+H) over the f+b time, as a share of the sgemm "
            "peak above;\n"
            "peak MB: memory torch allocates during one training step (profiler); mem lk/torch: "
            "their ratio; max err: lstmkit output vs the float64 reference loop;\n"
            "gemm share: the step's GEMMs alone through torch.mm (MKL) over lstmkit f+b (above "
            "100%: lstmkit's GEMMs run on brgemm, faster than MKL's here);\n"
            "* torch.nn.LSTM of the same size (torch.nn has no such variant);\n"
            "torch.nn runs oneDNN for plain padded LSTM only: GRU, RNN, proj and packed "
            "take its per-step autograd path")

INFERENCE_FOOTNOTE = (
    "forward only under torch.no_grad(), median ms; ort: onnxruntime CPU session of the same "
    "weights (lstmkit.interop.onnx),\nintra-op threads = torch's; %pk: 2·N·G·H·(I+H) FLOPs "
    "over the time, as a share of the sgemm peak above; err: max |output − float64 "
    "reference|;\n* torch.nn.LSTM of the same size (torch.nn has no such variant)")
