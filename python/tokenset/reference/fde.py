"""MUVERA Fixed Dimensional Encodings, written plainly from the algorithm (float64, loops over sets and partitions).

Per repetition ``r``, for a token ``x``:

* sign bits ``b_j = (x . simhash[r, :, j] > 0)``, appended in order as ``idx = (idx << 1) + (b_j ^ (idx & 1))``: the
  partition ``idx`` is the number whose Gray code ``idx ^ (idx >> 1)`` is the bit pattern ``b_0 b_1 ... b_{k-1}``;
* projection: ``x @ projection[r]`` (``[dim, proj_dim]``), or ``x`` itself (identity);
* queries sum the projected tokens of each partition, documents average them;
* documents with ``fill_empty``: an empty partition ``p`` takes the projected token whose bit pattern is nearest in
  Hamming distance to ``p ^ (p >> 1)`` (lowest token index on ties); a document without tokens stays zero;
* optional Count-Sketch: ``out[final_index[i]] += final_sign[i] * fde[i]``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def gray_code(p: int) -> int:
    """The bit pattern of partition ``p``: ``p ^ (p >> 1)``."""
    return p ^ (p >> 1)


def append_bit(idx: int, bit: int) -> int:
    """Appends one sign bit to a partition index, as the authors' C++ does."""
    return (idx << 1) + (bit ^ (idx & 1))


def sign_bits(tokens: np.ndarray, simhash: np.ndarray) -> np.ndarray:
    """``[n, reps, bits]`` booleans: token . hyperplane > 0 (NaN is not > 0)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        dots = np.einsum("nd,rdk->nrk", tokens, np.asarray(simhash, dtype=np.float64))
    return dots > 0


def partitions(tokens: np.ndarray, simhash: np.ndarray) -> np.ndarray:
    """``[n, reps]`` partition index of every token in every repetition."""
    bits = sign_bits(tokens, simhash)
    n, reps, k = bits.shape
    out = np.zeros((n, reps), dtype=np.int64)
    for t in range(n):
        for r in range(reps):
            idx = 0
            for j in range(k):
                idx = append_bit(idx, int(bits[t, r, j]))
            out[t, r] = idx
    return out


def _patterns(bits: np.ndarray) -> np.ndarray:
    """``[n, reps]`` bit patterns, first hyperplane most significant."""
    n, reps, k = bits.shape
    weights = 1 << np.arange(k - 1, -1, -1, dtype=np.int64)
    return (bits.astype(np.int64) * weights).sum(axis=2) if k else np.zeros((n, reps), np.int64)


def encode(sets: Sequence[np.ndarray], simhash: np.ndarray, projection: Optional[np.ndarray] = None, *,
           documents: bool, fill_empty: bool = False, final_index: Optional[np.ndarray] = None,
           final_sign: Optional[np.ndarray] = None, final_dim: Optional[int] = None,
           token_partitions: Optional[Sequence[np.ndarray]] = None,
           token_patterns: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """FDE of every set, ``[B, reps * 2**bits * proj_dim]`` (or ``[B, final_dim]``) in float64.

    ``simhash [reps, dim, bits]``; ``projection [reps, dim, proj_dim]`` or None (identity). ``token_partitions`` and
    ``token_patterns`` (``[n, reps]`` per set) replace the computed assignment: tests use them to bound rounding
    errors with the same partitions.
    """
    simhash = np.asarray(simhash, dtype=np.float64)
    reps, dim, k = simhash.shape
    parts = 1 << k
    pd = dim if projection is None else projection.shape[2]
    rows = []
    for s, tokens in enumerate(sets):
        tokens = np.asarray(tokens, dtype=np.float64).reshape(-1, dim)
        n = tokens.shape[0]
        if not documents and n == 0:
            raise ValueError(f"query {s} has no tokens: an empty query has no FDE")
        if token_partitions is None:
            bits = sign_bits(tokens, simhash)
            assign = partitions(tokens, simhash)
            pattern = _patterns(bits)
        else:
            assign = np.asarray(token_partitions[s]).reshape(n, reps)
            pattern = np.asarray(token_patterns[s]).reshape(n, reps)
        out = np.zeros((reps, parts, pd))
        for r in range(reps):
            with np.errstate(invalid="ignore", over="ignore"):
                projected = tokens if projection is None else tokens @ np.asarray(projection[r], dtype=np.float64)
            counts = np.zeros(parts, dtype=np.int64)
            for t in range(n):
                out[r, assign[t, r]] += projected[t]
                counts[assign[t, r]] += 1
            for p in range(parts):
                if counts[p] > 0:
                    if documents:
                        out[r, p] /= counts[p]
                elif documents and fill_empty and k > 0 and n > 0:
                    target = gray_code(p)
                    distances = [bin(int(pattern[t, r]) ^ target).count("1") for t in range(n)]
                    out[r, p] = projected[int(np.argmin(distances))]  # argmin: first minimum
        row = out.reshape(-1)
        if final_dim is not None:
            sketched = np.zeros(final_dim)
            np.add.at(sketched, np.asarray(final_index), np.asarray(final_sign, np.float64) * row)  # in index order
            row = sketched
        rows.append(row)
    width = final_dim if final_dim is not None else reps * parts * pd
    return np.array(rows, dtype=np.float64).reshape(len(rows), width)
