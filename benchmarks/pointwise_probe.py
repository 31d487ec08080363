"""The engine's pointwise kernels alone: nanoseconds per hidden unit, in one process.

    python benchmarks/pointwise_probe.py [--sizes 16,128 64,256] [--json PATH]

Compiles the engine's own headers (``lstmkit/ops/csrc``: the same ``exp_fast``, ``sigmoid``
and ``tanh_`` and the same kernels the loop runs, with the engine's compiler flags,
:data:`lstmkit.ops.extension.CFLAGS`) into a small extension and times, on one thread, in a
C++ loop with no Python between calls (the best of 20 rounds of 100 steps):

* ``lstm``: ``lstm_pointwise`` (the standard LSTM step: three sigmoids, two tanh) over a
  step's B rows, its inputs in cache (the same rows every step);
* ``lstm_walk``: the same, walking through 100 steps' rows of ``a`` and of the state
  sequences, as the time loop does;
* ``lstm_peephole``, ``lstm_backward``: the peephole forward kernel and the standard
  backward kernel (``lstm_pointwise_backward``);
* ``ln_lstm``: the layer-normalised LSTM's step after its GEMM (``ln_lstm_pointwise`` in
  ``csrc/cells/layernorm.h``: the LNs of W_ih x_t and W_hh ĥ over 4H, the gates, the LN of
  c_t), walking
  through the steps like ``lstm_walk`` but running on its own outputs of the last round
  (it rewrites its inputs in place) instead of copying them back;
* ``exp``, ``sigmoid``: the activation alone over 4,096 floats.

The sizes are (B, H). This is the measurement behind the ``no-thread-jumps`` pragma around
the LSTM's kernels in ``csrc/cells/lstm.h`` (docs/performance.md): without it GCC 12.2
threaded the activation's clamp into a path of its own, and the vectorised generic-size
loops of these kernels ran 3× slower (``lstm`` 10–12 ns per hidden unit against 3.4–3.9 on
an Intel Xeon). ``--cflags`` adds flags to the engine's, to try others (a pragma in the
headers overrides them). Compiles on first use (about 30 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

CSRC = Path(__file__).resolve().parent.parent / "lstmkit" / "ops" / "csrc"

SOURCE = r"""
#include "cells/lstm.h"
#include "cells/layernorm.h"
#include <chrono>

namespace {
using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ns per hidden unit: the best of `rounds` rounds of `steps` steps of B rows × H units
template <typename F>
double best_ns(int64_t steps, int64_t B, int64_t H, int rounds, F&& round) {
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    auto t0 = Clock::now();
    round();
    best = std::min(best, seconds(t0));
  }
  return best / double(steps * B * H) * 1e9;
}
}  // namespace

double probe(const std::string& kind, int64_t B, int64_t H) {
  const int64_t T = 100, A = 4 * H;
  std::vector<float> a0(T * B * A), a(T * B * A), h(T * B * H), c(T * B * H),
      carry(B * H, 0.1f), peep(3 * H, 0.05f), dm(B * H, 0.01f), dc(B * H, 0.02f),
      dprev(B * H), dA(B * A);
  for (size_t i = 0; i < a0.size(); ++i) a0[i] = 0.004f * float(i % 1000) - 2.0f;
  const bool walk = kind == "lstm_walk";
  if (kind == "exp" || kind == "sigmoid") {
    const int64_t n = 4096;
    std::vector<float> x(a0.begin(), a0.begin() + n), y(n);
    const bool sig = kind == "sigmoid";
    return best_ns(T, 1, n, 20, [&] {
      for (int64_t t = 0; t < T; ++t) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) y[i] = sig ? sigmoid(x[i]) : exp_fast(x[i]);
        x[t] += y[(t * 7) % n] * 1e-9f;
      }
    });
  }
  if (kind == "lstm_backward") {
    std::copy(a0.begin(), a0.begin() + B * A, a.begin());
    for (int64_t i = 0; i < B * A; ++i) a[i] = sigmoid(a[i]);          // gate activations
    return best_ns(T, B, H, 20, [&] {
      for (int64_t t = 0; t < T; ++t)
        lstm_pointwise_backward<float, false, false>(B, H, a.data(), c.data(), carry.data(),
                                                     dm.data(), H, dc.data(), dprev.data(),
                                                     dA.data(), nullptr);
    });
  }
  if (kind == "ln_lstm") {
    std::vector<float> hh(T * B * A), xh(T * B * A), chat(T * B * H), rstd(T * B * 3),
        ones(A, 1.0f), zeros(A, 0.0f);
    std::copy(a0.begin(), a0.end(), a.begin());
    std::copy(a0.begin(), a0.end(), hh.begin());
    // the kernel rewrites a and hh in place (activations, normalised rows): later rounds run
    // on its outputs, which stay finite, instead of copying 8 floats per unit back each round
    return best_ns(T, B, H, 20, [&] {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = t * B;
        ln_lstm_pointwise<float>(B, H, a.data() + row * A, hh.data() + row * A,
                                 xh.data() + row * A, ones.data(), zeros.data(), ones.data(),
                                 ones.data(), zeros.data(), carry.data(), c.data() + row * H,
                                 h.data() + row * H, H, chat.data() + row * H,
                                 rstd.data() + row * 3);
        std::memcpy(carry.data(), c.data() + row * H, sizeof(float) * B * H);
      }
    });
  }
  const bool peephole = kind == "lstm_peephole";
  TORCH_CHECK(walk || peephole || kind == "lstm", "unknown kind ", kind);
  return best_ns(T, B, H, 20, [&] {
    std::copy(a0.begin(), a0.end(), a.begin());
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = walk ? t * B : 0;
      float* at = a.data() + row * A;
      float* ct = c.data() + row * H;
      float* ht = h.data() + row * H;
      if (peephole)
        lstm_pointwise<float, true, false>(B, H, at, carry.data(), ct, ht, H, peep.data());
      else
        lstm_pointwise<float, false, false>(B, H, at, carry.data(), ct, ht, H, nullptr);
      std::memcpy(carry.data(), ct, sizeof(float) * B * H);
    }
  });
}
"""

KINDS = ("exp", "sigmoid", "lstm", "lstm_walk", "lstm_peephole", "lstm_backward", "ln_lstm")


def build(extra_cflags: list[str]):
    from lstmkit.ops.extension import CFLAGS, LDFLAGS
    flags = [*CFLAGS, *extra_cflags]
    # named by the headers and flags, so an edited kernel is rebuilt, not taken from the cache
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CSRC.rglob("*.h")))
                            + " ".join(flags).encode())
    return load_inline(name=f"lstmkit_pointwise_probe_{digest.hexdigest()[:12]}",
                       cpp_sources=[SOURCE],
                       functions=["probe"], extra_cflags=flags, extra_ldflags=LDFLAGS,
                       extra_include_paths=[str(CSRC)], verbose=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["16,128", "64,256", "1,64"],
                        help="B,H pairs")
    parser.add_argument("--cflags", default="", help="flags added to the engine's")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    module = build(args.cflags.split())
    rows = []
    print(f"{'kind':<15}" + "".join(f"{'(B,H)=(' + s + ')':>16}" for s in args.sizes)
          + "   ns per hidden unit (exp, sigmoid: per float)")
    for kind in KINDS:
        values = []
        for size in args.sizes:
            B, H = (int(v) for v in size.split(","))
            values.append(module.probe(kind, B, H))
            rows.append({"kind": kind, "B": B, "H": H, "ns": values[-1]})
        print(f"{kind:<15}" + "".join(f"{v:>16.2f}" for v in values))
    if args.json:
        from lstmkit.ops.extension import CFLAGS
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "torch": torch.__version__,
                                         "cflags": [*CFLAGS, *args.cflags.split()],
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
