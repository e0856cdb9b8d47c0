// FDE bindings, compiled into both modules (views.h): a set batch and the encoder's state in, FDEs written in place.
#include <pybind11/pybind11.h>

#include <string>
#include <type_traits>

#include "tokenset/fde.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

int64_t state_int(const py::dict& state, const char* key) {
  TOKENSET_CHECK(state.contains(key), ValueError, "FDE state: '", key, "' missing");
  const py::handle value = state[key];
  // An exact int (not a bool, not None): pybind11's own cast would fail with a RuntimeError that names no key.
  TOKENSET_CHECK(PyLong_Check(value.ptr()) && !PyBool_Check(value.ptr()), TypeError, "FDE state: '", key,
                 "' must be an integer, got ", py::str(py::type::of(value).attr("__name__")).cast<std::string>());
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  TOKENSET_CHECK(overflow == 0, ValueError, "FDE state: '", key, "' does not fit in 64 bits");
  return static_cast<int64_t>(v);
}

py::handle state_item(const py::dict& state, const char* key) {
  return state.contains(key) ? py::handle(state[key]) : py::handle(Py_None);
}

// One state array: the kernel's copy (`state`, on the sets' device) and the host copy it is checked from (index
// arrays copied into the call: the CPU kernel reads that copy).
template <typename T>
void state_array(Call& call, const py::dict& state, const py::dict& host_state, const char* key, DType dtype,
                 std::initializer_list<int64_t> shape, Device device, const T** kernel, const T** host) {
  const py::handle h = state_item(host_state, key);
  if (h.is_none()) return;
  const std::string name = std::string("FDE ") + key;
  const ArrayView hv = call.view(h, name.c_str(), false, true);
  check_array(hv, name.c_str(), dtype, shape, Device{DeviceType::CPU, -1});
  // Indices are followed: validate() checks a copy the call owns, which the CPU kernel reads (a caller rewriting its
  // array meanwhile is never followed). Floats are only read as values: no copy (the hyperplanes can be large).
  *host = std::is_integral<T>::value ? call.own(hv.ptr<const T>(), hv.numel()) : hv.ptr<const T>();
  if (kModuleDevice == DeviceType::CPU) {
    *kernel = *host;
    return;
  }
  const ArrayView kv = call.view(state_item(state, key), name.c_str());
  check_array(kv, name.c_str(), dtype, shape, device);
  *kernel = kv.ptr<const T>();
}

void fde_encode(py::handle sets, const py::dict& state, const py::dict& host_state, bool documents, bool fill_empty,
                py::handle out, py::handle partitions, intptr_t stream, py::handle allocate) {
  Call call(stream);
  FdeParams p;
  p.sets = call.set_batch(sets, documents ? "documents" : "queries");
  p.average = documents;
  p.fill_empty = documents && fill_empty;
  p.reps = state_int(host_state, "reps");
  const int64_t bits = state_int(host_state, "simhash_bits");
  TOKENSET_CHECK(bits >= 0 && bits <= 30, ValueError, "simhash_bits must be in 0..30, got ", bits);
  p.simhash_bits = static_cast<int32_t>(bits);
  p.proj_dim = state_int(host_state, "proj_dim");
  p.final_dim = state_int(host_state, "final_dim");
  check_fde_config(p);  // every shape below is computed from these
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const int64_t dim = p.sets.dim(), n = p.fde_dim();
  const float* host_simhash = nullptr;
  state_array<float>(call, state, host_state, "simhash", DType::Float32, {dim, p.reps * p.simhash_bits}, device,
                     &p.simhash, &host_simhash);
  const float* host_weight = nullptr;
  state_array<int32_t>(call, state, host_state, "proj_index", DType::Int32, {p.reps, dim}, device, &p.proj_index,
                       &p.host_proj_index);
  state_array<float>(call, state, host_state, "proj_weight", DType::Float32, {p.reps, dim}, device, &p.proj_weight,
                     &host_weight);
  state_array<int32_t>(call, state, host_state, "proj_order", DType::Int32, {p.reps, dim}, device, &p.proj_order,
                       &p.host_proj_order);
  state_array<int32_t>(call, state, host_state, "proj_starts", DType::Int32, {p.reps, p.proj_dim + 1}, device,
                       &p.proj_starts, &p.host_proj_starts);
  if (p.final_dim > 0) {
    const float* host_sign = nullptr;
    state_array<int32_t>(call, state, host_state, "final_index", DType::Int32, {n}, device, &p.final_index,
                         &p.host_final_index);
    state_array<float>(call, state, host_state, "final_sign", DType::Float32, {n}, device, &p.final_sign, &host_sign);
    state_array<int32_t>(call, state, host_state, "final_order", DType::Int32, {n}, device, &p.final_order,
                         &p.host_final_order);
    state_array<int32_t>(call, state, host_state, "final_starts", DType::Int32, {p.final_dim + 1}, device,
                         &p.final_starts, &p.host_final_starts);
  }
  p.encode = !out.is_none();
  if (p.encode) {
    const ArrayView o = call.view(out, "out", true);
    check_array(o, "out", DType::Float32, {p.sets.count, p.output_dim()}, device);
    p.out = o.ptr<float>();
  }
  if (!partitions.is_none()) {
    const ArrayView t = call.view(partitions, "partitions", true);
    check_array(t, "partitions", DType::Int32, {p.sets.host_offsets[p.sets.count] - p.sets.host_offsets[0], p.reps}, device);
    p.partitions = t.ptr<int32_t>();
  }
  run_op(call, &backend::fde_encode, p, allocate);
}

}  // namespace

void bind_fde(py::module_& m) {
  m.def("fde_encode", &fde_encode, py::arg("sets"), py::arg("state"), py::arg("host_state"), py::arg("documents"),
        py::arg("fill_empty"), py::arg("out") = py::none(), py::arg("partitions") = py::none(),
        py::arg("stream") = 0, py::arg("allocate") = py::none(),
        "MUVERA FDE of every set into out [B, F] float32 (documents average and may fill empty partitions, queries "
        "sum), and/or the partition of every token into partitions [tokens, reps] int32. `state`: the encoder's "
        "arrays on the sets' device; `host_state`: the same on the host, with reps, simhash_bits, proj_dim, final_dim.");
}

}  // namespace bindings
}  // namespace tokenset
