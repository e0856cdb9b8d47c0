"""Plain numpy reference of MaxSim: readable, slow, float64. The tests' oracle for every backend.

score(q, D) = sum_i max_j <q_i, d_j>; an empty document scores -inf; NaN propagates (numpy's max).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np


def _sims(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf * 0 = NaN is part of the semantics, not an accident
        return np.asarray(q, dtype=np.float64) @ np.asarray(d, dtype=np.float64).T


def maxsim_one(q: np.ndarray, d: np.ndarray) -> float:
    if q.shape[0] == 0:
        raise ValueError("an empty query has no MaxSim score")
    if d.shape[0] == 0:
        return float("-inf")
    return float(_sims(q, d).max(axis=1).sum())


def maxsim(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray]) -> np.ndarray:
    """All pairs: [len(queries), len(documents)] float64."""
    out = np.empty((len(queries), len(documents)))
    for a, q in enumerate(queries):
        for b, d in enumerate(documents):
            out[a, b] = maxsim_one(q, d)
    return out


def maxsim_argmax(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per query token, the index of its most similar document token (lowest index on ties); -1 if d is empty."""
    if d.shape[0] == 0:
        return np.full(q.shape[0], -1, dtype=np.int64)
    return _sims(q, d).argmax(axis=1)


def maxsim_pairs(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """Scores of given candidates: [len(queries), c]; candidate -1 scores -inf."""
    out = np.empty(candidates.shape)
    for a, q in enumerate(queries):
        for c, doc in enumerate(candidates[a]):
            out[a, c] = float("-inf") if doc < 0 else maxsim_one(q, documents[doc])
    return out


def maxsim_topk(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray], k: int,
                scores: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query: higher score first, NaN ranks as -inf, ties to the lower index; rows with fewer
    than k documents are padded with (-inf, -1). ``scores`` may pass precomputed all-pairs scores."""
    if scores is None:
        scores = maxsim(queries, documents)
    nq, nd = scores.shape
    top_scores = np.full((nq, k), -np.inf)
    top_index = np.full((nq, k), -1, dtype=np.int64)
    for a in range(nq):
        key = np.where(np.isnan(scores[a]), -np.inf, scores[a])
        order: List[int] = sorted(range(nd), key=lambda j: (-key[j], j))[:k]
        top_scores[a, : len(order)] = scores[a, order]
        top_index[a, : len(order)] = order
    return top_scores, top_index
