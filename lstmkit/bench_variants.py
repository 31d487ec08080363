"""``lstmkit bench --variants``: each variant's fused path against the plain fused LSTM.

For each size (T, B, I = H) every variant module and the plain ``lstmkit.LSTM`` (one
layer; two for the Depth-Gated LSTM, against a two-layer plain LSTM) run forward+backward
of ``(output · g).sum()`` on the same input, in training mode, with the same backend, in
one process, interleaved (see :func:`lstmkit.bench.measure_times`); the ratio of medians is
printed. The regularisers run with rate 0.25.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

import lstmkit

from .bench import Config, make_inputs, measure_times, model_tasks

SIZES = ((100, 16, 128), (150, 64, 256))

Builder = Callable[[int, str], nn.Module]
VARIANTS: dict[str, tuple[Builder, int]] = {
    "peephole (Greff vanilla)": (lambda H, b: lstmkit.LSTM(H, H, backend=b, peephole=True), 1),
    "NIG": (lambda H, b: lstmkit.LSTM(H, H, backend=b, input_gate=False), 1),
    "NFG": (lambda H, b: lstmkit.LSTM(H, H, backend=b, forget_gate=False), 1),
    "NOG": (lambda H, b: lstmkit.LSTM(H, H, backend=b, output_gate=False), 1),
    "NIAF": (lambda H, b: lstmkit.LSTM(H, H, backend=b, input_activation=None), 1),
    "NOAF": (lambda H, b: lstmkit.LSTM(H, H, backend=b, cell_activation=None), 1),
    "CIFG": (lambda H, b: lstmkit.LSTM(H, H, backend=b, coupled=True), 1),
    "FGR": (lambda H, b: lstmkit.LSTM(H, H, backend=b, gate_recurrence=True), 1),
    "layer-norm LSTM": (lambda H, b: lstmkit.LSTM(H, H, backend=b, layer_norm=True), 1),
    "layer-norm GRU": (lambda H, b: lstmkit.GRU(H, H, backend=b, layer_norm=True), 1),
    "zoneout": (lambda H, b: lstmkit.LSTM(H, H, backend=b, zoneout=0.25), 1),
    "recurrent dropout": (lambda H, b: lstmkit.LSTM(H, H, backend=b, recurrent_dropout=0.25), 1),
    "input dropout": (lambda H, b: lstmkit.LSTM(H, H, backend=b, input_dropout=0.25), 1),
    "DropConnect": (lambda H, b: lstmkit.LSTM(H, H, backend=b, weight_dropout=0.25), 1),
    "Clockwork RNN (8 modules)": (lambda H, b: lstmkit.ClockworkRNN(H, H, backend=b,
                                                                   num_modules=8), 1),
    "Depth-Gated LSTM (2 layers)": (lambda H, b: lstmkit.DepthGatedLSTM(H, H, 2, backend=b), 2),
    "sLSTM (xLSTM, 4 heads)": (lambda H, b: lstmkit.sLSTM(H, H, backend=b), 1),
}


def bench_variants(sizes=SIZES, *, backend: str = "fused_cpp", repeats: int = 5,
                   only: str | None = None, on_row=None) -> list[dict]:
    """One row per variant and size: medians of forward+backward and the ratio to the
    plain fused LSTM with as many layers."""
    rows = []
    for T, B, H in sizes:
        inp = make_inputs(Config("lstm", T, B, H))
        torch.manual_seed(0)
        plains = {n: lstmkit.LSTM(H, H, n, backend=backend) for n in (1, 2)}
        for name, (build, layers) in VARIANTS.items():
            if only and only.lower() not in name.lower():
                continue
            torch.manual_seed(0)
            module = build(H, backend).train()
            tasks = {"variant": {"fb": model_tasks(module, inp)["fb"]},
                     "plain": {"fb": model_tasks(plains[layers], inp)["fb"]}}
            times = measure_times(tasks, repeats)
            ours = statistics.median(times["variant"]["fb"])
            plain = statistics.median(times["plain"]["fb"])
            rows.append({"variant": name, "T": T, "B": B, "H": H, "layers": layers,
                         "fb_ms": ours, "plain_fb_ms": plain, "ratio": ours / plain})
            if on_row is not None:
                on_row(rows[-1])
    return rows


def format_row(r: dict) -> str:
    size = f"({r['T']},{r['B']},{r['H']})" + (" ×2 layers" if r["layers"] == 2 else "")
    return (f"{r['variant']:<30}{size:<24}{r['fb_ms']:>10.2f}{r['plain_fb_ms']:>12.2f}"
            f"{r['ratio']:>8.2f}")


HEADER = (f"{'variant':<30}{'(T,B,H)':<24}{'f+b ms':>10}{'plain ms':>12}{'ratio':>8}\n"
          + "-" * 84)
