// Pieces shared by the attention kernels (sparse_attention.cu, attention_scores.cu): one [B, H, N, d] or
// [total, H, d] array as a kernel reads it, and the warp reductions and row dot product they use.
#pragma once

#include "common.cuh"
#include "tokenset/sparse_attention.h"

namespace tokenset {
namespace cuda {

struct DeviceTokens {
  const void* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  int64_t length = 0;                // 4-D: the length axis
  const int64_t* cu = nullptr;       // varlen: device cu_seqlens, else null

  __device__ int64_t origin(int64_t b, int64_t h) const { return cu ? cu[b] * s0 + h * s1 : b * s0 + h * s1; }
  __device__ int64_t row_stride() const { return cu ? s0 : s2; }
  __device__ int64_t rows(int64_t b) const { return cu ? cu[b + 1] - cu[b] : length; }
};

inline DeviceTokens device_tokens(const AttentionTokens& t, const int64_t* device_cu) {
  DeviceTokens d;
  d.data = t.values.data;
  d.s0 = t.values.strides[0];
  d.s1 = t.values.strides[1];
  if (t.varlen()) {
    d.cu = device_cu;
  } else {
    d.s2 = t.values.strides[2];
    d.length = t.values.shape[2];
  }
  return d;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ float dot_row(const float* a, const T* row, int64_t dim) {
  float acc = 0.0f;
  for (int64_t c = 0; c < dim; ++c) acc = fmaf(a[c], to_float(row[c]), acc);
  return acc;
}

}  // namespace cuda
}  // namespace tokenset
