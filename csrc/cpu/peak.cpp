// The measured FMA peak (benchmarks: GFLOP/s against the peak of the same machine in the same run).
#include <algorithm>
#include <chrono>
#include <vector>

#include "parallel.h"
#include "peak_kernels.h"

namespace tokenset {
namespace cpu {

double measure_fma_peak(int threads, double seconds) {
  const PeakKernel& kernel = TOKENSET_SIMD_KERNEL(peak_kernel);
  threads = std::max(1, std::min(threads, num_threads()));
  // A sane duration whatever is asked (NaN, infinities, negatives): between the calibration run and 10 s.
  seconds = seconds > 0.0 ? std::min(seconds, 10.0) : 0.0;
  using clock = std::chrono::steady_clock;
  // Rounds per worker for about `seconds`, from a short calibration run on this thread.
  int64_t rounds = 1 << 16;
  for (;;) {
    const auto start = clock::now();
    volatile float sink = kernel.fma_rounds(rounds);
    (void)sink;
    const double took = std::chrono::duration<double>(clock::now() - start).count();
    if (took > 0.02 || rounds > (int64_t(1) << 40)) {
      rounds = static_cast<int64_t>(rounds * std::max(1.0, seconds / std::max(took, 1e-9)));
      break;
    }
    rounds *= 4;
  }
  std::vector<float> sinks(threads);
  const auto start = clock::now();
  parallel_for(threads, 1, threads, [&](int64_t b, int64_t e, int) {
    for (int64_t w = b; w < e; ++w) sinks[w] = kernel.fma_rounds(rounds);
  });
  const double took = std::chrono::duration<double>(clock::now() - start).count();
  return threads * static_cast<double>(rounds) * 12.0 * kernel.lanes * 2.0 / took / 1e9;
}

}  // namespace cpu
}  // namespace tokenset
