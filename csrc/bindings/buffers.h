// Shared by the pybind11 modules: turning Python buffers into checked views, and C++ errors into Python ones.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "tokenset/common.h"

namespace tokenset {
namespace bindings {

namespace py = pybind11;

// Maps tokenset::ValueError / TypeError to Python ValueError / TypeError.
void register_exceptions(py::module_& m);

DType dtype_from_code(int code);

// A host set batch: `values` a 2-D array of 2- or 4-byte elements whose rows may be strided but whose elements are
// contiguous, `offsets` a 1-D contiguous int64 array. Everything is checked before a kernel may read it.
SetBatch host_set_batch(const py::array& values, int dtype_code, const py::array& offsets, const char* name);

// Checks a 1-D / 2-D contiguous int64 host array and returns its data.
const int64_t* int64_data(const py::array& array, const char* name, int ndim);

}  // namespace bindings
}  // namespace tokenset
