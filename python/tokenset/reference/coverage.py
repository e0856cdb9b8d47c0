"""Reference greedy maximum coverage (MMTok), written from the paper in plain numpy.

MMTok (Dong et al., 2025): text-vision coverage P = softmax(t_i . v_j / tau_text over j) / m, vision-vision coverage
Q = softmax(v_i . v_j / tau_vision over j) / n (L2-normalised embeddings; the second may come from another feature
space), C = [P; w Q]. Greedy: gain(j) = sum_r max(0, C[r, j] - best[r]); pick the unpicked argmax (lowest index on
ties); best = max(best, C[:, j]). Gains are float32 sums over rows in row order (the kernels' order); NaN entries
cover nothing.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, a zero row's norm clamped at 1e-8 (as MMTok)."""
    x = np.asarray(x, np.float32)
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True)).astype(np.float32)
    return x / np.maximum(norm, np.float32(1e-8))


def softmax_rows(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def mmtok_matrix(vision: np.ndarray, text: Optional[np.ndarray] = None, vision_keys: Optional[np.ndarray] = None,
                 text_temperature: float = 0.01, vision_temperature: float = 0.2,
                 vision_weight: float = 0.5) -> np.ndarray:
    """C = [P; w Q] as float32 [m + n, n] (just w Q without text)."""
    v = unit(vision)
    n = v.shape[0]
    keys = unit(vision_keys) if vision_keys is not None else v
    q = softmax_rows(keys.astype(np.float64) @ keys.T.astype(np.float64) / vision_temperature) / n
    parts = []
    if text is not None and len(text):
        t = unit(text)
        p = softmax_rows(t.astype(np.float64) @ v.T.astype(np.float64) / text_temperature) / t.shape[0]
        parts.append(p)
    parts.append(vision_weight * q)
    return np.concatenate(parts, axis=0).astype(np.float32)


def coverage_set(matrix: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(indices in pick order, gains)`` of the greedy on one coverage matrix [rows, cols] (float32)."""
    c = np.asarray(matrix, np.float32)
    rows, cols = c.shape
    best = np.zeros(rows, np.float32)
    picked = np.zeros(cols, bool)
    order, gains = [], []
    for _ in range(min(int(k), cols)):
        gain = np.zeros(cols, np.float32)
        for r in range(rows):  # float32, row by row: the kernels' summation order
            diff = c[r] - best[r]
            gain += np.where(diff > 0, diff, np.float32(0))
        masked = np.where(picked, -np.inf, gain)
        j = int(np.argmax(masked))
        order.append(j)
        gains.append(gain[j])
        picked[j] = True
        col = c[:, j]
        best = np.where(col > best, col, best)
    return np.array(order, np.int64), np.array(gains, np.float32)


def objective(matrix: np.ndarray, picks: np.ndarray) -> float:
    """sum_r max(0, max_{j in picks} C[r, j]) in float64: what the greedy maximises."""
    c = np.asarray(matrix, np.float64)[:, np.asarray(picks, np.int64)]
    if c.shape[1] == 0:
        return 0.0
    return float(np.maximum(np.nan_to_num(c, nan=0.0).max(axis=1), 0).sum())
