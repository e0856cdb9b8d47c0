"""Reference k-center (max-min diversity, DivPrune's greedy), written from the paper in plain numpy, float64.

DivPrune (Alvar et al., CVPR 2025): distance 1 - cosine; the first pick is the token whose nearest other token is
farthest; then repeatedly the token with the largest minimum distance to the tokens picked so far. Unlike the
published loop, a token is never picked twice. tokenset adds l2 and inner-product distances, a given or random first
pick, and NaN handling: a NaN distance counts as -inf. Infinities follow from the formulas: l2 sums squared
differences, so a token holding +-inf is at +inf from every finite token and at NaN (-inf) from a token with the same
infinity in the same coordinate; cosine and ip distances of such a token are NaN or +-inf as the products give.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

METRICS = ("cosine", "l2", "ip")


def _rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def distances_from(x: np.ndarray, pivot: int, metric: str) -> np.ndarray:
    """Distances from token ``pivot`` to every token (squared for l2), NaN as -inf."""
    x = _rows(x)
    p = x[pivot]
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, inf * 0: NaN by design, counted as -inf below
        if metric == "l2":
            d = ((x - p) ** 2).sum(axis=1)
        else:
            dots = (x * p).sum(axis=1)
            if metric == "ip":
                d = -dots
            else:
                inv = inverse_norms(x)
                d = 1.0 - dots * (inv * inv[pivot])  # symmetric in (pivot, j): mutual nearest neighbours tie exactly
    return np.where(np.isnan(d), -np.inf, d)


def inverse_norms(x: np.ndarray) -> np.ndarray:
    """1 / ||x_j||, and 0 for a zero vector (its cosine similarity with anything is 0)."""
    norms = np.sqrt((_rows(x) ** 2).sum(axis=1))
    with np.errstate(divide="ignore"):
        return np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)


def most_isolated(x: np.ndarray, metric: str) -> Tuple[int, float]:
    """The token whose nearest other token is farthest (lowest index on ties) and that distance (+inf for n = 1)."""
    n = x.shape[0]
    nearest = np.full(n, np.inf)
    for i in range(n):
        d = distances_from(x, i, metric)
        d[i] = np.inf
        nearest[i] = d.min() if n > 1 else np.inf
    i = int(np.argmax(nearest))
    return i, float(nearest[i])


def kcenter_set(x: np.ndarray, k: int, metric: str = "cosine", first: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """One set: ``(indices [min(k, n)] in pick order, distances)``; distances[t] is pick t's distance to its nearest
    earlier pick when picked (+inf for the first; Euclidean, not squared, for l2)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    n = x.shape[0]
    picks = min(int(k), n)
    if picks == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    current = most_isolated(x, metric)[0] if first is None else int(first)
    picked = np.zeros(n, bool)
    running = np.full(n, np.inf)
    order, dist = [current], [np.inf]
    for _ in range(picks - 1):
        picked[current] = True
        running = np.minimum(running, distances_from(x, current, metric))
        candidates = np.where(picked, -np.inf, running)
        # The largest running minimum among unpicked tokens, the lowest index on ties (-inf rows included).
        best = candidates[~picked].max()
        current = int(np.flatnonzero((candidates == best) & ~picked)[0])
        order.append(current)
        dist.append(best)
    d = np.array(dist)
    if metric == "l2":
        d = np.where(d >= 0, np.sqrt(np.maximum(d, 0)), d)
    return np.array(order, np.int64), d.astype(np.float32)


def kcenter(sets: Sequence[np.ndarray], k, metric: str = "cosine", first=None) -> List[np.ndarray]:
    """Every set of a list: k and first may be per set (first None = the most isolated token)."""
    ks = np.broadcast_to(np.asarray(k), (len(sets),))
    firsts = [None] * len(sets) if first is None else list(np.broadcast_to(np.asarray(first, dtype=object),
                                                                          (len(sets),)))
    return [kcenter_set(np.asarray(s), int(kk), metric, f)[0] for s, kk, f in zip(sets, ks, firsts)]


def divprune_published(x: np.ndarray, k: int) -> np.ndarray:
    """The published DivPrune loop, step for step (cosine distance matrix; first pick by the second-smallest
    distance of each column; each step recomputes the minimum over all picked rows), except that picked tokens are
    excluded, so no token is picked twice. For tests: the result must equal kcenter_set(x, k)."""
    x = _rows(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    dist = np.minimum(dist, dist.T)  # a GEMM need not be symmetric bit for bit; mutual nearest neighbours must tie
    n = x.shape[0]
    picks = []
    for i in range(min(k, n)):
        if i == 0:
            scores = np.sort(dist, axis=0)[1, :] if n > 1 else np.full(n, np.inf)
        else:
            scores = dist[picks].min(axis=0)
            scores[picks] = -np.inf
        picks.append(int(np.argmax(scores)))
    return np.array(picks, np.int64)
