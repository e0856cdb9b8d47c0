// The CPU module: the CPU runtime's knobs, and every op's bindings (csrc/bindings/<op>.cpp) for CPU arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "tokenset/cpu_runtime.h"
#include "views.h"

namespace py = pybind11;
using namespace tokenset;

namespace {

cpu::SimdLevel simd_level_from_name(const std::string& name) {
  cpu::SimdLevel level;
  if (name.find('\0') == std::string::npos && cpu::simd_level_from_name(name.c_str(), &level)) return level;
  throw ValueError("unknown SIMD level '" + name + "'; use one of 'scalar', 'avx2', 'avxvnni', 'avx512', "
                   "'avx512vnni', 'avx512bf16', 'amx'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "tokenset CPU kernels (internal: use the tokenset package)";
  bindings::register_exceptions();
  bindings::bind_maxsim(m);
  bindings::bind_residual_codec(m);
  bindings::bind_fde(m);
  bindings::bind_inner_product(m);
  bindings::bind_kcenter(m);
  bindings::bind_coverage(m);
  bindings::bind_segment_sum(m);
  bindings::bind_nearest(m);
  bindings::bind_sparse_attention(m);
  bindings::bind_attention_scores(m);

  m.def("simd_level", [] { return std::string(cpu::simd_level_name(cpu::active_simd_level())); });
  m.def("best_simd_level", [] { return std::string(cpu::simd_level_name(cpu::best_simd_level())); });
  // Both may wait for a running job (the pool's lock): without the GIL, so other Python threads go on meanwhile.
  m.def("set_simd_level", [](const std::string& name) {
    const cpu::SimdLevel level = simd_level_from_name(name);
    py::gil_scoped_release release;
    cpu::set_simd_level(level);
  });
  // "vex" / "evex": which build of the avxvnni level's kernels this CPU runs; "" when it runs neither (or the
  // build lacks the level).
  m.def("avx_vnni_encoding", [] {
    if (!cpu::simd_level_available(cpu::SimdLevel::AVXVNNI)) return std::string();
    return std::string(cpu::cpu_has_avx_vnni() ? "vex" : "evex");
  });
  m.def("compiled_simd_levels", [] { return std::string(cpu::compiled_simd_levels()); });
  m.def("num_threads", &cpu::num_threads);
  m.def("measure_fma_peak", &cpu::measure_fma_peak, py::arg("threads"), py::arg("seconds") = 0.25,
        py::call_guard<py::gil_scoped_release>(),
        "float32 FMA GFLOP/s of `threads` workers at the active SIMD level (independent FMA chains), for benchmarks");
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("build_info", [] {
    py::dict info;
    info["version"] = TOKENSET_VERSION;
    info["compiler"] = TOKENSET_COMPILER;
    info["build_type"] = TOKENSET_BUILD_TYPE;
    return info;
  });
}
