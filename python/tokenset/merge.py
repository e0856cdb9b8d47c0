"""Token merging, batched over ragged sets: ToMe bipartite soft matching, DPC-KNN clustering (Chat-UniVi), per-set
k-means and k-medoids with farthest-first initialisation (CenterCLIP; CRISP-style reduction of a document's vectors).

Every method computes its nearest neighbours with the native `nearest` op (DPC-KNN's density rows with GEMMs in the
tokens' library and device) and merges with size-weighted sums there; only the plan (which token joins which group:
small integer arrays) is made on the host. Ties go to the lower index everywhere; a NaN similarity ranks as -inf and
a NaN distance counts as +inf, in one kernel for every batch shape, so a set's groups do not depend on the batch it
is in; a token or centre holding NaN or +-inf is at +inf from every other token (the direct
sum_k (x_k - c_k)^2 is inf or NaN), as in the references.

* ``"tome"``: split each set alternately (A = even positions, B = odd); every A token's most similar B token
  (cosine of ``metric``, default the tokens themselves; ToMe uses the attention keys averaged over heads); the r
  most similar edges are merged into their B token by size-weighted average, ``r = min(n - keep, (n - protected) //
  2)``; rounds repeat until ``keep`` is reached (each round at most halves a set). The first ``protected`` tokens
  ([CLS], distillation) are never merged. ``sizes`` (per token, default 1) compose with earlier merges.
* ``"dpc_knn"``: distances ``||x_i - x_j|| / sqrt(d)``; density ``exp(-mean of the squared distances to the knn
  nearest tokens, itself included)``; delta = distance to the nearest denser token (the densest: the largest
  distance in the set); the ``keep`` tokens with the largest delta x density are centres; every token joins its
  nearest centre; groups are averaged (weighted by ``sizes``).
* ``"kmeans"``: ``iters`` Lloyd iterations from farthest-first (KKZ) centres: the largest-norm token, then k-center
  (l2); an empty cluster keeps its centre and is dropped at the end. Tokens are the centroids (float32); indices are
  each cluster's member nearest its centroid. ``metric="cosine"`` clusters unit vectors (spherical k-means).
* ``"kmedoids"``: the same initialisation; assign to the nearest medoid, then each cluster's medoid becomes the
  member with the least sum of squared distances to the other members; ``iters`` rounds or until stable. Tokens are
  the medoids themselves (input dtype).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _array, _segments
from .kcenter import kcenter
from .prune import PruneResult, _unknown, finish, keep_counts, per_token_values, token_batch
from .ragged import Ragged, ragged

MERGE_METHODS = ("tome", "dpc_knn", "kmeans", "kmedoids")
_DISTANCE_CHUNK_BYTES = 64 << 20  # DPC-KNN: every temporary of one chunk of distance rows together
_DISTANCE_ENTRY_BYTES = 13  # ... per distance: float64 distances + a 1-byte mask (reused) + the float32 GEMM block
_TIE = 1e-5  # relative: float32 costs this close count as equal (k-means representatives, k-medoids medoids)


def _per_token(values: Any, batch: Ragged, name: str, mask: Optional[np.ndarray]) -> np.ndarray:
    """Sizes / weights, one per token, as host float32 [T]: positive and finite (`mask`: see per_token_values)."""
    flat = per_token_values(values, batch, name, mask).astype(np.float32)
    if not np.all(np.isfinite(flat) & (flat > 0)):
        raise ValueError(f"{name} must be positive and finite (sizes / weights of tokens)")
    return flat


def _weighted_average(x: Any, weights: Any, segments: np.ndarray, count: int) -> Tuple[Any, Any]:
    """(sum (w / W) x, W = sum w) per segment, in x's library: one native pass over x with normalised weights."""
    totals = _segments.segment_sum(weights, segments, count)
    share = weights / _segments.take(totals[:, None], segments)[:, 0]
    return _segments.segment_sum(x, segments, count, share), totals


def _tome(batch: Ragged, ks: np.ndarray, padding: dict, metric: Any = None, sizes: Any = None, protected: int = 0):
    if isinstance(protected, bool) or not isinstance(protected, (int, np.integer)) or protected < 0:
        raise ValueError(f"protected must be an integer >= 0 (leading tokens never merged), got {protected!r}")
    protected = int(protected)
    if protected > np.iinfo(np.int64).max:  # numpy's comparisons with int64 positions raised OverflowError
        raise ValueError(f"protected={protected} does not fit in int64 (at most 2**63 - 1); pass at most the longest "
                         f"set's length to protect every token")
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    m = None
    if metric is not None:
        # Keys padded like the tokens ([B, N, dk] beside [B, N, d] with lengths / mask) are gathered like them.
        padded_like = _array.is_array(metric, "metric") and metric.ndim == 3
        m = ragged(metric, lengths=padding["lengths"] if padded_like else None,
                   mask=padding["mask"] if padded_like else None, name="metric").compact()
        # dtype and the token-dimension limit before any work (a broadcast [B, N, 2**17] view was copied into GEMMs)
        _array.check_tokens(m._any_values, m.dim, "metric")
        if not np.array_equal(m.lengths, batch.lengths):
            raise ValueError("metric must have one key per token (the tokens' lengths per set)")
    x = _segments.float32(batch.values)
    keys = x if m is None else _segments.float32(m.values)
    size_host = _per_token(sizes, batch, "sizes", padding["host_mask"]) if sizes is not None \
        else np.ones(x.shape[0], np.float32)
    size = _segments.from_host(size_host, lib, dev)
    lens = batch.lengths.copy()
    origin = np.arange(x.shape[0], dtype=np.int64) - np.repeat(batch.offsets[:-1], lens)
    while True:
        sets = _segments.set_ids(lens)
        off = _segments.offsets_of(lens)
        pos = np.arange(lens.sum(), dtype=np.int64) - off[sets]
        free = pos >= protected
        a_rows = np.flatnonzero(free & (pos % 2 == 0))
        b_rows = np.flatnonzero(free & (pos % 2 == 1))
        a_len = np.bincount(sets[a_rows], minlength=len(lens)).astype(np.int64)
        b_len = np.bincount(sets[b_rows], minlength=len(lens)).astype(np.int64)
        r = np.minimum(np.maximum(lens - ks, 0), np.maximum(lens - protected, 0) // 2)
        r = np.where(b_len > 0, np.minimum(r, a_len), 0)
        if r.max(initial=0) <= 0:
            break
        # Every free A token's most similar free B token of its set (cosine of the keys): one native call for the
        # whole batch on strided views of the keys (every other row of each set, read in place on the CPU), the
        # argmax fused, no score matrix.
        a0, b0 = protected + (protected % 2), protected + 1 - (protected % 2)
        a_views = [keys[int(o) + a0:int(o + n):2] for o, n in zip(off[:-1], lens)]
        b_views = [keys[int(o) + b0:int(o + n):2] for o, n in zip(off[:-1], lens)]
        match, distance = _segments.nearest(ragged(a_views, name="keys"), ragged(b_views, name="keys"), "cosine")
        a_sets = sets[a_rows]
        has_b = (b_len[a_sets] > 0) & (match >= 0)
        # A tokens of a set without B tokens point anywhere valid; they are never merged (has_b is False).
        dst = b_rows[np.minimum(_segments.offsets_of(b_len)[a_sets] + np.where(has_b, match, 0), len(b_rows) - 1)] \
            if len(b_rows) else np.zeros_like(a_rows)
        cost = np.where(has_b, distance.astype(np.float64), np.inf)  # a NaN similarity is already +inf
        order = np.lexsort((a_rows, cost, a_sets))  # per set: most similar first, lower position on ties
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0]) - _segments.offsets_of(a_len)[a_sets[order]]
        merged = rank < r[a_sets]
        dest = np.arange(lens.sum(), dtype=np.int64)
        dest[a_rows[merged]] = dst[merged]
        keep_row = np.ones(lens.sum(), bool)
        keep_row[a_rows[merged]] = False
        new_index = np.cumsum(keep_row) - 1
        segments = new_index[dest]
        count = int(keep_row.sum())
        x_new, size_new = _weighted_average(x, size, segments, count)
        if keys is not x:
            keys, _ = _weighted_average(keys, size, segments, count)
        else:
            keys = x_new
        x, size = x_new, size_new
        origin = origin[keep_row]
        lens = lens - r
    return origin, x, size, lens


def _dpc_knn(batch: Ragged, ks: np.ndarray, padding: dict, knn: int = 5, sizes: Any = None):
    if isinstance(knn, bool) or not isinstance(knn, (int, np.integer)) or knn < 1:
        raise ValueError(f"knn must be an integer >= 1, got {knn!r}")
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    x = _segments.float32(batch.values)
    weights = _segments.from_host(_per_token(sizes, batch, "sizes", padding["host_mask"]) if sizes is not None
                                  else np.ones(x.shape[0], np.float32), lib, dev)
    lens = batch.lengths
    base = batch.offsets[:-1]
    # Each set's distances on its tokens shifted exactly (_segments.exact_shift): the same distances without the
    # rounding of an offset they share; one set's shifted copy at a time.
    shift = _segments.shift_values(x, lens)
    d = x.shape[1]
    segments = np.zeros(x.shape[0], np.int64)
    centres_all, counts = [], []
    next_segment = 0
    for i in range(len(lens)):
        n, start = int(lens[i]), int(base[i])
        if n == 0:
            counts.append(0)
            continue
        k = int(min(ks[i], n))
        xs = x[start:start + n]
        if shift is not None and np.any(shift[i]):
            xs = xs - _segments.from_host(shift[i], lib, dev)
        sq = _segments.row_dots(xs, xs)
        centres = _dpc_centres(xs, sq, k, min(knn, n), d) if k < n else np.arange(n, dtype=np.int64)
        assign = _nearest_centre(xs, centres)
        segments[start:start + n] = next_segment + assign
        next_segment += k
        centres_all.append(centres)
        counts.append(k)
    merged, totals = _weighted_average(x, weights, segments, next_segment)
    lens_out = np.array(counts, np.int64)
    origin = np.concatenate(centres_all) if centres_all else np.zeros(0, np.int64)
    return origin, merged, totals, lens_out


def _chunk_rows(columns: int) -> int:
    """Distance rows of `columns` entries per chunk: every temporary of a chunk together stays within
    _DISTANCE_CHUNK_BYTES (one row when a single row is larger)."""
    return max(1, _DISTANCE_CHUNK_BYTES // (_DISTANCE_ENTRY_BYTES * max(1, columns)))


def _distance_rows(xs: Any, sq: Any, r0: int, r1: int, cols: Any, cols_sq: Any, d: int,
                   buffer: np.ndarray) -> np.ndarray:
    """||x_r - c|| / sqrt(d) for rows r0..r1 of xs against `cols`, written into the first r1 - r0 rows of `buffer`
    (host float64, reused by every chunk: only the float32 GEMM block is allocated per chunk). A NaN distance counts
    as +inf: a token or column holding NaN or +-inf is at +inf from everything (the expanded form gives it inf or NaN,
    never a number or -inf: its |x|^2 is inf or NaN), as the direct form's inf or NaN is in the reference."""
    d2 = buffer[:r1 - r0]
    np.copyto(d2, _array.host_copy(xs[r0:r1] @ cols.T))  # float32 -> float64, then in place
    d2 *= -2.0
    d2 += _array.host_copy(sq[r0:r1]).astype(np.float64)[:, None]
    d2 += _array.host_copy(cols_sq).astype(np.float64)[None, :]
    np.maximum(d2, 0.0, out=d2)
    d2 /= d
    np.sqrt(d2, out=d2)
    return np.fmin(d2, np.inf, out=d2)  # NaN -> +inf in place (fmin returns the non-NaN operand)


def _dpc_centres(xs: Any, sq: Any, k: int, knn: int, d: int) -> np.ndarray:
    """The k DPC-KNN centres of one set (sq: |x_i|^2). Distance rows are computed twice, in chunks, once for the
    densities and once for delta (which needs every density): 2x the GEMM work instead of an n x n matrix. One
    float64 block of distance rows and one boolean mask of the same shape are reused by every chunk, beside the chunk's
    float32 GEMM block: _DISTANCE_ENTRY_BYTES per distance, within _DISTANCE_CHUNK_BYTES; the rest is arrays of n."""
    n = xs.shape[0]
    step = _chunk_rows(n)
    buffer = np.empty((min(step, n), n))
    density = np.empty(n)
    largest = 0.0
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        dist = _distance_rows(xs, sq, r0, r1, xs, sq, d, buffer)
        np.fill_diagonal(dist[:, r0:r1], 0.0)  # a token's distance to itself is exactly 0
        largest = max(largest, float(dist.max()))
        dist.partition(knn - 1, axis=1)  # in place: what np.partition does to its copy
        nearest = dist[:, :knn]
        np.square(nearest, out=nearest)
        density[r0:r1] = np.exp(-nearest.mean(axis=1))
    # j is denser than i iff density_j > density_i, or they are equal and j < i: ranks in that order make it one
    # comparison. A NaN density compares false both ways: such a token is never denser than another (column rank n)
    # and has no denser token (row rank -1).
    index = np.arange(n)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((index, -density))] = index
    valid = ~np.isnan(density)
    row_rank, column_rank = np.where(valid, rank, -1), np.where(valid, rank, n)
    not_denser = np.empty(buffer.shape, bool)
    delta = np.empty(n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        dist = _distance_rows(xs, sq, r0, r1, xs, sq, d, buffer)
        mask = np.greater_equal(column_rank[None, :], row_rank[r0:r1, None], out=not_denser[:r1 - r0])
        np.copyto(dist, np.inf, where=mask)
        masked = dist.min(axis=1)
        delta[r0:r1] = np.where(np.isinf(masked), largest, masked)  # the densest: the largest distance in the set
    score = delta * density
    return np.sort(np.lexsort((index, -score))[:k]).astype(np.int64)


def _nearest_centre(xs: Any, centres: np.ndarray) -> np.ndarray:
    """For every token the position (in `centres`, sorted) of its nearest centre (squared l2, the native nearest-target
    op: lowest index on ties, a NaN distance counting as +inf); centres join themselves."""
    n, k = xs.shape[0], len(centres)
    assign, _ = _segments.nearest(Ragged(xs, np.array([0, n], np.int64)),
                                  Ragged(_segments.take(xs, centres), np.array([0, k], np.int64)), "l2")
    assign[centres] = np.arange(k)
    return assign


def _init_centres(batch: Ragged, x: Any, ks: np.ndarray, raw: Any) -> Tuple[np.ndarray, np.ndarray]:
    """KKZ: the largest-norm token of each set (norms of `raw`, the tokens before any normalisation), then
    farthest-first (l2) over `x`. (global rows [K], per-set counts [B])."""
    lens = batch.lengths
    sq = _segments.squared_norms_float64(raw)
    sets = _segments.set_ids(lens)
    base = _segments.offsets_of(lens)
    first = np.full(len(lens), -1, np.int64)
    if sq.shape[0]:
        order = np.lexsort((np.arange(sq.shape[0]), -np.where(np.isnan(sq), -np.inf, sq), sets))
        starts = base[:-1][lens > 0]
        first[lens > 0] = order[starts] - starts
    xr = Ragged(x, base, name="tokens")
    picks = _array.host_copy(kcenter(xr, ks, metric="l2", first=np.where(lens > 0, first, 0)))
    valid = picks >= 0
    rows = (base[:-1, None] + picks)[valid]
    return rows.astype(np.int64), valid.sum(axis=1).astype(np.int64)


def _assign(x: Any, lens: np.ndarray, centres: Any, c_len: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every token (squared l2 summed over the differences, lowest index on ties), as a position
    within its set's centres: the native nearest-target op over the whole batch. A NaN distance counts as +inf, so a
    token or centre holding NaN or +-inf is at +inf from everything: finite tokens never join a non-finite centre,
    and a non-finite token takes its set's first centre, where every distance ties at +inf. Returns the positions and
    the squared distances (host int64, float32)."""
    return _segments.nearest(Ragged(x, _segments.offsets_of(lens)), Ragged(centres, _segments.offsets_of(c_len)), "l2")


def _clusters(batch: Ragged, ks: np.ndarray, iters: int, metric: str, medoids: bool):
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine' for k-means / k-medoids, got {metric!r}")
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    raw = _segments.float32(batch.values)
    lens = batch.lengths
    # Distances are computed on the tokens shifted exactly (_segments.exact_shift): the same distances without the
    # rounding of an offset the tokens share. Centroids are means of shifted tokens, shifted back at the end.
    x, shift = _segments.exact_shift(_segments.unit_rows(raw) if metric == "cosine" else raw, lens)
    sets = _segments.set_ids(lens)
    rows, c_len = _init_centres(batch, x, ks, raw)
    c_off = _segments.offsets_of(c_len)
    centres = _segments.take(x, rows)
    # Centroids are means of shifted tokens: each is shifted back by its set's shift (exactly, for a one-token
    # cluster) at the end, set by set in place.
    total = int(c_len.sum())
    sq = _array.host_copy(_segments.row_dots(x, x)).astype(np.float64)  # |x_i|^2: fixed across iterations
    finite = _segments.finite_rows(x, sq)
    spare = None  # k-means: the previous centres' buffer, reused for the next ones
    for it in range(iters + 1):
        assign, distance = _assign(x, lens, centres, c_len)
        segments = c_off[sets] + assign
        if it == iters:
            break
        if medoids:
            new_rows = _medoids(x, sq, segments, total, rows, finite)
            if np.array_equal(new_rows, rows):
                break
            rows = new_rows
            centres = _segments.take(x, rows)
        else:
            # Two [K, d] buffers in turn (the centres and the next ones), written in place: K is up to the token count,
            # and a fresh array per iteration cost more than the iteration's arithmetic (page faults).
            counts = np.bincount(segments, minlength=total)
            new_centres = _segments.segment_sum(x, segments, total, out=spare)
            scale = _segments.from_host(np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32),
                                        lib, dev)
            new_centres *= scale[:, None]
            empty = np.flatnonzero(counts == 0)
            if empty.size:  # an empty cluster keeps its centre (copied, never multiplied: inf * 0 would be NaN)
                new_centres[_segments.from_host(empty, lib, dev)] = _segments.take(centres, empty)
            spare, centres = centres, new_centres
            if metric == "cosine":  # unit vectors before the shift, shifted again
                if shift is not None:
                    _segments.shift_sets(centres, shift, c_len, +1)
                centres = _segments.unit_rows(centres)
                if shift is not None:
                    _segments.shift_sets(centres, shift, c_len, -1)
    counts = np.bincount(segments, minlength=total)
    if medoids:
        representative = rows
        values = _segments.take(batch.values, rows)
        if _array.is_torch(values):
            values = values.detach()
    else:
        # Each cluster's member nearest its centroid represents it: the last assignment's distances (float32, the
        # difference form; within the tie tolerance, sized by the shifted tokens and centroid, the lowest index; a
        # two-member cluster's centroid is equidistant from both). A non-finite member or centroid is at +inf.
        d2 = distance.astype(np.float64)
        centre_sq = _array.host_copy(_segments.row_dots(centres, centres)).astype(np.float64)
        centre_finite = _segments.finite_rows(centres, centre_sq)
        d2[~(finite & centre_finite[segments])] = np.inf
        with np.errstate(invalid="ignore"):  # inf - inf where a token or centroid is not finite: no tolerance there
            representative = _first_minimum(d2, segments, total, _TIE * (sq + np.abs(d2 - centre_sq[segments])))
        values = centres
        if shift is not None:
            _segments.shift_sets(values, shift, c_len, +1)
    nonempty = counts > 0
    centre_sets = _segments.set_ids(c_len)
    local = representative - batch.offsets[:-1][centre_sets]
    lens_out = np.bincount(centre_sets[nonempty], minlength=len(lens)).astype(np.int64)
    keep_rows = np.flatnonzero(nonempty)
    sizes = counts[keep_rows].astype(np.float32)
    return local[keep_rows], _segments.take(values, keep_rows), sizes, lens_out


def _medoids(x: Any, sq: np.ndarray, segments: np.ndarray, total: int, rows: np.ndarray,
             finite: np.ndarray) -> np.ndarray:
    """Each cluster's member j minimising sum_i ||x_i - x_j||^2 = n |x_j|^2 - 2 <x_j, S> + const (S: the cluster's
    sum; sq: host |x_i|^2), lowest index on ties; an empty cluster keeps its medoid. In a cluster with a non-finite
    member (`finite`: host bool [T]) every cost is +inf (a term of each direct sum is inf or NaN), so its lowest
    member is the medoid."""
    sums = _segments.segment_sum(x, segments, total)
    counts = np.bincount(segments, minlength=total).astype(np.float64)
    cost = counts[segments] * sq - 2.0 * _array.host_copy(
        _segments.row_dots(x, _segments.take(sums, segments))).astype(np.float64)
    spoiled = np.bincount(segments, weights=~finite, minlength=total) > 0
    cost[spoiled[segments]] = np.inf
    scale = np.bincount(segments, weights=sq, minlength=total)  # sum of |x_i|^2: the size of every cost term
    new_rows = _first_minimum(cost, segments, total, _TIE * (counts[segments] * sq + scale[segments]))
    return np.where(counts > 0, new_rows, rows)


def _first_minimum(cost: np.ndarray, segments: np.ndarray, count: int, tolerance: np.ndarray) -> np.ndarray:
    """Per segment, the lowest index i whose cost is within tolerance[i] of the segment's minimum (float32 costs
    computed in different orders must not split exact ties, e.g. the two members of a two-token cluster)."""
    cost = np.where(np.isnan(cost), np.inf, cost)  # NaN tokens never win while a number is there
    tolerance = np.nan_to_num(tolerance, nan=0.0, posinf=0.0)
    lowest = np.full(count, np.inf)
    np.minimum.at(lowest, segments, cost)
    near = cost <= lowest[segments] + tolerance
    first = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, segments[near], np.flatnonzero(near))
    return first


def _order_groups(origin: np.ndarray, values: Any, sizes: Any, lens: np.ndarray):
    """Groups of each set sorted by their representative's index (original order)."""
    sets = _segments.set_ids(lens)
    order = np.lexsort((origin, sets))
    if np.array_equal(order, np.arange(order.shape[0])):
        return origin, values, sizes
    sizes = _segments.take(sizes, order) if _array.is_array(sizes) and _array.library(sizes) != "numpy" \
        else np.asarray(sizes)[order]
    return origin[order], _segments.take(values, order), sizes


def merge(tokens: Any, keep: Any, method: str = "tome", *, lengths: Optional[Any] = None, mask: Optional[Any] = None,
          padded: bool = False, **options: Any) -> PruneResult:
    """Merge every set's tokens down to `keep` groups with `method` (see the module docstring).

    Args:
        tokens: a set batch (``Ragged``, list of ``[n_i, d]``, ``[B, N, d]`` with optional ``lengths`` / ``mask``, or
            one ``[n, d]`` set).
        keep: groups per set: an int, one per set, or a ratio in (0, 1] of each set's length (counts above a set's
            length keep every token of it).
        method: ``"tome"`` (options ``metric``, ``sizes``, ``protected``), ``"dpc_knn"`` (``knn``=5, ``sizes``),
            ``"kmeans"`` / ``"kmedoids"`` (``iters``=10, ``metric``="l2" | "cosine"). Per-token ``sizes`` are a
            list of ``[n_i]`` arrays, a flat ``[T]`` array, or ``[B, N]`` beside padded tokens (read at the tokens'
            positions: the prefix with ``lengths``, the mask's with ``mask``); ToMe's ``metric`` keys padded like
            the tokens are gathered like them.
        padded: return ``tokens`` as ``[B, K, d]`` zero-padded.

    Returns:
        :class:`PruneResult`: representatives' indices in original order, merged tokens (float32 averages;
        k-medoids: the medoid tokens), sizes (tokens per group), lengths.

    >>> import numpy as np, tokenset
    >>> x = np.random.default_rng(0).standard_normal((2, 16, 8)).astype(np.float32)
    >>> r = tokenset.merge(x, keep=6, method="tome")
    >>> r.lengths.tolist(), r.sizes.sum(axis=1).tolist()
    ([6, 6], [16.0, 16.0])
    """
    if method not in MERGE_METHODS:
        raise _unknown(method, MERGE_METHODS)
    batch, host_mask = token_batch(tokens, lengths, mask)
    ks = keep_counts(keep, batch.lengths)
    padding = {"lengths": lengths, "mask": mask, "host_mask": host_mask}
    allowed = {"tome": {"metric", "sizes", "protected"}, "dpc_knn": {"knn", "sizes"},
               "kmeans": {"iters", "metric"}, "kmedoids": {"iters", "metric"}}[method]
    extra = set(options) - allowed
    if extra:
        raise TypeError(f"method={method!r} takes no option(s) {', '.join(sorted(extra))}; it takes "
                        f"{', '.join(sorted(allowed))}")
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    if method == "tome":
        origin, values, sizes, lens = _tome(batch, ks, padding, **options)
    elif method == "dpc_knn":
        origin, values, sizes, lens = _dpc_knn(batch, ks, padding, **options)
    else:
        origin, values, sizes, lens = _clusters(batch, ks, options.get("iters", 10), options.get("metric", "l2"),
                                                method == "kmedoids")
    origin, values, sizes = _order_groups(origin, values, sizes, lens)
    width = int(lens.max()) if lens.size else 0
    sets = _segments.set_ids(lens)
    slot = np.arange(lens.sum(), dtype=np.int64) - _segments.offsets_of(lens)[sets]
    picks = np.full((len(lens), width), -1, np.int64)
    picks[sets, slot] = origin
    host_sizes = np.asarray(_array.host_copy(sizes), np.float32)
    padded_sizes = np.zeros((len(lens), width), np.float32)
    padded_sizes[sets, slot] = host_sizes
    return finish(Ragged(values, _segments.offsets_of(lens), name="tokens"), picks, padded_sizes, lens, lib, dev,
                  padded)
