"""Array-library-neutral helpers of the selection and merging pipelines (numpy, torch, cupy; any device).

The heavy work of a merge (nearest-neighbour search over tokens, weighted sums of token vectors) runs in the tokens'
library and device, or in native kernels; the plan of a merge (which token goes where: small per-token integer
arrays) is made on the host with numpy.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _array
from .ops import maxsim as _maxsim_ops
from .ragged import Ragged

Device = Tuple[str, int]


def from_host(arr: np.ndarray, lib: str, dev: Device) -> Any:
    """A host array in library `lib` on device `dev` (numpy: itself)."""
    if lib == "numpy":
        return arr
    if lib == "torch" and dev[0] == "cpu":
        return _array._torch().from_numpy(np.array(arr, copy=True))
    return _array.to_device(arr, lib, dev)


def float32(x: Any) -> Any:
    if _array.is_torch(x):
        x = x.detach()
    return x if _array.dtype_name(x, "tokens") == "float32" else _array.astype(x, "float32")


def take(x: Any, index: np.ndarray) -> Any:
    """Rows `index` (host int64) of a 2-D array, in its library and device."""
    lib, dev = _array.library(x), _array.device(x)
    if lib == "torch":
        return x.index_select(0, from_host(np.ascontiguousarray(index, np.int64), lib, dev))
    return x[from_host(np.ascontiguousarray(index, np.int64), lib, dev)]


def row_dots(a: Any, b: Any) -> Any:
    """<a_i, b_i> for every row (float32, in the arrays' library)."""
    return (a * b).sum(dim=1) if _array.is_torch(a) else (a * b).sum(axis=1)


def concat_columns(x: Any, column: Any) -> Any:
    """[x, column] for a 2-D x and a 1-D column."""
    if _array.is_torch(x):
        return _array._torch().cat([x, column[:, None]], dim=1)
    xp = _array._cupy() if _array.is_cupy(x) else np
    return xp.concatenate([x, column[:, None]], axis=1)


def unit_rows(x: Any) -> Any:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = row_dots(x, x) ** 0.5
    if _array.is_torch(x):
        return x / norms.clamp_min(1e-30)[:, None]
    xp = _array._cupy() if _array.is_cupy(x) else np
    return x / xp.maximum(norms, np.float32(1e-30))[:, None]


def segment_sum(values: Any, segments: np.ndarray, count: int) -> Any:
    """out[s] = sum of values[i] over i with segments[i] == s (host int64, every s < count), in values' library;
    the sums run in index order within a segment."""
    lib, dev = _array.library(values), _array.device(values)
    one_d = values.ndim == 1
    if lib == "torch":
        torch = _array._torch()
        out = torch.zeros((count,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add_(0, from_host(segments.astype(np.int64), lib, dev), values)
    if lib == "cupy":
        cupy = _array._cupy()
        import cupyx

        out = cupy.zeros((count,) + tuple(values.shape[1:]), dtype=values.dtype)
        cupyx.scatter_add(out, from_host(segments.astype(np.int64), lib, dev), values)
        return out
    order = np.argsort(segments, kind="stable")
    sorted_segments = segments[order]
    out = np.zeros((count,) + tuple(values.shape[1:]), dtype=values.dtype)
    if order.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, sorted_segments[1:] != sorted_segments[:-1]])
    sums = np.add.reduceat(values[order], starts, axis=0)
    out[sorted_segments[starts]] = sums if not one_d else sums
    return out


def nearest(queries: Ragged, targets: Ragged) -> np.ndarray:
    """For every token of query set i, the index within target set i of its largest inner product (lowest index on
    ties; -1 when target set i is empty): one native MaxSim call with one candidate per query (host int64 [T])."""
    lengths = queries.lengths
    nonempty = np.flatnonzero(lengths > 0)  # MaxSim refuses empty queries; they have no tokens to place anyway
    if nonempty.size == 0:
        return np.zeros(0, np.int64)
    sub = Ragged(queries.values, queries.offsets[0] + offsets_of(lengths[nonempty]), name="queries")
    candidates = nonempty.astype(np.int64)[:, None]
    _, argmax = _maxsim_ops.maxsim(sub, targets, candidates=candidates, with_argmax=True)
    argmax = _array.host_copy(argmax)[:, 0, :]
    valid = np.arange(argmax.shape[1])[None, :] < lengths[nonempty][:, None]
    return argmax[valid].astype(np.int64)


def set_ids(lengths: np.ndarray) -> np.ndarray:
    """The set of every token of a batch with these lengths (host int64 [T])."""
    return np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.shape[0] + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out
