"""Speed of lstmkit.CRF against pytorch-crf (torchcrf.CRF) on the same parameters and inputs.

    python -m benchmarks.crf_speed [--repeats N] [--threads N] [--json PATH]

For (seq_len, batch, num_tags) in {50, 100} × {32, 64} × {9, 17}, float32, padded batches
(lengths uniform in [seq_len/2, seq_len]): "train" is the mean negative log-likelihood forward
+ backward, "decode" the Viterbi paths. Runs are interleaved in one process; prints the median
times and the ratios lstmkit / pytorch-crf of the medians and of the minima (< 1: lstmkit is
faster). On a shared machine the minima are the steadier, and `--threads 1` steadier still:
compare ratios, not times.
Needs pytorch-crf (in the ``test`` extra).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from pathlib import Path

import torch
import torchcrf

from lstmkit.crf import CRF

SIZES = [(T, B, K) for T in (50, 100) for B in (32, 64) for K in (9, 17)]
NAMES = ("lstmkit", "torchcrf")


def _inputs(T: int, B: int, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    em = torch.randn(T, B, K, generator=g)
    tags = torch.randint(K, (T, B), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    return em, tags, torch.arange(T).unsqueeze(1) < lengths          # mask (T, B)


def _train(crf: torch.nn.Module, em, tags, mask) -> None:
    crf.zero_grad(set_to_none=True)
    (-crf(em.detach().requires_grad_(), tags, mask, reduction="mean")).backward()


def _decode(crf: torch.nn.Module, em, tags, mask) -> None:
    crf.decode(em, mask)


TASKS = {"train": _train, "decode": _decode}


def _twins(K: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = torchcrf.CRF(K)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(-1, 1)
    ours = CRF(K)
    ours.load_state_dict(theirs.state_dict())
    return {"lstmkit": ours, "torchcrf": theirs}


def measure(T: int, B: int, K: int, repeats: int) -> dict[tuple[str, str], list[float]]:
    crfs, inputs = _twins(K), _inputs(T, B, K)
    ours, theirs = crfs["lstmkit"](*inputs), crfs["torchcrf"](*inputs)
    if not torch.allclose(ours, theirs, rtol=1e-4) or \
            crfs["lstmkit"].decode(inputs[0], inputs[2]) != crfs["torchcrf"].decode(inputs[0],
                                                                                   inputs[2]):
        raise RuntimeError(f"lstmkit and pytorch-crf disagree at (T={T}, B={B}, K={K})")
    times: dict[tuple[str, str], list[float]] = {(t, n): [] for t in TASKS for n in NAMES}
    for i in range(repeats + 2):                                       # two warm-up rounds
        for task, run in TASKS.items():
            for name in NAMES if i % 2 else NAMES[::-1]:               # alternate who goes first
                start = time.perf_counter()
                run(crfs[name], *inputs)
                if i >= 2:
                    times[task, name].append(1e3 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "pytorch-crf": importlib.metadata.version("pytorch-crf"),
            "threads": torch.get_num_threads(), "repeats": args.repeats, "dtype": "float32"}
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    rows = []
    for T, B, K in SIZES:
        times = measure(T, B, K, args.repeats)
        line = [f"T={T:3d} B={B:2d} K={K:2d}"]
        for task in TASKS:
            ours, theirs = times[task, "lstmkit"], times[task, "torchcrf"]
            row = {"seq_len": T, "batch": B, "num_tags": K, "task": task,
                   "lstmkit_ms": statistics.median(ours), "torchcrf_ms": statistics.median(theirs),
                   "ratio_median": statistics.median(ours) / statistics.median(theirs),
                   "ratio_min": min(ours) / min(theirs)}
            rows.append(row)
            line.append(f"{task}: {row['lstmkit_ms']:7.2f} vs {row['torchcrf_ms']:7.2f} ms, "
                        f"ratio {row['ratio_median']:.2f} (minima {row['ratio_min']:.2f})")
        print("   ".join(line))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
