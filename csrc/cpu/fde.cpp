// MUVERA FDE on the CPU, the driver (compiled once): threads over sets, partitions, averaging, filling and the
// Count-Sketch, around the per-level kernels of fde_kernels.cpp (semantics in tokenset/fde.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "fde_kernels.h"
#include "parallel.h"
#include "tokenset/fde.h"

namespace tokenset {
namespace cpu {
namespace {

// Tokens go through the encoder in blocks of this many: a block is transposed once (dim x 64 floats, 32 KiB at dim
// 128, so it stays in L1) and its hyperplane dots and projections are computed with tokens in vector lanes.
constexpr int64_t kBlockTokens = 64;
// Raw tokens are summed per partition in scratch of 2^bits * dim floats when it is at most this large; above it
// (many partitions) tokens go straight to the output row.
constexpr int64_t kMaxPartitionSums = int64_t(1) << 20;

inline uint32_t gray_code(uint32_t p) { return p ^ (p >> 1); }

using AlignedFloats = AlignedBuffer<float>;

struct Scratch {
  AlignedFloats tokens;         // the set as float32 (float16 / bfloat16 input only) [n, dim]
  AlignedFloats xt;             // a block of tokens, transposed [dim, kBlockTokens]
  AlignedFloats dots;           // its hyperplane dots [reps * bits, kBlockTokens]
  AlignedFloats yt;             // projected encoders: its projection by one repetition [proj_dim, kBlockTokens]
  std::vector<uint32_t> codes;  // sign pattern of every token in every repetition [reps, n]
  std::vector<int32_t> parts;   // ... and its partition [reps, n]
  std::vector<int32_t> counts;  // tokens per partition [2^bits] ([reps, 2^bits] for projected encoders)
  AlignedFloats sums;           // identity encoders: raw partition sums of the current repetition [2^bits, dim];
                                // projected encoders: projected partition sums, all repetitions [fde_dim]
  AlignedFloats row;            // the FDE before the Count-Sketch [fde_dim]
};

struct Ctx {
  const FdeParams* p;
  const FdeKernel* kernel;
  bool via_sums = false;  // encode_rep_via_sums (else encode_rep_direct)
  // The AMS projection grouped by output column, per repetition: proj_order[r * dim + ..], proj_starts[r][pd + 1].
  std::vector<int32_t> proj_order, proj_starts;
  std::vector<float> proj_weight_ordered;  // proj_weight[r][proj_order[r][k]] at [r * dim + k]
  std::vector<Scratch> scratch;  // one per worker
};

// The token nearest to empty partition `part`, given the sign patterns of one repetition: least Hamming distance
// between a token's pattern and the partition's Gray code, lowest index on ties. 1 is the least distance possible
// for an empty partition.
int64_t nearest_token(const uint32_t* rep_codes, int64_t n, int64_t part) {
  const uint32_t target = gray_code(static_cast<uint32_t>(part));
  int64_t best = 0;
  int best_distance = 33;
  for (int64_t t = 0; t < n && best_distance > 1; ++t) {
    const int distance = __builtin_popcount(rep_codes[t] ^ target);
    if (distance < best_distance) {
      best_distance = distance;
      best = t;
    }
  }
  return best;
}

// Identity projection, one repetition, when 2^bits * dim floats of partition sums fit in scratch: tokens are summed
// per partition (SIMD adds), then every block of the output is written exactly once (divided, filled or zeroed).
void encode_rep_via_sums(Ctx& c, Scratch& s, int64_t r, const float* x, int64_t stride, int64_t n, float* rep_row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim(), parts = p.num_partitions(), pd = dim;
  const uint32_t* rep_codes = s.codes.data() + r * n;
  const int32_t* token_parts = s.parts.data() + r * n;
  int32_t* counts = s.counts.data();
  float* sums = s.sums.data();
  std::fill(counts, counts + parts, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t part = token_parts[t];
    float* sum = sums + part * dim;
    if (counts[part]++ == 0)
      std::memcpy(sum, x + t * stride, sizeof(float) * dim);
    else
      kernel.add_row(sum, x + t * stride, dim);
  }
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    const float* source;  // the block's value before any division
    if (count > 0) {
      source = sums + part * dim;
    } else if (p.fill_empty && p.simhash_bits > 0 && n > 0) {
      source = x + nearest_token(rep_codes, n, part) * stride;
    } else {
      std::memset(block, 0, sizeof(float) * pd);
      continue;
    }
    if (count > 1 && p.average)
      kernel.divide_row(block, source, pd, static_cast<float>(count));
    else
      std::memcpy(block, source, sizeof(float) * pd);
  }
}

// Identity projection, one repetition, when partition sums would not fit in scratch (many partitions): each token
// is added to its zeroed output block, then non-empty blocks are divided and empty ones filled with the nearest token.
void encode_rep_direct(Ctx& c, Scratch& s, int64_t r, const float* x, int64_t stride, int64_t n, float* rep_row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t parts = p.num_partitions(), pd = p.proj_dim;
  const uint32_t* rep_codes = s.codes.data() + r * n;
  const int32_t* token_parts = s.parts.data() + r * n;
  int32_t* counts = s.counts.data();
  std::fill(counts, counts + parts, 0);
  std::fill(rep_row, rep_row + parts * pd, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    kernel.add_row(rep_row + token_parts[t] * pd, x + t * stride, pd);
    ++counts[token_parts[t]];
  }
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    if (count > 1 && p.average)
      kernel.divide_row(block, block, pd, static_cast<float>(count));
    else if (count == 0 && p.fill_empty && p.simhash_bits > 0 && n > 0)
      std::memcpy(block, x + nearest_token(rep_codes, n, part) * stride, sizeof(float) * pd);
  }
}

// The AMS projection of token x by repetition r into y [proj_dim] (used to fill empty partitions).
void project_token(const Ctx& c, int64_t r, const float* x, float* y) {
  const FdeParams& p = *c.p;
  const int64_t dim = p.sets.dim(), pd = p.proj_dim;
  const int32_t* order = c.proj_order.data() + r * dim;
  const int32_t* starts = c.proj_starts.data() + r * (pd + 1);
  for (int64_t j = 0; j < pd; ++j) {
    float v = 0.0f;
    for (int32_t k = starts[j]; k < starts[j + 1]; ++k) v += p.proj_weight[r * dim + order[k]] * x[order[k]];
    y[j] = v;
  }
}

// Asks for the input rows that the next block reads (into L2: the current block's working set fills L1), so that
// reading the input from memory overlaps with computing on the current block.
inline void prefetch_rows(const char* first, int64_t stride_bytes, int64_t row_bytes, int64_t rows) {
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(first + t * stride_bytes + b, 0, 2);
}

// Encodes one set into its output row (sets up to `last_set` follow on this worker); `s` was sized by fde_encode for
// the longest set (nothing here allocates).
//
// Tokens go in blocks of up to 64. A block is transposed once (the last one padded only to a multiple of the vector
// width); its hyperplane dots for all repetitions at once give every token's sign pattern and partition. Projected
// encoders then project the block per repetition with the sparse AMS structure (project_tokens) and add the projected
// tokens to their partitions in the zeroed output row (accumulate_projected). Identity encoders sum raw token rows per
// partition once every partition is known. Last, blocks are divided and empty ones filled.
void encode_set(Ctx& c, int64_t set, int64_t last_set, Scratch& s) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim(), n = p.sets.length(set), first = p.sets.begin(set);
  const int64_t reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
  const int64_t width = kernel.width;
  const bool projected = p.proj_index != nullptr && p.encode;
  // The set's tokens as float32 rows: in place for float32 input, converted once otherwise.
  const void* rows = p.sets.set_data(set);
  const int64_t row_stride = p.sets.set_stride(set), element_bytes = dtype_size(p.sets.dtype());
  const float* x;
  int64_t stride;
  if (p.sets.dtype() == DType::Float32) {
    x = static_cast<const float*>(rows);
    stride = row_stride;
  } else {
    kernel.convert_rows(rows, row_stride, p.sets.dtype(), n, dim, s.tokens.data());
    x = s.tokens.data();
    stride = dim;
  }

  uint32_t* codes = s.codes.data();
  int32_t* token_parts = s.parts.data();
  if (bits == 0) {
    std::fill(codes, codes + n * reps, 0u);
    std::fill(token_parts, token_parts + n * reps, 0);
  }
  // Projected encoders accumulate in scratch (cache-resident), then write each output block once.
  float* out_row = p.final_dim > 0 ? s.row.data() : p.out + set * p.output_dim();
  float* row = projected ? s.sums.data() : out_row;
  int32_t* counts = s.counts.data();
  if (projected) {
    std::fill(counts, counts + reps * parts, 0);
    std::fill(row, row + p.fde_dim(), 0.0f);
  }
  if (bits > 0 || projected) {
    float* xt = s.xt.data();
    for (int64_t t0 = 0; t0 < n; t0 += kBlockTokens) {
      const int64_t nb = std::min(kBlockTokens, n - t0);
      const int64_t npad = (nb + width - 1) / width * width;
      kernel.transpose(x + t0 * stride, nb, dim, stride, xt, npad);
      if (nb < npad)  // padding lanes are computed too (and ignored): keep them finite
        for (int64_t k = 0; k < dim; ++k) std::fill(xt + k * npad + nb, xt + (k + 1) * npad, 0.0f);
      if (bits > 0) {
        kernel.simhash_dots(xt, npad, dim, p.simhash, reps * bits, s.dots.data());
        kernel.sign_codes(s.dots.data(), npad, nb, reps, static_cast<int>(bits), n, codes + t0, token_parts + t0);
      }
      if (!projected) continue;
      // The next block's input rows are prefetched a slice per repetition (a burst would stall on outstanding misses).
      const char* next = static_cast<const char*>(rows) + (t0 + nb) * row_stride * element_bytes;
      int64_t next_rows = std::min(kBlockTokens, n - t0 - nb), next_stride = row_stride * element_bytes;
      if (next_rows == 0 && set + 1 < last_set) {
        next = static_cast<const char*>(p.sets.set_data(set + 1));
        next_rows = std::min(kBlockTokens, p.sets.length(set + 1));
        next_stride = p.sets.set_stride(set + 1) * element_bytes;
      }
      for (int64_t r = 0; r < reps; ++r) {
        const int64_t slice_begin = next_rows * r / reps, slice_end = next_rows * (r + 1) / reps;
        prefetch_rows(next + slice_begin * next_stride, next_stride, dim * element_bytes, slice_end - slice_begin);
        kernel.project_tokens(xt, npad, c.proj_order.data() + r * dim, c.proj_starts.data() + r * (pd + 1),
                              c.proj_weight_ordered.data() + r * dim, pd, s.yt.data());
        kernel.accumulate_projected(s.yt.data(), npad, nb, pd, token_parts + r * n + t0, row + r * parts * pd,
                                    counts + r * parts);
      }
    }
  }
  if (p.partitions) {
    int32_t* out = p.partitions + (first - p.sets.offsets[0]) * reps;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < reps; ++r) out[t * reps + r] = token_parts[r * n + t];
  }
  if (!p.encode) return;

  if (projected) {
    for (int64_t r = 0; r < reps; ++r) {
      for (int64_t part = 0; part < parts; ++part) {
        const float* sum = row + (r * parts + part) * pd;
        float* block = out_row + (r * parts + part) * pd;
        const int32_t count = counts[r * parts + part];
        if (count > 1 && p.average)
          kernel.divide_row(block, sum, pd, static_cast<float>(count));
        else if (count == 0 && p.fill_empty && bits > 0 && n > 0)
          project_token(c, r, x + nearest_token(codes + r * n, n, part) * stride, block);
        else
          std::memcpy(block, sum, sizeof(float) * pd);
      }
    }
  } else {
    for (int64_t r = 0; r < reps; ++r) {
      if (c.via_sums)
        encode_rep_via_sums(c, s, r, x, stride, n, row + r * parts * pd);
      else
        encode_rep_direct(c, s, r, x, stride, n, row + r * parts * pd);
    }
  }

  if (p.final_dim > 0) {
    float* out = p.out + set * p.final_dim;
    std::fill(out, out + p.final_dim, 0.0f);
    const int64_t fde_dim = p.fde_dim();
    for (int64_t i = 0; i < fde_dim; ++i) out[p.final_index[i]] += p.final_sign[i] * out_row[i];
  }
}

}  // namespace

void fde_encode(const FdeParams& p, const Launch&) {
  validate(p);
  if (p.sets.count == 0) return;

  Ctx c;
  c.p = &p;
  c.kernel = &TOKENSET_SIMD_KERNEL(fde_kernel);
  const int64_t dim = p.sets.dim(), columns = p.reps * p.simhash_bits;
  c.via_sums = p.proj_index == nullptr && p.num_partitions() * dim <= kMaxPartitionSums;
  if (p.proj_index != nullptr) {  // group input coordinates by output column (counting sort, ascending within)
    const int64_t pd = p.proj_dim;
    c.proj_order.resize(static_cast<size_t>(p.reps * dim));
    c.proj_starts.assign(static_cast<size_t>(p.reps * (pd + 1)), 0);
    for (int64_t r = 0; r < p.reps; ++r) {
      int32_t* starts = c.proj_starts.data() + r * (pd + 1);
      const int32_t* index = p.proj_index + r * dim;
      for (int64_t i = 0; i < dim; ++i) ++starts[index[i] + 1];
      for (int64_t j = 0; j < pd; ++j) starts[j + 1] += starts[j];
      std::vector<int32_t> next(starts, starts + pd);
      for (int64_t i = 0; i < dim; ++i) c.proj_order[static_cast<size_t>(r * dim + next[index[i]]++)] = static_cast<int32_t>(i);
    }
    c.proj_weight_ordered.resize(c.proj_order.size());
    for (int64_t r = 0; r < p.reps; ++r)
      for (int64_t k = 0; k < dim; ++k)
        c.proj_weight_ordered[static_cast<size_t>(r * dim + k)] = p.proj_weight[r * dim + c.proj_order[static_cast<size_t>(r * dim + k)]];
  }

  // All scratch is allocated here: workers must not throw (std::bad_alloc included).
  const int threads = num_threads();
  const int64_t longest = p.sets.max_length;
  c.scratch.resize(static_cast<size_t>(threads));
  for (Scratch& s : c.scratch) {
    if (p.sets.dtype() != DType::Float32) s.tokens.resize(static_cast<size_t>(longest * dim));
    s.xt.resize(static_cast<size_t>(dim * kBlockTokens));
    s.dots.resize(static_cast<size_t>(columns * kBlockTokens));
    s.codes.resize(static_cast<size_t>(longest * p.reps));
    s.parts.resize(static_cast<size_t>(longest * p.reps));
    if (!p.encode) continue;
    s.counts.resize(static_cast<size_t>(p.num_partitions()));
    if (c.via_sums) s.sums.resize(static_cast<size_t>(p.num_partitions() * dim));
    if (p.proj_index != nullptr) {
      s.sums.resize(static_cast<size_t>(p.fde_dim()));
      s.counts.resize(static_cast<size_t>(p.reps * p.num_partitions()));
      s.yt.resize(static_cast<size_t>(p.proj_dim * kBlockTokens));
    }
    if (p.final_dim > 0) s.row.resize(static_cast<size_t>(p.fde_dim()));
  }
  parallel_for(p.sets.count, grain_for(p.sets.count, threads, 16), [&](int64_t begin, int64_t end, int worker) {
    for (int64_t set = begin; set < end; ++set) encode_set(c, set, end, c.scratch[static_cast<size_t>(worker)]);
  });
}

}  // namespace cpu
}  // namespace tokenset
