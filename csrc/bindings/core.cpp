// The CPU module: numpy buffers in, numpy arrays out, the GIL released around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "buffers.h"
#include "tokenset/cpu_runtime.h"
#include "tokenset/fde.h"
#include "tokenset/maxsim.h"

namespace py = pybind11;
using namespace tokenset;
using tokenset::bindings::host_set_batch;
using tokenset::bindings::int64_data;

namespace {

MaxsimParams maxsim_params(const py::array& q_values, int q_dtype, const py::array& q_offsets,
                           const py::array& d_values, int d_dtype, const py::array& d_offsets) {
  MaxsimParams p;
  p.queries = host_set_batch(q_values, q_dtype, q_offsets, "queries");
  p.documents = host_set_batch(d_values, d_dtype, d_offsets, "documents");
  check_same_dim(p);
  return p;
}

py::tuple maxsim_scores(const py::array& q_values, int q_dtype, const py::array& q_offsets, const py::array& d_values,
                        int d_dtype, const py::array& d_offsets, py::object candidates, bool with_argmax) {
  MaxsimParams p = maxsim_params(q_values, q_dtype, q_offsets, d_values, d_dtype, d_offsets);
  py::array cand_array;
  if (!candidates.is_none()) {
    cand_array = py::reinterpret_borrow<py::array>(candidates);
    p.candidates = int64_data(cand_array, "candidates", 2);
    if (cand_array.shape(0) != p.queries.count)
      throw ValueError("candidates has " + std::to_string(cand_array.shape(0)) + " rows but there are " +
                       std::to_string(p.queries.count) + " queries");
    p.num_candidates = cand_array.shape(1);
  }
  const int64_t nq = p.queries.count, columns = p.columns();
  py::array_t<float> scores({nq, columns});
  p.scores = scores.mutable_data();
  py::object argmax = py::none();
  if (with_argmax) {
    py::array_t<int32_t> arg({nq, columns, p.queries.max_length});
    p.argmax = arg.mutable_data();
    argmax = arg;
  }
  {
    py::gil_scoped_release release;
    cpu::maxsim(p);
  }
  return py::make_tuple(scores, argmax);
}

py::tuple maxsim_topk(const py::array& q_values, int q_dtype, const py::array& q_offsets, const py::array& d_values,
                      int d_dtype, const py::array& d_offsets, int64_t k) {
  if (k < 1) throw ValueError("k must be >= 1, got " + std::to_string(k));
  MaxsimParams p = maxsim_params(q_values, q_dtype, q_offsets, d_values, d_dtype, d_offsets);
  const int64_t nq = p.queries.count;
  py::array_t<float> scores({nq, k});
  py::array_t<int64_t> indices({nq, k});
  float* s = scores.mutable_data();
  int64_t* i = indices.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::maxsim_topk(p, k, s, i);
  }
  return py::make_tuple(scores, indices);
}

py::tuple fde_encode(const py::array& values, int dtype, const py::array& offsets, const py::dict& state, bool documents,
                     bool fill_empty, bool with_partitions, bool encode, py::object out_array) {
  FdeParams p;
  p.sets = host_set_batch(values, dtype, offsets, documents ? "documents" : "queries");
  p.average = documents;
  p.fill_empty = documents && fill_empty;
  bindings::fde_state_from_dict(state, p);
  p.encode = encode;
  py::object out = py::none();
  if (encode && !out_array.is_none()) {
    py::array given = py::reinterpret_borrow<py::array>(out_array);
    if (!given.writeable()) throw ValueError("out is read-only");
    p.out = static_cast<float*>(const_cast<void*>(
        bindings::checked_data(given, "out", 'f', 4, {p.sets.count, p.output_dim()})));
    out = given;
  } else if (encode) {
    py::array_t<float> fde({p.sets.count, p.output_dim()});
    p.out = fde.mutable_data();
    out = fde;
  }
  py::object partitions = py::none();
  if (with_partitions || !encode) {
    const int64_t tokens = p.sets.offsets[p.sets.count] - p.sets.offsets[0];
    py::array_t<int32_t> parts({tokens, p.reps});
    p.partitions = parts.mutable_data();
    partitions = parts;
  }
  {
    py::gil_scoped_release release;
    cpu::fde_encode(p);
  }
  return py::make_tuple(out, partitions);
}

cpu::SimdLevel simd_level_from_name(const std::string& name) {
  for (cpu::SimdLevel level :
       {cpu::SimdLevel::Scalar, cpu::SimdLevel::AVX2, cpu::SimdLevel::AVX512, cpu::SimdLevel::AMX})
    if (name == cpu::simd_level_name(level)) return level;
  throw ValueError("unknown SIMD level '" + name + "'; use one of 'scalar', 'avx2', 'avx512', 'amx'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "tokenset CPU kernels (internal: use the tokenset package)";
  tokenset::bindings::register_exceptions(m);

  m.def("maxsim", &maxsim_scores, py::arg("q_values"), py::arg("q_dtype"), py::arg("q_offsets"), py::arg("d_values"),
        py::arg("d_dtype"), py::arg("d_offsets"), py::arg("candidates") = py::none(), py::arg("with_argmax") = false,
        "MaxSim scores of all (query, document) pairs, or of given candidates. Returns (scores, argmax or None).");
  m.def("maxsim_topk", &maxsim_topk, py::arg("q_values"), py::arg("q_dtype"), py::arg("q_offsets"),
        py::arg("d_values"), py::arg("d_dtype"), py::arg("d_offsets"), py::arg("k"),
        "Fused MaxSim top-k over all documents. Returns (scores [nq, k], indices [nq, k]).");

  m.def("fde_encode", &fde_encode, py::arg("values"), py::arg("dtype"), py::arg("offsets"), py::arg("state"),
        py::arg("documents"), py::arg("fill_empty"), py::arg("with_partitions") = false, py::arg("encode") = true,
        py::arg("out") = py::none(),
        "MUVERA FDE of every set: documents average (and may fill empty partitions), queries sum. "
        "Returns (fde [B, F] float32 or None when encode is false, partitions [tokens, reps] int32 or None).");

  m.def("simd_level", [] { return std::string(cpu::simd_level_name(cpu::active_simd_level())); });
  m.def("best_simd_level", [] { return std::string(cpu::simd_level_name(cpu::best_simd_level())); });
  m.def("set_simd_level", [](const std::string& name) { cpu::set_simd_level(simd_level_from_name(name)); });
  m.def("compiled_simd_levels", [] { return std::string(cpu::compiled_simd_levels()); });
  m.def("num_threads", &cpu::num_threads);
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("threads"));
  m.def("build_info", [] {
    py::dict info;
    info["version"] = TOKENSET_VERSION;
    info["compiler"] = TOKENSET_COMPILER;
    info["build_type"] = TOKENSET_BUILD_TYPE;
    return info;
  });
}
