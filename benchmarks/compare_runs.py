"""Compare benchmark JSONs of two versions of lstmkit (e.g. before and after a change).

    python benchmarks/compare_runs.py full BEFORE.json AFTER.json       # lstmkit bench --json
    python benchmarks/compare_runs.py variants BEFORE.json AFTER.json   # bench --variants --json
    python benchmarks/compare_runs.py ab DIR     # DIR/{full,var}-<row>-{before,after}-<k>.json

Prints, per row, the ratio each version reports (lstmkit / torch.nn for ``full``, variant /
plain fused LSTM for ``variants``), its change in percent, and the absolute times; ``ab``
takes the median over the rounds of an A/B re-measurement.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


def _full_rows(data: dict) -> dict:
    return {(r["name"], ""): (r["ratios"]["lstmkit_over_torch_fb"], r["impls"]["lstmkit"]["fb_ms"])
            for r in data["results"]}


def _variant_rows(data: dict) -> dict:
    return {(r["variant"], f"({r['T']},{r['B']},{r['H']})"): (r["ratio"], r["fb_ms"])
            for r in data["variants"]}


def _table(rows: dict[tuple[str, str], tuple[list, list]]) -> str:
    out = [f"{'row':<42}{'size':<14}{'ratio before':>13}{'after':>8}{'change %':>10}"
           f"{'ms before':>11}{'ms after':>10}{'n':>6}"]
    for (name, size), (before, after) in sorted(rows.items()):
        if not before or not after:
            continue
        rb, ra = (statistics.median(x[0] for x in v) for v in (before, after))
        mb, ma = (statistics.median(x[1] for x in v) for v in (before, after))
        out.append(f"{name:<42}{size:<14}{rb:>13.3f}{ra:>8.3f}{100 * (ra / rb - 1):>10.1f}"
                   f"{mb:>11.2f}{ma:>10.2f}{len(before):>3}/{len(after)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["full", "variants", "ab"])
    p.add_argument("paths", nargs="+", type=Path)
    args = p.parse_args(argv)
    rows: dict = defaultdict(lambda: ([], []))
    if args.kind == "ab":
        for f in sorted(args.paths[0].glob("*.json")):
            m = re.fullmatch(r"(full|var)-.*-(before|after)-\d+\.json", f.name)
            if not m:
                continue
            read = _full_rows if m.group(1) == "full" else _variant_rows
            for key, value in read(json.loads(f.read_text())).items():
                rows[key][m.group(2) == "after"].append(value)
    else:
        read = _full_rows if args.kind == "full" else _variant_rows
        for side, path in enumerate(args.paths[:2]):
            for key, value in read(json.loads(path.read_text())).items():
                rows[key][side].append(value)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
