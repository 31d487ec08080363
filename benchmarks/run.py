"""Run lstmkit's benchmark (``lstmkit.bench``) and write its JSON to benchmarks/results/.

    python benchmarks/run.py [--quick] [--only S] [--repeats N] [--threads N]
                             [--backend fused_cpp|fused_py] [--reference auto|all|none]
                             [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lstmkit.cli import bench

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.json is None:
        kind = "quick" if args.quick else "full"
        args.json = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{kind}.json"
    return bench.run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
