// CPU runtime shared by all CPU ops: SIMD level selection and a small persistent thread pool.
#pragma once

#include <cstdint>

namespace tokenset {
namespace cpu {

// AVXVNNI = AVX2 plus 256-bit VNNI int8 dot products (vpdpbusd on ymm: AVX-VNNI, or AVX-512 VNNI's EVEX form on
// CPUs without AVX-VNNI), which only int8 (and residual-code) MaxSim uses; every other kernel runs its AVX2 code there.
// AVX512VNNI = AVX-512 plus VNNI int8 dot products, which only int8 (and residual-code) MaxSim uses; AVX512BF16 = that
// plus AVX-512 BF16 dot products (vdpbf16ps), which only bfloat16 MaxSim uses; AMX = that plus AMX-BF16 tiles, which
// only bfloat16 MaxSim uses. Every other kernel runs its AVX-512 code at all three.
// Levels are ordered by what they use; a CPU may support a level without one below it (AVX-512 without any VNNI), so
// capping the level picks the best supported level at or below the cap.
enum class SimdLevel : int { Scalar = 0, AVX2 = 1, AVXVNNI = 2, AVX512 = 3, AVX512VNNI = 4, AVX512BF16 = 5, AMX = 6 };

const char* simd_level_name(SimdLevel level);
// The level named `name` ("avx2", ...) into *level; false (and *level untouched) for an unknown name.
bool simd_level_from_name(const char* name, SimdLevel* level);
// Comma-separated levels compiled into this build.
const char* compiled_simd_levels();
// Whether the level is compiled into this build and this CPU supports it.
bool simd_level_available(SimdLevel level);
// Best level both compiled and supported by this CPU.
SimdLevel best_simd_level();
// Level used by kernels now: best_simd_level(), or a lower one chosen with set_simd_level / TOKENSET_SIMD.
SimdLevel active_simd_level();
// Throws ValueError if the level is not compiled or the CPU lacks it.
void set_simd_level(SimdLevel level);
// At the AVXVNNI level: true when the CPU has AVX-VNNI (the VEX encoding), false when the level runs on AVX-512 VNNI's
// EVEX encoding of the same instructions.
bool cpu_has_avx_vnni();

int num_threads();
void set_num_threads(int threads);
// Measured float32 FMA peak in GFLOP/s at the active SIMD level (2 flops per lane per FMA) with `threads` workers
// (at most the thread count), each running independent FMA chains for about `seconds` (csrc/cpu/peak.cpp).
double measure_fma_peak(int threads, double seconds);

// Runs fn(ctx, begin, end, worker) over [0, n) in chunks of `grain` items, on up to `max_workers` workers: worker ids
// are < max(max_workers, 1) and < the thread count, even while set_num_threads runs on another thread. The calling
// thread takes part (worker 0). Safe to call from several threads at once: a call
// that finds the pool busy runs on its own thread. A plain function pointer keeps this ABI free of templates, which
// matters because the kernels calling it are compiled with different instruction sets. Ops use the typed
// tokenset::cpu::parallel_for / parallel_for_ranges of csrc/cpu/parallel.h.
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end, int worker);
void parallel_for_raw(int64_t n, int64_t grain, int max_workers, RangeFn fn, void* ctx);

// ---- the one SIMD-level selector ------------------------------------------------------------------------------------
// An op's per-level kernels file (compiled once per level, see CMakeLists.txt) defines `const Table name` in each
// level namespace; its driver declares them with TOKENSET_DECLARE_SIMD_KERNELS(Table, name) and picks the active
// level's with TOKENSET_SIMD_KERNEL(name). Levels above the best one compiled fall back to it.
template <typename Table>
const Table& select_simd_kernel(const Table* scalar, const Table* avx2, const Table* avx512) {
  switch (active_simd_level()) {
    case SimdLevel::AMX:
    case SimdLevel::AVX512BF16:
    case SimdLevel::AVX512VNNI:
    case SimdLevel::AVX512:
      if (avx512) return *avx512;
      [[fallthrough]];
    case SimdLevel::AVXVNNI:
    case SimdLevel::AVX2:
      if (avx2) return *avx2;
      [[fallthrough]];
    case SimdLevel::Scalar: break;
  }
  return *scalar;
}

}  // namespace cpu
}  // namespace tokenset

#if defined(TOKENSET_X86_LEVELS)
#define TOKENSET_DECLARE_SIMD_KERNELS(Table, name) \
  namespace scalar {                               \
  extern const Table name;                         \
  }                                                \
  namespace avx2 {                                 \
  extern const Table name;                         \
  }                                                \
  namespace avx512 {                               \
  extern const Table name;                         \
  }
#define TOKENSET_SIMD_KERNEL(name) ::tokenset::cpu::select_simd_kernel(&scalar::name, &avx2::name, &avx512::name)
#else
#define TOKENSET_DECLARE_SIMD_KERNELS(Table, name) \
  namespace scalar {                               \
  extern const Table name;                         \
  }
#define TOKENSET_SIMD_KERNEL(name) \
  ::tokenset::cpu::select_simd_kernel(&scalar::name, static_cast<const decltype(scalar::name)*>(nullptr), \
                                      static_cast<const decltype(scalar::name)*>(nullptr))
#endif
