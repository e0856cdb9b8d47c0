"""Array-library-neutral helpers of the selection and merging pipelines (numpy, torch, cupy; any device).

The heavy work of a merge (nearest-neighbour search over tokens, weighted sums of token vectors) runs in the tokens'
library and device, or in native kernels; the plan of a merge (which token goes where: small per-token integer
arrays) is made on the host with numpy.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _array
from .ops import nearest as _nearest_ops
from .ops import segment_sum as _segment_sum_ops
from .ragged import Ragged
from .segment_sum import segment_sum as _public_segment_sum

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
    """<a_i, b_i> for every row (float32, in the arrays' library), without a temporary [n, d] product."""
    if _array.is_torch(a):
        return _array._torch().linalg.vecdot(a, b, dim=1)
    xp = _array._cupy() if _array.is_cupy(a) else np
    return xp.einsum("ij,ij->i", a, b)


def squared_norms_float64(x: Any) -> np.ndarray:
    """|x_i|^2 of every row in float64 (host [n]), in blocks of at most 4M elements: exact enough to rank tokens that
    share a large offset, whose float32 norms differ by less than their rounding."""
    out = np.empty(x.shape[0], np.float64)
    step = max(1, (4 << 20) // max(1, x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        block = x[r0:r0 + step]
        block = block.double() if _array.is_torch(block) else block.astype(np.float64 if not _array.is_cupy(block)
                                                                           else _array._cupy().float64)
        out[r0:r0 + step] = _array.host_copy(row_dots(block, block))
    return out


def inverse_norms(x: Any) -> Any:
    """1 / max(|x_i|, 1e-30) per row: a zero row scaled by it stays zero (similarity 0 with everything)."""
    norms = row_dots(x, x) ** 0.5
    if _array.is_torch(x):
        return 1.0 / norms.clamp_min(1e-30)
    xp = _array._cupy() if _array.is_cupy(x) else np
    return 1.0 / xp.maximum(norms, np.float32(1e-30))


def unit_rows(x: Any) -> Any:
    """Rows scaled to unit length (a zero row stays zero)."""
    return x * inverse_norms(x)[:, None]


def _set_extremes(x: Any, lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per non-empty set and coordinate, the smallest and largest value of its rows (host float64 [sets, d]; NaN
    where a coordinate holds NaN). x: float32 rows of the sets in order, without gaps. One reduction per set in x's
    library, stacked and copied to the host once (numpy's reduceat and torch's segment_reduce along rows were 15-20x
    slower)."""
    starts = offsets_of(lengths)[:-1][lengths > 0]
    if not len(starts):
        return np.zeros((0, x.shape[1])), np.zeros((0, x.shape[1]))
    ends = starts + lengths[lengths > 0]
    if _array.is_torch(x):
        torch = _array._torch()
        lo = torch.stack([x[int(a):int(b)].amin(dim=0) for a, b in zip(starts, ends)])
        hi = torch.stack([x[int(a):int(b)].amax(dim=0) for a, b in zip(starts, ends)])
    else:
        xp = _array._cupy() if _array.is_cupy(x) else np
        with np.errstate(invalid="ignore"):
            lo = xp.stack([x[int(a):int(b)].min(axis=0) for a, b in zip(starts, ends)])
            hi = xp.stack([x[int(a):int(b)].max(axis=0) for a, b in zip(starts, ends)])
    return _array.host_copy(lo).astype(np.float64), _array.host_copy(hi).astype(np.float64)


def exact_shift(x: Any, lengths: np.ndarray) -> Tuple[Any, Any]:
    """x - c, with c per set and coordinate chosen so that the subtraction is exact in float32 and the shifted values
    are small: c lies within a factor 2 of every value of the coordinate in the set (Sterbenz: then x - c is exact),
    as near the middle of the values as that allows, and c = 0 where no such value exists (values of both signs or
    spanning more than a factor 4, NaN or +-inf, or values near the float32 underflow). Afterwards |x_k - c_k| is at
    most 4/3 of the coordinate's spread in the set, so |a|^2 + |b|^2 - 2<a, b> loses only eps x spread^2, never eps x
    offset^2 (tokens of LLM and vision models share offsets of 100-300); and as the shifted tokens are the exact
    differences, distances between them equal those between the originals and integer ties stay ties.

    x: float32 rows of the sets in order without gaps (``Ragged.compact()``). Returns (x - c in x's library, c per set
    as host float32 [sets, d]), or (x itself, None) when every c is 0."""
    host = shift_values(x, lengths)
    if host is None:
        return x, None
    shifted = x.clone() if _array.is_torch(x) else x.copy()
    shift_sets(shifted, host, lengths, -1)
    return shifted, host


def shift_sets(rows: Any, per_set: np.ndarray, lengths: np.ndarray, sign: int) -> None:
    """rows[set i] += sign * per_set[i] in place, set by set (rows: [sum lengths, d] in any library; per_set: host
    [sets, d]). Never a gathered [T, d] array of shifts: on the 1.6 GB demo corpus one cost 3.6 s, mostly page faults."""
    lib, dev = _array.library(rows), _array.device(rows)
    offsets = offsets_of(lengths)
    shifting = np.flatnonzero(per_set.any(axis=1))
    if not len(shifting):
        return
    device_shifts = from_host(np.ascontiguousarray(per_set[shifting] * np.float32(sign)), lib, dev)
    for j, i in enumerate(shifting):
        rows[int(offsets[i]):int(offsets[i + 1])] += device_shifts[j]


def shift_values(x: Any, lengths: np.ndarray) -> Any:
    """The c of exact_shift per set and coordinate: host float32 [sets, d] (0 for empty sets), or None when all are 0."""
    lo, hi = _set_extremes(x, lengths)
    tiny = 2.0 ** -100
    with np.errstate(invalid="ignore", over="ignore"):
        positive = (lo >= tiny) & (hi <= 4.0 * lo) & np.isfinite(hi)
        negative = (hi <= -tiny) & (lo >= 4.0 * hi) & np.isfinite(lo)
        mid = ((lo + hi) / 2.0).astype(np.float32).astype(np.float64)
        # [max / 2, 2 min] for positive values (both exact in float32 away from under/overflow); mirrored for
        # negative ones. The float32 middle rounded into that interval is a valid c.
        c = np.where(positive, np.clip(mid, hi / 2.0, 2.0 * lo), 0.0)
        c = np.where(negative, np.clip(mid, 2.0 * hi, lo / 2.0), c)
    c = np.where(np.isfinite(c), c, 0.0).astype(np.float32)
    if not np.any(c):
        return None
    per_set = np.zeros((len(lengths), x.shape[1]), np.float32)
    per_set[lengths > 0] = c
    return per_set


def segment_sum(values: Any, segments: np.ndarray, count: int, weights: Any = None, out: Any = None) -> Any:
    """tokenset.segment_sum for [T, d] or [T] values (host int64 segments, every s < count); `out` ([count, d]
    float32 in the values' library and device): written into instead of a new array."""
    if out is not None:
        order = np.argsort(segments, kind="stable")
        starts = np.zeros(count + 1, np.int64)
        np.cumsum(np.bincount(segments, minlength=count), out=starts[1:])
        return _segment_sum_ops.segment_sum(values, order, starts, weights, out=out)
    if values.ndim == 1:
        return _public_segment_sum(values[:, None], segments, count, weights)[:, 0]
    return _public_segment_sum(values, segments, count, weights)


def nearest(queries: Ragged, targets: Ragged, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """For every token of query set i, the position of its nearest token of target set i and that distance, as host
    (int64 [T], float32 [T]) arrays: the native nearest-target op (tokenset.nearest: ties to the lowest index, a NaN
    distance counts as +inf, -1 and +inf for an empty target set). One kernel for every batch shape, so a set's
    answer never depends on the batch it is in."""
    index, distance = _nearest_ops.nearest(queries, targets, metric)
    return _array.host_copy(index).astype(np.int64), _array.host_copy(distance).astype(np.float32)


def finite_rows(x: Any, sq: np.ndarray) -> np.ndarray:
    """Host bool [T]: whether every coordinate of row i of x (any library) is finite. `sq` (host |x_i|^2, computed
    from x) is finite for every finite row except one whose squared norm overflows, so only the rows where it is not
    are read again (none, for ordinary tokens)."""
    finite = np.isfinite(sq)
    suspect = np.flatnonzero(~finite)
    if suspect.size:
        rows = take(x, suspect)
        check = _array._torch().isfinite(rows).all(dim=1) if _array.is_torch(rows) else \
            (_array._cupy() if _array.is_cupy(rows) else np).isfinite(rows).all(axis=1)
        finite[suspect] = _array.host_copy(check)
    return finite


def set_ids(lengths: np.ndarray) -> np.ndarray:
    """The set of every token of a batch with these lengths (host int64 [T])."""
    return np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.shape[0] + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out
