"""Where the time of the fused C++ path goes, per cell: a sampling profile by ``perf``.

    PYTHONPATH=<checkout> python benchmarks/loop_profile.py [--sizes 100,16,128 ...]
        [--cells lstm,peephole,...] [--seconds 4] [--threads N] [--json PATH]

For each cell and size it starts one process that builds the module (``backend="fused_cpp"``,
float32, I = H), warms it up, and then runs training steps (forward + backward of
``(output · g).sum()``, :func:`lstmkit.bench.train_step`) for ``--seconds``; ``perf record``
is attached to that process only after the warm-up, so imports and the build do not count.
The samples are sorted by shared object and symbol into

* ``gemm MKL``: MKL's BLAS kernels (``mkl_blas_*``): the large input-projection and
  weight-gradient GEMMs (torch.mm/addmm), and the per-step recurrent GEMMs when the loop runs
  them through the BLAS (``LSTMKIT_GEMM=blas``);
* ``gemm oneDNN``: oneDNN's code (``dnnl``/``brgemm`` symbols and the JIT-generated kernels it
  runs from anonymous memory, which perf cannot name): the per-step recurrent GEMMs when the
  loop runs them through ``at::native::cpublas::brgemm`` (``LSTMKIT_GEMM=brgemm``, or where
  the measured routes chose it, see ``lstmkit/ops/gemm.py``);
* ``loop + pointwise``: the extension itself (the time loop and every cell's pointwise step);
* ``alloc, page faults, copies``: the kernel's page clearing and faults, mmap/munmap, libc's
  malloc/free/memcpy/memset;
* ``torch ops``: the rest of libtorch/libc10 (the dispatcher, element-wise kernels, copies,
  reductions: the Python side's buffers, bias sums, index work);
* ``python``: the interpreter (autograd Function glue, the Python side of the fused layer);
* ``openmp``: libgomp (threads waiting or spinning);
* ``other``.

In the same process it also times the C++ loop's calls (``forward`` and ``backward`` of the
kernels adapter) against the whole step, in CPU time of the process (wall time is useless
on a loaded machine): the loop's share (its per-step GEMMs and pointwise work; what remains
is the large GEMMs, allocation and the Python side). ``step ms`` is CPU milliseconds per
training step.

Needs ``perf`` (linux-tools) and permission to profile one's own processes
(``/proc/sys/kernel/perf_event_paranoid`` ≤ 2). Timings on a shared machine are noisy:
compare the shares, rerun on a quiet machine for the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLS = ("lstm", "peephole", "layer_norm", "gru", "rnn", "proj")
SIZES = ((100, 16, 128), (150, 64, 256))
CATEGORIES = ("gemm MKL", "gemm oneDNN", "loop + pointwise", "alloc, page faults, copies",
              "torch ops", "python", "openmp", "other")


def build_module(cell: str, H: int):
    import lstmkit
    if cell in ("lstm", "peephole", "layer_norm"):
        flags = {cell: True} if cell != "lstm" else {}
        return lstmkit.LSTM(H, H, backend="fused_cpp", **flags)
    if cell == "proj":
        return lstmkit.LSTM(H, H, proj_size=H // 2, backend="fused_cpp")
    if cell == "gru":
        return lstmkit.GRU(H, H, backend="fused_cpp")
    if cell == "rnn":
        return lstmkit.RNN(H, H, backend="fused_cpp")
    raise ValueError(f"unknown cell {cell!r}; one of {', '.join(CELLS)}")


def spin(cell: str, T: int, B: int, H: int, seconds: float) -> None:
    """The profiled process: warm up, say READY, run training steps for ``seconds``, then
    print the loop-share timing as JSON."""
    import torch

    from lstmkit import bench
    from lstmkit.ops import cpp_kernels
    torch.manual_seed(0)
    module = build_module(cell, H)
    inp = bench.make_inputs(bench.Config("lstm", T, B, H, proj=H // 2 if cell == "proj" else 0))
    kernels = cpp_kernels(required=True)
    loop = {"forward": 0.0, "backward": 0.0}

    def timed(name, fn):
        def run(*args, **kwargs):
            start = time.process_time()
            fn(*args, **kwargs)
            loop[name] += time.process_time() - start
        return run
    for _ in range(3):
        bench.train_step(module, inp)
    print("READY", flush=True)
    sys.stdin.readline()                                  # perf is attached
    kernels.forward, kernels.backward = (timed("forward", type(kernels).forward.__get__(kernels)),
                                         timed("backward", type(kernels).backward.__get__(kernels)))
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        bench.train_step(module, inp)
        steps += 1
    total = time.process_time() - cpu
    print(json.dumps({"steps": steps, "step_ms": 1e3 * total / steps,
                      "loop_forward_ms": 1e3 * loop["forward"] / steps,
                      "loop_backward_ms": 1e3 * loop["backward"] / steps,
                      "threads": torch.get_num_threads()}), flush=True)


def category(dso: str, sym: str) -> str:
    if "mkl_blas" in sym:
        return "gemm MKL"
    if "dnnl" in sym or "brgemm" in sym or "jit" in sym.lower():
        return "gemm oneDNN"
    if dso.startswith("[unknown]") or dso.startswith("//anon") or dso.startswith("[JIT]"):
        return "gemm oneDNN"              # oneDNN's generated kernels live in anonymous memory
    if dso.startswith("lstmkit_engine"):
        return "loop + pointwise"
    if dso.startswith("[kernel") or re.search(r"malloc|free|memcpy|memset|memmove|mmap|munmap"
                                              r"|_int_|brk", sym):
        return "alloc, page faults, copies"
    if dso.startswith(("libtorch", "libc10")):
        return "torch ops"
    if dso.startswith("libpython") or dso.startswith("python"):
        return "python"
    if dso.startswith("libgomp"):
        return "openmp"
    return "other"


def parse_report(text: str) -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    """Shares per category and the top symbols of ``perf report --sort dso,sym`` output."""
    shares = dict.fromkeys(CATEGORIES, 0.0)
    top = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.+?)\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(4).strip()
        shares[category(dso, sym)] += pct
        top.append((pct, dso, sym))
    shares["below 0.01% each"] = max(0.0, 100 - sum(shares.values()))
    return shares, top[:16]


def profile(cell: str, T: int, B: int, H: int, seconds: float, python: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "perf.data"
        proc = subprocess.Popen([python, __file__, "--spin", cell, str(T), str(B), str(H),
                                 str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdin is not None
        while (line := proc.stdout.readline()) and not line.startswith("READY"):
            pass
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-o", str(data),
                                 "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)                   # perf attaches to the pid before the timed spin starts
        proc.stdin.write("\n")
        proc.stdin.flush()
        timing = json.loads(proc.stdout.readline())
        perf.send_signal(2)
        perf.wait()
        proc.wait()
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                 "--sort", "dso,sym", "--percent-limit", "0.01"],
                                capture_output=True, text=True).stdout
    shares, top = parse_report(report)
    loop_ms = timing["loop_forward_ms"] + timing["loop_backward_ms"]
    return {"cell": cell, "T": T, "B": B, "H": H, **timing,
            "loop_share": loop_ms / timing["step_ms"], "shares_pct": shares,
            "top_symbols": [{"pct": p, "dso": d, "symbol": s[:120]} for p, d, s in top]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--spin":
        cell, T, B, H, seconds = argv[1], *map(int, argv[2:5]), float(argv[5])
        spin(cell, T, B, H, seconds)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=[",".join(map(str, s)) for s in SIZES],
                        help="T,B,H triples")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        print("needs perf (linux-tools) on PATH")
        return 2
    rows = []
    head = (f"{'cell':<11}{'(T,B,H)':<15}{'step ms':>8}{'loop':>6}"
            + "".join(f"{c.split(',')[0][:11]:>12}" for c in CATEGORIES))
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"LSTMKIT_GEMM={os.environ.get('LSTMKIT_GEMM', 'unset')}; shares of perf samples (%); "
          "step ms and loop share in CPU time")
    print(head)
    for size in args.sizes:
        T, B, H = map(int, size.split(","))
        for cell in args.cells.split(","):
            r = profile(cell, T, B, H, args.seconds, sys.executable)
            rows.append(r)
            print(f"{cell:<11}{f'({T},{B},{H})':<15}{r['step_ms']:>8.2f}{r['loop_share']:>6.0%}"
                  + "".join(f"{r['shares_pct'][c]:>12.1f}" for c in CATEGORIES), flush=True)
    if args.json:
        import platform

        import torch

        from lstmkit.ops import gemm
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "platform": platform.platform(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "lstmkit_gemm": os.environ.get("LSTMKIT_GEMM"),
                "gemm_routes": gemm.describe(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "note": "shared, noisy machine unless stated otherwise"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
