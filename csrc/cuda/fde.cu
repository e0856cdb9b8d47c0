// MUVERA Fixed Dimensional Encodings on the GPU (semantics in tokenset/fde.h), in four launches:
//
//  1. fde_codes: the simhash "GEMM": a block stages 32 tokens (k in chunks of 64) in shared memory; each thread owns
//     one hyperplane column and keeps its 32 dot products in registers; sign bits are OR-ed into per-token patterns
//     in shared memory, then written with the partition ids ([tokens, reps] each). Every token is read once per
//     group of repetitions whose columns fit in a block (one group at the defaults).
//  2. fde_accumulate: one block per (set, group of repetitions); thread (rep, output column j) walks the set's tokens
//     in order and adds coordinate j of each projected token to its partition. A thread owns its output coordinates:
//     no atomics, the same summation order every run. Partition sizes are counted by column 0's thread.
//  3. fde_finalize: one warp per (set, repetition, partition): averages (documents), or fills an empty partition with
//     the token nearest in Hamming distance (warp min over (distance, index): the lowest index wins ties).
//  4. fde_sketch (Count-Sketch only): one thread per output coordinate sums its group of FDE coordinates in
//     ascending order with unfused multiply and add: the same operations, in the same order, as the CPU.
// Sets are processed in chunks whose scratch (partition counts, pre-sketch rows) lives in the one workspace that
// workspace_bytes(params) sized (tokenset/fde.h, carve_fde_workspace).
#include "common.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/fde.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kCodeTokens = 32;  // tokens per block in fde_codes
constexpr int kCodeChunk = 64;   // k elements staged per step

__device__ __forceinline__ uint32_t partition_of(uint32_t pattern) {  // the p with p ^ (p >> 1) == pattern
  uint32_t p = pattern;
  for (int shift = 1; shift < 32; shift <<= 1) p ^= p >> shift;
  return p;
}

// ---- 1. sign patterns and partitions ----------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fde_codes_kernel(FdeParams p, FdeWorkspace w, int64_t base_row, int64_t tokens, int reps_per_group) {
  __shared__ float s_x[kCodeTokens][kCodeChunk + 1];
  __shared__ uint32_t s_codes[kCodeTokens][kThreads];  // reps_per_group <= kThreads
  const T* values = p.sets.values.ptr<const T>();
  const int64_t dim = p.sets.dim(), row_stride = p.sets.row_stride(), reps = p.reps, columns = reps * p.simhash_bits;
  const int bits = p.simhash_bits;
  int32_t* partitions = w.partitions;
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * kCodeTokens; t0 < tokens;
       t0 += static_cast<int64_t>(gridDim.x) * kCodeTokens) {
    const int rows = static_cast<int>(tokens - t0 < kCodeTokens ? tokens - t0 : kCodeTokens);
    for (int64_t r0 = 0; r0 < reps; r0 += reps_per_group) {
      const int group_reps = static_cast<int>(reps - r0 < reps_per_group ? reps - r0 : reps_per_group);
      const int group_columns = group_reps * bits;
      const int64_t column = r0 * bits + threadIdx.x;
      for (int e = threadIdx.x; e < kCodeTokens * group_reps; e += kThreads)
        s_codes[e / group_reps][e % group_reps] = 0u;
      float acc[kCodeTokens];
#pragma unroll
      for (int t = 0; t < kCodeTokens; ++t) acc[t] = 0.0f;
      for (int64_t k0 = 0; k0 < dim; k0 += kCodeChunk) {
        __syncthreads();
        for (int e = threadIdx.x; e < kCodeTokens * kCodeChunk; e += kThreads) {
          const int t = e / kCodeChunk, k = e % kCodeChunk;
          s_x[t][k] = (t < rows && k0 + k < dim)
                          ? to_float(values[(base_row + t0 + t) * row_stride + k0 + k])
                          : 0.0f;
        }
        __syncthreads();
        if (threadIdx.x < group_columns) {
          const int steps = static_cast<int>(dim - k0 < kCodeChunk ? dim - k0 : kCodeChunk);
          for (int k = 0; k < steps; ++k) {
            const float g = p.simhash[(k0 + k) * columns + column];
#pragma unroll
            for (int t = 0; t < kCodeTokens; ++t) acc[t] = fmaf(s_x[t][k], g, acc[t]);
          }
        }
      }
      if (threadIdx.x < group_columns) {
        const int rep = threadIdx.x / bits, j = threadIdx.x % bits;
        const uint32_t bit = 1u << (bits - 1 - j);  // the first hyperplane is the most significant bit
        for (int t = 0; t < rows; ++t)
          if (acc[t] > 0.0f) atomicOr(&s_codes[t][rep], bit);  // NaN is not > 0
      }
      __syncthreads();
      for (int e = threadIdx.x; e < rows * group_reps; e += kThreads) {
        const int t = e / group_reps, rep = e % group_reps;
        const uint32_t code = s_codes[t][rep];
        const int64_t at = (t0 + t) * reps + r0 + rep;
        w.codes[at] = code;
        partitions[at] = static_cast<int32_t>(partition_of(code));
      }
      __syncthreads();
    }
  }
}

// ---- 2. partition sums ------------------------------------------------------------------------------------------------
// Coordinate j of token x projected by repetition r.
template <typename T>
__device__ __forceinline__ float projected(const FdeParams& p, const T* x, int64_t r, int64_t j) {
  if (p.proj_index == nullptr) return to_float(x[j]);
  const int64_t dim = p.sets.dim();
  const int32_t* order = p.proj_order + r * dim;
  const int32_t* starts = p.proj_starts + r * (p.proj_dim + 1);
  float v = 0.0f;
  for (int32_t k = starts[j]; k < starts[j + 1]; ++k) {
    const int32_t i = order[k];
    v = fmaf(p.proj_weight[r * dim + i], to_float(x[i]), v);
  }
  return v;
}

// Where set `set` (chunk-relative `local`) writes its FDE before any Count-Sketch.
__device__ __forceinline__ float* fde_row(const FdeParams& p, const FdeWorkspace& w, int64_t set, int64_t local) {
  return p.final_dim > 0 ? w.fde_rows + local * p.fde_dim() : p.out + set * p.output_dim();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fde_accumulate_kernel(FdeParams p, FdeWorkspace w, int64_t first_set, int64_t sets, int reps_per_block,
                          int columns_per_rep) {
  const int64_t rep_blocks = (p.reps + reps_per_block - 1) / reps_per_block;
  const int64_t local = blockIdx.x / rep_blocks;
  if (local >= sets) return;
  const int64_t set = first_set + local;
  const int64_t rep = (blockIdx.x % rep_blocks) * reps_per_block + threadIdx.x / columns_per_rep;
  if (threadIdx.x / columns_per_rep >= reps_per_block || rep >= p.reps) return;
  const int64_t pd = p.proj_dim, parts = p.num_partitions();
  const int64_t base_row = p.sets.offsets[0], begin = p.sets.offsets[set], end = p.sets.offsets[set + 1];
  const int32_t* partitions = w.partitions;
  const T* values = p.sets.values.ptr<const T>();
  float* rep_row = fde_row(p, w, set, local) + rep * parts * pd;
  int32_t* counts = w.counts + (local * p.reps + rep) * parts;
  const int lane_column = threadIdx.x % columns_per_rep;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t part = partitions[(row - base_row) * p.reps + rep];
    const T* x = values + row * p.sets.row_stride();
    for (int64_t j = lane_column; j < pd; j += columns_per_rep) rep_row[part * pd + j] += projected(p, x, rep, j);
    if (lane_column == 0) ++counts[part];
  }
}

// ---- 3. averages and filling ------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fde_finalize_kernel(FdeParams p, FdeWorkspace w, int64_t first_set, int64_t sets) {
  const int lane = threadIdx.x % 32;
  const int64_t parts = p.num_partitions(), pd = p.proj_dim;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  const int64_t total = sets * p.reps * parts;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; item < total;
       item += warps) {
    const int64_t local = item / (p.reps * parts), rep = (item / parts) % p.reps, part = item % parts;
    const int64_t set = first_set + local;
    float* block = fde_row(p, w, set, local) + (rep * parts + part) * pd;
    const int32_t count = w.counts[(local * p.reps + rep) * parts + part];
    if (count > 0) {
      if (p.average)
        for (int64_t j = lane; j < pd; j += 32) block[j] = __fdiv_rn(block[j], static_cast<float>(count));
      continue;
    }
    const int64_t base_row = p.sets.offsets[0], begin = p.sets.offsets[set], end = p.sets.offsets[set + 1];
    if (!p.fill_empty || p.simhash_bits == 0 || end == begin) continue;
    const uint32_t target = static_cast<uint32_t>(part) ^ (static_cast<uint32_t>(part) >> 1);
    uint32_t best_distance = 0xffffffffu;  // the nearest token, the lowest index on ties
    int64_t best = 0;
    for (int64_t row = begin + lane; row < end; row += 32) {
      const uint32_t distance = __popc(w.codes[(row - base_row) * p.reps + rep] ^ target);
      if (distance < best_distance) best_distance = distance, best = row - begin;  // rows ascend per lane
    }
    warp_argmin(best_distance, best);
    const T* x = p.sets.values.ptr<const T>() + (begin + best) * p.sets.row_stride();
    for (int64_t j = lane; j < pd; j += 32) block[j] = projected(p, x, rep, j);
  }
}

// ---- 4. Count-Sketch --------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads)
    fde_sketch_kernel(FdeParams p, FdeWorkspace w, int64_t first_set, int64_t sets) {
  const int64_t total = sets * p.final_dim;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t local = e / p.final_dim, j = e % p.final_dim;
    const float* row = w.fde_rows + local * p.fde_dim();
    float acc = 0.0f;
    for (int64_t k = p.final_starts[j]; k < p.final_starts[j + 1]; ++k) {
      const int32_t i = p.final_order[k];
      acc = __fadd_rn(acc, __fmul_rn(p.final_sign[i], row[i]));  // unfused, as the CPU
    }
    p.out[(first_set + local) * p.final_dim + j] = acc;
  }
}

template <typename T>
void encode_typed(const FdeParams& p, const FdeWorkspace& w, cudaStream_t stream) {
  const int64_t base_row = p.sets.host_offsets[0];
  const int64_t tokens = p.sets.host_offsets[p.sets.count] - base_row;
  if (tokens > 0) {
    if (p.simhash_bits == 0) {
      TOKENSET_CUDA_CHECK(cudaMemsetAsync(w.codes, 0, sizeof(uint32_t) * tokens * p.reps, stream));
      TOKENSET_CUDA_CHECK(cudaMemsetAsync(w.partitions, 0, sizeof(int32_t) * tokens * p.reps, stream));
    } else {
      const int reps_per_group = kThreads / p.simhash_bits;
      fde_codes_kernel<T><<<grid_for(tokens, kCodeTokens), kThreads, 0, stream>>>(p, w, base_row, tokens,
                                                                                   reps_per_group);
      TOKENSET_CHECK_LAUNCH("fde_codes");
    }
  }
  if (!p.encode) return;
  const int64_t parts = p.num_partitions();
  const int columns_per_rep = static_cast<int>(p.proj_dim < kThreads ? p.proj_dim : kThreads);
  const int reps_per_block = kThreads / columns_per_rep;
  const int64_t rep_blocks = (p.reps + reps_per_block - 1) / reps_per_block;
  for (int64_t first = 0; first < p.sets.count; first += w.chunk_sets) {
    const int64_t sets = imin(w.chunk_sets, p.sets.count - first);
    if (p.final_dim > 0)
      TOKENSET_CUDA_CHECK(cudaMemsetAsync(w.fde_rows, 0, sizeof(float) * sets * p.fde_dim(), stream));
    else
      TOKENSET_CUDA_CHECK(cudaMemsetAsync(p.out + first * p.output_dim(), 0, sizeof(float) * sets * p.output_dim(), stream));
    TOKENSET_CUDA_CHECK(cudaMemsetAsync(w.counts, 0, sizeof(int32_t) * sets * p.reps * parts, stream));
    const int64_t blocks = sets * rep_blocks;
    TOKENSET_CHECK(blocks < (int64_t(1) << 31), ValueError, "too many sets in one FDE chunk");
    fde_accumulate_kernel<T><<<static_cast<int>(blocks), kThreads, 0, stream>>>(p, w, first, sets, reps_per_block,
                                                                                columns_per_rep);
    TOKENSET_CHECK_LAUNCH("fde_accumulate");
    fde_finalize_kernel<T><<<grid_for(sets * p.reps * parts, kThreads / 32), kThreads, 0, stream>>>(p, w, first, sets);
    TOKENSET_CHECK_LAUNCH("fde_finalize");
    if (p.final_dim > 0) {
      fde_sketch_kernel<<<grid_for(sets * p.final_dim, kThreads), kThreads, 0, stream>>>(p, w, first, sets);
      TOKENSET_CHECK_LAUNCH("fde_sketch");
    }
  }
}

}  // namespace

void fde_encode(const FdeParams& p, const Launch& launch) {
  validate(p, /*grouped=*/true);
  if (p.sets.count == 0) return;
  int64_t needed = 0;
  const FdeWorkspace w = carve_fde_workspace(p, launch.workspace, &needed);
  TOKENSET_CHECK(needed == 0 || (launch.workspace != nullptr && launch.workspace_bytes >= needed), ValueError,
                 "fde_encode: the CUDA workspace is missing or smaller than workspace_bytes()");
  TOKENSET_FLOAT_SWITCH(p.sets.dtype(), kDType, [&] { encode_typed<cuda_type_t<kDType>>(p, w, stream_of(launch)); });
}

}  // namespace cuda
}  // namespace tokenset
