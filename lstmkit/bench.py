"""Benchmark lstmkit's fused kernels against torch.nn and the reference loop.

For each configuration (cell, T, B, I = H) it measures, in one process:

* forward time (``torch.no_grad()``) and forward+backward time of a training step
  (``loss = (output * g).sum()`` with a fixed random ``g``; the input requires grad);
  2 warm-up runs, then the median of ``repeats`` runs, the implementations interleaved
  (lstmkit, torch.nn, [reference], GEMMs alone; the starting one rotating per repeat);
* peak memory of one training step, from the allocation events of
  ``torch.profiler.profile(profile_memory=True)`` (running sum of allocation sizes, max);
* the largest absolute error of the output against the float64 reference loop
  (``backend="reference"``, the same weights in float64);
* the GEMM share: the time of the same GEMMs alone (the input projection, the per-step
  recurrent GEMMs forward and backward, the weight/input-gradient GEMMs) over lstmkit's
  forward+backward time.

Implementations: lstmkit (``backend="fused_cpp"`` or ``"fused_py"``), torch.nn (the same
configuration where torch.nn has it; torch.nn.LSTM of the same size for peephole and
coupled LSTMs, marked ``*``) and the reference loop in float32 (by default only for
T·B·H <= 100·16·128).

    python benchmarks/run.py [--quick] [--only S] [--repeats N] [--threads N] [--json PATH]
    lstmkit bench ...                               (the same options)
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch._C._profiler import _EventType  # the profiler event tree: every allocation
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstmkit

REFERENCE_LIMIT = 100 * 16 * 128        # T·B·H up to which the reference loop runs by default
BACKENDS = ("fused_cpp", "fused_py")
WARMUP = 2


@dataclass(frozen=True)
class Config:
    """One benchmark row: a single-layer, unidirectional module with I = H."""

    cell: str                 # "lstm", "gru" or "rnn"
    T: int
    B: int
    H: int
    proj: int = 0             # LSTM proj_size
    variant: str = ""         # "", "peephole" or "coupled" (LSTM)
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
def _time_ms(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def measure_times(tasks: dict[str, dict[str, Callable[[], object]]], repeats: int,
                  warmup: int = WARMUP) -> dict[str, dict[str, list[float]]]:
    """Run every task ``warmup`` times, then ``repeats`` timed rounds over all of them,
    interleaved, the first implementation rotating; milliseconds per run."""
    for fns in tasks.values():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
    names = list(tasks)
    times = {n: {label: [] for label in tasks[n]} for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            for label, fn in tasks[n].items():
                times[n][label].append(_time_ms(fn))
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
    """Peak memory of one training step, gradients included (freed before it starts)."""
    clear_grads(module, inp)
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
    return f"{package}.{type(module).__name__}({module.extra_repr()})"


def bench_config(cfg: Config, *, backend: str = "fused_cpp", repeats: int = 5,
                 warmup: int = WARMUP, reference: bool | None = None) -> dict:
    """Every measurement for one configuration, as a JSON-ready dict.

    ``reference``: time the float32 reference loop too (None: only for small configs).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        return _bench_config(cfg, backend, repeats, warmup, reference)


def _bench_config(cfg: Config, backend: str, repeats: int, warmup: int,
                  reference: bool | None) -> dict:
    ours, baseline = build_models(cfg, backend)
    inp = make_inputs(cfg)
    expected = forward(reference_twin(ours, torch.float64), inp.as_dtype(torch.float64))
    models = {"lstmkit": ours, "torch": baseline}
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
    return _summarise(cfg, backend, impls, times["gemm"]["fb"], inp.batch_sizes)


def _summarise(cfg: Config, backend: str, impls: dict, gemm_runs: list[float],
               batch_sizes: list[int]) -> dict:
    ours = impls["lstmkit"]
    gemm_ms = statistics.median(gemm_runs)
    ref = impls["reference"]
    gflop = train_gflop(cfg, batch_sizes)
    return {
        "name": cfg.name, "config": asdict(cfg), "backend": backend, "rows": sum(batch_sizes),
        "impls": impls,
        "gemm": {"ms": gemm_ms, "ms_runs": gemm_runs, "share": gemm_ms / ours["fb_ms"]},
        "train_gflop": gflop, "lstmkit_gflop_per_s": gflop / (ours["fb_ms"] / 1e3),
        "ratios": {"lstmkit_over_torch_fb": ours["fb_ms"] / impls["torch"]["fb_ms"],
                   "lstmkit_over_torch_fwd": ours["fwd_ms"] / impls["torch"]["fwd_ms"],
                   "lstmkit_over_reference_fb": (None if ref.get("skipped")
                                                 else ours["fb_ms"] / ref["fb_ms"])},
    }


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


def environment(backend: str, repeats: int) -> dict:
    return {"lstmkit": lstmkit.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "backend": backend, "repeats": repeats,
            "warmup": WARMUP, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_benchmark(configs: Sequence[Config], *, backend: str = "fused_cpp", repeats: int = 5,
                  reference: bool | None = None,
                  on_result: Callable[[dict], None] | None = None) -> dict:
    """Benchmark every configuration; ``on_result`` sees each row as it is done."""
    meta = environment(backend, repeats)
    results = []
    for cfg in configs:
        results.append(bench_config(cfg, backend=backend, repeats=repeats,
                                    reference=reference))
        if on_result is not None:
            on_result(results[-1])
    return {"meta": meta, "results": results}


# -- the table --------------------------------------------------------------------------
COLUMNS = (("config", 30), ("lk fwd ms", 10), ("lk f+b ms", 10), ("torch f+b ms", 13),
           ("lk/torch", 9), ("lk/ref", 8), ("peak MB lk/torch", 17), ("max err", 9),
           ("gemm share", 10))


def format_header() -> str:
    head = "  ".join(f"{name:>{w}}" if i else f"{name:<{w}}"
                     for i, (name, w) in enumerate(COLUMNS))
    return head + "\n" + "-" * len(head)


def format_row(r: dict) -> str:
    ours, theirs = r["impls"]["lstmkit"], r["impls"]["torch"]
    ref_ratio = r["ratios"]["lstmkit_over_reference_fb"]
    star = "" if theirs["same_function"] else "*"
    cells = (r["name"], f"{ours['fwd_ms']:.2f}", f"{ours['fb_ms']:.2f}",
             f"{theirs['fb_ms']:.2f}{star}", f"{r['ratios']['lstmkit_over_torch_fb']:.2f}",
             "skipped" if ref_ratio is None else f"{ref_ratio:.3f}",
             f"{ours['peak_mb']:.1f}/{theirs['peak_mb']:.1f}", f"{ours['max_err']:.1e}",
             f"{r['gemm']['share']:.0%}")
    return "  ".join(f"{c:>{w}}" if i else f"{c:<{w}}"
                     for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))


def format_meta(meta: dict) -> str:
    return (f"lstmkit {meta['lstmkit']} (backend={meta['backend']}) vs torch {meta['torch']}; "
            f"{meta['cpu_model']}, {meta['threads']} threads; float32; median of "
            f"{meta['repeats']} runs after {meta['warmup']} warm-up, interleaved")


FOOTNOTE = ("fwd: forward under no_grad; f+b: forward+backward of (out*g).sum(), input "
            "requires grad; lk/ref: lstmkit over the float32 reference loop (f+b);\n"
            "peak MB: memory torch allocates during one training step (profiler); max err: "
            "lstmkit output vs the float64 reference loop;\n"
            "gemm share: the step's GEMMs alone (torch.mm) over lstmkit f+b; "
            "* torch.nn.LSTM of the same size (torch.nn has no such variant);\n"
            "torch.nn runs oneDNN for plain padded LSTM only: GRU, RNN, proj and packed "
            "take its per-step autograd path")
