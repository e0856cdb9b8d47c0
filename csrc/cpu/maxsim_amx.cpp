// MaxSim on AMX-BF16 tiles (Sapphire Rapids and later): bfloat16 queries and documents, dim a multiple of 32.
//
// Tile roles: documents are the A operand (16 tokens x 32 dims per tile, read straight from their rows with the row
// stride, no packing), the query is the B operand, packed once per 32-token panel in AMX's pair layout
// B[k/2][token][2]. Each step scores 32 document tokens against 32 query tokens in four 16x16 float32 accumulator
// tiles (2 x 2 blocking: 4 tile loads feed 4 TDPBF16PS), stores them, and folds each document row into per-query-token
// running maxima with vector max, as the AVX-512 kernel does. Products of bfloat16 numbers are exact in float32 and
// the sums round to nearest in float32, so results stay within the float32 error bound of the vector kernels;
// TDPBF16PS flushes denormal inputs and results to zero (|x| < 1.2e-38).
//
// Compiled once, with -mavx512* -mamx-tile -mamx-bf16; used only when the CPU and OS grant AMX (cpu_supports).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>

#include "maxsim_kernels.h"
#include "tokenset/common.h"

namespace tokenset {
namespace cpu {
namespace amx {
namespace {

constexpr int kPanel = 32;            // query tokens per packed panel: two B tiles
constexpr int kStep = 32;             // document tokens per step: two A tiles
constexpr int kK = 32;                // bfloat16 elements of k per tile row (64 bytes)
constexpr int kTileBytes = 16 * 64;   // one 16-row x 64-byte tile
constexpr int kScoreFloats = 4 * 256; // four stored 16x16 accumulator tiles

// Palette 1; all eight tiles 16 rows x 64 bytes: tmm0..3 accumulators, tmm4..5 documents, tmm6..7 query.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Panel c of a query: for each k block kb (dim / 32) two B tiles (tokens 0..15, 16..31 of the panel), each
// B[p][n][e] = query[token n][k = kb * 32 + 2p + e]; tokens past the end are zero.
void pack_query(const MaxsimParams& params, int64_t set, float* packed_floats) {
  const SetBatch& queries = params.queries;
  const int64_t length = queries.length(set), dim = queries.dim();
  const int64_t panels = (length + kPanel - 1) / kPanel;
  uint16_t* packed = reinterpret_cast<uint16_t*>(packed_floats);
  // The dispatch sizes a panel as dim * kPanel floats (as for float32 panels); the bfloat16 panel fills half of it.
  const int64_t panel_elements = 2 * dim * kPanel;
  std::memset(packed, 0, sizeof(float) * panels * dim * kPanel);
  const uint16_t* values = static_cast<const uint16_t*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  for (int64_t t = 0; t < length; ++t) {
    const uint16_t* row = values + t * stride;
    uint16_t* panel = packed + (t / kPanel) * panel_elements;
    const int64_t half = (t % kPanel) / 16, n = t % 16;
    for (int64_t k = 0; k < dim; ++k) {
      const int64_t kb = k / kK, pair = (k % kK) / 2, e = k % 2;
      panel[(kb * 2 + half) * (kTileBytes / 2) + pair * 32 + n * 2 + e] = row[k];
    }
  }
}

// Folds `rows` stored accumulator rows (16 query lanes each, two 16-lane halves) into the running maxima.
inline void fold_rows(const float* tile_lo, const float* tile_hi, int rows, __m512* running_max, __mmask16* nan_seen) {
  for (int r = 0; r < rows; ++r) {
    const __m512 lo = _mm512_load_ps(tile_lo + r * 16), hi = _mm512_load_ps(tile_hi + r * 16);
    nan_seen[0] |= _mm512_cmp_ps_mask(lo, lo, _CMP_UNORD_Q);
    nan_seen[1] |= _mm512_cmp_ps_mask(hi, hi, _CMP_UNORD_Q);
    running_max[0] = _mm512_max_ps(lo, running_max[0]);
    running_max[1] = _mm512_max_ps(hi, running_max[1]);
  }
}

void score(const float* packed, int64_t query_length, const MaxsimParams& params, int64_t doc, float* scratch, float* out,
           int32_t* /*argmax: never asked of this kernel (amx_applies)*/) {
  const SetBatch& docs = params.documents;
  const int64_t length = docs.length(doc), dim = docs.dim(), blocks = dim / kK;
  if (length == 0) {
    *out = -std::numeric_limits<float>::infinity();
    return;
  }
  static const TileConfig config;
  _tile_loadconfig(&config);
  // scratch: kScoreFloats stored accumulators, then kStep zero-padded rows for the last, partial step.
  float* scores = scratch;
  uint16_t* tail = reinterpret_cast<uint16_t*>(scratch + kScoreFloats);
  const uint16_t* first = static_cast<const uint16_t*>(docs.set_data(doc));
  const int64_t row_stride = docs.set_stride(doc), stride_bytes = row_stride * 2;
  const int64_t panels = (query_length + kPanel - 1) / kPanel;
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const char* query = reinterpret_cast<const char*>(packed + c * dim * kPanel);
    __m512 running_max[2] = {_mm512_set1_ps(-std::numeric_limits<float>::infinity()),
                             _mm512_set1_ps(-std::numeric_limits<float>::infinity())};
    __mmask16 nan_seen[2] = {0, 0};
    for (int64_t j0 = 0; j0 < length; j0 += kStep) {
      const int rows = static_cast<int>(length - j0 < kStep ? length - j0 : kStep);
      const char* a;
      int64_t a_stride;
      {
        // The next step's rows, past the end of this document too (the next one usually follows in memory; a
        // prefetch never faults). Tile loads are not followed by the hardware prefetchers as well as vector loads:
        // without this a 10k-document scan ran 30% slower; prefetching further ahead or into L2 only measured slower.
        const char* ahead = reinterpret_cast<const char*>(first + (j0 + kStep) * row_stride);
        for (int64_t r = 0; r < kStep; ++r)
          for (int64_t kb = 0; kb < blocks; ++kb) _mm_prefetch(ahead + r * stride_bytes + kb * 64, _MM_HINT_T0);
      }
      if (rows == kStep) {
        a = reinterpret_cast<const char*>(first + j0 * row_stride);
        a_stride = stride_bytes;
      } else {  // last step: copy the rows left and zero the rest, so tiles never read past the document
        for (int r = 0; r < rows; ++r)
          std::memcpy(tail + r * dim, first + (j0 + r) * row_stride, sizeof(uint16_t) * dim);
        std::memset(tail + rows * dim, 0, sizeof(uint16_t) * (kStep - rows) * dim);
        a = reinterpret_cast<const char*>(tail);
        a_stride = dim * 2;
      }
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t kb = 0; kb < blocks; ++kb) {
        _tile_loadd(4, a + kb * 64, a_stride);                   // document tokens 0..15
        _tile_loadd(5, a + 16 * a_stride + kb * 64, a_stride);   // document tokens 16..31
        _tile_loadd(6, query + (kb * 2) * kTileBytes, 64);       // query tokens 0..15
        _tile_loadd(7, query + (kb * 2 + 1) * kTileBytes, 64);   // query tokens 16..31
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, scores, 64);
      _tile_stored(1, scores + 256, 64);
      _tile_stored(2, scores + 512, 64);
      _tile_stored(3, scores + 768, 64);
      fold_rows(scores, scores + 256, rows < 16 ? rows : 16, running_max, nan_seen);
      if (rows > 16) fold_rows(scores + 512, scores + 768, rows - 16, running_max, nan_seen);
    }
    alignas(64) float maxima[kPanel];
    _mm512_store_ps(maxima, running_max[0]);
    _mm512_store_ps(maxima + 16, running_max[1]);
    const uint32_t nans = static_cast<uint32_t>(nan_seen[0]) | (static_cast<uint32_t>(nan_seen[1]) << 16);
    const int64_t lanes = query_length - c * kPanel < kPanel ? query_length - c * kPanel : kPanel;
    for (int64_t lane = 0; lane < lanes; ++lane)
      total += ((nans >> lane) & 1) ? std::numeric_limits<float>::quiet_NaN() : maxima[lane];
  }
  _tile_release();  // the OS need not save tile state while other code runs
  *out = total;
}

}  // namespace

// doc_block 48: scratch of 48 * dim floats holds the 1,024 stored accumulator floats and 32 bfloat16 rows (16 * dim
// floats) for every dim >= 32.
extern const MaxsimKernel maxsim_kernel = {kPanel, 48, &pack_query, &score};

}  // namespace amx
}  // namespace cpu
}  // namespace tokenset
