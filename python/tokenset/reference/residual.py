"""Plain numpy reference of the PLAID residual codec (tokenset.ResidualCodec) and of MaxSim scored on its codes.

Codec (ColBERT / PLAID's rules, ../shared/ANCHORS.md):
  centroids:      2^floor(log2(16 sqrt(tokens))) of them, k-means on a sample, L2-normalised, float16;
  centroid id:    argmax_c <x, C_c> (lowest c on ties);
  residual:       r = x - C_id (float32);
  bucket cutoffs: quantiles of all sample residual values at i / 2^b, i = 1 .. 2^b - 1;
  bucket weights: quantiles at (i + 0.5) / 2^b, i = 0 .. 2^b - 1;
  code:           the number of cutoffs strictly below the value (torch.bucketize, right=False);
  packing:        bit j of a code is (code >> j) & 1, least significant first, dims in order, then np.packbits (the
                  first bit is the byte's most significant): dim * b / 8 bytes per token;
  reconstruction: v = C_id + weights[code] (float32), stored with n = 1 / ||v|| (0 when v = 0);
  decode:         v * n (PLAID divides by the norm in float16: the same numbers within float16 rounding).

The norm's sum of squares is taken in a fixed order, as every kernel does (bit-identical across SIMD levels and
devices): 16 partial sums, partial[l] = sum over k = l (mod 16) of float32(v_k * v_k) added in k order, then halves
added pairwise (l + 8, l + 4, l + 2, l + 1).

MaxSim on codes (per-query lookup tables, never decompressing a token):
  query token i is quantised like tokenset.quantize (s_i = max |q_i| / 127, q8 = rint(q_i / s_i)); the weights too
  (s_w = max |weights| / 127, w8 = rint(weights / s_w));
  centroid table: cs[i, c] = <q_i, C_c> (float32);
  sim(i, t) = n_t * (cs[i, id_t] + f_i * float32(<q8_i, w8[code_t]>)), f_i = float32(s_i * s_w), the dot exact;
  score = sum_i max_t sim(i, t) in query-token order; an empty document scores -inf.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .quantize import quantize_token


def centroid_count(tokens: int) -> int:
    """PLAID's number of centroids for a corpus of `tokens` tokens: 2^floor(log2(16 sqrt(tokens)))."""
    return int(2 ** np.floor(np.log2(16 * np.sqrt(max(int(tokens), 1)))))


def buckets(residuals: np.ndarray, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """(cutoffs [2^b - 1], weights [2^b]) float32: quantiles of all residual values (linear interpolation, as
    torch.quantile)."""
    flat = np.asarray(residuals, np.float32).ravel()
    levels = 1 << bits
    cutoffs = np.quantile(flat, np.arange(1, levels) / levels)
    weights = np.quantile(flat, (np.arange(levels) + 0.5) / levels)
    return cutoffs.astype(np.float32), weights.astype(np.float32)


def nearest_centroid(tokens: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    sims = np.asarray(tokens, np.float64) @ np.asarray(centroids, np.float64).T
    return sims.argmax(axis=1).astype(np.int32) if len(tokens) else np.zeros(0, np.int32)


def bucketize(residuals: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
    return np.searchsorted(cutoffs, residuals, side="left").astype(np.uint8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes [n, d] -> uint8 [n, d * bits / 8] (PLAID's bit order)."""
    n, d = codes.shape
    stream = (codes[:, :, None].astype(np.uint8) >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(n, d * bits), axis=1)


def unpack(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    n = packed.shape[0]
    stream = np.unpackbits(packed, axis=1)[:, : dim * bits].reshape(n, dim, bits)
    return (stream.astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(axis=2).astype(np.uint8)


def inverse_norms(v: np.ndarray) -> np.ndarray:
    """1 / ||v|| per row, float32, the sum of squares in the kernels' fixed order (0 for a zero row)."""
    v = np.asarray(v, np.float32)
    n, d = v.shape
    squares = np.zeros((n, -(-d // 16) * 16), np.float32)
    squares[:, :d] = v * v
    partial = np.zeros((n, 16), np.float32)
    for k0 in range(0, squares.shape[1], 16):
        partial = partial + squares[:, k0:k0 + 16]
    for half in (8, 4, 2, 1):
        partial = partial[:, :half] + partial[:, half:2 * half]
    total = partial[:, 0]
    with np.errstate(divide="ignore"):
        out = np.float32(1) / np.sqrt(total)
    return np.where(total > 0, out, np.float32(0)).astype(np.float32)


def encode(tokens: np.ndarray, centroids: np.ndarray, cutoffs: np.ndarray, weights: np.ndarray, bits: int):
    """(centroid ids int32 [n], packed uint8 [n, d * b / 8], inverse norms float32 [n])."""
    x = np.asarray(tokens, np.float32)
    c = np.asarray(centroids, np.float32)
    ids = nearest_centroid(x, c)
    codes = bucketize(x - c[ids], cutoffs)
    v = c[ids] + np.asarray(weights, np.float32)[codes]
    return ids, pack(codes, bits), inverse_norms(v)


def reconstruct(ids, packed, centroids, weights, bits) -> np.ndarray:
    """C_id + weights[code], float32 [n, d] (not normalised)."""
    c = np.asarray(centroids, np.float32)
    codes = unpack(packed, bits, c.shape[1])
    return c[ids] + np.asarray(weights, np.float32)[codes]


def decode(ids, packed, norms, centroids, weights, bits) -> np.ndarray:
    return reconstruct(ids, packed, centroids, weights, bits) * np.asarray(norms, np.float32)[:, None]


def quantized_weights(weights: np.ndarray) -> Tuple[np.ndarray, np.float32]:
    return quantize_token(np.asarray(weights, np.float32))


def maxsim_one(query: np.ndarray, ids, packed, norms, centroids, weights, bits) -> np.float32:
    """The LUT score of one float query against one coded document (the kernels' arithmetic; the centroid table in
    float64 rounded to float32, where the kernels chain float32 FMAs: compare within a few ulps)."""
    q = np.asarray(query, np.float32)
    if q.shape[0] == 0:
        raise ValueError("an empty query has no MaxSim score")
    if len(ids) == 0:
        return np.float32(-np.inf)
    c = np.asarray(centroids, np.float32)
    w8, s_w = quantized_weights(weights)
    codes = unpack(packed, bits, c.shape[1])
    expanded = w8.astype(np.int64)[codes]  # [n, d]
    cs = (q.astype(np.float64) @ c.astype(np.float64).T).astype(np.float32)  # [nq, C]
    total = np.float32(0)
    for i in range(q.shape[0]):
        q8, s_i = quantize_token(q[i])
        f = np.float32(s_i * s_w)
        dots = (expanded @ q8.astype(np.int64)).astype(np.float32)
        sims = np.float32(norms) * (cs[i, ids] + f * dots)
        total = np.float32(total + sims.max())
    return total


def maxsim(queries: Sequence[np.ndarray], documents, centroids, weights, bits) -> np.ndarray:
    """All pairs [len(queries), len(documents)] float32; documents: (ids, packed, norms) per document."""
    out = np.empty((len(queries), len(documents)), np.float32)
    for a, q in enumerate(queries):
        for b, (ids, packed, norms) in enumerate(documents):
            out[a, b] = maxsim_one(q, ids, packed, norms, centroids, weights, bits)
    return out


def lut_error_bound(query: np.ndarray, ids, packed, norms, centroids, weights, bits) -> float:
    """Bound on |LUT score - MaxSim of the query against decode(...)| (before float32 rounding): per pair, the int8
    query is off by at most s_i / 2 per element and each int8 weight by s_w / 2, so
    |n_t (<q_i, w[code]> - f_i <q8_i, w8[code]>)| <= n_t (s_i / 2 ||w[code]||_1 + s_w / 2 ||q8_i s_i||_1 + ...)."""
    q = np.asarray(query, np.float64)
    if len(ids) == 0:
        return 0.0
    w = np.asarray(weights, np.float64)
    w8, s_w = quantized_weights(weights)
    codes = unpack(packed, bits, np.shape(centroids)[1])
    w_l1 = np.abs(w[codes]).sum(axis=1)  # [n]
    total = 0.0
    for i in range(q.shape[0]):
        _, s_i = quantize_token(q[i].astype(np.float32))
        per = np.asarray(norms, np.float64) * (s_i / 2 * w_l1 + s_w / 2 * (np.abs(q[i]).sum() + s_i / 2 * q.shape[1]))
        total += per.max()
    return total
