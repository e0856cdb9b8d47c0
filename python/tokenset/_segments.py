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


def concat_columns(x: Any, column: Any) -> Any:
    """[x, column] for a 2-D x and a 1-D column."""
    if _array.is_torch(x):
        return _array._torch().cat([x, column[:, None]], dim=1)
    xp = _array._cupy() if _array.is_cupy(x) else np
    return xp.concatenate([x, column[:, None]], axis=1)


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
    where a coordinate holds NaN). x: float32 rows of the sets in order, without gaps."""
    starts = offsets_of(lengths)[:-1][lengths > 0]
    if not len(starts):
        return np.zeros((0, x.shape[1])), np.zeros((0, x.shape[1]))
    if _array.is_torch(x):
        torch = _array._torch()
        counts = torch.as_tensor(lengths[lengths > 0], device=x.device)
        lo = torch.segment_reduce(x, "min", lengths=counts, axis=0)
        hi = torch.segment_reduce(x, "max", lengths=counts, axis=0)
        return _array.host_copy(lo).astype(np.float64), _array.host_copy(hi).astype(np.float64)
    if _array.is_cupy(x):
        ends = starts + lengths[lengths > 0]
        lo = [_array.host_copy(x[int(a):int(b)].min(axis=0)) for a, b in zip(starts, ends)]
        hi = [_array.host_copy(x[int(a):int(b)].max(axis=0)) for a, b in zip(starts, ends)]
        return np.array(lo, np.float64), np.array(hi, np.float64)
    with np.errstate(invalid="ignore"):
        return (np.minimum.reduceat(x, starts, axis=0).astype(np.float64),
                np.maximum.reduceat(x, starts, axis=0).astype(np.float64))


def exact_shift(x: Any, lengths: np.ndarray) -> Tuple[Any, Any]:
    """x - c, with c per set and coordinate chosen so that the subtraction is exact in float32 and the shifted values
    are small: c lies within a factor 2 of every value of the coordinate in the set (Sterbenz: then x - c is exact),
    as near the middle of the values as that allows, and c = 0 where no such value exists (values of both signs or
    spanning more than a factor 4, NaN or +-inf, or values near the float32 underflow). Afterwards |x_k - c_k| is at
    most 4/3 of the coordinate's spread in the set, so |a|^2 + |b|^2 - 2<a, b> loses only eps x spread^2, never eps x
    offset^2 (tokens of LLM and vision models share offsets of 100-300); and as the shifted tokens are the exact
    differences, distances between them equal those between the originals and integer ties stay ties.

    x: float32 rows of the sets in order without gaps (``Ragged.compact()``). Returns (x - c, c per set [sets, d]
    float32), both in x's library (x itself and None when every c is 0)."""
    per_set = shift_values(x, lengths)
    if per_set is None:
        return x, None
    per_set = from_host(per_set, _array.library(x), _array.device(x))
    return x - take(per_set, set_ids(lengths)), per_set


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


def segment_sum(values: Any, segments: np.ndarray, count: int, weights: Any = None) -> Any:
    """tokenset.segment_sum for [T, d] or [T] values (host int64 segments, every s < count)."""
    if values.ndim == 1:
        return _public_segment_sum(values[:, None], segments, count, weights)[:, 0]
    return _public_segment_sum(values, segments, count, weights)


def nearest(queries: Ragged, targets: Ragged, with_scores: bool = False):
    """For every token of query set i, the index within target set i of its largest inner product (lowest index on
    ties; a NaN product ranks as -inf, so a query whose products are all NaN gets index 0) as host int64 [T], and
    optionally that score (host float32 [T], -inf where it is NaN); -1 (score -inf) where target set i is empty.
    Both paths follow this one rule, so a set's answer does not depend on the batch it is in.

    Many small sets (the usual case of documents): native MaxSim argmax calls, one per class of set lengths. Few large
    sets (images of hundreds of tokens): one GEMM per set in the arrays' library, in row chunks of at most 16M
    scores. Either way memory is bounded by the tokens (and the chunks), never by sets x the longest set."""
    queries, targets = queries.compact(), targets.compact()  # per-token positions index values directly
    if len(queries) >= 64 and queries.values.shape[0] <= 256 * len(queries):
        return _nearest_native(queries, targets, with_scores)
    return _nearest_gemm(queries, targets, with_scores)


def length_classes(lengths: np.ndarray) -> np.ndarray:
    """The class of every set by its length: c = bit_length(n - 1) (lengths in (2^(c-1), 2^c]), -1 for empty sets.
    Within a class the longest set is at most twice the shortest, so a padded [sets, longest] array of one class holds
    at most twice its tokens."""
    classes = np.frexp(np.maximum(lengths, 1) - 1)[1].astype(np.int64)
    return np.where(lengths > 0, classes, -1)


def _nearest_native(queries: Ragged, targets: Ragged, with_scores: bool):
    lengths, offsets = queries.lengths, queries.offsets
    index = np.full(int(offsets[-1]), -1, np.int64)
    classes = length_classes(lengths)
    # One MaxSim call per length class: its argmax output is [sets, 1, longest query] int32, so sets of 2 tokens
    # beside one of 5,000 never make a [sets, 5000] array. MaxSim refuses empty queries; they have no tokens to place.
    for c in np.unique(classes[classes >= 0]):
        members = np.flatnonzero(classes == c)
        member_lengths = lengths[members]
        local = offsets_of(member_lengths)
        if int(local[-1]) == index.shape[0]:  # the only class: its sets are every token, in order
            rows, values = None, queries.values
        else:
            rows = np.arange(int(local[-1]), dtype=np.int64) + np.repeat(offsets[members] - local[:-1], member_lengths)
            values = take(queries.values, rows)
        _, argmax = _maxsim_ops.maxsim(Ragged(values, local, name="queries"), targets,
                                       candidates=members.astype(np.int64)[:, None], with_argmax=True)
        argmax = _array.host_copy(argmax)[:, 0, :]
        found = argmax[np.arange(argmax.shape[1])[None, :] < member_lengths[:, None]].astype(np.int64)
        if rows is None:
            index[:] = found
        else:
            index[rows] = found
    if not with_scores:
        return index
    score = np.full(index.shape[0], -np.inf, np.float32)
    found = np.flatnonzero(index >= 0)
    if found.size:
        rows = targets.offsets[:-1][set_ids(lengths)[found]] + index[found]
        score[found] = _array.host_copy(row_dots(take(queries.values, found), take(targets.values, rows)))
        np.fmax(score, -np.inf, out=score)  # NaN ranks as -inf, as on the GEMM path
    return index, score


def _nearest_gemm(queries: Ragged, targets: Ragged, with_scores: bool):
    q_all, t_all = queries.values, targets.values
    q_off, t_off = queries.offsets, targets.offsets
    index = np.full(int(q_off[-1]), -1, np.int64)
    score = np.full(int(q_off[-1]), -np.inf, np.float32)
    for i in range(len(queries)):
        m, n = int(q_off[i + 1] - q_off[i]), int(t_off[i + 1] - t_off[i])
        if m == 0 or n == 0:
            continue
        t = t_all[t_off[i]:t_off[i + 1]]
        step = max(1, (16 << 20) // n)
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            rows = slice(q_off[i] + r0, q_off[i] + r1)
            index[rows], score[rows] = row_argmax(q_all[rows] @ t.T)
    return (index, score) if with_scores else index


def row_argmax(scores: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Per row of a 2-D score block (any library), the first column of the largest score and that score, as host
    (int64, float32) arrays. NaN ranks as -inf (the library's rule, and what MaxSim's native argmax does): the block
    is overwritten in place, its NaN entries becoming -inf, so a row of NaN gives column 0 with score -inf. Callers
    pass a temporary block."""
    if _array.is_torch(scores):
        scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        best = scores.max(dim=1)  # the first maximal column on ties (torch.max's documented rule)
        return best.indices.cpu().numpy().astype(np.int64), best.values.cpu().numpy().astype(np.float32)
    xp = _array._cupy() if _array.is_cupy(scores) else np
    xp.fmax(scores, -np.inf, out=scores)  # NaN -> -inf without a temporary (fmax returns the non-NaN operand)
    column = scores.argmax(axis=1)
    value = scores[xp.arange(scores.shape[0]), column]
    return _array.host_copy(column).astype(np.int64), _array.host_copy(value).astype(np.float32)


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
