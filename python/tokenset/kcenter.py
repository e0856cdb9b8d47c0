"""k-center (max-min diversity): DivPrune's greedy farthest-first selection, batched over ragged sets.

.. math:: s_1 = \\arg\\max_i \\min_{j \\ne i} d(x_i, x_j), \\qquad
          s_{t+1} = \\arg\\max_{i \\notin S_t} \\min_{s \\in S_t} d(x_i, x_s)

with :math:`d` = 1 - cosine (default), Euclidean, or negative inner product. One pass over the set per pick keeps a
running minimum per token (O(k n) distances, not DivPrune's O(k^2 n)); the most isolated first token is found by
GEMM tiles (O(n^2) distances, each pair once; on the CPU into the n x n matrix only when it fits 32 MiB per worker,
and then every pick reads a row of it); a token is never picked twice; ties go to the lowest index. Every distance
is summed in one fixed order (k order, one FMA per element, l2 over the differences), so every SIMD level, thread
count and device gives the same bits and picks.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _array
from .ops import kcenter as _ops
from .ragged import ragged

_FIRST_MODES = ("isolated", "random")


_INT64_MAX = int(np.iinfo(np.int64).max)


def _too_large(name: str, value: Any) -> ValueError:
    return ValueError(f"{name}={value} does not fit in int64 (at most 2**63 - 1); counts are refused, never wrapped: "
                      f"pass the number of tokens you want (a set never gives more than it has)")


def scalar_of(value: Any, name: str) -> Any:
    """A 0-d array (numpy, torch, cupy) as the Python scalar it holds (``np.array(3)`` is the count 3, as ``3`` is);
    anything else as given."""
    if _array.is_array(value, name) and value.ndim == 0:
        return _array.host_copy(value, name).item()
    return value


def _refuse_bools(values: Any, name: str) -> None:
    """Per-set lists: a bool entry is refused as a bare bool is (numpy would read [True, 2] as [1, 2])."""
    if isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}[{i}] must be an integer, got bool")


def per_set_counts(k: Any, batch_size: int, name: str = "k") -> np.ndarray:
    """An int (or a 0-d integer array) or a per-set array of counts >= 1 as host int64 [B] (the error names the
    argument). Counts int64 cannot hold (2**63 and above, as a Python int, a numpy integer or a uint64 entry) are a
    ValueError, never wrapped; bools, bare or in a list, are a TypeError."""
    k = scalar_of(k, name)
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or an array of integers, got bool")
    if isinstance(k, (int, np.integer)):
        if k < 1:
            raise ValueError(f"{name} must be >= 1, got {k}")
        if k > _INT64_MAX:
            raise _too_large(name, k)
        return np.full(batch_size, int(k), np.int64)
    if not (_array.is_array(k, name) or isinstance(k, (list, tuple))):
        raise TypeError(f"{name} must be an integer or an array of integers, got {type(k).__name__}")
    _refuse_bools(k, name)
    if isinstance(k, (list, tuple)):  # Python ints first: numpy would make floats or objects of out-of-range ones
        for i, v in enumerate(k):
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                if v < 1:
                    raise ValueError(f"{name}[{i}] must be >= 1, got {v}")
                if v > _INT64_MAX:
                    raise _too_large(f"{name}[{i}]", v)
    arr = np.asarray(_array.host_copy(k, name) if _array.is_array(k) else k)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (batch_size,):
        raise ValueError(f"{name} must be an integer or have one entry per set, shape ({batch_size},), got "
                         f"{tuple(arr.shape)}")
    if arr.size and arr.min() < 1:
        bad = int(np.argmin(arr))
        raise ValueError(f"{name}[{bad}] must be >= 1, got {arr[bad]}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > _INT64_MAX:
        bad = int(np.argmax(arr))
        raise _too_large(f"{name}[{bad}]", int(arr[bad]))
    return arr.astype(np.int64)


def first_picks(first: Union[str, int, Any], lengths: np.ndarray, seed: int) -> np.ndarray:
    """Host int64 [B]: -1 for the most isolated token, else a token index of each set."""
    b = lengths.shape[0]
    if isinstance(first, str):
        if first == "isolated":
            return np.full(b, -1, np.int64)
        if first == "random":
            rng = np.random.default_rng(seed)
            return np.where(lengths > 0, np.floor(rng.random(b) * lengths).astype(np.int64), -1)
        raise ValueError(f"first must be 'isolated', 'random', a token index or one index per set, got {first!r}")
    if isinstance(first, (bool, np.bool_)):
        raise TypeError("first must be 'isolated', 'random' or an integer index, got bool")
    _refuse_bools(first, "first")
    arr = np.asarray(_array.host_copy(first, "first") if _array.is_array(first, "first") else first)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"first must be 'isolated', 'random' or integer indices, got {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > _INT64_MAX:  # never wrapped to a negative index
        raise ValueError(f"first={int(arr.max())} does not fit in int64: pass a token index of each set")
    arr = np.broadcast_to(arr.astype(np.int64), (b,)) if arr.ndim == 0 else arr.astype(np.int64)
    if arr.shape != (b,):
        raise ValueError(f"first must be one index or one index per set, shape ({b},), got {tuple(arr.shape)}")
    bad = np.flatnonzero((lengths > 0) & ((arr < 0) | (arr >= lengths)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"first[{i}]={arr[i]} is not a token of set {i}, which has {lengths[i]} tokens")
    return np.where(lengths > 0, arr, -1)


def check_metric(metric: Any) -> str:
    if metric not in _ops.METRIC_CODES:
        raise ValueError(f"metric must be one of {', '.join(map(repr, _ops.METRIC_CODES))}, got {metric!r}")
    return metric


def kcenter(x: Any, k: Any, metric: str = "cosine", first: Union[str, int, Any] = "isolated", seed: int = 0, *,
            lengths: Optional[Any] = None, mask: Optional[Any] = None, return_distances: bool = False):
    """Greedy farthest-first k-center of every set.

    Args:
        x: a set batch (``Ragged``, list of ``[n_i, d]`` arrays, ``[B, N, d]`` array, padded with ``lengths`` or
            ``mask``, or one ``[n, d]`` set); float32, float16 or bfloat16 (distances accumulate in float32).
        k: picks per set, an int (a 0-d array counts as one) or one per set; the output is ``[B, max k]``, so a k
            whose output cannot be allocated (far beyond the longest set: it only adds -1 padding) is a ValueError
            naming k.
        metric: ``"cosine"`` (1 - cosine similarity; a zero vector has similarity 0 with everything), ``"l2"``
            (Euclidean) or ``"ip"`` (negative inner product).
        first: ``"isolated"`` (DivPrune: the token whose nearest other token is farthest), ``"random"`` (seeded by
            ``seed``), a token index, or one index per set.
        return_distances: also return each pick's distance to its nearest earlier pick (+inf for the first): the
            covering radius after each pick, non-increasing.

    Returns:
        ``indices [B, max(k)]`` int64 in pick order, in the input's library and device; a set with n < k tokens
        gets its n tokens and -1 after them; ``[max(k)]`` for a single ``[n, d]`` set. NaN distances count as -inf,
        so tokens with NaN values are picked last.

    >>> import numpy as np, tokenset
    >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    >>> tokenset.kcenter(x, 3)
    array([3, 0, 2])
    """
    single = _array.is_array(x, "x") and x.ndim == 2 and lengths is None and mask is None
    batch = ragged(x, lengths=lengths, mask=mask, name="x")  # a Ragged as is (lengths / mask: an error)
    metric = check_metric(metric)
    lens = batch.lengths
    ks = per_set_counts(k, len(batch))
    firsts = first_picks(first, lens, seed)
    max_k = int(ks.max()) if ks.size else (int(k) if isinstance(k, (int, np.integer)) else 0)
    indices, distances = _ops.kcenter(batch, metric, ks, firsts, max_k, return_distances)
    if single:
        indices = indices[0]
        distances = distances[0] if distances is not None else None
    return (indices, distances) if return_distances else indices
