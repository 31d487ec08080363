"""Speed of layer_norm=True against the plain cell, both on backend="fused_cpp".

    python -m benchmarks.layernorm_speed [--repeats N] [--threads N]

Forward + backward, float32, input size = hidden size, interleaved runs in one process;
prints the median times and the ratios (LN / plain) of the medians and of the minima for
LSTM and GRU at (T, B, H) = (100, 16, 128) and (150, 64, 256). On a shared, loaded machine
the minima are the steadier of the two: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lstmkit

SIZES = [(100, 16, 128), (150, 64, 256)]


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    x.grad = None
    out = model(x)[0]
    out.backward(torch.ones_like(out))


def measure(cls: type, T: int, B: int, H: int, repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    plain = cls(H, H, backend="fused_cpp")
    ln = cls(H, H, backend="fused_cpp", layer_norm=True)
    x = torch.randn(T, B, H, requires_grad=True)
    times: dict[str, list[float]] = {"plain": [], "ln": []}
    for _ in range(2):                                     # warm-up (and the first build)
        _step(plain, x)
        _step(ln, x)
    for _ in range(repeats):
        for name, model in (("plain", plain), ("ln", ln)):
            start = time.perf_counter()
            _step(model, x)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for cls in (lstmkit.LSTM, lstmkit.GRU):
        for T, B, H in SIZES:
            times = measure(cls, T, B, H, args.repeats)
            plain, ln = statistics.median(times["plain"]), statistics.median(times["ln"])
            best = min(times["ln"]) / min(times["plain"])
            print(f"{cls.__name__:4s} (T={T}, B={B}, H={H}): plain {plain:8.1f} ms   "
                  f"layer_norm {ln:8.1f} ms   ratio of medians {ln / plain:.2f}, "
                  f"of minima {best:.2f}")


if __name__ == "__main__":
    main()
