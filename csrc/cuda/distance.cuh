// The CUDA twin of csrc/cpu/distance.h: the one definition of token distances of the selection kernels (k-center,
// nearest target), the same bits as the CPU. Every pair is summed in k order from 0.0f with one fmaf per element (l2
// over the differences, __fsub_rn); a thread owns whole sums. The finishing steps use the explicit round-to-nearest
// intrinsics, which nvcc never contracts into an FMA (the CPU side is compiled with -ffp-contract=off).
#pragma once

#include <cstdint>

#include "common.cuh"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cuda {

// The rows of a batch as the kernels read them (device pointers; rows `stride` elements apart, possibly negative).
template <typename T>
struct Rows {
  const T* values;
  int64_t stride;
  int64_t dim;
  const int64_t* offsets;  // [count + 1], absolute rows
  int64_t count;
};

// One element of a pair's sum, in k order: dot fmaf(a, b, acc), l2 fmaf(a - b, a - b, acc).
template <bool kL2>
__device__ __forceinline__ float pair_step(float a, float b, float acc) {
  if (kL2) {
    const float diff = __fsub_rn(a, b);
    return fmaf(diff, diff, acc);
  }
  return fmaf(a, b, acc);
}

// The distance from a pair's sum (squared for l2); stats: 1 / ||x|| for cosine (0 for a zero row), unused otherwise.
// A NaN distance becomes `nan_as` (-inf for k-center, +inf for the nearest target), as on the CPU.
template <Metric M>
__device__ __forceinline__ float distance_of(float sum, float stat_a, float stat_b, float nan_as = -INFINITY) {
  float d;
  if (M == Metric::Cosine) {
    d = __fsub_rn(1.0f, __fmul_rn(sum, __fmul_rn(stat_a, stat_b)));
  } else if (M == Metric::L2) {
    d = sum;
  } else {
    d = -sum;
  }
  return isnan(d) ? nan_as : d;
}

// The row stat of finish_distance: 1 / ||x|| (0 for a zero row), the squared norm summed in k order.
__device__ __forceinline__ float cosine_stat(float squared_norm) {
  return squared_norm > 0.0f ? __fdiv_rn(1.0f, __fsqrt_rn(squared_norm)) : 0.0f;
}

// The set whose range [base[s], base[s + 1]) holds g (base non-decreasing, base[0] <= g < base[count]): the largest s
// with base[s] <= g, which skips the empty ranges before it.
__device__ __forceinline__ int64_t find_set(const int64_t* base, int64_t count, int64_t g) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (base[mid] <= g)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace cuda
}  // namespace tokenset
