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

// A set is read in chunks of at most this many tokens: per-worker scratch (float16 / bfloat16 rows converted to
// float32, sign patterns and partitions) is sized by the chunk, never by the longest set (a 1M-token document needs
// no more than a 100-token one).
constexpr int64_t kChunkTokens = 4096;

using AlignedFloats = AlignedBuffer<float>;

// Per-worker scratch, sized once by fde_encode (never zero-filled there: every use writes before it reads).
struct Scratch {
  AlignedFloats tokens;              // a chunk of the set as float32 (float16 / bfloat16 input only) [chunk, dim]
  AlignedFloats xt;                  // a block of tokens, transposed [dim, kBlockTokens]
  AlignedFloats dots;                // its hyperplane dots [reps * bits, kBlockTokens]
  AlignedFloats yt;                  // projected encoders: its projection by one repetition [proj_dim, kBlockTokens]
  AlignedBuffer<uint32_t> codes;     // sign pattern of every token of the chunk in every repetition [reps, chunk]
  AlignedBuffer<int32_t> parts;      // ... and its partition [reps, chunk]
  AlignedBuffer<int32_t> counts;     // tokens per partition [reps, 2^bits] ([2^bits] on the partition-sums path)
  AlignedFloats sums;                // partition sums: raw [2^bits, dim] of one repetition (partition-sums path), or
                                     // projected [fde_dim] (projected encoders)
  AlignedFloats row;                 // the FDE before the Count-Sketch [fde_dim]
  AlignedBuffer<uint8_t> near_dist;  // NearestTokens: Hamming distance of every pattern to the nearest token [2^bits]
  AlignedBuffer<int32_t> near_best;  // ... that token [2^bits]
  AlignedBuffer<uint32_t> near_queue;  // ... the search's queue [2^bits]
  AlignedBuffer<int64_t> filled_at;  // projected fill: where token t's projection was written first [chunk], or -1
  AlignedFloats projected_tokens;    // projected fill: every token of the chunk projected [reps, chunk, proj_dim]
  AlignedBuffer<int64_t> fill;       // sets longer than a chunk: empty partitions to fill [reps * 2^bits] ...
  AlignedBuffer<int64_t> fill_best;  // ... (distance << 40 | token) of the nearest token found so far
};

struct Ctx {
  const FdeParams* p;
  const FdeKernel* kernel;
  bool via_sums = false;  // identity encoders: encode_rep_via_sums for sets of one chunk
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

// Projected tokens kept for filling, per worker (16 MiB).
constexpr int64_t kMaxProjectedTokens = int64_t(1) << 22;

// Patterns up to this many bits get the breadth-first search below (9 bytes of scratch per pattern).
constexpr int kMaxSearchBits = 16;

// The nearest token of every empty partition of one repetition. Scanning the tokens per empty partition costs
// empty * n popcounts, which made filling 1.5-3x the whole encode at 5-6 bits; when 2^bits * bits is less, one
// multi-source breadth-first search over the 2^bits patterns finds every pattern's nearest token at once: the tokens'
// patterns are the sources (lowest index first), and a pattern at distance d takes the lowest token of its
// neighbours at distance d - 1, which is exactly the lowest-index nearest token (every nearest token of a pattern is
// reached through such a neighbour). Same answers as nearest_token.
class NearestTokens {
 public:
  NearestTokens(Scratch& s, const uint32_t* rep_codes, int64_t n, int bits, int64_t empty)
      : s_(s), rep_codes_(rep_codes), n_(n) {
    const int64_t patterns = int64_t(1) << bits;
    searched_ = bits <= kMaxSearchBits && s.near_best.data() != nullptr && patterns * bits < empty * n;
    if (!searched_) return;
    uint8_t* dist = s.near_dist.data();
    int32_t* best = s.near_best.data();
    uint32_t* queue = s.near_queue.data();
    std::fill(dist, dist + patterns, uint8_t(255));
    int64_t head = 0, tail = 0;
    for (int64_t t = 0; t < n; ++t) {
      const uint32_t code = rep_codes[t];
      if (dist[code] == 255) {
        dist[code] = 0;
        best[code] = static_cast<int32_t>(t);
        queue[tail++] = code;
      }
    }
    while (head < tail) {
      const uint32_t v = queue[head++];
      const uint8_t next = static_cast<uint8_t>(dist[v] + 1);
      for (int b = 0; b < bits; ++b) {
        const uint32_t u = v ^ (1u << b);
        if (dist[u] == 255) {
          dist[u] = next;
          best[u] = best[v];
          queue[tail++] = u;
        } else if (dist[u] == next && best[v] < best[u]) {
          best[u] = best[v];
        }
      }
    }
  }
  int64_t of(int64_t part) const {
    return searched_ ? s_.near_best[gray_code(static_cast<uint32_t>(part))] : nearest_token(rep_codes_, n_, part);
  }

 private:
  Scratch& s_;
  const uint32_t* rep_codes_;
  int64_t n_;
  bool searched_ = false;
};

int64_t count_empty(const int32_t* counts, int64_t parts) {
  int64_t empty = 0;
  for (int64_t part = 0; part < parts; ++part) empty += counts[part] == 0;
  return empty;
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
  const bool fill = p.fill_empty && p.simhash_bits > 0 && n > 0;
  const NearestTokens nearest(s, rep_codes, n, p.simhash_bits, fill ? count_empty(counts, parts) : 0);
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    const float* source;  // the block's value before any division
    if (count > 0) {
      source = sums + part * dim;
    } else if (fill) {
      source = x + nearest.of(part) * stride;
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

// The set's tokens [t0, t0 + m) as float32 rows: in place for float32 input, converted into scratch otherwise.
const float* chunk_rows(const Ctx& c, Scratch& s, int64_t set, int64_t t0, int64_t m, int64_t* stride) {
  const FdeParams& p = *c.p;
  const int64_t row_stride = p.sets.set_stride(set);
  if (p.sets.dtype() == DType::Float32) {
    *stride = row_stride;
    return static_cast<const float*>(p.sets.set_data(set)) + t0 * row_stride;
  }
  const char* rows = static_cast<const char*>(p.sets.set_data(set)) + t0 * row_stride * dtype_size(p.sets.dtype());
  c.kernel->convert_rows(rows, row_stride, p.sets.dtype(), m, p.sets.dim(), s.tokens.data());
  *stride = p.sets.dim();
  return s.tokens.data();
}

// Sign patterns and partitions of the chunk x [m tokens] into s.codes / s.parts ([reps, m]); projected encoders
// also project each block and add it to its partitions (`row`, `counts`), prefetching the input rows of the next
// block while one computes: `src` (`src_stride` bytes apart) are the chunk's own input rows, `next` (`next_rows`,
// `next_stride` bytes apart) the rows after the chunk.
void chunk_codes(const Ctx& c, Scratch& s, const float* x, int64_t stride, int64_t m, bool projected, float* row,
                 int32_t* counts, const char* src, int64_t src_stride, const char* next, int64_t next_rows,
                 int64_t next_stride) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim(), reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
  const int64_t width = kernel.width, element_bytes = dtype_size(p.sets.dtype());
  uint32_t* codes = s.codes.data();
  int32_t* token_parts = s.parts.data();
  if (bits == 0) {
    std::fill(codes, codes + m * reps, 0u);
    std::fill(token_parts, token_parts + m * reps, 0);
  }
  if (bits == 0 && !projected) return;
  float* xt = s.xt.data();
  for (int64_t t0 = 0; t0 < m; t0 += kBlockTokens) {
    const int64_t nb = std::min(kBlockTokens, m - t0);
    const int64_t npad = (nb + width - 1) / width * width;
    kernel.transpose(x + t0 * stride, nb, dim, stride, xt, npad);
    if (nb < npad)  // padding lanes are computed too (and ignored): keep them finite
      for (int64_t k = 0; k < dim; ++k) std::fill(xt + k * npad + nb, xt + (k + 1) * npad, 0.0f);
    if (bits > 0) {
      kernel.simhash_dots(xt, npad, dim, p.simhash, reps * bits, s.dots.data());
      kernel.sign_codes(s.dots.data(), npad, nb, reps, static_cast<int>(bits), m, codes + t0, token_parts + t0);
    }
    if (!projected) continue;
    // The next block's input rows are prefetched a slice per repetition (a burst would stall on outstanding misses).
    // Only a hint: an address past the set is never dereferenced.
    const int64_t ahead = std::min(kBlockTokens, m - t0 - nb);
    const char* pf = ahead > 0 ? src + (t0 + nb) * src_stride : next;
    const int64_t pf_rows = ahead > 0 ? ahead : next_rows, pf_stride = ahead > 0 ? src_stride : next_stride;
    for (int64_t r = 0; r < reps; ++r) {
      const int64_t slice_begin = pf_rows * r / reps, slice_end = pf_rows * (r + 1) / reps;
      prefetch_rows(pf + slice_begin * pf_stride, pf_stride, dim * element_bytes, slice_end - slice_begin);
      kernel.project_tokens(xt, npad, c.proj_order.data() + r * dim, c.proj_starts.data() + r * (pd + 1),
                            c.proj_weight_ordered.data() + r * dim, pd, s.yt.data());
      kernel.accumulate_projected(s.yt.data(), npad, nb, pd, token_parts + r * m + t0, row + r * parts * pd,
                                  counts + r * parts);
      if (s.projected_tokens.data() != nullptr) {  // kept for filling: token-major
        float* keep = s.projected_tokens.data() + (r * m + t0) * pd;
        for (int64_t t = 0; t < nb; ++t)
          for (int64_t j = 0; j < pd; ++j) keep[t * pd + j] = s.yt[static_cast<size_t>(j * npad + t)];
      }
    }
  }
}

// Fills the empty partitions of a set longer than one chunk: a second pass over its chunks recomputes the sign
// patterns and keeps, for every empty partition, the nearest token (least Hamming distance, lowest index on ties),
// then writes that token (projected) into the partition's block. Bounded scratch at the price of a second simhash
// pass, which only long sets with empty partitions pay.
void fill_long_set(const Ctx& c, Scratch& s, int64_t set, int64_t empty, float* out_row) {
  const FdeParams& p = *c.p;
  const int64_t n = p.sets.length(set), parts = p.num_partitions(), pd = p.proj_dim;
  int64_t* fill = s.fill.data();
  int64_t* best = s.fill_best.data();
  constexpr int64_t kTokenBits = 40;  // tokens < 2^40
  for (int64_t e = 0; e < empty; ++e) best[e] = int64_t(33) << kTokenBits;
  for (int64_t t0 = 0; t0 < n; t0 += kChunkTokens) {
    const int64_t m = std::min(kChunkTokens, n - t0);
    int64_t stride;
    const float* x = chunk_rows(c, s, set, t0, m, &stride);
    chunk_codes(c, s, x, stride, m, false, nullptr, nullptr, nullptr, 0, nullptr, 0, 0);
    for (int64_t e = 0; e < empty; ++e) {
      const int64_t r = fill[e] / parts, part = fill[e] % parts;
      const uint32_t target = gray_code(static_cast<uint32_t>(part));
      const uint32_t* rep_codes = s.codes.data() + r * m;
      int64_t b = best[e];
      for (int64_t t = 0; t < m && (b >> kTokenBits) > 1; ++t) {
        const int64_t key = (int64_t(__builtin_popcount(rep_codes[t] ^ target)) << kTokenBits) | (t0 + t);
        if (key < b) b = key;
      }
      best[e] = b;
    }
  }
  for (int64_t e = 0; e < empty; ++e) {
    const int64_t r = fill[e] / parts, part = fill[e] % parts;
    const int64_t token = best[e] & ((int64_t(1) << kTokenBits) - 1);
    int64_t stride;
    const float* x = chunk_rows(c, s, set, token, 1, &stride);
    float* block = out_row + (r * parts + part) * pd;
    if (p.proj_index != nullptr)
      project_token(c, r, x, block);
    else
      std::memcpy(block, x, sizeof(float) * pd);
  }
}

// Encodes one set into its output row (sets up to `last_set` follow on this worker); `s` was sized by fde_encode
// (nothing here allocates).
//
// The set is read in chunks of up to kChunkTokens, each in blocks of up to 64 tokens. A block is transposed once (the
// last one padded only to a multiple of the vector width); its hyperplane dots for all repetitions at once give every
// token's sign pattern and partition. Projected encoders then project the block per repetition with the sparse AMS
// structure (project_tokens) and add the projected tokens to their partitions in scratch (accumulate_projected).
// Identity encoders sum raw token rows per partition: a set of one chunk in cache-sized partition sums, one
// repetition at a time (encode_rep_via_sums, which also divides and fills); a longer set straight into its output
// row. Last, blocks are divided and empty ones filled.
void encode_set(Ctx& c, int64_t set, int64_t last_set, Scratch& s) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t n = p.sets.length(set), first = p.sets.begin(set);
  const int64_t reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
  const bool projected = p.proj_index != nullptr && p.encode;
  const bool one_chunk = n <= kChunkTokens;
  const bool via_sums = p.encode && !projected && c.via_sums && one_chunk && n > 0;
  const int64_t element_bytes = dtype_size(p.sets.dtype());

  float* out_row = p.final_dim > 0 ? s.row.data() : p.out + set * p.output_dim();
  float* row = projected ? s.sums.data() : out_row;  // where partition sums accumulate
  int32_t* counts = s.counts.data();
  if (p.encode && !via_sums) {
    std::fill(counts, counts + reps * parts, 0);
    std::fill(row, row + p.fde_dim(), 0.0f);
  }
  const float* x = nullptr;  // the last chunk's rows (the whole set when one_chunk)
  int64_t stride = 0;
  const int64_t src_stride = p.sets.set_stride(set) * element_bytes;
  for (int64_t t0 = 0; t0 < n; t0 += kChunkTokens) {
    const int64_t m = std::min(kChunkTokens, n - t0);
    x = chunk_rows(c, s, set, t0, m, &stride);
    // What to prefetch after this chunk: the next chunk, or the next set of this worker.
    const char* src = static_cast<const char*>(p.sets.set_data(set)) + t0 * src_stride;
    const char* next = src + m * src_stride;
    int64_t next_rows = std::min(kBlockTokens, n - t0 - m), next_stride = src_stride;
    if (next_rows == 0 && set + 1 < last_set) {
      next = static_cast<const char*>(p.sets.set_data(set + 1));
      next_rows = std::min(kBlockTokens, p.sets.length(set + 1));
      next_stride = p.sets.set_stride(set + 1) * element_bytes;
    }
    chunk_codes(c, s, x, stride, m, projected, row, counts, src, src_stride, next, next_rows, next_stride);
    const int32_t* token_parts = s.parts.data();
    if (p.partitions) {
      int32_t* out = p.partitions + (first + t0 - p.sets.offsets[0]) * reps;
      for (int64_t t = 0; t < m; ++t)
        for (int64_t r = 0; r < reps; ++r) out[t * reps + r] = token_parts[r * m + t];
    }
    if (!p.encode || projected) continue;
    if (via_sums) {
      for (int64_t r = 0; r < reps; ++r) encode_rep_via_sums(c, s, r, x, stride, m, row + r * parts * pd);
      continue;
    }
    for (int64_t r = 0; r < reps; ++r) {  // identity, straight into the output row
      float* rep_row = row + r * parts * pd;
      int32_t* rep_counts = counts + r * parts;
      for (int64_t t = 0; t < m; ++t) {
        const int32_t part = token_parts[r * m + t];
        kernel.add_row(rep_row + part * pd, x + t * stride, pd);
        ++rep_counts[part];
      }
    }
  }
  if (!p.encode) return;

  if (!via_sums) {
    // Divide every block by its count (documents) and fill or keep empty ones. Sets of one chunk still have every
    // token's sign pattern in scratch; longer sets collect their empty partitions for fill_long_set.
    const bool fill = p.fill_empty && bits > 0 && n > 0;
    int64_t empty = 0;
    for (int64_t r = 0; r < reps; ++r) {
      const int64_t rep_empty = fill && one_chunk ? count_empty(counts + r * parts, parts) : 0;
      const NearestTokens nearest(s, s.codes.data() + r * n, n, static_cast<int>(bits), rep_empty);
      // A token fills many partitions at many bits: project it once per repetition, copy it after.
      int64_t* filled_at = s.filled_at.data();
      if (projected && rep_empty > 0) std::fill(filled_at, filled_at + n, int64_t(-1));
      for (int64_t part = 0; part < parts; ++part) {
        const float* sum = row + (r * parts + part) * pd;
        float* block = out_row + (r * parts + part) * pd;
        const int32_t count = counts[r * parts + part];
        if (count > 1 && p.average) {
          kernel.divide_row(block, sum, pd, static_cast<float>(count));
        } else if (count == 0 && fill) {
          if (!one_chunk) {
            s.fill[empty++] = r * parts + part;
          } else if (projected) {
            const int64_t token = nearest.of(part);
            if (s.projected_tokens.data() != nullptr) {
              std::memcpy(block, s.projected_tokens.data() + (r * n + token) * pd, sizeof(float) * pd);
            } else if (filled_at[token] >= 0) {
              std::memcpy(block, out_row + filled_at[token], sizeof(float) * pd);
            } else {
              project_token(c, r, x + token * stride, block);
              filled_at[token] = block - out_row;
            }
          } else {
            std::memcpy(block, x + nearest.of(part) * stride, sizeof(float) * pd);
          }
        } else if (block != sum) {
          std::memcpy(block, sum, sizeof(float) * pd);
        }
      }
    }
    if (empty > 0) fill_long_set(c, s, set, empty, out_row);
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

  // All scratch is allocated here (workers must not throw, std::bad_alloc included), for the workers that will run
  // (no more than the chunks of sets), each sized by a chunk of tokens and one output row, never by the longest set.
  const int threads = num_threads();
  const int64_t grain = grain_for(p.sets.count, threads, 16);
  const int workers = static_cast<int>(std::min<int64_t>(threads, (p.sets.count + grain - 1) / grain));
  const int64_t chunk = std::min(kChunkTokens, std::max<int64_t>(p.sets.max_length, 1));
  const int64_t parts = p.num_partitions();
  const bool long_fill = p.encode && p.fill_empty && p.simhash_bits > 0 && p.sets.max_length > kChunkTokens;
  c.scratch.resize(static_cast<size_t>(workers));
  for (Scratch& s : c.scratch) {
    if (p.sets.dtype() != DType::Float32) s.tokens.resize(static_cast<size_t>(chunk * dim));
    s.xt.resize(static_cast<size_t>(dim * kBlockTokens));
    s.dots.resize(static_cast<size_t>(columns * kBlockTokens));
    s.codes.resize(static_cast<size_t>(chunk * p.reps));
    s.parts.resize(static_cast<size_t>(chunk * p.reps));
    if (!p.encode) continue;
    s.counts.resize(static_cast<size_t>(p.reps * parts));
    if (c.via_sums) s.sums.resize(static_cast<size_t>(parts * dim));
    if (p.proj_index != nullptr) {
      s.sums.resize(static_cast<size_t>(p.fde_dim()));
      s.yt.resize(static_cast<size_t>(p.proj_dim * kBlockTokens));
    }
    if (p.final_dim > 0) s.row.resize(static_cast<size_t>(p.fde_dim()));
    if (p.fill_empty && p.simhash_bits > 0 && p.proj_index != nullptr) {
      s.filled_at.resize(static_cast<size_t>(chunk));
      // Projections are computed per block anyway: keeping them makes a fill one copy instead of a sparse
      // projection (which cost x1.5 the whole encode at 6 bits), when they fit kMaxProjectedTokens floats.
      if (chunk * p.reps * p.proj_dim <= kMaxProjectedTokens)
        s.projected_tokens.resize(static_cast<size_t>(chunk * p.reps * p.proj_dim));
    }
    if (p.fill_empty && p.simhash_bits > 0 && p.simhash_bits <= kMaxSearchBits) {
      s.near_dist.resize(static_cast<size_t>(parts));
      s.near_best.resize(static_cast<size_t>(parts));
      s.near_queue.resize(static_cast<size_t>(parts));
    }
    if (long_fill) {
      s.fill.resize(static_cast<size_t>(p.reps * parts));
      s.fill_best.resize(static_cast<size_t>(p.reps * parts));
    }
  }
  parallel_for(p.sets.count, grain, workers, [&](int64_t begin, int64_t end, int worker) {
    for (int64_t set = begin; set < end; ++set) encode_set(c, set, end, c.scratch[static_cast<size_t>(worker)]);
  });
}

}  // namespace cpu
}  // namespace tokenset
