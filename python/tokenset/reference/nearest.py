"""Reference nearest target token, plain numpy, float64: for every token of query set i, the token of target set i
at the least distance (l2 squared over the differences, cosine 1 - cos with a zero vector at similarity 0, ip -dot),
a NaN distance counting as +inf, ties to the lowest index; -1 and +inf for an empty target set."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .kcenter import inverse_norms


def distances(q: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """[len(q), len(y)] distances (squared for l2), NaN as +inf."""
    q, y = np.asarray(q, np.float64), np.asarray(y, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if metric == "l2":
            d = ((q[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        else:
            dots = q @ y.T if np.isfinite(q).all() and np.isfinite(y).all() else (q[:, None, :] * y[None]).sum(-1)
            d = -dots if metric == "ip" else 1.0 - dots * (inverse_norms(q)[:, None] * inverse_norms(y)[None, :])
    return np.where(np.isnan(d), np.inf, d)


def nearest_set(q: np.ndarray, y: np.ndarray, metric: str = "l2") -> Tuple[np.ndarray, np.ndarray]:
    """One pair of sets: (index [len(q)] int64, distance [len(q)] float64)."""
    if len(y) == 0:
        return np.full(len(q), -1, np.int64), np.full(len(q), np.inf)
    d = distances(q, y, metric)
    index = np.argmin(d, axis=1) if len(q) else np.zeros(0, np.int64)  # first minimum: the lowest index on ties
    return index.astype(np.int64), d[np.arange(len(q)), index]


def nearest(queries: Sequence[np.ndarray], targets: Sequence[np.ndarray], metric: str = "l2"
            ) -> List[Tuple[np.ndarray, np.ndarray]]:
    return [nearest_set(q, y, metric) for q, y in zip(queries, targets)]
