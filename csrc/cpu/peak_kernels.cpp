// The FMA-peak loop, once per SIMD level (TOKENSET_SIMD_NS).
#include "peak_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

static float fma_rounds(int64_t rounds) {
  constexpr int kChains = 12;  // > latency (4) x ports (2) on every x86 core with FMA
  V::type acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = V::set1(1.0f + 1e-3f * c);
  const V::type a = V::set1(0.999999f), b = V::set1(1e-7f);
  for (int64_t r = 0; r < rounds; ++r)
    for (int c = 0; c < kChains; ++c) acc[c] = V::fmadd(acc[c], a, b);
  V::type sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = V::add(sum, acc[c]);
  float lanes[W];
  V::store(lanes, sum);
  return lanes[0];
}

extern const PeakKernel peak_kernel = {W, &fma_rounds};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
