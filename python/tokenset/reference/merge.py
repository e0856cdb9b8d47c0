"""Reference token merging, one set at a time in plain numpy (float64), written from the published algorithms:
ToMe's bipartite soft matching (Bolya et al., ICLR 2023), Chat-UniVi's DPC-KNN (Jin et al., CVPR 2024), k-means and
k-medoids with farthest-first (KKZ) initialisation (CenterCLIP, Zhao et al., SIGIR 2022). Ties go to the lower
index. Each returns ``(representatives, tokens, sizes)`` with groups in the order of their representative token.

NaN (the library's rule): a NaN similarity ranks as -inf and a NaN distance or norm as +inf / -inf, whichever loses
(ToMe's most similar B token, KKZ's largest-norm first token, the nearest centre or medoid): an argmax / argmin
never picks a NaN while a number is there, and ties (all -inf, all +inf) go to the lower index. Distances are the
direct sum_k (x_k - c_k)^2, so a token or centre holding NaN or +-inf is at +inf from everything (DPC-KNN: from
every other token; each token is at 0 from itself).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .kcenter import kcenter_set

Result = Tuple[np.ndarray, np.ndarray, np.ndarray]
TIE = 1e-5  # relative tolerance under which two costs count as equal (the kernels evaluate them in float32)


def _argmax(values: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """np.argmax with NaN ranked as -inf: the first largest number (index 0 when everything is NaN or -inf)."""
    return np.argmax(np.where(np.isnan(values), -np.inf, values), axis=axis)


def _argmin(values: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """np.argmin with NaN ranked as +inf: the first smallest number (index 0 when everything is NaN or +inf)."""
    return np.argmin(np.where(np.isnan(values), np.inf, values), axis=axis)


def _first_min(cost: np.ndarray, tolerance: np.ndarray) -> int:
    """The lowest index whose cost is within its tolerance of the minimum (NaN costs count as +inf)."""
    cost = np.where(np.isnan(cost), np.inf, cost)
    return int(np.flatnonzero(cost <= cost.min() + np.nan_to_num(tolerance, nan=0.0, posinf=0.0))[0])


def _sorted(rep: np.ndarray, tokens: np.ndarray, sizes: np.ndarray) -> Result:
    order = np.argsort(rep, kind="stable")
    return rep[order].astype(np.int64), tokens[order], sizes[order]


def tome_round(x: np.ndarray, keys: np.ndarray, size: np.ndarray, origin: np.ndarray, r: int, protected: int):
    """One bipartite soft matching step (ToMe's bipartite_soft_matching + merge_wavg), survivors in original order."""
    n = x.shape[0]
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-30)
    a_pos, b_pos = np.arange(0, n, 2), np.arange(1, n, 2)
    # Protected tokens ([CLS] in A, a distillation token in B) never merge: B's are never a destination, A's come
    # after every free A token (even one whose similarities are all NaN, i.e. -inf).
    free_b = b_pos[b_pos >= protected]
    scores = unit[a_pos] @ unit[free_b].T
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN similarity ranks as -inf
    best = np.argmax(scores, axis=1)  # the first free B on ties (all -inf: the first)
    node_idx = (free_b[best] - 1) // 2  # as a position among b_pos
    node_max = scores[np.arange(len(a_pos)), best]
    edge_order = np.lexsort((a_pos, -node_max, a_pos < protected))  # free first, most similar, lower position
    src = a_pos[edge_order[:r]]
    dst = b_pos[node_idx[edge_order[:r]]]
    dest = np.arange(n)
    dest[src] = dst
    weighted_sum = np.zeros_like(x)
    key_sum = np.zeros_like(keys)
    total = np.zeros(n)
    for i in range(n):  # ToMe: x = merge(x * size, "sum"); size = merge(size, "sum"); x = x / size
        weighted_sum[dest[i]] += x[i] * size[i]
        key_sum[dest[i]] += keys[i] * size[i]
        total[dest[i]] += size[i]
    survivors = np.setdiff1d(np.arange(n), src)
    return (weighted_sum[survivors] / total[survivors, None], key_sum[survivors] / total[survivors, None],
            total[survivors], origin[survivors])


def tome(x: np.ndarray, keep: int, metric: Optional[np.ndarray] = None, sizes: Optional[np.ndarray] = None,
         protected: int = 0) -> Result:
    """Rounds of ToMe until `keep` tokens remain (each round merges r = min(n - keep, (n - protected) // 2))."""
    x = np.asarray(x, np.float64)
    keys = x if metric is None else np.asarray(metric, np.float64)
    size = np.ones(x.shape[0]) if sizes is None else np.asarray(sizes, np.float64)
    origin = np.arange(x.shape[0])
    separate = metric is not None
    while True:
        n = x.shape[0]
        a_free = len(range(0, n, 2)) - len(range(0, min(protected, n), 2))
        b_free = len(range(1, n, 2)) - len(range(1, min(protected, n), 2))
        r = min(max(n - keep, 0), max(n - protected, 0) // 2, a_free if b_free > 0 else 0)
        if r <= 0:
            break
        x, new_keys, size, origin = tome_round(x, keys, size, origin, r, protected)
        keys = new_keys if separate else x
    return _sorted(origin, x, size)


def dpc_knn(x: np.ndarray, keep: int, knn: int = 5, weights: Optional[np.ndarray] = None) -> Result:
    """DPC-KNN clustering merge (Chat-UniVi's cluster_dpc_knn + merge_tokens, without its random tie noise)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if keep >= n:
        return np.arange(n), x.copy(), w.copy()
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0) / d)
    dist = np.where(np.isnan(dist), np.inf, dist)  # a NaN distance counts as +inf (a token with NaN or +-inf)
    np.fill_diagonal(dist, 0.0)  # ... but every token is at 0 from itself ((inf - inf)^2 would be NaN)
    k = min(knn, n)
    nearest = np.sort(dist, axis=1)[:, :k]  # itself (distance 0) included, as torch.topk over the full matrix
    density = np.exp(-(nearest ** 2).mean(axis=1))
    index = np.arange(n)
    denser = (density[None, :] > density[:, None]) | ((density[None, :] == density[:, None]) &
                                                      (index[None, :] < index[:, None]))
    delta = np.where(denser, dist, np.inf).min(axis=1)
    delta = np.where(np.isinf(delta), dist.max(), delta)
    score = delta * density
    centres = np.sort(np.lexsort((index, -score))[:keep])
    assign = np.argmin(dist[:, centres], axis=1)
    assign[centres] = np.arange(keep)
    tokens = np.zeros((keep, d))
    total = np.zeros(keep)
    for i in range(n):
        tokens[assign[i]] += w[i] * x[i]
        total[assign[i]] += w[i]
    return centres.astype(np.int64), tokens / total[:, None], total


def _kkz(x: np.ndarray, k: int, raw: np.ndarray) -> np.ndarray:
    """KKZ initialisation: the token of largest norm (of `raw`, before any normalisation; a NaN norm ranks as -inf,
    ties to the lower index), then farthest-first."""
    norms = (raw ** 2).sum(axis=1)
    return kcenter_set(x, k, "l2", first=int(_argmax(norms)))[0]


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre of every token by the direct squared distance, a NaN distance counting as +inf."""
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return _argmin(d2, axis=1)


def _shift(x: np.ndarray) -> np.ndarray:
    """The per-coordinate value merge subtracts before its l2 passes (tokenset._segments.exact_shift: within a factor
    2 of every value of the coordinate, else 0). Distances do not change; the tie tolerances below are sized by the
    shifted tokens, so that a common offset neither widens nor narrows them."""
    if x.shape[0] == 0:
        return np.zeros(x.shape[1])
    with np.errstate(invalid="ignore", over="ignore"):
        lo, hi = x.min(axis=0), x.max(axis=0)
        mid = ((lo + hi) / 2.0).astype(np.float32).astype(np.float64)
        tiny = 2.0 ** -100
        c = np.where((lo >= tiny) & (hi <= 4.0 * lo) & np.isfinite(hi), np.clip(mid, hi / 2.0, 2.0 * lo), 0.0)
        c = np.where((hi <= -tiny) & (lo >= 4.0 * hi) & np.isfinite(lo), np.clip(mid, 2.0 * hi, lo / 2.0), c)
    return np.where(np.isfinite(c), c, 0.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def kmeans(x: np.ndarray, k: int, iters: int = 10, metric: str = "l2") -> Result:
    """Lloyd's k-means from KKZ centres, `iters` updates; empty clusters keep their centre and are dropped at the end;
    each cluster is represented by its member nearest the centroid."""
    raw = np.asarray(x, np.float64)
    x = _unit(raw) if metric == "cosine" else raw
    if x.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros((0, x.shape[1])), np.zeros(0)
    centres = x[_kkz(x, k, raw)]
    for _ in range(iters):
        assign = _nearest(x, centres)
        for c in range(len(centres)):
            members = assign == c
            if members.any():
                centres[c] = x[members].mean(axis=0)
        if metric == "cosine":
            centres = _unit(centres)
    assign = _nearest(x, centres)
    shift = _shift(x)
    reps, tokens, sizes = [], [], []
    for c in range(len(centres)):
        members = np.flatnonzero(assign == c)
        if members.size == 0:
            continue
        d2 = ((x[members] - centres[c]) ** 2).sum(axis=1)
        sq = ((x[members] - shift) ** 2).sum(axis=1)
        reps.append(members[_first_min(d2, TIE * (sq + np.abs(d2 - ((centres[c] - shift) ** 2).sum())))])
        tokens.append(centres[c])
        sizes.append(members.size)
    return _sorted(np.array(reps), np.array(tokens), np.array(sizes, np.float64))


def kmedoids(x: np.ndarray, k: int, iters: int = 10, metric: str = "l2") -> Result:
    """k-medoids (alternating): KKZ medoids; assign to the nearest medoid; each cluster's new medoid is its member
    with the least sum of squared distances to the members; until stable or `iters` rounds."""
    x64 = np.asarray(x, np.float64)
    xs = _unit(x64) if metric == "cosine" else x64
    if xs.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros((0, xs.shape[1])), np.zeros(0)
    medoids = _kkz(xs, k, x64)
    shift = _shift(xs)
    for _ in range(iters):
        assign = _nearest(xs, xs[medoids])
        new = medoids.copy()
        for c in range(len(medoids)):
            members = np.flatnonzero(assign == c)
            if members.size:
                cost = ((xs[members][:, None, :] - xs[members][None, :, :]) ** 2).sum(-1).sum(axis=1)
                sq = ((xs[members] - shift) ** 2).sum(axis=1)
                new[c] = members[_first_min(cost, TIE * (members.size * sq + sq.sum()))]
        if np.array_equal(new, medoids):
            break
        medoids = new
    assign = _nearest(xs, xs[medoids])
    sizes = np.bincount(assign, minlength=len(medoids)).astype(np.float64)
    keep = sizes > 0
    return _sorted(medoids[keep], x64[medoids[keep]], sizes[keep])
