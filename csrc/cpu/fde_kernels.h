// The per-level FDE kernel table: defined by fde_kernels.cpp (once per SIMD level), picked by the driver fde.cpp.
// Plain function pointers: the files are compiled with different -m flags.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/fde.h"

namespace tokenset {
namespace cpu {

// The per-level kernel table.
struct FdeKernel {
  int width;  // floats per vector: a block's tokens are padded to a multiple of it
  // dst[t * dim + k] = float(rows[t * stride + k]) for t < count: float16 / bfloat16 rows to float32.
  void (*convert_rows)(const void* rows, int64_t stride, DType dtype, int64_t count, int64_t dim, float* dst);
  // The hyperplane dots of a transposed block of tokens, tokens in lanes: dots[c * npad + t] = sum over k of
  // g[k * columns + c] * xt[k * npad + t] for c < columns, t < npad (npad a multiple of width, at most 64).
  void (*simhash_dots)(const float* xt, int64_t npad, int64_t dim, const float* g, int64_t columns, float* dots);
  // acc[k] += x[k] for k < dim.
  void (*add_row)(float* acc, const float* x, int64_t dim);
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (width x width register tiles).
  void (*transpose)(const float* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst, int64_t dst_stride);
  // The AMS projection of a transposed block of tokens: yt[j * npad + t] = sum over k in starts[j] .. starts[j+1] of
  // weight[k] * xt[order[k] * npad + t] (order: the input coordinates sent to column j, weight: theirs, in the same
  // order). Each input coordinate costs one broadcast-FMA per `width` tokens, instead of one per token with a dense
  // matrix.
  void (*project_tokens)(const float* xt, int64_t npad, const int32_t* order, const int32_t* starts,
                         const float* weight, int64_t pd, float* yt);
  // rep_row[parts[t] * pd + j] += yt[j * npad + t] for t < nb, j < pd; counts[parts[t]] += 1.
  void (*accumulate_projected)(const float* yt, int64_t npad, int64_t nb, int64_t pd, const int32_t* parts,
                               float* rep_row, int32_t* counts);
  // Sign patterns and partitions of `count` tokens of a block from its dots: codes[r * stride + t] has bit
  // bits - 1 - m set when dots[(r * bits + m) * npad + t] > 0 (the first hyperplane is the most significant bit; NaN
  // is not > 0), and parts[r * stride + t] is the partition whose Gray code is that pattern.
  void (*sign_codes)(const float* dots, int64_t npad, int64_t count, int64_t reps, int bits, int64_t stride,
                     uint32_t* codes, int32_t* parts);
  // dst[k] = src[k] / divisor for k < n (IEEE division, as the reference).
  void (*divide_row)(float* dst, const float* src, int64_t n, float divisor);
};

TOKENSET_DECLARE_SIMD_KERNELS(FdeKernel, fde_kernel)

}  // namespace cpu
}  // namespace tokenset
