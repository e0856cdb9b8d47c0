// The per-level MaxSim kernel table: defined by maxsim_kernels.cpp (once per SIMD level) and maxsim_amx.cpp, picked
// by the driver maxsim.cpp. Plain function pointers: the files are compiled with different -m flags.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/maxsim.h"

namespace tokenset {
namespace cpu {

struct MaxsimKernel {
  int query_block;  // query tokens per packed panel (QB)
  int doc_block;    // scratch per worker, in rows of dim floats
  // packed: ceil(len / QB) panels of dim * QB floats.
  void (*pack_query)(const MaxsimParams& params, int64_t set, float* packed);
  // scratch: doc_block * dim floats, 64-byte aligned. argmax (optional): query_length entries.
  void (*score)(const float* packed, int64_t query_length, const MaxsimParams& params, int64_t doc, float* scratch,
                float* score, int32_t* argmax);
  // Floats (4-byte words) of a packed query of `length` tokens; null: ceil(length / QB) panels of dim * QB floats.
  int64_t (*packed_floats)(const MaxsimParams& params, int64_t length) = nullptr;
  // Bytes of packed queries scored together (0: the driver's 64 MiB). Documents are scored by every query of a group
  // in turn, so a kernel whose packed queries are read at random (the residual kernel's centroid tables) keeps the
  // group small enough to stay in cache; documents are then read once per group.
  int64_t pack_budget = 0;
  // Kernels with a per-query table over a codebook (the residual kernel's centroid table): fills the entries of the
  // `count` centroids listed (ascending, distinct) in query `set`'s packed form, after pack_query. The driver lists
  // the centroids the call's documents use and spreads (query, block of centroids) over the threads.
  void (*fill_table)(const MaxsimParams& params, int64_t set, float* packed, const int32_t* centroids,
                     int64_t count) = nullptr;
};

TOKENSET_DECLARE_SIMD_KERNELS(MaxsimKernel, maxsim_kernel)
// int8 queries against int8 documents (maxsim_int8_kernels.cpp): exact int32 dot products; the levels `avxvnni`
// (two builds) and `avx512vnni` have their own builds of that file.
TOKENSET_DECLARE_SIMD_KERNELS(MaxsimKernel, maxsim_int8_kernel)
// float32 queries against residual codes (maxsim_residual_kernels.cpp): the same int8 tile, with the codes expanded
// to int8 bucket weights and the centroid table in the epilogue; built for avxvnni (both builds) and avx512vnni too.
TOKENSET_DECLARE_SIMD_KERNELS(MaxsimKernel, maxsim_residual_kernel)
#if defined(TOKENSET_HAS_AVXVNNI)
// 256-bit VNNI (level avxvnni): the AVX-VNNI (VEX) build and the AVX-512 VNNI (EVEX) build of the same kernels.
namespace avxvnni {
extern const MaxsimKernel maxsim_int8_kernel;
extern const MaxsimKernel maxsim_residual_kernel;
}
namespace avxvnni_evex {
extern const MaxsimKernel maxsim_int8_kernel;
extern const MaxsimKernel maxsim_residual_kernel;
}
#endif
#if defined(TOKENSET_HAS_VNNI)
namespace avx512vnni {
extern const MaxsimKernel maxsim_int8_kernel;
extern const MaxsimKernel maxsim_residual_kernel;
}
#endif
#if defined(TOKENSET_HAS_AVX512BF16)
namespace avx512bf16 {
// AVX-512 BF16 dot products: bfloat16 queries and documents, no argmax (maxsim_bf16_kernels.cpp).
extern const MaxsimKernel maxsim_bf16_kernel;
}
#endif
#if defined(TOKENSET_HAS_AMX)
namespace amx {
// AMX-BF16 tiles: bfloat16 queries and documents, dim a multiple of 32, no argmax (see the driver's amx_applies).
extern const MaxsimKernel maxsim_kernel;
}
#endif

}  // namespace cpu
}  // namespace tokenset
