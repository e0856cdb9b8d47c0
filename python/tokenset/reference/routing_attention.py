"""Reference bi-level routing attention, plain numpy, float64.

- :func:`biformer`: a transcription of BiFormer's published algorithm (rayleizhu/BiFormer, ``ops/torch/rrsda.py`` with
  ``nchwBRA``'s routing) for grids divisible by the region count: regions rearranged to sequences, means over all
  channels, ``a_r = q_r @ k_r^T``, top-k, K / V gathered per query region, softmax attention per head.
- :func:`routing_attention`: tokenset's semantics on any grid (windows of ``ceil(h / regions) x ceil(w / regions)``,
  padding never pooled or attended, empty windows never routed), as a dense masked attention.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _softmax(s: np.ndarray) -> np.ndarray:
    top = s.max(-1, keepdims=True)
    e = np.exp(s - top)
    return e / e.sum(-1, keepdims=True)


def _topk(affinity: np.ndarray, topk: int) -> np.ndarray:
    return np.argsort(-affinity, axis=-1, kind="stable")[..., :topk]


def biformer(q, k, v, grid: Tuple[int, int], regions: int, topk: int, scale: float) -> np.ndarray:
    """``[B, H, h * w, d]`` q, k, v (equal head counts) -> out, as BiFormer computes it (divisible grids)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, heads, n, dim = q.shape
    gh, gw = grid
    assert gh % regions == 0 and gw % regions == 0, "BiFormer's transcription needs a divisible grid"
    sh, sw = gh // regions, gw // regions

    def to_sequences(x):  # [B, H, N, d] -> [B, H, regions^2, sh * sw, d]
        x = x.reshape(batch, heads, regions, sh, regions, sw, dim)
        return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, regions * regions, sh * sw, dim)

    qs, ks, vs = to_sequences(q), to_sequences(k), to_sequences(v)
    # Region means over all channels (heads concatenated), routing shared by every head.
    q_r = qs.mean(3).transpose(0, 2, 1, 3).reshape(batch, regions * regions, heads * dim)
    k_r = ks.mean(3).transpose(0, 2, 1, 3).reshape(batch, regions * regions, heads * dim)
    routes = _topk(q_r @ k_r.transpose(0, 2, 1), topk)  # [B, R, topk]
    out = np.empty_like(qs)
    for b in range(batch):
        for r in range(regions * regions):
            k_g = ks[b][:, routes[b, r]].reshape(heads, -1, dim)  # the gathered copy BiFormer makes
            v_g = vs[b][:, routes[b, r]].reshape(heads, -1, dim)
            p = _softmax((qs[b, :, r] * scale) @ k_g.transpose(0, 2, 1))
            out[b, :, r] = p @ v_g
    out = out.reshape(batch, heads, regions, regions, sh, sw, dim).transpose(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(batch, heads, n, dim)


def windows(grid: Tuple[int, int], regions: int) -> np.ndarray:
    """The window number of every token of the row-major grid (windows of ceil(h / regions) x ceil(w / regions))."""
    gh, gw = grid
    rh, rw = -(-gh // regions), -(-gw // regions)
    y, x = np.divmod(np.arange(gh * gw), gw)
    return (y // rh) * regions + x // rw


def routes(q, k, grid: Tuple[int, int], regions: int, topk: int) -> np.ndarray:
    """``[B, R, min(topk, non-empty windows)]`` routed windows, sorted."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, heads, n, dim = q.shape
    group = heads // k.shape[1]
    k = np.repeat(k, group, axis=1)
    window = windows(grid, regions)
    count = regions * regions
    q_r = np.zeros((batch, count, heads * dim))
    k_r = np.zeros((batch, count, heads * dim))
    sizes = np.bincount(window, minlength=count)
    for r in range(count):
        if sizes[r]:
            q_r[:, r] = q[:, :, window == r].mean(2).reshape(batch, -1)
            k_r[:, r] = k[:, :, window == r].mean(2).reshape(batch, -1)
    affinity = q_r @ k_r.transpose(0, 2, 1)
    affinity[:, :, sizes == 0] = -np.inf
    keep = min(topk, int((sizes > 0).sum()))
    return np.sort(_topk(affinity, keep), axis=-1)


def routing_attention(q, k, v, grid: Tuple[int, int], regions: int, topk: int, scale: float) -> np.ndarray:
    """tokenset's routing attention on any grid, float64, as a dense attention under the routed-window mask."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, heads, n, dim = q.shape
    group = heads // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    window = windows(grid, regions)
    routed = routes(q, k[:, ::group], grid, regions, topk)
    out = np.empty_like(q)
    for b in range(batch):
        allowed = np.zeros((regions * regions, regions * regions), bool)
        np.put_along_axis(allowed, routed[b], True, axis=1)
        mask = allowed[window[:, None], window[None, :]]  # token i sees token j when j's window is routed from i's
        s = np.where(mask, (q[b] * scale) @ k[b].transpose(0, 2, 1), -np.inf)
        out[b] = _softmax(s) @ v[b]
    return out
