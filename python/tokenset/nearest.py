"""Nearest target token, batched over pairs of ragged sets: the nearest-centre pass of k-means / k-medoids / DPC-KNN
and ToMe's bipartite matching as one native op, with the argmin fused (no score matrix).

.. math:: \\mathrm{index}_t = \\arg\\min_{j \\in T_i} d(q_t, y_j) \\quad \\text{for every token } q_t
          \\text{ of query set } i

with k-center's distances: ``"l2"`` (squared Euclidean, summed over the differences), ``"cosine"`` (1 - cosine; a
zero vector has similarity 0) or ``"ip"`` (negative inner product). Every pair is summed in k order with one FMA per
element, so every SIMD level and device gives the same bits. Ties go to the lowest index; a NaN distance counts as
+inf (a query whose distances are all NaN or +inf gets 0); an empty target set gives -1 and +inf.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from .kcenter import check_metric
from .ops import nearest as _ops
from .ragged import ragged


def nearest(queries: Any, targets: Any, metric: str = "l2", *, query_lengths: Optional[Any] = None,
            target_lengths: Optional[Any] = None) -> Tuple[Any, Any]:
    """For every token of query set i, its nearest token of target set i.

    Args:
        queries: a set batch (``Ragged``, list of ``[n_i, d]`` arrays, ``[B, N, d]`` with optional ``query_lengths``,
            or one ``[n, d]`` set); float32, float16 or bfloat16 (when the two dtypes differ, both are converted to
            float32, exactly).
        targets: a set batch of the same number of sets and dimension (``target_lengths`` for a padded one).
        metric: ``"l2"`` (default), ``"cosine"`` or ``"ip"``.

    Returns:
        ``(index, distance)``: ``[Tq]`` int64 positions within the target set and ``[Tq]`` float32 distances (l2:
        squared), one per query token in set order, in the arrays' library and device.

    >>> import numpy as np, tokenset
    >>> q = np.array([[0., 0.], [5., 5.]], np.float32)
    >>> y = np.array([[4., 4.], [1., 0.], [0., 1.]], np.float32)
    >>> index, distance = tokenset.nearest(q, y)
    >>> index.tolist(), distance.tolist()
    ([1, 0], [1.0, 2.0])
    """
    metric = check_metric(metric)
    q = ragged(queries, lengths=query_lengths, name="queries")
    t = ragged(targets, lengths=target_lengths, name="targets")
    if q.dim != t.dim:
        raise ValueError(f"queries have dimension {q.dim} and targets {t.dim}: they must match")
    return _ops.nearest(q, t, metric)
