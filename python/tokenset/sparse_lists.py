"""Builders of the CSR key lists :func:`tokenset.sparse_attention` reads, from a block mask, from top-k block scores
(MInference / FlexPrefill style) and from AnchorAttention's anchors (stripes).

Each returns :class:`SparseLists` ``(key_offsets, key_index, block_size, key_block_size)`` (int64 numpy lists), in
the order of sparse_attention's positional arguments::

    lists = tokenset.topk_block_lists(q, k, density=0.1, causal=True)
    out = tokenset.sparse_attention(q, k, v, *lists, causal=True)

The builders score on the host in float32, one (batch, head) at a time: memory is one head's pooled scores
(``ceil(N / block_size) x ceil(M / key_block_size)`` floats) or, for the anchors, one query chunk's anchor scores
(``chunk x (initial + local keys)``), never ``[B, H, N / chunk, N]``. CUDA inputs are copied to the host one head at
a time.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _array
from .sparse_attention import _int


class SparseLists(NamedTuple):
    """CSR key lists: list ``(b, h, qb)`` is ``key_index[key_offsets[l]:key_offsets[l + 1]]``."""

    key_offsets: np.ndarray
    key_index: np.ndarray
    block_size: int
    key_block_size: int


def list_density(lists: SparseLists, query_length: int, key_length: int) -> float:
    """The fraction of all (query, key) pairs the lists name, for 4-D inputs of N queries and M keys per sequence
    (causal masking not counted)."""
    key_offsets, key_index, block_size, key_block_size = lists
    key_offsets, key_index = np.asarray(key_offsets, np.int64), np.asarray(key_index, np.int64)
    sizes = np.minimum((key_index + 1) * key_block_size, key_length) - key_index * key_block_size
    cumulative = np.concatenate([[0], np.cumsum(sizes)])
    per_list = cumulative[key_offsets[1:]] - cumulative[key_offsets[:-1]]
    qblocks = -(-query_length // block_size)
    rows = np.minimum((np.arange(qblocks) + 1) * block_size, query_length) - np.arange(qblocks) * block_size
    sequences = len(per_list) // max(qblocks, 1)
    return float((per_list.reshape(sequences, qblocks) * rows).sum()) / max(1, sequences * query_length * key_length)


def _csr(per_list) -> tuple:
    counts = np.fromiter((len(x) for x in per_list), np.int64, len(per_list))
    offsets = np.zeros(len(per_list) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    index = np.concatenate(per_list).astype(np.int64) if per_list else np.zeros(0, np.int64)
    return offsets, index


def lists_from_block_mask(mask: Any, block_size: int = 64, key_block_size: Optional[int] = None,
                          batch: Optional[int] = None, heads: Optional[int] = None) -> SparseLists:
    """Lists from a boolean block mask ``[B, H, ceil(N / block_size), ceil(M / key_block_size)]`` (True = attend);
    a B or H extent of 1 is broadcast to ``batch`` / ``heads`` when given (FlexAttention's BlockMask convention).

    >>> import numpy as np, tokenset
    >>> mask = np.array([[[[True, False], [True, True]]]])
    >>> tokenset.lists_from_block_mask(mask, block_size=64)[:2]
    (array([0, 1, 3]), array([0, 0, 1]))
    """
    m = _array.host_copy(mask, "mask")
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True = attend), got dtype {m.dtype}")
    if m.ndim != 4:
        raise ValueError(f"mask must be 4-D [batch, heads, query blocks, key blocks], got shape {tuple(m.shape)}")
    block_size = _int(block_size, "block_size")
    key_block_size = block_size if key_block_size is None else _int(key_block_size, "key_block_size")
    b = m.shape[0] if batch is None else _int(batch, "batch")
    h = m.shape[1] if heads is None else _int(heads, "heads")
    if m.shape[0] not in (1, b) or m.shape[1] not in (1, h):
        raise ValueError(f"mask of shape {tuple(m.shape)} cannot broadcast to batch {b} and heads {h}")
    if block_size < 1 or key_block_size < 1:
        raise ValueError(f"block_size and key_block_size must be >= 1, got {block_size} and {key_block_size}")
    m = np.broadcast_to(m, (b, h) + m.shape[2:]).reshape(b * h * m.shape[2], m.shape[3])
    counts = m.sum(1)
    offsets = np.zeros(len(m) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    index = np.nonzero(m)[1].astype(np.int64)  # row-major: every list in ascending order
    return SparseLists(offsets, index, block_size, key_block_size)


def _head(x: Any, b: int, h: int) -> np.ndarray:
    """One head ``[length, d]`` as a float32 numpy array (a view when it already is one)."""
    return np.asarray(_array.host_copy(x[b, h], "q/k"), dtype=np.float32)


def _block_means(x: np.ndarray, block: int) -> np.ndarray:
    n = x.shape[0]
    starts = np.arange(0, n, block)
    if n == 0:
        return np.zeros((0, x.shape[1]), np.float32)
    sums = np.add.reduceat(x, starts, axis=0)
    return sums / np.minimum(block, n - starts)[:, None].astype(np.float32)


def _check_4d(q: Any, k: Any) -> None:
    for x, name in ((q, "q"), (k, "k")):
        if not _array.is_array(x, name) or x.ndim != 4:
            raise ValueError(f"{name} must be a 4-D array [batch, heads, length, dim]")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or k.shape[1] < 1 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and dim, with the query heads "
                         f"a multiple of the key heads")


def topk_block_lists(q: Any, k: Any, topk: Optional[int] = None, density: Optional[float] = None,
                     block_size: int = 64, key_block_size: Optional[int] = None, causal: bool = False,
                     sink_blocks: int = 0, local_blocks: int = 0, scale: Optional[float] = None) -> SparseLists:
    """Per (batch, head, query block): the key blocks of highest pooled score, as MInference's block-sparse pattern
    and FlexPrefill's estimate: q and k mean-pooled over each block, score ``scale * q_pool . k_pool``.

    Args:
        q: ``[B, H, N, d]``; k: ``[B, Hkv, M, d]`` (query head h reads key head ``h // (H // Hkv)``).
        topk: key blocks per list; or ``density``: ``ceil(density x visible key blocks)`` per list.
        causal: only key blocks holding a key some row of the block can see (``j <= i + M - N``) compete.
        sink_blocks: the first visible key blocks always kept (attention sinks), beyond the top-k.
        local_blocks: the last visible key blocks always kept (the diagonal), beyond the top-k.
        scale: default ``d ** -0.5`` (the order, hence the lists, does not depend on it).

    Ties go to the lower key block. Returns :class:`SparseLists`.
    """
    _check_4d(q, k)
    if (topk is None) == (density is None):
        raise ValueError("give exactly one of topk (key blocks per list) and density (a fraction of the visible "
                         "key blocks)")
    if topk is not None and _int(topk, "topk") < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    if density is not None and not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    block_size = _int(block_size, "block_size")
    key_block_size = block_size if key_block_size is None else _int(key_block_size, "key_block_size")
    sink_blocks, local_blocks = _int(sink_blocks, "sink_blocks"), _int(local_blocks, "local_blocks")
    if min(block_size, key_block_size) < 1 or min(sink_blocks, local_blocks) < 0:
        raise ValueError("block sizes must be >= 1 and sink_blocks / local_blocks >= 0")
    batch, heads, n, dim = (int(s) for s in q.shape)
    m = int(k.shape[2])
    group = heads // int(k.shape[1])
    scale = dim ** -0.5 if scale is None else float(scale)
    qblocks, kblocks = -(-n // block_size), -(-m // key_block_size)
    last_row = np.minimum((np.arange(qblocks) + 1) * block_size, n) - 1
    # visible[qb]: key blocks 0 .. visible[qb]-1 hold a key the block's last row may see.
    horizon = last_row + (m - n) + 1 if causal else np.full(qblocks, m)
    visible = np.clip(-(-np.maximum(horizon, 0) // key_block_size), 0, kblocks)
    counts = (np.full(qblocks, int(topk)) if topk is not None
              else np.ceil(np.round(float(density) * visible, 9)).astype(np.int64))  # 0.07 x 100 is 7, not 8
    counts = np.minimum(counts, visible)
    columns = np.arange(kblocks)[None, :]
    seen = columns < visible[:, None]
    forced = seen & ((columns < sink_blocks) | (columns >= (visible - local_blocks)[:, None]))
    per_list = []
    for b in range(batch):
        pooled_k = {}
        for h in range(heads):
            g = h // group
            if g not in pooled_k:
                pooled_k[g] = _block_means(_head(k, b, g), key_block_size)
            scores = (_block_means(_head(q, b, h), block_size) @ pooled_k[g].T) * scale
            scores = np.where(np.isnan(scores) | ~seen, -np.inf, scores)
            order = np.argsort(-scores, axis=1, kind="stable")  # ties: the lower key block first
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(kblocks)[None, :].repeat(qblocks, 0), axis=1)
            keep = ((rank < counts[:, None]) & seen) | forced
            if qblocks:
                per_list.extend(np.split(np.nonzero(keep)[1].astype(np.int64), np.cumsum(keep.sum(1))[:-1]))
    offsets, index = _csr(per_list)
    return SparseLists(offsets, index, block_size, key_block_size)


def anchor_stripe_lists(q: Any, k: Any, block_size: int = 128, step: int = 16, initial: int = 2048,
                        local_chunks: int = 1, theta: float = 12.0, scale: Optional[float] = None) -> SparseLists:
    """AnchorAttention's stripe lists (causal prefill, N = M): per query chunk of ``block_size * step`` rows,

    1. the anchor of each row: its highest causal score ``scale * q_i . k_j`` over the initial keys
       (``j < initial``) and the local keys (the chunk and the ``local_chunks - 1`` before it);
    2. per group of ``block_size`` rows, the mean query and the mean anchor (``step`` groups per chunk);
    3. keep every key column ``j`` between the initial and the local keys for which some group has
       ``scale * q_group . k_j + theta >= anchor_group`` (theta in natural-log units).

    The chunk's list is the initial keys, the kept columns and the local keys, as single columns
    (``key_block_size = 1``; ``block_size`` of the result = the chunk), for ``sparse_attention(..., causal=True)``.
    Any N (the last chunk may be short); no ``[B, H, N / chunk, N]`` buffer.
    """
    _check_4d(q, k)
    block_size, step = _int(block_size, "block_size"), _int(step, "step")
    initial, local_chunks = _int(initial, "initial"), _int(local_chunks, "local_chunks")
    if block_size < 1 or step < 1 or initial < 0 or local_chunks < 1:
        raise ValueError("block_size, step and local_chunks must be >= 1 and initial >= 0")
    batch, heads, n, dim = (int(s) for s in q.shape)
    if int(k.shape[2]) != n:
        raise ValueError(f"anchor lists are for causal prefill: q and k need one length, got {n} and {k.shape[2]}")
    theta = float(theta)
    scale = dim ** -0.5 if scale is None else float(scale)
    group = heads // int(k.shape[1])
    chunk = block_size * step
    per_list = []
    for b in range(batch):
        for h in range(heads):
            qh, kh = _head(q, b, h), _head(k, b, h // group)
            for c0 in range(0, n, chunk):
                c1 = min(c0 + chunk, n)
                init_end = min(initial, c1)
                local_start = max(c0 - (local_chunks - 1) * chunk, 0)
                anchor_keys = np.union1d(np.arange(init_end), np.arange(local_start, c1))
                s = (qh[c0:c1] @ kh[anchor_keys].T) * scale
                rows = np.arange(c0, c1)[:, None]
                s = np.where(anchor_keys[None, :] <= rows, s, -np.inf)
                anchor = s.max(axis=1)
                middle = np.arange(init_end, local_start)
                if len(middle):
                    pooled_q = _block_means(qh[c0:c1], block_size)
                    pooled_anchor = _block_means(anchor[:, None], block_size)[:, 0]
                    scores = (pooled_q @ kh[middle].T) * scale
                    keep = ((scores + theta) >= pooled_anchor[:, None]).any(axis=0)
                    middle = middle[keep]
                per_list.append(np.concatenate([np.arange(init_end), middle,
                                                np.arange(max(local_start, init_end), c1)]).astype(np.int64))
    offsets, index = _csr(per_list)
    return SparseLists(offsets, index, chunk, 1)
