// k-center on the GPU, tiled: a set of any size runs over many blocks, and every distance is the CPU's bit for bit.
//
// Distances (the one definition, csrc/cpu/distance.h): every pair is summed in k order from 0.0f, one fmaf per
// element (dot: fmaf(a_k, b_k, acc); l2: d = __fsub_rn(a_k, b_k), fmaf(d, d, acc)); a thread owns whole sums, never a
// lane-strided part of one, and there are no shuffle reductions of partial sums. The finishing steps use the explicit
// round-to-nearest intrinsics (__fmul_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn), which nvcc never contracts into an FMA
// (the CPU side is compiled with -ffp-contract=off). Products commute and a - b = -(b - a) exactly, so d(i, j) and
// d(j, i) are the same bits. No tensor cores: an MMA sums its k-slices in a tree (and TF32 / BF16 inputs round the
// operands), which would change the bits against the CPU and split exact ties differently; the tiles below are
// SIMT FMA tiles, as a classic SGEMM, which keep each sum's order.
//
// Launches (all on the caller's stream, no host synchronisation; P = the largest min(k, n) over the sets):
//   fill_picks                     outputs to -1 / NaN
//   plan_kernel        1 block     per set: its first greedy row block and its first most-isolated tile pair
//                                  (exclusive scans), in the workspace
//   prepare_kernel     row tiles   per token: row stat (cosine 1 / ||x||), running minimum +inf, nearest-other +inf,
//                                  not picked
//   isolate_kernel     tile pairs  only if some non-empty set has first == -1: its (tile_i <= tile_j) 64 x 64 tiles of
//                                  the upper triangle, grid-strided over all such sets; each pair i < j is folded into
//                                  the nearest-other minima of i and j (block minima, then an atomicMin on
//                                  order-preserving float bits)
//   first_kernel       per set     the first pick (given, or argmax of the nearest-other minima, lowest index on
//                                  ties; +inf for a set of one token), written out
//   per pick t = 1 .. P - 1:
//     update_kernel    row blocks  (set, 128-row block) for every set that makes >= 2 picks: distance(pivot, row) for
//                                  the unpicked rows, folded into the running minima, the block's (best, index) out
//     select_kernel    per set     the best over the set's blocks (lowest index on ties): the pick, written out and
//                                  made the next pivot; a set with fewer picks returns at once
// That is 5 (4 without a most-isolated pick) + 2 (P - 1) launches.
//
// Memory: workspace_bytes() (kcenter.h): 13 bytes per token, 24 per set, 12 per 128-row block of a greedy pass:
// O(tokens + sets), never n x n; shared memory is a fixed 17 KB or less per block.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "distance.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kChunk = 32;                                    // dimensions staged in shared memory per step
constexpr int kRows = static_cast<int>(kKcenterGpuRows);      // rows per greedy block (one thread each)
constexpr int kRowPitch = kRows + 1;                          // odd pitch: the transposed stores are conflict-free
constexpr int kTile = 64;                                     // most-isolated tiles: kTile x kTile pairs
constexpr int kTilePitch = kTile + 1;
constexpr int kTileSide = 16;                                 // 16 x 16 threads, each kPer x kPer pairs
constexpr int kPer = kTile / kTileSide;
constexpr int kTileThreads = kTileSide * kTileSide;
constexpr int kSelectThreads = 128;
constexpr int kPlanThreads = 1024;
constexpr uint32_t kOrderedInf = 0xff800000u;                 // ordered_bits(+inf)

static_assert(kRows % 32 == 0 && kRows >= kChunk, "a greedy block is whole warps and stages the pivot chunk");
static_assert(kTileThreads >= 2 * kTile, "the tile's row and column minima are flushed one thread each");

// Float bits whose unsigned order is the float order (-inf lowest, +inf highest; NaN never occurs here).
__device__ __forceinline__ uint32_t ordered_bits(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// Tile pairs (i <= j) of the upper triangle of a set of n tokens in kTile x kTile tiles.
__host__ __device__ __forceinline__ int64_t tile_pairs_of_set(int64_t n) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  return n > 0 ? tiles * (tiles + 1) / 2 : 0;
}

// ---- shared helpers ----------------------------------------------------------------------------------------------
// Stages rows row0 .. row0 + kCount - 1 (absolute), columns k0 .. k0 + kChunk - 1, as float32 into dst[column][row]
// (transposed: a thread then reads its own row's elements in k order, conflict-free); zero outside `valid` rows and
// `dim` (never summed: the readers stop at dim). Consecutive threads read consecutive elements of a row.
template <typename T, int kCount, int kPitch, int kThreads>
__device__ __forceinline__ void stage_rows(float (*dst)[kPitch], const Rows<T>& rows, int64_t row0, int valid,
                                           int64_t k0) {
  for (int e = threadIdx.x; e < kCount * kChunk; e += kThreads) {
    const int r = e / kChunk, c = e % kChunk;
    float v = 0.0f;
    if (r < valid && k0 + c < rows.dim) v = to_float(rows.values[(row0 + r) * rows.stride + k0 + c]);
    dst[c][r] = v;
  }
}

// Exclusive scan of one int64 per thread over a block of kThreads (a multiple of 32, at most 1024); *total: the sum.
template <int kThreads>
__device__ int64_t block_exclusive_scan(int64_t v, int64_t* s_warp, int64_t* total) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kWarps ? s_warp[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) s_warp[lane] = w;
  }
  __syncthreads();
  const int64_t before = warp > 0 ? s_warp[warp - 1] : 0;
  *total = s_warp[kWarps - 1];
  __syncthreads();  // s_warp is reused by the next call
  return before + x - v;
}

// ---- kernels -----------------------------------------------------------------------------------------------------
// One block: block_base[s] = greedy row blocks of the sets before s, pair_base[s] = most-isolated tile pairs of the
// sets before s (only sets with first == -1), [count] = the totals (the host computes the same from its copies).
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const int64_t* offsets, const int64_t* k, const int64_t* first, int64_t count, int64_t* block_base,
                int64_t* pair_base) {
  __shared__ int64_t s_warp[kPlanThreads / 32];
  int64_t blocks = 0, pairs = 0;
  for (int64_t s0 = 0; s0 < count; s0 += kPlanThreads) {
    const int64_t s = s0 + threadIdx.x;
    int64_t b = 0, q = 0;
    if (s < count) {
      const int64_t n = offsets[s + 1] - offsets[s];
      b = kcenter_greedy_blocks_of_set(n, k[s]);
      q = first[s] < 0 ? tile_pairs_of_set(n) : 0;
    }
    int64_t block_total, pair_total;
    const int64_t b_before = block_exclusive_scan<kPlanThreads>(b, s_warp, &block_total);
    const int64_t q_before = block_exclusive_scan<kPlanThreads>(q, s_warp, &pair_total);
    if (s < count) {
      block_base[s] = blocks + b_before;
      pair_base[s] = pairs + q_before;
    }
    blocks += block_total;
    pairs += pair_total;
  }
  if (threadIdx.x == 0) {
    block_base[count] = blocks;
    pair_base[count] = pairs;
  }
}

// Rows [row_begin, row_end) of the batch, kRows per tile: the row stat (cosine: 1 / sqrt(sum of x_k^2 in k order),
// 0 for a zero or NaN sum; 0 for l2 / ip), running minimum +inf, nearest-other +inf, not picked.
template <typename T, bool kCosine>
__global__ void __launch_bounds__(kRows)
    prepare_kernel(const Rows<T> rows, int64_t row_begin, int64_t row_end, float* stats, float* mins,
                   uint32_t* nearest, uint8_t* picked) {
  __shared__ float s_rows[kChunk][kRowPitch];  // cosine only (the other metrics need no row stat)
  const int64_t tiles = (row_end - row_begin + kRows - 1) / kRows;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t row0 = row_begin + tile * kRows;
    const int valid = static_cast<int>(imin(kRows, row_end - row0));
    const int64_t r = row0 + threadIdx.x;
    float stat = 0.0f;
    if constexpr (kCosine) {
      float sq = 0.0f;
      for (int64_t k0 = 0; k0 < rows.dim; k0 += kChunk) {
        __syncthreads();  // the previous chunk's reads are done
        stage_rows<T, kRows, kRowPitch, kRows>(s_rows, rows, row0, valid, k0);
        __syncthreads();
        const int kc = static_cast<int>(imin(kChunk, rows.dim - k0));
        for (int kk = 0; kk < kc; ++kk) {
          const float x = s_rows[kk][threadIdx.x];
          sq = fmaf(x, x, sq);
        }
      }
      stat = cosine_stat(sq);
    }
    if (threadIdx.x < valid) {
      stats[r] = stat;
      mins[r] = INFINITY;
      nearest[r] = kOrderedInf;
      picked[r] = 0;
    }
  }
}

// The most-isolated pass: tile pair g of the sets with first == -1 (pair_base) is tiles (ti <= tj) of its set,
// enumerated column by column (tj, then ti = 0 .. tj). Each thread sums kPer x kPer pairs (rows ty + 16 a, columns
// tx + 16 b) in k order from operands staged kChunk dimensions at a time; the pairs i < j < n of the tile are folded
// into both tokens' nearest-other minimum.
template <typename T, Metric M>
__global__ void __launch_bounds__(kTileThreads, 2)
    isolate_kernel(const Rows<T> rows, const int64_t* pair_base, const float* stats, uint32_t* nearest) {
  constexpr bool kL2 = M == Metric::L2;
  __shared__ float s_a[kChunk][kTilePitch];
  __shared__ float s_b[kChunk][kTilePitch];
  __shared__ uint32_t s_row_min[kTile];
  __shared__ uint32_t s_col_min[kTile];
  const int tx = threadIdx.x % kTileSide, ty = threadIdx.x / kTileSide;
  const int64_t total = pair_base[rows.count];
  for (int64_t g = blockIdx.x; g < total; g += gridDim.x) {
    const int64_t set = find_set(pair_base, rows.count, g);
    const int64_t begin = rows.offsets[set], n = rows.offsets[set + 1] - begin;
    const int64_t local = g - pair_base[set];
    int64_t tj = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(local) + 1.0) - 1.0) * 0.5);
    while (tj > 0 && tj * (tj + 1) / 2 > local) --tj;
    while ((tj + 1) * (tj + 2) / 2 <= local) ++tj;
    const int64_t ti = local - tj * (tj + 1) / 2;
    const int64_t i0 = ti * kTile, j0 = tj * kTile;
    if (j0 >= n) continue;  // only if the device copies disagreed with the host's (the same for the whole block)
    const int valid_i = static_cast<int>(imin(kTile, n - i0)), valid_j = static_cast<int>(imin(kTile, n - j0));

    __syncthreads();  // the previous tile's flush has read s_row_min / s_col_min
    if (threadIdx.x < kTile)
      s_row_min[threadIdx.x] = kOrderedInf;
    else if (threadIdx.x < 2 * kTile)
      s_col_min[threadIdx.x - kTile] = kOrderedInf;

    float acc[kPer][kPer];
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int b = 0; b < kPer; ++b) acc[a][b] = 0.0f;
    for (int64_t k0 = 0; k0 < rows.dim; k0 += kChunk) {  // dim >= 1: at least once, so the barrier below also
      __syncthreads();                                     // orders the minima's initialisation before their use
      stage_rows<T, kTile, kTilePitch, kTileThreads>(s_a, rows, begin + i0, valid_i, k0);
      stage_rows<T, kTile, kTilePitch, kTileThreads>(s_b, rows, begin + j0, valid_j, k0);
      __syncthreads();
      const int kc = static_cast<int>(imin(kChunk, rows.dim - k0));
      for (int kk = 0; kk < kc; ++kk) {
        float x[kPer], y[kPer];
#pragma unroll
        for (int a = 0; a < kPer; ++a) x[a] = s_a[kk][ty + kTileSide * a];
#pragma unroll
        for (int b = 0; b < kPer; ++b) y[b] = s_b[kk][tx + kTileSide * b];
#pragma unroll
        for (int a = 0; a < kPer; ++a)
#pragma unroll
          for (int b = 0; b < kPer; ++b) acc[a][b] = pair_step<kL2>(x[a], y[b], acc[a][b]);
      }
    }

    float row_min[kPer], col_min[kPer];
#pragma unroll
    for (int a = 0; a < kPer; ++a) row_min[a] = col_min[a] = INFINITY;
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const int64_t i = i0 + ty + kTileSide * a;
      const float stat_i = M == Metric::Cosine && i < n ? stats[begin + i] : 0.0f;
#pragma unroll
      for (int b = 0; b < kPer; ++b) {
        const int64_t j = j0 + tx + kTileSide * b;
        if (i < j && j < n) {  // each unordered pair once (the diagonal tile's lower half is the same pairs)
          const float stat_j = M == Metric::Cosine ? stats[begin + j] : 0.0f;
          const float d = distance_of<M>(acc[a][b], stat_i, stat_j);
          row_min[a] = fminf(row_min[a], d);
          col_min[b] = fminf(col_min[b], d);
        }
      }
    }
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      if (row_min[a] < INFINITY) atomicMin(&s_row_min[ty + kTileSide * a], ordered_bits(row_min[a]));
      if (col_min[a] < INFINITY) atomicMin(&s_col_min[tx + kTileSide * a], ordered_bits(col_min[a]));
    }
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int t = threadIdx.x;
      if (t < valid_i && s_row_min[t] != kOrderedInf) atomicMin(&nearest[begin + i0 + t], s_row_min[t]);
    } else if (threadIdx.x < 2 * kTile) {
      const int t = threadIdx.x - kTile;
      if (t < valid_j && s_col_min[t] != kOrderedInf) atomicMin(&nearest[begin + j0 + t], s_col_min[t]);
    }
  }
}

// Per set: the first pick (first[set], or the token with the largest nearest-other distance, lowest index on ties;
// a set of one token has +inf and picks token 0), written to the outputs (distance +inf) and kept as the pivot.
__global__ void __launch_bounds__(kSelectThreads)
    first_kernel(const int64_t* offsets, int64_t count, const int64_t* first, const uint32_t* nearest,
                 int64_t* current, uint8_t* picked, int64_t* indices, float* distances, int64_t max_k) {
  __shared__ float s_value[kSelectThreads / 32];
  __shared__ int64_t s_index[kSelectThreads / 32];
  __shared__ float best_value;
  __shared__ int64_t best_index;
  for (int64_t set = blockIdx.x; set < count; set += gridDim.x) {
    const int64_t begin = offsets[set], n = offsets[set + 1] - begin;
    if (n <= 0) continue;  // no picks (the same for the whole block)
    int64_t pick = first[set];
    if (pick < 0) {
      float v = -INFINITY;
      int64_t i = -1;
      for (int64_t j = threadIdx.x; j < n; j += kSelectThreads)
        keep_best(from_ordered_bits(nearest[begin + j]), j, v, i);
      block_best<kSelectThreads / 32>(v, i, s_value, s_index, &best_value, &best_index);
      pick = best_index;
    }
    if (threadIdx.x == 0 && pick >= 0 && pick < n) {
      current[set] = pick;
      picked[begin + pick] = 1;
      indices[set * max_k] = pick;
      if (distances) distances[set * max_k] = INFINITY;
    }
    __syncthreads();  // best_index is read before the next set's block_best writes it
  }
}

// Pick t's pass (t >= 1): greedy row block g of a set still picking is rows row0 .. row0 + kRows - 1 of its set, a
// thread per row; the pivot (the set's pick t - 1) and the rows are staged kChunk dimensions at a time and every row's
// sum runs in k order. An unpicked row's running minimum drops to the distance when that is smaller (ties keep the
// old value, as the CPU); the block's best (largest running minimum, lowest index) goes to slot g.
template <typename T, Metric M>
__global__ void __launch_bounds__(kRows)
    update_kernel(const Rows<T> rows, const int64_t* k, const int64_t* block_base, const int64_t* current,
                  const float* stats, float* mins, const uint8_t* picked, float* part_value, int64_t* part_index,
                  int64_t t) {
  constexpr bool kL2 = M == Metric::L2;
  __shared__ float s_rows[kChunk][kRowPitch];
  __shared__ float s_pivot[kChunk];
  __shared__ float s_value[kRows / 32];
  __shared__ int64_t s_index[kRows / 32];
  __shared__ float best_value;
  __shared__ int64_t best_index;
  const int64_t total = block_base[rows.count];
  for (int64_t g = blockIdx.x; g < total; g += gridDim.x) {
    const int64_t set = find_set(block_base, rows.count, g);
    const int64_t begin = rows.offsets[set], n = rows.offsets[set + 1] - begin;
    if (t >= imin(k[set], n)) continue;  // this set has all its picks: select_kernel does not read its slots
    const int64_t row0 = (g - block_base[set]) * kRows;
    const int valid = static_cast<int>(imin(kRows, n - row0));
    const int64_t pivot = current[set];
    float sum = 0.0f;
    if (valid > 0) {  // always, unless the device copies disagreed with the host's (the same for the whole block)
      const T* pivot_row = rows.values + (begin + pivot) * rows.stride;
      for (int64_t k0 = 0; k0 < rows.dim; k0 += kChunk) {
        __syncthreads();  // the previous chunk's (or block's) reads are done
        stage_rows<T, kRows, kRowPitch, kRows>(s_rows, rows, begin + row0, valid, k0);
        if (threadIdx.x < kChunk)
          s_pivot[threadIdx.x] = k0 + threadIdx.x < rows.dim ? to_float(pivot_row[k0 + threadIdx.x]) : 0.0f;
        __syncthreads();
        const int kc = static_cast<int>(imin(kChunk, rows.dim - k0));
        for (int kk = 0; kk < kc; ++kk) sum = pair_step<kL2>(s_pivot[kk], s_rows[kk][threadIdx.x], sum);
      }
    }
    float v = -INFINITY;
    int64_t i = -1;
    const int64_t j = row0 + threadIdx.x;
    if (static_cast<int>(threadIdx.x) < valid && !picked[begin + j]) {
      const float stat_p = M == Metric::Cosine ? stats[begin + pivot] : 0.0f;
      const float stat_j = M == Metric::Cosine ? stats[begin + j] : 0.0f;
      const float d = distance_of<M>(sum, stat_p, stat_j);
      float m = mins[begin + j];
      if (d < m) {
        m = d;
        mins[begin + j] = d;
      }
      v = m;
      i = j;
    }
    block_best<kRows / 32>(v, i, s_value, s_index, &best_value, &best_index);
    if (threadIdx.x == 0) {
      part_value[g] = best_value;
      part_index[g] = best_index;
    }
  }
}

// Pick t (t >= 1) of every set still picking: the best of its blocks' slots (largest running minimum, lowest index on
// ties; a -inf minimum is still a candidate), written to the outputs (l2: the Euclidean distance when >= 0) and made
// the pivot of pick t + 1.
template <bool kL2>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const int64_t* offsets, int64_t count, const int64_t* k, const int64_t* block_base,
                  const float* part_value, const int64_t* part_index, int64_t* current, uint8_t* picked,
                  int64_t* indices, float* distances, int64_t max_k, int64_t t) {
  __shared__ float s_value[kSelectThreads / 32];
  __shared__ int64_t s_index[kSelectThreads / 32];
  __shared__ float best_value;
  __shared__ int64_t best_index;
  for (int64_t set = blockIdx.x; set < count; set += gridDim.x) {
    const int64_t begin = offsets[set], n = offsets[set + 1] - begin;
    if (t >= imin(k[set], n)) continue;  // the same for the whole block
    float v = -INFINITY;
    int64_t i = -1;
    for (int64_t b = block_base[set] + threadIdx.x; b < block_base[set + 1]; b += kSelectThreads)
      keep_best(part_value[b], part_index[b], v, i);
    block_best<kSelectThreads / 32>(v, i, s_value, s_index, &best_value, &best_index);
    if (threadIdx.x == 0 && best_index >= 0) {
      const int64_t pick = best_index;
      const float value = best_value;
      current[set] = pick;
      picked[begin + pick] = 1;
      indices[set * max_k + t] = pick;
      if (distances) distances[set * max_k + t] = kL2 && value >= 0.0f ? __fsqrt_rn(value) : value;
    }
    __syncthreads();  // best_index / best_value are read before the next set's block_best writes them
  }
}

// ---- the driver --------------------------------------------------------------------------------------------------
struct Scratch {
  float* stats;
  float* mins;
  uint32_t* nearest;
  uint8_t* picked;
  int64_t* block_base;
  int64_t* pair_base;
  int64_t* current;
  float* part_value;
  int64_t* part_index;
};

template <typename T, Metric M>
void run_metric(const KcenterParams& p, const Rows<T>& rows, const Scratch& w, int64_t total_blocks,
                int64_t total_pairs, int64_t max_picks, cudaStream_t stream) {
  const int64_t count = p.tokens.count;
  const int64_t row_begin = p.tokens.host_offsets[0], row_end = p.tokens.host_offsets[count];
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(rows.offsets, p.k, p.first, count, w.block_base, w.pair_base);
  TOKENSET_CHECK_LAUNCH("kcenter plan");
  prepare_kernel<T, M == Metric::Cosine><<<grid_for(row_end - row_begin, kRows), kRows, 0, stream>>>(
      rows, row_begin, row_end, w.stats, w.mins, w.nearest, w.picked);
  TOKENSET_CHECK_LAUNCH("kcenter prepare");
  if (total_pairs > 0) {
    isolate_kernel<T, M><<<grid_for(total_pairs, 1), kTileThreads, 0, stream>>>(rows, w.pair_base, w.stats,
                                                                                 w.nearest);
    TOKENSET_CHECK_LAUNCH("kcenter most isolated");
  }
  const int set_grid = grid_for(count, 1);
  first_kernel<<<set_grid, kSelectThreads, 0, stream>>>(rows.offsets, count, p.first, w.nearest, w.current,
                                                        w.picked, p.indices, p.distances, p.max_k);
  TOKENSET_CHECK_LAUNCH("kcenter first pick");
  if (total_blocks == 0) return;  // no set makes a second pick
  const int block_grid = grid_for(total_blocks, 1);
  for (int64_t t = 1; t < max_picks; ++t) {
    update_kernel<T, M><<<block_grid, kRows, 0, stream>>>(rows, p.k, w.block_base, w.current, w.stats, w.mins,
                                                          w.picked, w.part_value, w.part_index, t);
    TOKENSET_CHECK_LAUNCH("kcenter update");
    select_kernel<M == Metric::L2><<<set_grid, kSelectThreads, 0, stream>>>(
        rows.offsets, count, p.k, w.block_base, w.part_value, w.part_index, w.current, w.picked, p.indices,
        p.distances, p.max_k, t);
    TOKENSET_CHECK_LAUNCH("kcenter select");
  }
}

template <typename T>
void run(const KcenterParams& p, const Launch& launch) {
  const int64_t count = p.tokens.count;
  const int64_t tokens = p.tokens.host_offsets[count];
  const int64_t needed = workspace_bytes(p);
  TOKENSET_CHECK(needed == 0 || (launch.workspace != nullptr && launch.workspace_bytes >= needed), ValueError,
                 "kcenter: the CUDA workspace is missing or smaller than workspace_bytes()");
  // Sizes from the host copies (the device copies hold the same values): the same as workspace_bytes() and the plan.
  const int64_t total_blocks = kcenter_greedy_blocks(p);
  int64_t total_pairs = 0, max_picks = 0;
  for (int64_t s = 0; s < count; ++s) {
    const int64_t n = p.tokens.host_offsets[s + 1] - p.tokens.host_offsets[s];
    if (p.host_first[s] < 0) total_pairs += tile_pairs_of_set(n);
    max_picks = std::max(max_picks, std::min(p.host_k[s], n));
  }
  if (max_picks == 0) return;  // every set is empty
  WorkspaceCarver carve(launch.workspace);  // the order of workspace_bytes()
  Scratch w;
  w.stats = carve.take<float>(tokens);
  w.mins = carve.take<float>(tokens);
  w.nearest = carve.take<uint32_t>(tokens);
  w.picked = carve.take<uint8_t>(tokens);
  w.block_base = carve.take<int64_t>(count + 1);
  w.pair_base = carve.take<int64_t>(count + 1);
  w.current = carve.take<int64_t>(count);
  w.part_value = carve.take<float>(total_blocks);
  w.part_index = carve.take<int64_t>(total_blocks);
  const Rows<T> rows{static_cast<const T*>(p.tokens.values.data), p.tokens.row_stride(), p.tokens.dim(),
                     p.tokens.offsets, count};
  const cudaStream_t stream = stream_of(launch);
  switch (p.metric) {
    case Metric::L2: run_metric<T, Metric::L2>(p, rows, w, total_blocks, total_pairs, max_picks, stream); break;
    case Metric::InnerProduct:
      run_metric<T, Metric::InnerProduct>(p, rows, w, total_blocks, total_pairs, max_picks, stream);
      break;
    default: run_metric<T, Metric::Cosine>(p, rows, w, total_blocks, total_pairs, max_picks, stream); break;
  }
}

}  // namespace

void kcenter(const KcenterParams& p, const Launch& launch) {
  validate(p);
  const int64_t size = p.tokens.count * p.max_k;
  if (size == 0) return;
  TOKENSET_CHECK(p.tokens.count < (int64_t(1) << 31), ValueError, "kcenter: at most 2^31 - 1 sets per call on the GPU");
  fill_picks(p.indices, p.distances, size, stream_of(launch));
  TOKENSET_FLOAT_SWITCH(p.tokens.dtype(), kDType, [&] { run<cuda_type_t<kDType>>(p, launch); });
}

}  // namespace cuda
}  // namespace tokenset
