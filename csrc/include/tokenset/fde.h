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
  // The AMS projection grouped by output column, per repetition (GPU): proj_order[r * dim + proj_starts[r][j] ..]
  // lists (ascending) the input coordinates that land in column j; proj_starts is [reps, proj_dim + 1].
  const int32_t* proj_order = nullptr;
  const int32_t* proj_starts = nullptr;
  bool average = false;     // documents: average per partition (queries: sum)
  bool fill_empty = false;  // documents only
  // Count-Sketch to final_dim coordinates (0 = none): [fde_dim()] each.
  int64_t final_dim = 0;
  const int32_t* final_index = nullptr;
  const float* final_sign = nullptr;
  // The Count-Sketch grouped by output coordinate (GPU): final_order[final_starts[j] .. final_starts[j+1]) are the
  // FDE coordinates (ascending) that land in output j, so every output is summed in the CPU's order, without atomics.
  const int32_t* final_order = nullptr;
  const int32_t* final_starts = nullptr;
  // The index arrays above as host copies, for validate() (on the CPU the same pointers).
  const int32_t* host_proj_index = nullptr;
  const int32_t* host_proj_order = nullptr;
  const int32_t* host_proj_starts = nullptr;
  const int32_t* host_final_index = nullptr;
  const int32_t* host_final_order = nullptr;
  const int32_t* host_final_starts = nullptr;
  // [sets.count, output_dim()] float32.
  float* out = nullptr;
  // Optional: partition of every token in every repetition, [tokens, reps] int32, tokens counted from offsets[0].
  int32_t* partitions = nullptr;
  // false: only fill `partitions` (no encoding; `out` unused).
  bool encode = true;

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
  TOKENSET_CHECK(starts[0] == 0 && starts[groups] == n, ValueError, what, " groups must start at 0 and end at ", n);
  for (int64_t j = 0; j < groups; ++j) {
    const int64_t a = starts[j], b = starts[j + 1];
    TOKENSET_CHECK(b >= a && a >= 0 && b <= n, ValueError, what, " group starts must be non-decreasing");
    for (int64_t k = a; k < b; ++k) {
      const int64_t i = order[k];
      TOKENSET_CHECK(i >= 0 && i < n && index[i] == j && (k == a || i > order[k - 1]), ValueError, what,
                     " groups do not match its index (each group must list, ascending, the coordinates sent to it)");
    }
  }
}

// The first i with index[i] outside [0, bound), or -1. A branch-free min/max pass first (it vectorises: the
// Count-Sketch index of a 245,760-coordinate FDE is checked on every call), the position only when one is bad.
inline int64_t first_outside(const int32_t* index, int64_t n, int64_t bound) {
  int32_t lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    lo = index[i] < lo ? index[i] : lo;
    hi = index[i] > hi ? index[i] : hi;
  }
  if (lo >= 0 && hi < bound) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (index[i] < 0 || index[i] >= bound) return i;
  return -1;
}

// Checks the sizes alone (reps, simhash_bits, proj_dim, final_dim, and the FDE size they make), so that shapes
// computed from them are safe before any array is looked at.
inline void check_fde_config(const FdeParams& p) {
  TOKENSET_CHECK(p.reps >= 1, ValueError, "reps must be >= 1, got ", p.reps);
  TOKENSET_CHECK(p.simhash_bits >= 0 && p.simhash_bits <= 30, ValueError, "simhash_bits must be in 0..30, got ",
                 p.simhash_bits);
  TOKENSET_CHECK(p.proj_dim >= 1, ValueError, "proj_dim must be >= 1, got ", p.proj_dim);
  TOKENSET_CHECK(!p.fill_empty || p.average, ValueError,
                 "fill_empty applies to documents only (a query's empty partitions stay zero)");
  const int64_t partitions = p.num_partitions();
  TOKENSET_CHECK(p.reps <= kMaxFdeDim / partitions && p.reps * partitions <= kMaxFdeDim / p.proj_dim, ValueError,
                 "the FDE would have more than 2^31 - 1 coordinates per set; lower simhash_bits or reps, or project "
                 "to fewer dimensions with proj_dim");
  TOKENSET_CHECK(p.final_dim >= 0, ValueError, "final_dim must be >= 1 (or 0 for none)");
  TOKENSET_CHECK(p.final_dim <= kMaxFdeDim, ValueError, "final_dim must be < 2^31");
}

// Checks the configuration, the sets and every index the kernels will follow, before any kernel reads memory.
// Called by the CPU and the CUDA entry alike; groupings are checked whenever given, and `grouped` (the GPU) requires
// them.
inline void validate(const FdeParams& p, bool grouped = false) {
  check_fde_config(p);
  check_filled_set_batch(p.sets, p.average ? "documents" : "queries");
  const int64_t dim = p.sets.dim();
  if (!p.average)
    for (int64_t q = 0; q < p.sets.count; ++q)
      TOKENSET_CHECK(p.sets.host_offsets[q + 1] > p.sets.host_offsets[q], ValueError, "query ", q,
                     " has no tokens: an empty query has no FDE; drop it");
  TOKENSET_CHECK(p.sets.count == 0 || (p.encode ? p.out != nullptr : p.partitions != nullptr), ValueError,
                 "FDE output pointer is null");
  TOKENSET_CHECK(p.simhash_bits == 0 || p.simhash != nullptr, ValueError, "simhash matrix missing");
  TOKENSET_CHECK((p.proj_index == nullptr) == (p.proj_weight == nullptr), ValueError,
                 "an AMS projection needs both its index and its weights");
  TOKENSET_CHECK(p.proj_index != nullptr || p.proj_dim == dim, ValueError,
                 "the identity projection keeps the token dimension: proj_dim must equal dim");
  if (p.proj_index) {
    TOKENSET_CHECK(p.host_proj_index != nullptr, ValueError, "projection index not given on the host for checking");
    const int64_t bad = first_outside(p.host_proj_index, p.reps * dim, p.proj_dim);
    TOKENSET_CHECK(bad < 0, ValueError, "projection index [", bad / dim, ", ", bad % dim, "] = ",
                   bad < 0 ? 0 : p.host_proj_index[bad], " is outside [0, proj_dim=", p.proj_dim, ")");
    TOKENSET_CHECK(!grouped || (p.proj_order && p.proj_starts), ValueError,
                   "the CUDA FDE needs the projection grouped by output column (proj_order / proj_starts)");
    TOKENSET_CHECK((p.host_proj_order == nullptr) == (p.host_proj_starts == nullptr), ValueError,
                   "the grouped projection needs both its order and its starts");
    if (p.host_proj_order) {
      for (int64_t r = 0; r < p.reps; ++r)
        check_grouping(p.host_proj_index + r * dim, dim, p.proj_dim, p.host_proj_order + r * dim,
                       p.host_proj_starts + r * (p.proj_dim + 1), "projection");
    }
  }
  if (p.final_dim > 0) {
    TOKENSET_CHECK(p.final_index && p.final_sign && p.host_final_index, ValueError,
                   "the Count-Sketch needs its index and signs");
    const int64_t n = p.fde_dim();
    const int64_t bad = first_outside(p.host_final_index, n, p.final_dim);
    TOKENSET_CHECK(bad < 0, ValueError, "Count-Sketch index [", bad, "] = ", bad < 0 ? 0 : p.host_final_index[bad],
                   " is outside [0, final_dim=", p.final_dim, ")");
    TOKENSET_CHECK(!grouped || (p.final_order && p.final_starts), ValueError,
                   "the CUDA FDE needs the Count-Sketch grouped by output coordinate (final_order / final_starts)");
    TOKENSET_CHECK((p.host_final_order == nullptr) == (p.host_final_starts == nullptr), ValueError,
                   "the grouped Count-Sketch needs both its order and its starts");
    if (p.host_final_order) {
      check_grouping(p.host_final_index, n, p.final_dim, p.host_final_order, p.host_final_starts, "Count-Sketch");
    }
  }
}

// GPU workspace: sign patterns and partitions of every token ([tokens, reps] each), then per chunk of sets the
// partition counts ([chunk, reps, 2^bits]) and, with a Count-Sketch, the FDE rows before it ([chunk, fde_dim]).
// Chunks hold at most kFdeChunkBudget bytes (at least one set).
constexpr int64_t kFdeChunkBudget = int64_t(256) << 20;

inline int64_t fde_chunk_sets(const FdeParams& p) {
  if (!p.encode || p.sets.count == 0) return 0;
  const int64_t per_set = 4 * p.reps * p.num_partitions() + (p.final_dim > 0 ? 4 * p.fde_dim() : 0);
  int64_t chunk = kFdeChunkBudget / per_set;
  if (chunk > p.sets.count) chunk = p.sets.count;
  return chunk > 0 ? chunk : 1;
}

struct FdeWorkspace {
  uint32_t* codes = nullptr;
  int32_t* partitions = nullptr;
  int32_t* counts = nullptr;
  float* fde_rows = nullptr;
  int64_t chunk_sets = 0;
};

// The workspace layout; with base == nullptr only the size (.used()) is meaningful.
inline FdeWorkspace carve_fde_workspace(const FdeParams& p, void* base, int64_t* bytes) {
  WorkspaceCarver carve(base);
  FdeWorkspace w;
  const int64_t tokens = p.sets.count > 0 ? p.sets.host_offsets[p.sets.count] - p.sets.host_offsets[0] : 0;
  w.chunk_sets = fde_chunk_sets(p);
  w.codes = carve.take<uint32_t>(tokens * p.reps);
  w.partitions = p.partitions ? p.partitions : carve.take<int32_t>(tokens * p.reps);
  w.counts = carve.take<int32_t>(w.chunk_sets * p.reps * p.num_partitions());
  if (p.final_dim > 0) w.fde_rows = carve.take<float>(w.chunk_sets * p.fde_dim());
  if (bytes) *bytes = carve.used();
  return w;
}

inline int64_t workspace_bytes(const FdeParams& p) {
  check_fde_config(p);
  int64_t bytes = 0;
  carve_fde_workspace(p, nullptr, &bytes);
  return bytes;
}

namespace cpu {
// Multi-threaded over sets; SIMD level chosen at run time; `launch` unused.
void fde_encode(const FdeParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// Same semantics as cpu::fde_encode; set offsets and every array point at device memory; launched on launch.stream
// with a workspace of workspace_bytes(params).
void fde_encode(const FdeParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
