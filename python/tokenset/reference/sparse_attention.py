"""Reference sparse attention, plain numpy, float64: dense attention under the boolean mask the lists describe,
forward (out, lse) and backward (grad_q, grad_k, grad_v), and the list builders' references.

Semantics (as tokenset/sparse_attention.h): list ``(b, h, qb)`` of query block ``qb`` (rows ``qb * block_size`` ..)
names key blocks of ``key_block_size`` keys; causal keeps key ``j <= i + M - N``; a row that sees no key gives zeros
and ``lse = -inf``; query head ``h`` reads key head ``h // (H // Hkv)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np


def _sequences(x: np.ndarray, cu_seqlens: Optional[np.ndarray]) -> List[np.ndarray]:
    """Per batch ``[heads, length, dim]`` float64 pieces of a 4-D or a 3-D (varlen) array."""
    x = np.asarray(x, np.float64)
    if cu_seqlens is None:
        return [x[b] for b in range(x.shape[0])]
    cu = np.asarray(cu_seqlens, np.int64)
    return [x[cu[b]:cu[b + 1]].transpose(1, 0, 2) for b in range(len(cu) - 1)]


def block_mask(key_offsets: np.ndarray, key_index: np.ndarray, heads: int, query_lengths: Sequence[int],
               key_lengths: Sequence[int], block_size: int, key_block_size: int,
               causal: bool = False) -> List[np.ndarray]:
    """Per batch the boolean mask ``[heads, N_b, M_b]`` (True = attend) the lists describe."""
    masks, list_id = [], 0
    for n, m in zip(query_lengths, key_lengths):
        qblocks = -(-n // block_size)
        mask = np.zeros((heads, n, m), bool)
        for h in range(heads):
            for qb in range(qblocks):
                rows = slice(qb * block_size, min((qb + 1) * block_size, n))
                for kb in key_index[key_offsets[list_id]:key_offsets[list_id + 1]]:
                    mask[h, rows, kb * key_block_size:min((kb + 1) * key_block_size, m)] = True
                list_id += 1
        if causal:
            i = np.arange(n)[:, None]
            j = np.arange(m)[None, :]
            mask &= (j <= i + m - n)[None]
        masks.append(mask)
    return masks


def _masked_product(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``out[h, i, j] = sum over k with mask[h, i, k] of a[h, i, k] * b[h, k, j]``: pairs outside the mask never take
    part, so an inf in b meets no zero weight of an unlisted pair (0 * inf would make NaN of a row that never saw it)."""
    bad = ~np.isfinite(b)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.einsum("hik,hkj->hij", np.where(mask, a, 0.0), np.where(bad, 0.0, b))
        for h, k, j in zip(*np.nonzero(bad)):
            rows = mask[h, :, k]
            out[h, rows, j] += a[h, rows, k] * b[h, k, j]
    return out


def _attend(q, k, v, mask, scale):
    """One sequence, float64: (out [H, N, d], lse [H, N], probabilities [H, N, M]). A NaN score makes its row NaN;
    a row that sees no key gives zeros and lse -inf."""
    heads, kv_heads = q.shape[0], k.shape[0]
    group = heads // kv_heads
    kk = np.repeat(k, group, axis=0)
    vv = np.repeat(v, group, axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.where(mask, np.einsum("hnd,hmd->hnm", q, kk) * scale, -np.inf)  # NaN of unlisted pairs dropped
        top = s.max(axis=-1, keepdims=True) if s.shape[-1] else np.full(s.shape[:-1] + (1,), -np.inf)
        safe = np.where(np.isfinite(top), top, 0.0)
        e = np.where(mask, np.exp(s - safe), 0.0)
        total = e.sum(-1, keepdims=True)
        empty = total == 0  # NaN totals are not empty: they stay NaN
        p = np.where(empty, 0.0, e / np.where(empty, 1.0, total))
        lse = np.where(empty[..., 0], -np.inf, np.log(np.where(empty[..., 0], 1.0, total[..., 0])) + safe[..., 0])
        lse = np.where(np.isposinf(top[..., 0]), np.nan, lse)  # a +inf score: the row is NaN, its lse too
    return _masked_product(p, vv, mask), lse, p


def _pack(pieces: List[np.ndarray], like: np.ndarray, cu_seqlens) -> np.ndarray:
    if cu_seqlens is None:
        return np.stack(pieces) if pieces else np.zeros(like.shape)
    out = np.zeros(like.shape)
    cu = np.asarray(cu_seqlens, np.int64)
    for b, piece in enumerate(pieces):
        out[cu[b]:cu[b + 1]] = piece.transpose(1, 0, 2)
    return out


def sparse_attention(q, k, v, key_offsets, key_index, block_size: int = 64, key_block_size: Optional[int] = None,
                     causal: bool = False, scale: Optional[float] = None, cu_seqlens_q=None,
                     cu_seqlens_k=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(out, lse)`` in float64: out in q's layout, lse ``[B, H, N]`` (4-D) or ``[H, total]`` (3-D)."""
    key_block_size = block_size if key_block_size is None else key_block_size
    qs, ks, vs = _sequences(q, cu_seqlens_q), _sequences(k, cu_seqlens_k), _sequences(v, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    masks = block_mask(np.asarray(key_offsets), np.asarray(key_index), q.shape[1], [x.shape[1] for x in qs], [x.shape[1] for x in ks], block_size, key_block_size,
                       causal)
    outs, lses = [], []
    for qq, kk, vv, mask in zip(qs, ks, vs, masks):
        o, lse, _ = _attend(qq, kk, vv, mask, scale)
        outs.append(o)
        lses.append(lse)
    out = _pack(outs, q, cu_seqlens_q)
    if cu_seqlens_q is None:
        lse = np.stack(lses) if lses else np.zeros(q.shape[:3])
    else:
        full = np.zeros((q.shape[1], q.shape[0]))
        cu = np.asarray(cu_seqlens_q)
        for b, piece in enumerate(lses):
            full[:, cu[b]:cu[b + 1]] = piece
        lse = full
    return out, lse


def sparse_attention_backward(q, k, v, grad_out, key_offsets, key_index, block_size: int = 64,
                              key_block_size: Optional[int] = None, causal: bool = False,
                              scale: Optional[float] = None, cu_seqlens_q=None,
                              cu_seqlens_k=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_q, grad_k, grad_v)`` in float64 from the dense masked attention (dS = P * (dP - rowsum(dO * O)))."""
    key_block_size = block_size if key_block_size is None else key_block_size
    qs, ks, vs = _sequences(q, cu_seqlens_q), _sequences(k, cu_seqlens_k), _sequences(v, cu_seqlens_k)
    gs = _sequences(grad_out, cu_seqlens_q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    heads = q.shape[1]
    masks = block_mask(np.asarray(key_offsets), np.asarray(key_index), heads, [x.shape[1] for x in qs],
                       [x.shape[1] for x in ks], block_size, key_block_size, causal)
    dqs, dks, dvs = [], [], []
    for qq, kk, vv, go, mask in zip(qs, ks, vs, gs, masks):
        group = heads // kk.shape[0]
        o, lse, p = _attend(qq, kk, vv, mask, scale)
        # The backward recomputes P from the saved lse: a row whose lse is NaN (a NaN or +inf score) has NaN
        # probabilities for every key it lists, so its gradients reach those keys as NaN.
        p = np.where(np.isnan(lse)[..., None] & mask, np.nan, p)
        vv_rep = np.repeat(vv, group, axis=0)
        kk_rep = np.repeat(kk, group, axis=0)
        with np.errstate(invalid="ignore", over="ignore"):
            mask_t = mask.transpose(0, 2, 1)
            dv = _masked_product(p.transpose(0, 2, 1), go, mask_t)
            dp = np.where(mask, np.einsum("hnd,hmd->hnm", go, vv_rep), 0.0)
            ds = np.where(mask, p * (dp - (go * o).sum(-1, keepdims=True)), 0.0)
            dq = _masked_product(ds, kk_rep, mask) * scale
            dk = _masked_product(ds.transpose(0, 2, 1), qq, mask_t) * scale
        dqs.append(dq)
        dks.append(dk.reshape(kk.shape[0], group, *dk.shape[1:]).sum(1))
        dvs.append(dv.reshape(kk.shape[0], group, *dv.shape[1:]).sum(1))
    return _pack(dqs, q, cu_seqlens_q), _pack(dks, k, cu_seqlens_k), _pack(dvs, v, cu_seqlens_k)
