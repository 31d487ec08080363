"""Speed of layer_norm=True against torch.nn and the plain cell, on backend="fused_cpp".

    PYTHONPATH=<checkout> python benchmarks/layernorm_speed.py [--repeats N] [--threads N]
        [--sizes 100,16,128 150,64,256] [--json PATH]

For the LSTM and the GRU at each (T, B, H) (input size = hidden size, float32), three
modules with the same input: torch.nn's plain cell (the issue's baseline: torch.nn has no
layer-normalised cell), lstmkit's plain cell and lstmkit's layer-normalised cell, both on
``fused_cpp``. Two measurements, each interleaved over the three modules in one process
(these machines are noisy: compare ratios, not absolute times):

* ``train``: forward + backward with a ones gradient of the output, parameters' grads reset,
  the input requiring a gradient as in ``lstmkit bench`` (torch.nn's oneDNN backward makes
  ∂L/∂x whether asked or not: without it lstmkit's rows skip a GEMM torch.nn does anyway);
* ``forward``: under ``torch.no_grad()`` (lstmkit's inference path where the family has one).

Prints the medians (ms) and the ratios LN / torch.nn and LN / plain. Run it from two
checkouts to compare versions (the script only uses the public API).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import lstmkit

SIZES = ["100,16,128", "150,64,256"]


def _train(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = model(x)[0]
    out.backward(torch.ones_like(out))


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def measure(family: str, T: int, B: int, H: int, repeats: int) -> dict:
    torch.manual_seed(0)
    models = {"torch": getattr(nn, family)(H, H),
              "plain": getattr(lstmkit, family)(H, H, backend="fused_cpp"),
              "ln": getattr(lstmkit, family)(H, H, backend="fused_cpp", layer_norm=True)}
    x = torch.randn(T, B, H)
    row: dict = {"family": family, "T": T, "B": B, "H": H}
    for mode, run in (("train", _train), ("forward", _forward)):
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(3):                                     # warm-up (and the first build)
            for model in models.values():
                run(model, x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                run(model, x)
                times[name].append(1e3 * (time.perf_counter() - start))
        med = {name: statistics.median(v) for name, v in times.items()}
        row[mode] = {"ms": med, "ln_over_torch": med["ln"] / med["torch"],
                     "ln_over_plain": med["ln"] / med["plain"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="T,B,H")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; medians in ms")
    rows = []
    for family in ("LSTM", "GRU"):
        for size in args.sizes:
            T, B, H = (int(v) for v in size.split(","))
            row = measure(family, T, B, H, args.repeats)
            rows.append(row)
            for mode in ("train", "forward"):
                r = row[mode]
                ms = r["ms"]
                print(f"{family:4s} ({T},{B},{H}) {mode:7s}  torch.nn {ms['torch']:8.2f}  "
                      f"plain {ms['plain']:8.2f}  layer_norm {ms['ln']:8.2f}   "
                      f"LN/torch.nn {r['ln_over_torch']:.2f}  LN/plain {r['ln_over_plain']:.2f}",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
