// MaxSim bindings, compiled into both modules (views.h): set batches and outputs in, scores written in place.
#include <pybind11/pybind11.h>

#include "tokenset/maxsim.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

// Residual codes (tokenset.ResidualCodes as ops/maxsim.py describes them): the documents batch holds the packed
// codes with the inverse norms as scales; `residual` the codec's arrays and the centroid ids.
void residual_documents(Call& call, py::handle residual, MaxsimParams& p) {
  ResidualDocuments& r = p.residual;
  r.bits = residual.attr("bits").cast<int>();
  TOKENSET_CHECK(r.bits == 1 || r.bits == 2 || r.bits == 4, ValueError, "residual codes have 1, 2 or 4 bits, got ",
                 r.bits);
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const ArrayView c = call.view(residual.attr("centroids"), "centroids");
  check_array(c, "centroids", DType::Float32, {-1, p.queries.dim()}, device);
  r.num_centroids = c.shape[0];
  r.centroids = c.ptr<const float>();
  const ArrayView w = call.view(residual.attr("bucket_weights"), "bucket weights", false, true);
  check_array(w, "bucket weights", DType::Float32, {int64_t(1) << r.bits}, Device{DeviceType::CPU, -1});
  for (int j = 0; j < (1 << r.bits); ++j) r.bucket_weights[j] = w.ptr<const float>()[j];
  const ArrayView ids = call.view(residual.attr("centroid_ids"), "centroid ids");
  check_array(ids, "centroid ids", DType::Int32, {-1}, device);
  r.centroid_ids = ids.ptr<const int32_t>();
  r.id_count = ids.shape[0];
  if (kModuleDevice == DeviceType::CPU) {
    r.host_centroid_ids = r.centroid_ids;
    r.host_inverse_norms = p.documents.scales;
  } else {
    const ArrayView hi = call.view(residual.attr("host_centroid_ids"), "host centroid ids", false, true);
    check_array(hi, "host centroid ids", DType::Int32, {r.id_count}, Device{DeviceType::CPU, -1});
    const ArrayView hn = call.view(residual.attr("host_inverse_norms"), "host inverse norms", false, true);
    check_array(hn, "host inverse norms", DType::Float32, {p.documents.scale_count}, Device{DeviceType::CPU, -1});
    r.host_centroid_ids = hi.ptr<const int32_t>();
    r.host_inverse_norms = hn.ptr<const float>();
  }
}

MaxsimParams set_batches(Call& call, py::handle queries, py::handle documents, py::handle residual) {
  MaxsimParams p;
  p.queries = call.set_batch(queries, "queries", true);
  p.documents = call.set_batch(documents, "documents", true, !residual.is_none());
  if (!residual.is_none()) residual_documents(call, residual, p);
  return p;
}

Device output_device(const Call& call) {
  return kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
}

void maxsim(py::handle queries, py::handle documents, py::handle scores, py::handle argmax, py::handle candidates,
            py::handle host_candidates, intptr_t stream, py::handle residual) {
  Call call(stream);
  MaxsimParams p = set_batches(call, queries, documents, residual);
  const int64_t nq = p.queries.count;
  const Device device = output_device(call);
  if (!candidates.is_none()) {
    const ArrayView c = call.view(candidates, "candidates");
    check_array(c, "candidates", DType::Int64, {nq, -1}, device);
    p.candidates = c.ptr<const int64_t>();
    p.num_candidates = c.shape[1];
    const ArrayView h = host_candidates.is_none() ? c : call.view(host_candidates, "host candidates", false, true);
    check_array(h, "host candidates", DType::Int64, {nq, p.num_candidates}, Device{DeviceType::CPU, -1});
    // Checked and, on the CPU, read from the call's own copy (a caller's buffer may change while the kernel runs).
    p.host_candidates = call.own_int64(h.ptr<const int64_t>(), nq * p.num_candidates);
    if (kModuleDevice == DeviceType::CPU) p.candidates = p.host_candidates;
  }
  const ArrayView s = call.view(scores, "scores", true);
  check_array(s, "scores", DType::Float32, {nq, p.columns()}, device);
  p.scores = s.ptr<float>();
  if (!argmax.is_none()) {
    const ArrayView a = call.view(argmax, "argmax", true);
    check_array(a, "argmax", DType::Int32, {nq, p.columns(), p.queries.max_length}, device);
    p.argmax = a.ptr<int32_t>();
  }
  run_op(call, &backend::maxsim, p, py::none());
}

void maxsim_topk(py::handle queries, py::handle documents, int64_t k, py::handle top_scores, py::handle top_indices,
                 intptr_t stream, py::handle allocate, py::handle residual) {
  TOKENSET_CHECK(k >= 1, ValueError, "k must be >= 1, got ", k);
  Call call(stream);
  MaxsimParams p = set_batches(call, queries, documents, residual);
  p.k = k;
  const Device device = output_device(call);
  const ArrayView s = call.view(top_scores, "top-k scores", true);
  check_array(s, "top-k scores", DType::Float32, {p.queries.count, k}, device);
  const ArrayView i = call.view(top_indices, "top-k indices", true);
  check_array(i, "top-k indices", DType::Int64, {p.queries.count, k}, device);
  p.top_scores = s.ptr<float>();
  p.top_indices = i.ptr<int64_t>();
  run_op(call, &backend::maxsim, p, allocate);
}

}  // namespace

void bind_maxsim(py::module_& m) {
  m.def("maxsim", &maxsim, py::arg("queries"), py::arg("documents"), py::arg("scores"), py::arg("argmax") = py::none(),
        py::arg("candidates") = py::none(), py::arg("host_candidates") = py::none(), py::arg("stream") = 0,
        py::arg("residual") = py::none(),
        "MaxSim of all (query, document) pairs, or of candidates [nq, c] (-1 = none), written into scores "
        "[nq, nd or c] float32 (and argmax [nq, nd or c, max query length] int32 when given); `residual`: the "
        "documents are residual codes (bits, centroids, bucket_weights, centroid_ids).");
  m.def("maxsim_topk", &maxsim_topk, py::arg("queries"), py::arg("documents"), py::arg("k"), py::arg("top_scores"),
        py::arg("top_indices"), py::arg("stream") = 0, py::arg("allocate") = py::none(),
        py::arg("residual") = py::none(),
        "Fused MaxSim top-k over all documents into top_scores [nq, k] float32 and top_indices [nq, k] int64.");
}

}  // namespace bindings
}  // namespace tokenset
