"""Weighted segment sums: the merge step of token merging (ToMe, DPC-KNN, k-means), as a native op.

.. math:: \\mathrm{out}_s = \\sum_{i : \\mathrm{segment}_i = s} w_i\\, x_i

Each output row is summed by one worker over its members in index order (float32, FMA), so results do not depend on
the thread count or the SIMD level; the GPU kernel uses the same order and operations.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _array
from .ops import segment_sum as _ops


def segment_sum(values: Any, segments: Any, count: Optional[int] = None, weights: Optional[Any] = None) -> Any:
    """Sums rows of `values` by segment.

    Args:
        values: ``[T, d]`` float32, float16 or bfloat16 (numpy, torch or cupy), rows contiguous.
        segments: ``[T]`` integers in ``[0, count)``: the output row of each input row.
        count: number of output rows (default ``max(segments) + 1``); rows no input goes to are 0.
        weights: optional ``[T]`` weights (converted to float32): on the values' device, or on the host (numpy, a
            CPU tensor, a list), copied to the values' device.

    Returns:
        ``[count, d]`` float32 in the values' library and device.

    >>> import numpy as np, tokenset
    >>> tokenset.segment_sum(np.array([[1., 2.], [3., 4.], [5., 6.]], np.float32), [1, 0, 1], weights=[1, 1, 0.5])
    array([[3. , 4. ],
           [3.5, 5. ]], dtype=float32)
    """
    if not _array.is_array(values, "values") or values.ndim != 2:
        raise ValueError("values must be a 2-D array [T, d] (numpy, torch or cupy)")
    seg = _array.int64_host(segments, "segments")
    if seg.shape != (int(values.shape[0]),):
        raise ValueError(f"segments must have shape ({int(values.shape[0])},), got {tuple(seg.shape)}")
    if count is None:
        count = int(seg.max()) + 1 if seg.size else 0
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    if seg.size and (seg.min() < 0 or seg.max() >= count):
        raise ValueError(f"segments must lie in [0, {count}), got min {seg.min()} max {seg.max()}")
    if weights is not None and not _array.is_array(weights, "weights"):
        weights = np.asarray(weights, np.float32)
    if weights is not None and tuple(weights.shape) != (int(values.shape[0]),):
        raise ValueError(f"weights must have shape ({int(values.shape[0])},), got {tuple(weights.shape)}")
    order = np.argsort(seg, kind="stable")
    try:
        if count >= 1 << 60:
            raise MemoryError
        starts = np.zeros(int(count) + 1, np.int64)
    except (MemoryError, ValueError):  # numpy's "array is too big" / "Maximum allowed dimension exceeded"
        raise ValueError(f"count={count}: the output [count, {int(values.shape[1])}] cannot be allocated; count is "
                         f"the number of output rows (default: the largest segment + 1)") from None
    np.cumsum(np.bincount(seg, minlength=int(count)), out=starts[1:])
    return _ops.segment_sum(values, order, starts, weights)
