"""Peak training memory of every family's fused layer, to compare two versions of lstmkit.

    PYTHONPATH=<checkout> python benchmarks/engine_memory.py --json PATH

One training step (forward + backward of ``(output · g).sum()``) per module, padded float32
input, backend ``fused_cpp``; the peak of torch's CPU allocations during the step
(:func:`lstmkit.bench.train_step_peak_mb`), beside a plain ``lstmkit.LSTM`` of the same size.
Run it from two checkouts (e.g. before and after a change to ``lstmkit/ops``) and compare the
JSONs: the script only uses names both sides have.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import lstmkit
from lstmkit import bench

SIZES = ((100, 16, 128), (150, 64, 256))
MODULES = {
    "LSTM": lambda H: lstmkit.LSTM(H, H, backend="fused_cpp"),
    "ClockworkRNN (8 modules)": lambda H: lstmkit.ClockworkRNN(H, H, num_modules=8,
                                                               backend="fused_cpp"),
    "DepthGatedLSTM (2 layers)": lambda H: lstmkit.DepthGatedLSTM(H, H, 2, backend="fused_cpp"),
    "LSTM, layer_norm": lambda H: lstmkit.LSTM(H, H, layer_norm=True, backend="fused_cpp"),
    "GRU": lambda H: lstmkit.GRU(H, H, backend="fused_cpp"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    rows = []
    print(f"lstmkit from {Path(lstmkit.__file__).parent}")
    print(f"{'module':<30}{'(T,B,H)':<16}{'peak MB':>10}")
    for T, B, H in SIZES:
        inp = bench.make_inputs(bench.Config("lstm", T, B, H))
        for name, build in MODULES.items():
            torch.manual_seed(0)
            module = build(H)
            bench.train_step(module, inp)                     # build, warm up
            peak = bench.train_step_peak_mb(module, inp)
            rows.append({"module": name, "T": T, "B": B, "H": H, "peak_mb": peak})
            print(f"{name:<30}{f'({T},{B},{H})':<16}{peak:>10.1f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"lstmkit_path": str(Path(lstmkit.__file__).parent), "torch": torch.__version__,
                "platform": platform.platform()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
