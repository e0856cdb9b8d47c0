"""Plain numpy reference of inner-product top-k: float64 scores, a stable sort (ties to the lower index), NaN last."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def inner_product_topk(queries: np.ndarray, vectors: np.ndarray, k: int,
                       mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(scores float64 [nq, k], indices int64 [nq, k]); rows with fewer than k eligible vectors end with (-inf, -1)."""
    q = np.asarray(queries, np.float64)
    v = np.asarray(vectors, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = q @ v.T if v.size else np.zeros((q.shape[0], v.shape[0]))
    eligible = np.ones(v.shape[0], bool) if mask is None else np.asarray(mask, bool)
    out_s = np.full((q.shape[0], k), -np.inf)
    out_i = np.full((q.shape[0], k), -1, np.int64)
    rows = np.flatnonzero(eligible)
    for a in range(q.shape[0]):
        key = np.where(np.isnan(scores[a, rows]), -np.inf, scores[a, rows])
        order = np.argsort(-key, kind="stable")[:k]
        out_s[a, :order.size] = scores[a, rows[order]]
        out_i[a, :order.size] = rows[order]
    return out_s, out_i
