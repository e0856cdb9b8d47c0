"""Plain numpy reference of int8 tokens (tokenset.quantize) and of MaxSim on them: per token, per pair, in the
kernels' float32 arithmetic, so that the tests compare bit for bit.

quantize:  s_t = max_k |x_tk| / 127 (float32), q_tk = rint(x_tk / s_t) clipped to [-127, 127]; s_t = 0 -> codes 0.
maxsim:    m_i = max_j float32(<q_i, d_j>) * s_j (exact integer dot product), score = sum_i t_i * m_i in token order.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


def quantize_token(x: np.ndarray) -> Tuple[np.ndarray, np.float32]:
    x = np.asarray(x, dtype=np.float32)
    scale = np.float32(np.max(np.abs(x)) / np.float32(127)) if x.size else np.float32(0)
    if not np.isfinite(scale):
        raise ValueError("NaN or infinity cannot be quantised")
    if scale == 0:
        return np.zeros(x.shape, np.int8), np.float32(0)
    codes = np.clip(np.rint(x / scale), -127, 127)
    return codes.astype(np.int8), scale


def quantize(sets: Sequence[np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per set: (codes int8 [n, d], scales float32 [n])."""
    out = []
    for s in sets:
        pairs = [quantize_token(row) for row in np.asarray(s, dtype=np.float32)]
        codes = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, np.shape(s)[1]), np.int8)
        out.append((codes, np.array([p[1] for p in pairs], np.float32)))
    return out


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scales.astype(np.float32)[:, None]


def maxsim_int8_one(query: Tuple[np.ndarray, np.ndarray], document: Tuple[np.ndarray, np.ndarray],
                    return_argmax: bool = False):
    """Score (float32) of one quantised query against one quantised document (and the argmax per query token)."""
    (q, t), (d, s) = query, document
    if q.shape[0] == 0:
        raise ValueError("an empty query has no MaxSim score")
    if d.shape[0] == 0:
        score, arg = np.float32(-np.inf), np.full(q.shape[0], -1, np.int64)
        return (score, arg) if return_argmax else score
    dots = q.astype(np.int64) @ d.astype(np.int64).T  # exact
    sims = dots.astype(np.float32) * s.astype(np.float32)[None, :]  # float32(dot) * s_j, one rounding
    maxima = sims.max(axis=1)
    total = np.float32(0)
    for i in range(q.shape[0]):
        total = np.float32(total + np.float32(t[i] * maxima[i]))
    return (total, sims.argmax(axis=1)) if return_argmax else total


def maxsim_int8(queries, documents) -> np.ndarray:
    """All pairs [len(queries), len(documents)] float32 of (codes, scales) pairs."""
    out = np.empty((len(queries), len(documents)), np.float32)
    for a, q in enumerate(queries):
        for b, d in enumerate(documents):
            out[a, b] = maxsim_int8_one(q, d)
    return out


def error_bound(queries: Sequence[np.ndarray], quantized_queries, documents: Sequence[np.ndarray],
                quantized_documents) -> np.ndarray:
    """Bound [nq, nd] on |int8 MaxSim - exact MaxSim of the original tokens| (before float32 rounding):
    sum_i max_j (t_i / 2 * ||d_j||_1 + s_j / 2 * ||q^_i||_1), since each element is off by at most half its scale."""
    out = np.zeros((len(queries), len(documents)))
    for a, (qc, t) in enumerate(quantized_queries):
        q_hat_l1 = np.abs(qc.astype(np.float64) * t[:, None]).sum(axis=1)
        for b, d in enumerate(documents):
            if len(d) == 0:
                continue
            dc, s = quantized_documents[b]
            d_l1 = np.abs(np.asarray(d, np.float64)).sum(axis=1)
            per = t[:, None] / 2.0 * d_l1[None, :] + s[None, :] / 2.0 * q_hat_l1[:, None]
            out[a, b] = per.max(axis=1).sum()
    return out
