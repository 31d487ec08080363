"""Does our libdnnl (the onednn-cpu-gomp wheel) coexist with torch's own oneDNN and OpenMP?

    python -m benchmarks.onednn_coexistence [--out benchmarks/results/onednn-coexistence.json]

Three checks, printed and written as JSON (docs/onednn.md, "Coexistence"):

1. the dynamic symbols that ``libdnnl.so.3`` and torch's libraries both define
   (``nm -D --defined-only``), split into oneDNN's C API (``dnnl_*``), C++ ``std::``
   template instances and the rest;
2. where ``libdnnl.so.3``'s symbol references bind at run time when torch is imported
   first and our extension is loaded after it (``LD_DEBUG=bindings`` in a child process):
   counts per library that provides the definition;
3. how many OpenMP runtimes that child process maps (``/proc/self/maps``).

Needs binutils' ``nm`` and glibc's dynamic loader (Linux).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lstmkit.ops import onednn

CHILD = """
import json, re, torch
from lstmkit.ops import onednn
onednn.module()
maps = open('/proc/self/maps').read()
print('GOMP', json.dumps(sorted(set(re.findall(r'\\S*libgomp\\S*', maps)))))
"""


def _defined(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def shared_symbols(libdnnl: Path, torch_libs: list[Path]) -> dict:
    ours = _defined(libdnnl)
    theirs = set().union(*(_defined(p) for p in torch_libs))
    both = sorted(ours & theirs)
    kinds: dict[str, list[str]] = {"dnnl C API": [], "std:: template instances": [],
                                   "other": []}
    for name in both:
        if name.startswith("dnnl_"):
            kinds["dnnl C API"].append(name)
        elif re.match(r"_Z(N|T[ISV])N?St|_ZNKSt|_ZNSt", name):
            kinds["std:: template instances"].append(name)
        else:
            kinds["other"].append(name)
    return {"libdnnl_exports": len(ours), "torch_exports": len(theirs), "shared": len(both),
            "by_kind": {k: len(v) for k, v in kinds.items()}, "other": kinds["other"]}


def bindings(libdnnl: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": f"{tmp}/ld"}
        child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                               text=True, check=True)
        log = "".join(p.read_text(errors="replace") for p in Path(tmp).glob("ld*"))
    counts: collections.Counter = collections.Counter()
    pattern = re.compile(rf"binding file {re.escape(str(libdnnl))} \[0\] to (\S+) \[0\]")
    for m in pattern.finditer(log):
        counts[m.group(1)] += 1
    gomp = re.search(r"GOMP (.*)", child.stdout)
    return {"libdnnl_binds_to": dict(counts.most_common()),
            "openmp_runtimes_mapped": json.loads(gomp.group(1)) if gomp else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/onednn-coexistence.json")
    args = parser.parse_args(argv)
    found = onednn._install()
    if isinstance(found, str):
        raise SystemExit(f"onednn_coexistence: {found}")
    libdnnl = found[0]
    torch_lib = Path(torch.__file__).parent / "lib"
    torch_libs = sorted(p for p in torch_lib.glob("lib*.so") if "test" not in p.name)
    report = {"libdnnl": str(libdnnl), "torch": torch.__version__,
              "torch_libraries": [p.name for p in torch_libs],
              "symbols": shared_symbols(libdnnl, torch_libs), "runtime": bindings(libdnnl)}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
