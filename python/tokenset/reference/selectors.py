"""numpy transcriptions of the attention-based selectors as their papers' code runs them: batch 1, full attention
matrices ([H, N, N], [CLS] first where the model has one), torch-style topk then sort. The oracle of tokenset.prune's
"vtc_cls", "fastv", "hiprune" and "visionzip" methods, which compute the same from attention rows, batched."""
from __future__ import annotations

import numpy as np


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores (ties to the lower index), as topk(k).indices."""
    return np.argsort(-np.asarray(score, np.float64), kind="stable")[:max(k, 0)]


def vtc_cls(attentions, keep: int, start: int = 16) -> np.ndarray:
    """VTC-CLS: attentions = per-layer [H, N+1, N+1] matrices; the head-mean [CLS] row (keys 1:) summed over layers
    start .. L-2; the top `keep` patches (0-based, without [CLS]), sorted."""
    score = sum(np.asarray(a, np.float64).mean(0)[0, 1:] for a in attentions[start:len(attentions) - 1])
    return np.sort(_top(score, keep))


def fastv(attention: np.ndarray, image_start: int, image_len: int, ratio: float) -> np.ndarray:
    """FastV at layer K-1: attention [H, S, S]; the head-mean last row over the image span, keep int(len (1 - R)) of
    the image tokens; every other token stays. Returns the kept positions (position ids with gaps), sorted."""
    row = np.asarray(attention, np.float64).mean(0)[-1]
    image = row[image_start:image_start + image_len]
    top = _top(image, int(image_len * (1 - ratio))) + image_start
    keep = np.concatenate([np.arange(image_start), top, np.arange(image_start + image_len, row.shape[0])])
    return np.sort(keep)


def hiprune(object_attention: np.ndarray, deep_attention: np.ndarray, keep: int, grid_width: int,
            alpha: float = 0.1, wrap: bool = True) -> np.ndarray:
    """HiPrune: [H, N+1, N+1] matrices at the object and deep layers ([CLS] first). Scores = head mean, then mean
    over the query rows, [CLS] column dropped. Anchors: top round(keep alpha / 5) by the object score; buffers: each
    anchor's +-1 and +-grid_width neighbours (wrap=True: the original's index arithmetic, +-1 crossing rows, clamped
    into range; wrap=False: tokenset's rule, neighbours outside the row or the grid dropped), taken by anchor rank
    until `keep`; registers: the top remaining tokens by the deep score. Patch indices, sorted."""
    obj = np.asarray(object_attention, np.float64).mean(0).mean(0)[1:]
    deep = np.asarray(deep_attention, np.float64).mean(0).mean(0)[1:]
    n = obj.shape[0]
    anchors = _top(obj, int(np.rint(keep * alpha / 5)))
    chosen = []
    for a in anchors:
        if wrap:
            near = [a] + [min(max(p, 0), n - 1) for p in (a - 1, a + 1, a - grid_width, a + grid_width)]
        else:
            near = [a, a - 1 if a % grid_width else -1, a + 1 if (a + 1) % grid_width else -1, a - grid_width,
                    a + grid_width]
        for p in near:
            if 0 <= p < n and p not in chosen and len(chosen) < keep:
                chosen.append(int(p))
    rest = np.array([i for i in _top(deep, n) if i not in chosen], np.int64)[:keep - len(chosen)]
    return np.sort(np.concatenate([np.array(chosen, np.int64), rest]))


def visionzip(hidden: np.ndarray, attention: np.ndarray, metric: np.ndarray, dominant: int = 54,
              contextual: int = 10):
    """VisionZip on one image: hidden [N+1, C] and metric (head-mean keys) [N+1, d] at the penultimate layer,
    attention [H, N+1, N+1] there. Returns (indices: dominant in order then the contextual targets, tokens)."""
    hidden = np.asarray(hidden, np.float64)
    cls_attention = np.asarray(attention, np.float64)[:, 0, 1:].sum(0)
    top = _top(cls_attention, dominant - 1) + 1
    dominant_idx = np.sort(np.concatenate([[0], top]))
    remaining = np.setdiff1d(np.arange(hidden.shape[0]), dominant_idx)
    m = np.asarray(metric, np.float64)[remaining]
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    step = max(1, m.shape[0] // contextual)
    target_pos = np.arange(0, m.shape[0], step)[:contextual]
    other_pos = np.setdiff1d(np.arange(m.shape[0]), target_pos)
    similarity = m[other_pos] @ m[target_pos].T
    assign = similarity.argmax(axis=1)
    one_hot = np.zeros((other_pos.shape[0], target_pos.shape[0]))
    one_hot[np.arange(other_pos.shape[0]), assign] = 1
    counts = np.maximum(one_hot.sum(0), 1)[:, None]
    aggregated = one_hot.T @ hidden[remaining[other_pos]] / counts
    contextual_tokens = hidden[remaining[target_pos]] + aggregated
    return (np.concatenate([dominant_idx, remaining[target_pos]]),
            np.concatenate([hidden[dominant_idx], contextual_tokens]))
