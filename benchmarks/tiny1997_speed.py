"""Cost per time step of the tiny 1997 trainer (lstmkit.ops.tiny1997, C++), forward and
truncated backward and the update, against the engine's LSTM1997 (backend fused_cpp,
truncate=True, float64, batch 1) with a logistic output unit, autograd and SGD — what one
would run without the tiny trainer — measured in the same process.

    OMP_NUM_THREADS=1 python benchmarks/tiny1997_speed.py [--T 100 1000] [--repeats 5]

Prints ns per step (medians of --repeats; wall clock and the process's CPU time, which is
less inflated on a loaded machine) and the ratio; writes
benchmarks/results/tiny1997-speed.json. The engine's network is the size-1-block form
without gate feedback (4 cells, 2 inputs: 92 weights); the tiny trainer runs the paper's
93-weight network (2 blocks of 2 cells, gate feedback) and, for a like-for-like ratio, the
same size-1-block network as the engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import lstmkit
from lstmkit.data.synthetic import Adding1997
from lstmkit.ops.tiny1997 import Shape1997, Tiny1997

OUT = Path(__file__).resolve().parent / "results" / "tiny1997-speed.json"


def _tiny_ns(shape, batch, repeats):
    net = Tiny1997.init(shape, gen=torch.Generator().manual_seed(0))
    x, lengths, y = batch.x.double().contiguous(), batch.lengths, batch.y.double()
    net.train(x[:4], y[:4], lengths[:4])                          # build/load, warm up
    steps, times, cpu = int(lengths.sum()), [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        net.train(x, y, lengths)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e9 * statistics.median(times) / steps, 1e9 * statistics.median(cpu) / steps


def _engine_ns(batch, repeats, n):
    torch.manual_seed(0)
    m = lstmkit.LSTM1997(2, 4, truncate=True, dtype=torch.float64, backend="fused_cpp")
    head = torch.nn.Linear(4, 1, dtype=torch.float64)
    opt = torch.optim.SGD(list(m.parameters()) + list(head.parameters()), lr=0.5)
    xs = [batch.x[b, :batch.lengths[b], None].double() for b in range(n)]
    ys = batch.y.double()

    def one_pass():
        for b in range(n):
            opt.zero_grad()
            out, _ = m(xs[b])
            loss = 0.5 * (torch.sigmoid(head(out[-1]))[0, 0] - ys[b]) ** 2
            loss.backward()
            opt.step()

    steps, times, cpu = int(batch.lengths[:n].sum()), [], []
    one_pass()
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        one_pass()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e9 * statistics.median(times) / steps, 1e9 * statistics.median(cpu) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sequences", type=int, default=200, help="tiny trainer, per repeat")
    p.add_argument("--engine-sequences", type=int, default=10, help="engine, per repeat")
    args = p.parse_args(argv)
    rows = []
    for T in args.T:
        batch = Adding1997(T).sample(args.sequences, torch.Generator().manual_seed(T))
        (paper, paper_cpu) = _tiny_ns(Shape1997(), batch, args.repeats)
        (same, same_cpu) = _tiny_ns(Shape1997(2, 4, 1, False), batch, args.repeats)
        (engine, engine_cpu) = _engine_ns(batch, args.repeats, args.engine_sequences)
        rows.append({"T": T, "tiny_paper_net_ns_per_step": round(paper, 1),
                     "tiny_paper_net_cpu_ns_per_step": round(paper_cpu, 1),
                     "tiny_size1_net_ns_per_step": round(same, 1),
                     "tiny_size1_net_cpu_ns_per_step": round(same_cpu, 1),
                     "engine_fused_cpp_ns_per_step": round(engine, 1),
                     "engine_fused_cpp_cpu_ns_per_step": round(engine_cpu, 1),
                     "engine_over_tiny_same_net": round(engine / same, 1)})
        print(f"T={T}: tiny trainer {paper:.0f} ns/step wall, {paper_cpu:.0f} CPU (paper's "
              f"93-weight net); {same:.0f} wall, {same_cpu:.0f} CPU (4 blocks of 1, no gate "
              f"feedback); engine LSTM1997 fused_cpp + autograd + SGD {engine:.0f} wall, "
              f"{engine_cpu:.0f} CPU: {engine / same:.0f}× slower", flush=True)
    result = {"what": "ns per step, forward + truncated backward + SGD update, float64, "
                      "one sequence at a time (online); noisy, shared machine",
              "torch": torch.__version__, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
