// The per-level MaxSim kernel table, shared by the kernel files (maxsim.cpp per SIMD level, maxsim_amx.cpp) and the
// dispatch in the scalar build of maxsim.cpp. Plain function pointers: the files are compiled with different -m flags.
#pragma once

#include <cstdint>

#include "tokenset/maxsim.h"

namespace tokenset {
namespace cpu {

struct MaxsimKernel {
  int query_block;  // query tokens per packed panel (QB)
  int doc_block;    // scratch per worker, in rows of dim floats
  // packed: ceil(len / QB) panels of dim * QB floats.
  void (*pack_query)(const SetBatch& queries, int64_t set, float* packed);
  // scratch: doc_block * dim floats, 64-byte aligned when dim is a multiple of 16. argmax (optional): query_length
  // entries.
  void (*score)(const float* packed, int64_t query_length, const SetBatch& docs, int64_t doc, float* scratch,
                float* score, int32_t* argmax);
};

namespace scalar {
extern const MaxsimKernel maxsim_kernel;
}
#if defined(TOKENSET_X86_LEVELS)
namespace avx2 {
extern const MaxsimKernel maxsim_kernel;
}
namespace avx512 {
extern const MaxsimKernel maxsim_kernel;
}
#endif
#if defined(TOKENSET_HAS_AMX)
namespace amx {
// AMX-BF16 tiles: bfloat16 queries and documents, dim a multiple of 32, no argmax (see amx_applies).
extern const MaxsimKernel maxsim_kernel;
}
#endif

}  // namespace cpu
}  // namespace tokenset
