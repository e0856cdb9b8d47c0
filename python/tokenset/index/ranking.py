"""The one ranking rule of every top-k list the index returns or merges: segments, candidates, shards, brute force.

Higher score first; NaN ranks as -inf; ties go to the lower document id; an empty entry (id ``-1``) goes last and
comes back as ``(-1, -inf)``. Ties by id, not by storage position, so that a result does not depend on how the
documents happen to be stored (segments, compaction, shards): every shard cuts its own top-k by the same rule the
merge of the shards' lists uses, so the merge is exact.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

NO_ID = -1
_LAST = np.iinfo(np.int64).max


def rank_order(scores: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column order of the best `k` entries of ``scores [nq, c]``: higher score first, NaN as -inf,
    ties to the lower `tiebreak` (ids, or positions for an approximate stage); a negative tiebreak marks an empty
    entry and goes last."""
    if scores.shape[1] == 0:
        return np.zeros((scores.shape[0], 0), np.int64)
    empty = tiebreak < 0
    key = np.where(np.isnan(scores) | empty, -np.inf, scores)
    return np.lexsort((np.where(empty, _LAST, tiebreak), empty, -key), axis=1)[:, :k]


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best `k` of each row of ``(ids [nq, c], scores [nq, c])`` by :func:`rank_order` over ids, as
    ``(ids int64 [nq, k], scores float32 [nq, k])`` padded with ``(-1, -inf)``."""
    nq = ids.shape[0]
    order = rank_order(scores, ids, k)
    out_ids = np.full((nq, k), NO_ID, dtype=np.int64)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    width = order.shape[1]
    got_ids = np.take_along_axis(ids, order, 1)
    got_scores = np.take_along_axis(scores, order, 1)
    empty = got_ids < 0
    out_ids[:, :width] = np.where(empty, NO_ID, got_ids)
    out_scores[:, :width] = np.where(empty, -np.inf, got_scores)
    return out_ids, out_scores
