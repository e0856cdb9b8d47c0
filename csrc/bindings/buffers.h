// Shared by the pybind11 modules: turning Python buffers into checked views, and C++ errors into Python ones.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>

#include "tokenset/common.h"
#include "tokenset/fde.h"

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

// Checks that a host array is C-contiguous, has exactly `shape`, and holds elements of numpy kind `kind` ('f', 'i',
// 'u') and `itemsize` bytes; returns its data.
const void* checked_data(const py::array& array, const char* name, char kind, int itemsize,
                         std::initializer_list<int64_t> shape);

// An FDE encoder's state as a dict of host numpy arrays and ints (see tokenset/ops/fde.py, _kernel_state):
// simhash [dim, reps * bits] float32, reps, simhash_bits, proj_dim, proj_index / proj_weight [reps, dim] int32 /
// float32 or None, final_dim (0 = none), final_index / final_sign [fde_dim] int32 / float32 or None, and optionally
// final_order [fde_dim] int32 / final_starts [final_dim + 1] int64 (the GPU's grouped Count-Sketch).
// Fills the state fields of `params` with host pointers, after checking every shape, dtype and index.
void fde_state_from_dict(const py::dict& state, FdeParams& params);

}  // namespace bindings
}  // namespace tokenset
