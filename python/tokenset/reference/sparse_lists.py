"""Reference list builders, plain Python loops over float64 numpy: one list at a time, every score computed from its
definition (tokenset/sparse_lists.py states the rules)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np


def _csr(lists: List[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
    index = np.array([j for x in lists for j in x], np.int64)
    return offsets, index


def lists_from_block_mask(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask, bool)
    lists = []
    for b in range(mask.shape[0]):
        for h in range(mask.shape[1]):
            for qb in range(mask.shape[2]):
                lists.append([kb for kb in range(mask.shape[3]) if mask[b, h, qb, kb]])
    return _csr(lists)


def topk_block_lists(q, k, topk: Optional[int], density: Optional[float], block_size: int, key_block_size: int,
                     causal: bool, sink_blocks: int, local_blocks: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, heads, n, _ = q.shape
    m = k.shape[2]
    group = heads // k.shape[1]
    qblocks, kblocks = -(-n // block_size), -(-m // key_block_size)
    lists = []
    for b in range(batch):
        for h in range(heads):
            kh = k[b, h // group]
            for qb in range(qblocks):
                rows = q[b, h, qb * block_size:min((qb + 1) * block_size, n)]
                last = min((qb + 1) * block_size, n) - 1
                seen = [kb for kb in range(kblocks) if not causal or kb * key_block_size <= last + m - n]
                pooled_q = rows.mean(0)
                scores = []
                for kb in seen:
                    keys = kh[kb * key_block_size:min((kb + 1) * key_block_size, m)]
                    s = float(pooled_q @ keys.mean(0)) * scale
                    scores.append(-math.inf if math.isnan(s) else s)
                count = topk if topk is not None else math.ceil(round(density * len(seen), 9))
                order = sorted(range(len(seen)), key=lambda i: (-scores[i], i))[:min(count, len(seen))]
                chosen = {seen[i] for i in order}
                chosen |= set(seen[:sink_blocks]) | set(seen[max(len(seen) - local_blocks, 0):])
                lists.append(sorted(chosen))
    return _csr(lists)


def anchor_stripe_lists(q, k, block_size: int, step: int, initial: int, local_chunks: int, theta: float,
                        scale: float) -> Tuple[np.ndarray, np.ndarray]:
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, heads, n, _ = q.shape
    group = heads // k.shape[1]
    chunk = block_size * step
    lists = []
    for b in range(batch):
        for h in range(heads):
            qh, kh = q[b, h], k[b, h // group]
            for c0 in range(0, n, chunk):
                c1 = min(c0 + chunk, n)
                init_keys = set(range(min(initial, c1)))
                local_keys = set(range(max(c0 - (local_chunks - 1) * chunk, 0), c1))
                anchors = []
                for i in range(c0, c1):
                    anchors.append(max(float(qh[i] @ kh[j]) * scale for j in init_keys | local_keys if j <= i))
                kept = []
                for j in range(min(initial, c1), max(c0 - (local_chunks - 1) * chunk, 0)):
                    for g0 in range(c0, c1, block_size):
                        g1 = min(g0 + block_size, c1)
                        pooled_q = qh[g0:g1].mean(0)
                        pooled_anchor = float(np.mean(anchors[g0 - c0:g1 - c0]))
                        if float(pooled_q @ kh[j]) * scale + theta >= pooled_anchor:
                            kept.append(j)
                            break
                lists.append(sorted(init_keys | set(kept) | local_keys))
    return _csr(lists)
