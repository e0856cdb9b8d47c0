"""Dense float64 reference of tokenset.attention_scores: the full softmax attention matrix of every (batch, head),
then the asked rows or the column mean, per head or summed / averaged over heads. Quadratic in memory on purpose."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def probabilities(q: np.ndarray, k: np.ndarray, scale: float, causal: bool) -> np.ndarray:
    """softmax(scale q k^T) for one (batch, head): q [N, d], k [M, d] -> [N, M] float64.

    Row i sees key j when j <= i + M - N (causal) or always. A row that sees nothing or only -inf scores is 0; a row
    with a visible NaN or +inf score is NaN over the keys it sees; hidden keys are 0."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    n, m = q.shape[0], k.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        s = scale * (q @ k.T) if q.shape[1] else np.zeros((n, m))
    visible = np.ones((n, m), bool)
    if causal:
        visible = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
    out = np.zeros((n, m))
    for i in range(n):
        row = s[i, visible[i]]
        if row.size == 0:
            continue
        if np.isnan(row).any() or np.isposinf(row).any():
            out[i, visible[i]] = np.nan
            continue
        top = row.max()
        if top == -np.inf:
            continue
        e = np.exp(row - top)
        out[i, visible[i]] = e / e.sum()
    return out


def attention_scores(q: Sequence[np.ndarray], k: Sequence[np.ndarray], rows: Optional[Sequence[Sequence[int]]],
                     reduce: str = "mean", causal: bool = False, scale: Optional[float] = None) -> list:
    """Per sequence b: q[b] [H, N_b, d], k[b] [Hkv, M_b, d]; rows[b] the row numbers (None: the column mean).

    Returns a list of float64 arrays: [H, R, M_b] / [R, M_b] (rows) or [H, M_b] / [M_b] (column mean over all N_b
    rows), per head (reduce "none") or summed / averaged over the H heads."""
    out = []
    for b in range(len(q)):
        qb, kb = np.asarray(q[b]), np.asarray(k[b])
        heads, group = qb.shape[0], qb.shape[0] // kb.shape[0]
        d = qb.shape[-1]
        sc = d ** -0.5 if scale is None else scale
        per_head = []
        for h in range(heads):
            p = probabilities(qb[h], kb[h // group], sc, causal)
            if rows is None:
                per_head.append(p.mean(axis=0) if p.shape[0] else np.zeros(p.shape[1]))
            else:
                per_head.append(p[np.asarray(rows[b], np.int64)])
        stacked = np.stack(per_head)
        if reduce == "sum":
            stacked = stacked.sum(axis=0)
        elif reduce == "mean":
            stacked = stacked.mean(axis=0)
        out.append(stacked)
    return out
