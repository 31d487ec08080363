"""``lstmkit bench --scans``: the recurrences whose gates see only x_t, trained by a scan.

For each size (T, B, I = H), minGRU and minLSTM (one layer) run forward+backward of
``(output · g).sum()`` and forward alone (no grad) with ``backend="auto"`` (the scan), with
``backend="reference"`` (the sequential loop of their equations), and beside them
``torch.nn.GRU`` / ``torch.nn.LSTM`` of the same input and hidden size: the same input,
in one process, interleaved (:func:`lstmkit.bench.measure_times`). Rows print the medians
and two ratios: the loop's time over the scan's and torch.nn's over the scan's (above 1:
the scan is faster). Beside them, the GEMMs of the input projection alone (x W_ihᵀ, and for
forward+backward also ∂A W_ih and ∂Aᵀ x), which every path computes: the loop's time over
theirs bounds what any scan could gain over the loop.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

import lstmkit

from .bench import Config, make_inputs, measure_times, model_tasks

SIZES = ((1024, 16, 256), (100, 16, 128))

Builder = Callable[[int, str], nn.Module]
CELLS: dict[str, tuple[Builder, Callable[[int], nn.Module]]] = {
    "minGRU": (lambda H, b: lstmkit.minGRU(H, H, backend=b), lambda H: nn.GRU(H, H)),
    "minLSTM": (lambda H, b: lstmkit.minLSTM(H, H, backend=b), lambda H: nn.LSTM(H, H)),
}
GATE_BLOCKS = {"minGRU": 2, "minLSTM": 3}          # row blocks of W_ih


def gemm_tasks(T: int, B: int, H: int, G: int) -> dict[str, Callable[[], object]]:
    """The input projection's GEMMs of one layer (I = H, G·H rows): forward x W_ihᵀ, and
    forward+backward with ∂A W_ih (∂x) and ∂Aᵀ x (∂W_ih)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(T * B, H, generator=g), torch.randn(G * H, H, generator=g)
    dA = torch.randn(T * B, G * H, generator=g)

    def fwd() -> object:
        return x @ w.T

    def fb() -> object:
        return x @ w.T, dA @ w, dA.T @ x

    return {"fwd": fwd, "fb": fb}
KINDS = (("fb", "forward+backward"), ("fwd", "forward (inference)"))


def bench_scans(sizes=None, *, repeats: int = 5, only: str | None = None,
                on_row=None) -> list[dict]:
    """One row per cell, size and kind (forward+backward, forward): medians in ms of the
    scan, the sequential loop and torch.nn's module of the same size, and the ratios."""
    rows = []
    for T, B, H in SIZES if sizes is None else sizes:
        inp = make_inputs(Config("gru", T, B, H))
        for name, (build, torch_module) in CELLS.items():
            if only and only.lower() not in name.lower():
                continue
            torch.manual_seed(0)
            scan = build(H, "auto").train()
            loop = build(H, "reference").train()
            loop.load_state_dict(scan.state_dict())
            tasks = {"scan": model_tasks(scan, inp), "loop": model_tasks(loop, inp),
                     "torch": model_tasks(torch_module(H).train(), inp),
                     "gemms": gemm_tasks(T, B, H, GATE_BLOCKS[name])}
            times = measure_times(tasks, repeats)
            for kind, label in KINDS:
                med = {k: statistics.median(times[k][kind]) for k in tasks}
                rows.append({"cell": name, "kind": label, "T": T, "B": B, "H": H,
                             "scan_ms": med["scan"], "loop_ms": med["loop"],
                             "torch_ms": med["torch"], "gemm_ms": med["gemms"],
                             "loop_over_scan": med["loop"] / med["scan"],
                             "torch_over_scan": med["torch"] / med["scan"],
                             "loop_over_gemm": med["loop"] / med["gemms"]})
                if on_row is not None:
                    on_row(rows[-1])
    return rows


def format_row(r: dict) -> str:
    size = f"({r['T']},{r['B']},{r['H']})"
    return (f"{r['cell']:<9}{r['kind']:<21}{size:<16}{r['scan_ms']:>10.1f}{r['loop_ms']:>10.1f}"
            f"{r['torch_ms']:>13.1f}{r['gemm_ms']:>10.1f}{r['loop_over_scan']:>11.1f}×"
            f"{r['torch_over_scan']:>11.1f}×{r['loop_over_gemm']:>11.1f}×")


HEADER = (f"{'cell':<9}{'':<21}{'(T,B,H)':<16}{'scan ms':>10}{'loop ms':>10}"
          f"{'torch.nn ms':>13}{'GEMMs ms':>10}{'loop/scan':>12}{'torch/scan':>12}"
          f"{'loop/GEMMs':>12}\n" + "-" * 126)
