// The FMA peak of this machine at the active SIMD level, for the benchmarks' "fraction of the peak": independent
// chains of vector FMAs, more than the FMA latency x the FMA ports, so nothing but the FMA units limits them.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"

namespace tokenset {
namespace cpu {

struct PeakKernel {
  int lanes;  // float32 lanes per vector FMA
  // Runs `rounds` rounds of 12 independent vector FMAs; returns a value that depends on every one (so none is
  // removed as dead code).
  float (*fma_rounds)(int64_t rounds);
};

TOKENSET_DECLARE_SIMD_KERNELS(PeakKernel, peak_kernel)

}  // namespace cpu
}  // namespace tokenset
