// Bernoulli masks from a counter-based generator: Philox4x32-10 (Salmon, Moraes, Dror &
// Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11), the twin of
// lstmkit/ops/philox.py (read its docstring for the stream: which counter and word each
// element takes, the key, the threshold). torch's CPU `bernoulli_` drew 7 ns per element on
// the Xeon (a zoneout LSTM at (100,16,128) spent a quarter of its training step in it); this
// is a pure function of (key, element index), so the elements are shared out over torch's
// threads and every thread count gives the same mask.

#pragma once

#include <cstdint>

#include "common.h"

namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;   // multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;   // key increments

// One round on the counter words (c0, c1, c2, c3) with the round's key (k0, k1).
inline void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                         uint32_t k1) {
  const uint64_t p0 = uint64_t(kPhiloxM0) * c0, p1 = uint64_t(kPhiloxM1) * c2;
  const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
  c0 = n0;
  c1 = uint32_t(p1);
  c2 = n2;
  c3 = uint32_t(p0);
}

// The 4 words of Philox4x32-10 for counter c and key (k0, k1), in place in c.
inline void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1)
    philox_round(c[0], c[1], c[2], c[3], k0, k1);
}

// out[i] = value if word i of the stream < threshold else 0, for the numel elements of out.
// kPhiloxBlock counters at a time, word by word in arrays, so the rounds vectorise (the
// 32 × 32 → 64-bit products as vpmuludq): a (1600, 128) mask in 0.32 ms on two threads
// instead of 0.45 one counter at a time.
constexpr int64_t kPhiloxBlock = 16;
template <typename T>
void philox_bernoulli(T* out, int64_t numel, uint64_t threshold, T value, uint32_t k0,
                      uint32_t k1) {
  const int64_t groups = (numel + 3) / 4, blocks = (groups + kPhiloxBlock - 1) / kPhiloxBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
    alignas(64) uint32_t c[4][kPhiloxBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g0 = b * kPhiloxBlock;
      for (int64_t j = 0; j < kPhiloxBlock; ++j) {
        const uint64_t g = uint64_t(g0 + j);
        c[0][j] = uint32_t(g);
        c[1][j] = uint32_t(g >> 32);
        c[2][j] = 0u;
        c[3][j] = 0u;
      }
      uint32_t key0 = k0, key1 = k1;
      for (int round = 0; round < 10; ++round, key0 += kPhiloxW0, key1 += kPhiloxW1) {
#pragma omp simd
        for (int64_t j = 0; j < kPhiloxBlock; ++j)
          philox_round(c[0][j], c[1][j], c[2][j], c[3][j], key0, key1);
      }
      const int64_t last = std::min(kPhiloxBlock, groups - g0);
      for (int64_t j = 0; j < last; ++j) {
        const int64_t i0 = 4 * (g0 + j), n = std::min<int64_t>(4, numel - i0);
        for (int64_t w = 0; w < n; ++w)
          out[i0 + w] = uint64_t(c[w][j]) < threshold ? value : T(0);
      }
    }
  });
}

}  // namespace

// Fills `out` (contiguous float32/64, CPU) with the mask of lstmkit/ops/philox.py: value where
// the element's word < threshold, else 0; key words k0, k1 in [0, 2^32).
inline void bernoulli_mask(Tensor out, int64_t threshold, double value, int64_t k0,
                           int64_t k1) {
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(),
              "lstmkit bernoulli_mask: a contiguous CPU tensor");
  TORCH_CHECK(threshold >= 0 && threshold <= (int64_t(1) << 32),
              "lstmkit bernoulli_mask: threshold in [0, 2^32], got ", threshold);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lstmkit_bernoulli_mask", [&] {
    philox_bernoulli<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), uint64_t(threshold),
                               scalar_t(value), uint32_t(k0), uint32_t(k1));
  });
}

// The four words of Philox4x32-10 for one counter and key (for the known-answer tests).
inline std::vector<int64_t> philox_words(std::vector<int64_t> counter, std::vector<int64_t> key) {
  TORCH_CHECK(counter.size() == 4 && key.size() == 2, "lstmkit philox_words: 4 + 2 words");
  uint32_t c[4];
  for (int i = 0; i < 4; ++i) c[i] = uint32_t(counter[i]);
  philox4x32_10(c, uint32_t(key[0]), uint32_t(key[1]));
  return {c[0], c[1], c[2], c[3]};
}
