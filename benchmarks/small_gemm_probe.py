"""The per-step GEMM alone: MKL's sgemm, MKL's packed GEMM and ATen's brgemm (oneDNN's
micro-kernel) on the recurrent shapes of the fused loop, in one process.

    python benchmarks/small_gemm_probe.py [--threads N] [--json PATH]

C (M×N) = A (M×K) · Wᵀ with W (N×K) row-major, as the loop's forward GEMM ``ĥ W_hhᵀ``
(M = B, K = H, N = G·H; the backward's ``dA W_hh`` is the (M, G·H, H) row): sgemm straight
from the BLAS torch links, MKL's ``cblas_sgemm_compute`` on W packed once, and
``at::native::cpublas::brgemm`` on Wᵀ laid out once (K×N), whole and with K cut into blocks
of at most ``--k-block`` (accumulating; what the loop does, see common.h). Each is called in a
C++ loop (no Python between calls), the best of 3 rounds; it prints µs per call and GFLOP/s, and
brgemm's largest difference to ``A @ W.T``. brgemm runs on the calling thread only; MKL
uses torch's threads. Compiles a small extension on first use (about 40 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

SHAPES = ((1, 64, 256), (1, 256, 64), (16, 128, 512), (16, 512, 128), (16, 128, 384),
          (64, 256, 1024), (64, 1024, 256), (64, 256, 768), (64, 512, 2048), (64, 2048, 512),
          (32, 1024, 4096), (32, 4096, 1024))

KINDS = ("sgemm", "packed", "brgemm", "brgemm_kblocked")
SOURCE = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <chrono>
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*,
                       const float*, const float*, const int*, const float*, const int*,
                       const float*, float*, const int*);
extern "C" size_t cblas_sgemm_pack_get_size(int, int, int, int);
extern "C" void cblas_sgemm_pack(int, int, int, int, int, int, float, const float*, int,
                                 float*);
extern "C" void cblas_sgemm_compute(int, int, int, int, int, int, const float*, int,
                                    const float*, int, float, float*, int);

// ms per call of C = A Wᵀ: sgemm, MKL packed, brgemm (on Wᵀ laid out once), brgemm with K
// in blocks of kb
std::vector<double> probe(at::Tensor A, at::Tensor W, at::Tensor C, int64_t reps,
                          int64_t kb) {
  const int M = A.size(0), K = A.size(1), N = W.size(0);
  const float* a = A.data_ptr<float>();
  const float* w = W.data_ptr<float>();
  float* c = C.data_ptr<float>();
  const float one = 1, zero = 0;
  const char t = 'T', n = 'N';
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  };
  std::vector<double> out;
  auto t0 = clock::now();
  for (int64_t r = 0; r < reps; ++r) sgemm_(&t, &n, &N, &M, &K, &one, w, &K, a, &K, &zero, c, &N);
  out.push_back(ms(t0) / reps);
  std::vector<float> packed(cblas_sgemm_pack_get_size(162, M, N, K) / 4 + 1);
  cblas_sgemm_pack(101, 162, 112, M, N, K, 1.0f, w, K, packed.data());
  t0 = clock::now();
  for (int64_t r = 0; r < reps; ++r)
    cblas_sgemm_compute(101, 111, 151, M, N, K, a, K, packed.data(), K, 0.0f, c, N);
  out.push_back(ms(t0) / reps);
  at::Tensor Wt = W.t().contiguous();
  const float* wt = Wt.data_ptr<float>();
  at::native::cpublas::brgemm(M, N, K, K, N, N, false, a, wt, c, false);
  t0 = clock::now();
  for (int64_t r = 0; r < reps; ++r)
    at::native::cpublas::brgemm(M, N, K, K, N, N, false, a, wt, c, false);
  out.push_back(ms(t0) / reps);
  // brgemm with K cut into blocks of at most kb, accumulating into C
  auto blocked = [&] {
    for (int64_t k0 = 0; k0 < K; k0 += kb)
      at::native::cpublas::brgemm(M, N, std::min<int64_t>(kb, K - k0), K, N, N, k0 > 0,
                                  a + k0, wt + k0 * N, c, false);
  };
  blocked();
  t0 = clock::now();
  for (int64_t r = 0; r < reps; ++r) blocked();
  out.push_back(ms(t0) / reps);
  return out;
}

at::Tensor brgemm_once(at::Tensor A, at::Tensor W) {
  const int M = A.size(0), K = A.size(1), N = W.size(0);
  at::Tensor Wt = W.t().contiguous();
  at::Tensor C = at::zeros({M, N});
  at::native::cpublas::brgemm(M, N, K, K, N, N, false, A.data_ptr<float>(),
                              Wt.data_ptr<float>(), C.data_ptr<float>(), false);
  return C;
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--k-block", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    m = load_inline("lstmkit_small_gemm_probe", cpp_sources=SOURCE,
                    functions=["probe", "brgemm_once"], extra_cflags=["-O2"])
    print(f"{torch.get_num_threads()} threads (MKL); brgemm on one; µs per call, best of 3")
    print(f"{'M×K·K×N':<22}{'sgemm':>16}{'MKL packed':>16}{'brgemm':>16}"
          f"{f'brgemm K≤{args.k_block}':>16}{'err':>10}")
    rows = []
    for M, K, N in SHAPES:
        A, W = torch.randn(M, K), torch.randn(N, K)
        C = torch.empty(M, N)
        err = (m.brgemm_once(A, W) - A @ W.t()).abs().max().item()
        reps = max(10, int(1e9 / (2 * M * N * K)))
        best = m.probe(A, W, C, reps, args.k_block)
        for _ in range(2):
            best = [min(x, y) for x, y in zip(best, m.probe(A, W, C, reps, args.k_block))]
        gflops = [2 * M * N * K / (ms / 1e3) / 1e9 for ms in best]
        rows.append({"M": M, "K": K, "N": N, "us": dict(zip(KINDS,
                                                            [1e3 * b for b in best])),
                     "gflop_per_s": dict(zip(KINDS, gflops)),
                     "brgemm_max_abs_err": err})
        cells = "".join(f"{1e3 * b:>9.1f} ({g:>3.0f})" for b, g in zip(best, gflops))
        print(f"{f'{M}×{K}·{K}×{N}':<22}{cells}{err:>10.1e}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "platform": platform.platform(),
                "threads": torch.get_num_threads(), "k_block": args.k_block,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "load_average": os.getloadavg(), "note": "shared, noisy machine"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
