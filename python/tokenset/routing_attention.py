"""BiFormer's bi-level routing attention (Zhu et al., CVPR 2023), fused: regions are routed first, then every query
attends to the tokens of its region's routed regions through :func:`tokenset.sparse_attention`, reading K and V in
place (BiFormer gathers ``topk`` copies of them with ``torch.gather``).

1. The ``grid = (h, w)`` token grid (tokens in row-major order) is cut into ``regions x regions`` windows of
   ``ceil(h / regions) x ceil(w / regions)`` tokens.
2. Region queries and keys: the mean of q (and of k) over the window's tokens, over ALL channels (every head's
   ``d`` together, ``C = heads * d``), detached, as BiFormer's ``q_win`` / ``k_win``.
3. Affinity ``A = q_r @ k_r^T``; each region keeps its ``topk`` highest (ties to the lower region), the same regions
   for every head.
4. Each query attends with ``softmax(scale * q . k)`` over the tokens of its routed regions, per head.

Where ``h`` or ``w`` is not a multiple of ``regions``, BiFormer zero-pads the feature map and its padded tokens take
part in the pooling and the attention. Here the padding never takes part: border windows are smaller, pooled over
their real tokens only, and windows with no token at all are never routed to. On divisible grids the two agree.
The default scale is BiFormer's ``C ** -0.5`` (the full dimension, as its checkpoints were trained with), not the
per-head ``d ** -0.5``. LePE (BiFormer's depthwise-conv positional term on V) stays the caller's.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _array, _segments
from .sparse_attention import _int, attend, check_qkv, make_plan


def region_layout(grid: Tuple[int, int], regions: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """``(row_map, region_of_token, slot)``: the region-major logical order (``regions**2`` slots of
    ``slot = ceil(h / regions) * ceil(w / regions)`` positions, -1 where the window has no token there), and for each
    token of the row-major grid its region number."""
    gh, gw = grid
    rh, rw = -(-gh // regions), -(-gw // regions)
    slot = rh * rw
    ry, rx, ly, lx = np.meshgrid(np.arange(regions), np.arange(regions), np.arange(rh), np.arange(rw), indexing="ij")
    y, x = ry * rh + ly, rx * rw + lx
    inside = (y < gh) & (x < gw)
    row_map = np.where(inside, y * gw + x, -1).reshape(-1).astype(np.int64)
    yy, xx = np.divmod(np.arange(gh * gw), gw)
    region_of_token = (yy // rh) * regions + (xx // rw)
    return row_map, region_of_token.astype(np.int64), slot


def _namespace(x: Any):
    if _array.is_torch(x):
        return _array._torch()
    if _array.is_cupy(x):
        return _array._cupy()
    return np


def _moveaxis(x: Any, source: int, target: int) -> Any:
    return x.movedim(source, target) if _array.is_torch(x) else x.swapaxes(source, target)


def _region_means(x: Any, pool: Any, grid: Tuple[int, int], regions: int) -> Any:
    """``[B, H, R, d]`` float32 window means of ``[B, H, h * w, d]``: a reshaped sum over the windows when the grid
    divides (one read of x), else the averaging matrix ``pool [R, h * w]`` times x."""
    gh, gw = grid
    x = _segments.float32(x)  # detached: routing never carries gradients, as in BiFormer
    if gh % regions or gw % regions:
        return pool @ x
    b, h, _, d = x.shape
    rh, rw = gh // regions, gw // regions
    # Two reductions over contiguous runs (window rows, then window columns): ~8x faster in torch than one over both.
    rows = x.reshape(b, h, regions, rh, gw * d)
    rows = rows.sum(3) if _array.is_torch(x) else rows.sum(axis=3)
    cols = rows.reshape(b, h, regions, regions, rw, d)
    sums = cols.sum(4) if _array.is_torch(x) else cols.sum(axis=4)
    return sums.reshape(b, h, regions * regions, d) / float(rh * rw)


def route(q: Any, k: Any, grid: Tuple[int, int], regions: int, topk: int,
          region_of_token: Optional[np.ndarray] = None) -> np.ndarray:
    """``[B, regions**2, min(topk, non-empty regions)]`` int64 routed regions (sorted ascending) of every query
    region; rows of empty query regions route to the same regions as any other (they have no queries)."""
    xp = _namespace(q)
    batch, heads, n, dim = q.shape
    if region_of_token is None:
        _, region_of_token, _ = region_layout(grid, regions)
    count = regions * regions
    sizes = np.bincount(region_of_token, minlength=count).astype(np.float64)
    pool_x = None
    if grid[0] % regions or grid[1] % regions:  # the averaging matrix, for windows of unequal sizes
        pool = np.zeros((count, n), np.float32)
        pool[region_of_token, np.arange(n)] = 1.0 / np.maximum(sizes[region_of_token], 1.0)
        pool_x = _segments.from_host(pool, _array.library(q), _array.device(q))
    heads_k = k.shape[1]
    group = heads // heads_k
    # Region means over every channel: [B, R, H * d] for q; k's heads repeated as the query heads read them.
    q_r = _moveaxis(_region_means(q, pool_x, grid, regions), 1, 2).reshape(batch, count, heads * dim)
    k_pooled = _moveaxis(_region_means(k, pool_x, grid, regions), 1, 2)  # [B, Hkv, R, d] -> [B, R, Hkv, d]
    if group > 1:
        k_pooled = (k_pooled.repeat_interleave(group, 2) if _array.is_torch(k_pooled)
                    else xp.repeat(k_pooled, group, axis=2))
    k_r = k_pooled.reshape(batch, count, heads * dim)
    affinity = np.asarray(_array.host_copy(xp.einsum("brc,bsc->brs", q_r, k_r)), np.float64)
    affinity = np.where(np.isnan(affinity), -np.inf, affinity)
    empty = sizes == 0
    affinity[:, :, empty] = -np.inf
    keep = min(topk, int((~empty).sum()))
    order = np.argsort(-affinity, axis=-1, kind="stable")[..., :keep]  # ties: the lower region first
    # A NaN or -inf affinity still routes (to the lowest such region): only empty regions are never routed to.
    return np.sort(order, axis=-1)


def routing_attention(q: Any, k: Any, v: Any, grid: Sequence[int], regions: int = 7, topk: int = 4,
                      scale: Optional[float] = None, *, return_routes: bool = False):
    """Bi-level routing attention of a token grid.

    Args:
        q: ``[B, H, h * w, d]`` (tokens of the ``grid`` in row-major order); k, v: ``[B, Hkv, h * w, d]``
            (``H`` a multiple of ``Hkv``); float32, float16 or bfloat16; numpy, torch or cupy.
        grid: ``(h, w)``.
        regions: windows per side (BiFormer's ``n_win``, 7).
        topk: routed regions per query region (4; capped at the non-empty regions).
        scale: attention scale, default ``(H * d) ** -0.5`` (BiFormer's; pass ``d ** -0.5`` for the per-head one).
        return_routes: also return the routed regions ``[B, regions**2, topk]`` (int64, sorted).

    Returns:
        ``out`` like q (and the routes). Differentiable for torch tensors (q, k and v; the routing itself is
        detached, as in BiFormer).

    >>> import numpy as np, tokenset
    >>> x = np.random.default_rng(0).standard_normal((1, 2, 16, 8)).astype(np.float32)
    >>> out, routes = tokenset.routing_attention(x, x, x, grid=(4, 4), regions=2, topk=2, return_routes=True)
    >>> out.shape, routes.shape
    ((1, 2, 16, 8), (1, 4, 2))
    """
    q, k, v = check_qkv(q, k, v)
    if q.ndim != 4:
        raise ValueError(f"routing_attention takes 4-D q, k, v [batch, heads, h * w, dim], got {q.ndim}-D")
    if len(tuple(grid)) != 2:
        raise ValueError(f"grid must be (h, w), got {grid!r}")
    gh, gw = (_int(g, "grid") for g in grid)
    regions, topk = _int(regions, "regions"), _int(topk, "topk")
    if gh < 1 or gw < 1 or regions < 1 or topk < 1:
        raise ValueError(f"grid sides, regions and topk must be >= 1, got grid={grid!r}, regions={regions}, "
                         f"topk={topk}")
    if q.shape[2] != gh * gw or k.shape[2] != gh * gw:
        raise ValueError(f"q and k must hold the grid's {gh} x {gw} = {gh * gw} tokens, got {q.shape[2]} and "
                         f"{k.shape[2]}")
    batch, heads = int(q.shape[0]), int(q.shape[1])
    row_map, region_of_token, slot = region_layout((gh, gw), regions)
    routes = route(q, k, (gh, gw), regions, topk, region_of_token)
    count = regions * regions
    # Lists (b, h, query region): the routed regions, the same for every head; key blocks are region slots.
    per_list = routes.shape[-1]
    key_index = np.broadcast_to(routes[:, None], (batch, heads, count, per_list)).reshape(-1)
    key_offsets = np.arange(batch * heads * count + 1, dtype=np.int64) * per_list
    if scale is None:
        scale = float((heads * q.shape[3]) ** -0.5)
    plan = make_plan(q, key_offsets, key_index, slot, slot, False, scale, None, None, row_map=_array.frozen(row_map))
    out = attend(q, k, v, plan, False)
    return (out, routes) if return_routes else out
