// MUVERA Fixed Dimensional Encodings (FDE): one vector per token set whose inner products approximate MaxSim.
//
// Per repetition r (as the reference C++ of the paper's authors, google/graph-mining fixed_dimensional_encoding.cc):
//  * sign bits of a token x against the repetition's `simhash_bits` hyperplanes g_0..g_{k-1} form the pattern
//    s = b_0 b_1 .. b_{k-1} (b_0 most significant), b_j = (<x, g_j> > 0); the token's partition is the p with
//    s = p ^ (p >> 1) (s is the Gray code of p), which is what appending bits as idx = (idx << 1) + (b ^ (idx & 1))
//    builds. A NaN dot product is not > 0: its bit is 0;
//  * the token is projected: identity, or the repetition's AMS matrix (input coordinate i goes to column
//    proj_index[r][i] with weight proj_weight[r][i], ±1 when generated);
//  * queries SUM the projected tokens of each partition; documents AVERAGE them;
//  * documents with fill_empty: an empty partition p takes the projected token whose pattern is nearest to
//    p ^ (p >> 1) in Hamming distance (the lowest token index wins ties); a document with no tokens stays all zero;
//  * optional final Count-Sketch: FDE coordinate i adds final_sign[i] * fde[i] into output final_index[i].
// Output row: [reps][2^bits][proj_dim] float32, or [final_dim] with the Count-Sketch.
#pragma once

#include <string>

#include "tokenset/common.h"

namespace tokenset {

struct FdeParams {
  SetBatch sets;
  int64_t reps = 0;
  int32_t simhash_bits = 0;  // 0..30
  // [dim, reps * simhash_bits] row-major: column r * simhash_bits + j is hyperplane j of repetition r.
  const float* simhash = nullptr;
  // AMS projection, [reps, dim] each; null = identity (then proj_dim == dim).
  const int32_t* proj_index = nullptr;
  const float* proj_weight = nullptr;
  int64_t proj_dim = 0;
  bool average = false;     // documents: average per partition (queries: sum)
  bool fill_empty = false;  // documents only
  // Count-Sketch to final_dim coordinates (0 = none): [fde_dim()] each.
  int64_t final_dim = 0;
  const int32_t* final_index = nullptr;
  const float* final_sign = nullptr;
  // [sets.count, output_dim()] float32.
  float* out = nullptr;
  // Optional: partition of every token in every repetition, [tokens, reps] int32, tokens counted from offsets[0].
  int32_t* partitions = nullptr;
  // false: only fill `partitions` (no encoding; `out` unused).
  bool encode = true;

  // GPU only. The AMS projection grouped by output column, per repetition: proj_order[r * dim + proj_starts[r][j] ..]
  // lists (ascending) the input coordinates that land in column j; proj_starts is [reps, proj_dim + 1].
  const int32_t* proj_order = nullptr;
  const int32_t* proj_starts = nullptr;
  // GPU only. The Count-Sketch grouped by output coordinate: final_order[final_starts[j] .. final_starts[j+1]) are the
  // FDE coordinates (ascending) that land in output j, so every output is summed in the CPU's order, without atomics.
  const int32_t* final_order = nullptr;
  const int64_t* final_starts = nullptr;
  // GPU scratch: codes [tokens, reps] (sign patterns), token_partitions [tokens, reps] (used when `partitions` is
  // null), counts [chunk_sets, reps, 2^bits], fde_rows [chunk_sets, fde_dim()] (with a Count-Sketch only).
  uint32_t* codes = nullptr;
  int32_t* token_partitions = nullptr;
  int32_t* counts = nullptr;
  float* fde_rows = nullptr;
  int64_t chunk_sets = 0;
  // GPU only, from the host offsets: offsets[0] and offsets[count] - offsets[0] (the kernels' token range).
  int64_t base_row = 0;
  int64_t tokens = 0;

  TOKENSET_HOST_DEVICE int64_t num_partitions() const { return int64_t(1) << simhash_bits; }
  TOKENSET_HOST_DEVICE int64_t fde_dim() const { return reps * num_partitions() * proj_dim; }
  TOKENSET_HOST_DEVICE int64_t output_dim() const { return final_dim > 0 ? final_dim : fde_dim(); }
};

// Largest FDE accepted: coordinates are indexed with int32 (Count-Sketch hash) and a row is 8 GiB at this size.
constexpr int64_t kMaxFdeDim = (int64_t(1) << 31) - 1;

// Checks that order/starts group the coordinates 0..n-1 by index[] (values in 0..groups-1), ascending within a group.
template <typename Start>
inline void check_grouping(const int32_t* index, int64_t n, int64_t groups, const int32_t* order, const Start* starts,
                           const char* what) {
  if (starts[0] != 0 || starts[groups] != n)
    throw ValueError(std::string(what) + " groups must start at 0 and end at " + std::to_string(n));
  for (int64_t j = 0; j < groups; ++j) {
    const int64_t a = starts[j], b = starts[j + 1];
    if (b < a || a < 0 || b > n) throw ValueError(std::string(what) + " group starts must be non-decreasing");
    for (int64_t k = a; k < b; ++k) {
      const int64_t i = order[k];
      if (i < 0 || i >= n || index[i] != j || (k > a && i <= order[k - 1]))
        throw ValueError(std::string(what) + " groups do not match its index (each group must list, ascending, "
                         "the coordinates sent to it)");
    }
  }
}

// Checks the sizes alone (reps, simhash_bits, proj_dim, final_dim, and the FDE size they make), so that shapes
// computed from them are safe before any array is looked at.
inline void check_fde_config(const FdeParams& p) {
  if (p.reps < 1) throw ValueError("reps must be >= 1, got " + std::to_string(p.reps));
  if (p.simhash_bits < 0 || p.simhash_bits > 30)
    throw ValueError("simhash_bits must be in 0..30, got " + std::to_string(p.simhash_bits));
  if (p.proj_dim < 1) throw ValueError("proj_dim must be >= 1, got " + std::to_string(p.proj_dim));
  if (p.fill_empty && !p.average)
    throw ValueError("fill_empty applies to documents only (a query's empty partitions stay zero)");
  const int64_t partitions = p.num_partitions();
  if (p.reps > kMaxFdeDim / partitions || p.reps * partitions > kMaxFdeDim / p.proj_dim)
    throw ValueError("the FDE would have more than 2^31 - 1 coordinates per set; lower simhash_bits or reps, or "
                     "project to fewer dimensions with proj_dim");
  if (p.final_dim < 0) throw ValueError("final_dim must be >= 1 (or 0 for none)");
  if (p.final_dim > kMaxFdeDim) throw ValueError("final_dim must be < 2^31");
}

// An empty query has no FDE (documents may be empty). `host_offsets`: the sets' offsets on the host.
inline void check_fde_queries(const FdeParams& p, const int64_t* host_offsets) {
  if (p.average) return;
  for (int64_t q = 0; q < p.sets.count; ++q)
    if (host_offsets[q + 1] == host_offsets[q])
      throw ValueError("query " + std::to_string(q) + " has no tokens: an empty query has no FDE; drop it");
}

// Checks the configuration and every index the kernels will follow, before any kernel reads memory. The host_*
// pointers hold the same data as the params' (which may be device pointers); pass nulls where the params hold none.
inline void check_fde_params(const FdeParams& p, const int32_t* host_proj_index, const int32_t* host_final_index,
                             const int32_t* host_final_order, const int64_t* host_final_starts,
                             const int32_t* host_proj_order = nullptr, const int32_t* host_proj_starts = nullptr) {
  check_fde_config(p);
  if (p.simhash_bits > 0 && p.simhash == nullptr) throw ValueError("simhash matrix missing");
  if ((p.proj_index == nullptr) != (p.proj_weight == nullptr))
    throw ValueError("an AMS projection needs both its index and its weights");
  if (p.proj_index == nullptr && p.proj_dim != p.sets.dim)
    throw ValueError("the identity projection keeps the token dimension: proj_dim must equal dim");
  if (p.proj_index) {
    if (host_proj_index == nullptr) throw ValueError("projection index not given on the host for checking");
    for (int64_t i = 0; i < p.reps * p.sets.dim; ++i)
      if (host_proj_index[i] < 0 || host_proj_index[i] >= p.proj_dim)
        throw ValueError("projection index [" + std::to_string(i / p.sets.dim) + ", " +
                         std::to_string(i % p.sets.dim) + "] = " + std::to_string(host_proj_index[i]) +
                         " is outside [0, proj_dim=" + std::to_string(p.proj_dim) + ")");
  }
  if (p.final_dim > 0) {
    if (p.final_index == nullptr || p.final_sign == nullptr || host_final_index == nullptr)
      throw ValueError("the Count-Sketch needs its index and signs");
    const int64_t n = p.fde_dim();
    for (int64_t i = 0; i < n; ++i)
      if (host_final_index[i] < 0 || host_final_index[i] >= p.final_dim)
        throw ValueError("Count-Sketch index [" + std::to_string(i) + "] = " + std::to_string(host_final_index[i]) +
                         " is outside [0, final_dim=" + std::to_string(p.final_dim) + ")");
    if (host_final_order != nullptr || host_final_starts != nullptr) {
      if (host_final_order == nullptr || host_final_starts == nullptr)
        throw ValueError("the grouped Count-Sketch needs both its order and its starts");
      check_grouping(host_final_index, n, p.final_dim, host_final_order, host_final_starts, "Count-Sketch");
    }
  }
  if (host_proj_order != nullptr || host_proj_starts != nullptr) {
    if (host_proj_order == nullptr || host_proj_starts == nullptr || host_proj_index == nullptr)
      throw ValueError("the grouped projection needs its index, order and starts");
    for (int64_t r = 0; r < p.reps; ++r)
      check_grouping(host_proj_index + r * p.sets.dim, p.sets.dim, p.proj_dim, host_proj_order + r * p.sets.dim,
                     host_proj_starts + r * (p.proj_dim + 1), "projection");
  }
}

namespace cpu {
// Multi-threaded over sets; SIMD level chosen at run time. Empty queries (average == false) are rejected.
void fde_encode(const FdeParams& params);
}  // namespace cpu

namespace cuda {
// Same semantics as cpu::fde_encode; set offsets and every array point at device memory; launched on `stream`.
void fde_encode(const FdeParams& params, void* stream);
}  // namespace cuda

}  // namespace tokenset
