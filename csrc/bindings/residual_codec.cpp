// Residual codec bindings, compiled into both modules (views.h): encode tokens into codes, or decode codes, in place.
#include <pybind11/pybind11.h>

#include "tokenset/residual_codec.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void residual_codec(bool encode, int bits, py::handle centroids, py::handle cutoffs, py::handle weights,
                    py::handle centroid_ids, py::handle host_centroid_ids, py::handle tokens, py::handle packed,
                    py::handle inverse_norms, py::handle decoded, intptr_t stream) {
  Call call(stream);
  ResidualCodecParams p;
  p.encode = encode;
  TOKENSET_CHECK(bits == 1 || bits == 2 || bits == 4, ValueError, "residual codes have 1, 2 or 4 bits, got ", bits);
  p.bits = bits;
  const ArrayView c = call.view(centroids, "centroids");
  TOKENSET_CHECK(c.ndim == 2, ValueError, "centroids must be 2-D [centroids, dim], got ", c.ndim, "-D");
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  check_array(c, "centroids", DType::Float32, {-1, -1}, device);
  p.num_centroids = c.shape[0];
  p.dim = c.shape[1];
  p.centroids = c.ptr<const float>();
  const ArrayView hc = call.view(cutoffs, "bucket cutoffs", false, true);
  check_array(hc, "bucket cutoffs", DType::Float32, {(int64_t(1) << bits) - 1}, Device{DeviceType::CPU, -1});
  const ArrayView hw = call.view(weights, "bucket weights", false, true);
  check_array(hw, "bucket weights", DType::Float32, {int64_t(1) << bits}, Device{DeviceType::CPU, -1});
  for (int j = 0; j < (1 << bits); ++j) p.bucket_weights[j] = hw.ptr<const float>()[j];
  for (int j = 0; j + 1 < (1 << bits); ++j) p.bucket_cutoffs[j] = hc.ptr<const float>()[j];
  const ArrayView ids = call.view(centroid_ids, "centroid ids");
  check_array(ids, "centroid ids", DType::Int32, {-1}, device);
  p.rows = ids.shape[0];
  const ArrayView host_ids = host_centroid_ids.is_none() ? ids : call.view(host_centroid_ids, "host centroid ids",
                                                                            false, true);
  check_array(host_ids, "host centroid ids", DType::Int32, {p.rows}, Device{DeviceType::CPU, -1});
  // Checked and, on the CPU, read from the call's own copy (the ids index the centroids).
  p.host_centroid_ids = call.own(host_ids.ptr<const int32_t>(), p.rows);
  p.centroid_ids = kModuleDevice == DeviceType::CPU ? p.host_centroid_ids : ids.ptr<const int32_t>();
  TOKENSET_CHECK(p.dim >= 1 && p.dim * bits % 8 == 0, ValueError, "dim x bits = ", p.dim, " x ", bits,
                 " is not a multiple of 8: every token's codes fill whole bytes (PLAID's packing)");
  const ArrayView codes = call.view(packed, "packed codes", encode);
  check_array(codes, "packed codes", DType::Int8, {p.rows, p.dim * bits / 8}, device);
  TOKENSET_CHECK(codes.is_unsigned, TypeError, "packed codes must be uint8");
  p.packed = static_cast<uint8_t*>(codes.data);
  const ArrayView norms = call.view(inverse_norms, "inverse norms", encode);
  check_array(norms, "inverse norms", DType::Float32, {p.rows}, device);
  p.inverse_norms = norms.ptr<float>();
  if (encode) {
    const ArrayView t = call.view(tokens, "tokens");
    check_array(t, "tokens", DType::Float32, {p.rows, p.dim}, device);
    p.tokens = t.ptr<const float>();
  } else {
    const ArrayView out = call.view(decoded, "decoded", true);
    check_array(out, "decoded", DType::Float32, {p.rows, p.dim}, device);
    p.decoded = out.ptr<float>();
  }
  run_op(call, &backend::residual_codec, p, py::none());
}

}  // namespace

void bind_residual_codec(py::module_& m) {
  m.def("residual_codec", &residual_codec, py::arg("encode"), py::arg("bits"), py::arg("centroids"),
        py::arg("cutoffs"), py::arg("weights"), py::arg("centroid_ids"), py::arg("host_centroid_ids") = py::none(),
        py::arg("tokens") = py::none(), py::arg("packed") = py::none(), py::arg("inverse_norms") = py::none(),
        py::arg("decoded") = py::none(), py::arg("stream") = 0,
        "PLAID residual codes: encode tokens [rows, dim] float32 (given each token's nearest centroid id) into "
        "packed [rows, dim * bits / 8] uint8 and inverse_norms [rows] float32, or decode them into decoded "
        "[rows, dim] float32.");
}

}  // namespace bindings
}  // namespace tokenset
