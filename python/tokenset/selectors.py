"""The attention-based token selectors of tokenset.prune, batched over ragged sets: VTC-CLS, FastV, HiPrune and
VisionZip. Each reads attention rows that tokenset.attention_scores computes from q and k (no attention matrix), with
the papers' defaults and every constant a parameter.

* **VTC-CLS**: score = the head-mean [CLS] row summed over layers ``start .. stop - 1`` (default 16 up to the second
  last, of CLIP-L's 24); the top ``keep`` tokens, original order.
* **FastV**: score = the head-mean last-row attention at layer K - 1 over the image span; FastV keeps
  ``int(N (1 - R))`` tokens (a ratio ``keep`` = 1 - R is floored, as FastV does); the kept tokens keep their original
  positions (``PruneResult.indices``: position ids with gaps).
* **HiPrune**: anchors = the top ``round(keep * alpha / 5)`` tokens by the object layer's column mean; buffers = their
  grid neighbours (+-1 in the row, +-1 row); registers = the top remaining tokens by the deep layer's column mean, up
  to ``keep``. Unlike the original, +-1 never wraps across grid rows (a token at a row's end has no right neighbour).
* **VisionZip**: dominant = [CLS] plus the top ``keep - contextual - 1`` tokens by the head-SUMMED [CLS] row;
  contextual = ``contextual`` targets strided evenly over the remaining tokens, every other remaining token assigned
  to the target whose head-mean key is most cosine-similar; a contextual token = its target + the mean of the tokens
  assigned to it (target plus mean, as VisionZip's code does). Output: dominant tokens in original order, then the
  contextual tokens in target order.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _array, _segments
from .ragged import Ragged


def attention_values(values: Any, batch: Ragged, name: str, mask: Optional[np.ndarray]) -> np.ndarray:
    """One attention value per token as host float64 (NaN ranks last), in any form prune's per-token options take."""
    from .prune import per_token_values

    if values is None:
        raise ValueError(f"this method needs {name}=: one attention value per token (a list of [n_i] arrays, [B, N] "
                         f"or a flat [T] array; tokenset.attention_scores computes them from q and k)")
    flat = per_token_values(values, batch, name, mask)
    return np.where(np.isnan(flat), -np.inf, flat)


def top_picks(batch: Ragged, ks: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """[B, max k] local indices of each set's top ks[i] tokens by `flat` (higher first, ties to the lower index; -1
    pads)."""
    lengths = batch.lengths
    sets = _segments.set_ids(lengths)
    local = np.arange(flat.shape[0]) - _segments.offsets_of(lengths)[sets]
    order = np.lexsort((local, -flat, sets))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0]) - _segments.offsets_of(lengths)[sets[order]]
    picks = np.full((len(batch), int(ks.max()) if ks.size else 0), -1, np.int64)
    chosen = rank < ks[sets]
    picks[sets[chosen], rank[chosen]] = local[chosen]
    return picks


def vtc_cls_scores(attention: Any, batch: Ragged, mask: Optional[np.ndarray], start: int = 16,
                   stop: Optional[int] = -1) -> np.ndarray:
    """Per-token sums of the per-layer [CLS] rows ``attention[start:stop]`` (layer axis first: ``[L, B, N]``, or a
    list of L per-token arrays), layers added in order."""
    layers = list(attention) if isinstance(attention, (list, tuple)) else None
    if layers is None:
        if not _array.is_array(attention, "attention"):
            raise TypeError("vtc_cls needs attention=: the per-layer [CLS] rows, [L, B, N] or a list of L [B, N] arrays")
        arr = _array.host_copy(attention, "attention")
        if arr.ndim < 2:
            raise ValueError(f"vtc_cls: attention must have a leading layer axis ([L, B, N] or [L, T]), got shape "
                             f"{arr.shape}")
        layers = list(arr)
    chosen = layers[slice(start, stop)]
    if not chosen:
        raise ValueError(f"vtc_cls: layers [{start}:{stop}] of the {len(layers)} given select none; pass start= and "
                         f"stop= within them (VTC-CLS sums layer 16 up to the second last of 24)")
    total = np.zeros(int(batch.lengths.sum()))
    for i, layer in enumerate(chosen):
        total = total + attention_values(layer, batch, f"attention[{i}]", mask)
    return total


def fastv_counts(keep: Any, lengths: np.ndarray) -> Optional[np.ndarray]:
    """FastV's kept count for a ratio ``keep`` = 1 - R: ``int(N (1 - R))`` (floored), at least 1 of a non-empty set;
    None for an integer keep (the shared rule applies)."""
    if isinstance(keep, (float, np.floating)) and 0.0 < keep <= 1.0:
        return np.where(lengths > 0, np.maximum(1, np.floor(keep * lengths + 1e-9)), 1).astype(np.int64)
    return None


def _grid_shape(grid: Any, n: int, index: int) -> Tuple[int, int]:
    if grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"hiprune: set {index} has {n} tokens, not a square grid; pass grid=(rows, columns)")
        return side, side
    try:
        rows, cols = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise TypeError(f"hiprune: grid must be (rows, columns), got {grid!r}") from None
    if rows < 1 or cols < 1 or rows * cols != n:
        raise ValueError(f"hiprune: grid {(rows, cols)} has {rows * cols} cells but set {index} has {n} tokens; pass "
                         f"the grid of the patch tokens (without [CLS])")
    return rows, cols


def hiprune_picks(batch: Ragged, ks: np.ndarray, object_scores: np.ndarray, deep_scores: np.ndarray,
                  grid: Any = None, alpha: float = 0.1) -> np.ndarray:
    """HiPrune's anchors, buffers and registers per set: [B, max k] local indices (-1 pads)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"hiprune: alpha must be in [0, 1], got {alpha}")
    lengths, offsets = batch.lengths, _segments.offsets_of(batch.lengths)
    grids = [None] * len(batch)
    if grid is not None and len(grid) == len(batch) and all(isinstance(g, (tuple, list, np.ndarray)) for g in grid):
        grids = list(grid)
    elif grid is not None:
        grids = [grid] * len(batch)
    anchors_k = np.minimum(np.rint(ks * float(alpha) / 5.0).astype(np.int64), ks)
    anchors = top_picks(batch, anchors_k, object_scores)
    picks = np.full((len(batch), int(ks.max()) if ks.size else 0), -1, np.int64)
    for i in range(len(batch)):
        n = int(lengths[i])
        if n == 0:
            continue
        _, cols = _grid_shape(grids[i], n, i)
        chosen, taken = [], np.zeros(n, bool)
        for a in anchors[i][anchors[i] >= 0]:  # by anchor rank: anchor, then its buffers
            near = [a, a - 1 if a % cols else -1, a + 1 if (a + 1) % cols else -1, a - cols, a + cols]
            for p in near:
                if 0 <= p < n and not taken[p] and len(chosen) < ks[i]:
                    taken[p] = True
                    chosen.append(p)
        rest = ks[i] - len(chosen)
        if rest > 0:
            deep = deep_scores[offsets[i]:offsets[i] + n].copy()
            deep[taken] = -np.inf
            order = np.lexsort((np.arange(n), -deep))
            chosen.extend(order[~taken[order]][:rest].tolist())
        picks[i, :len(chosen)] = chosen
    return picks


def visionzip(batch: Ragged, ks: np.ndarray, cls_attention: np.ndarray, keys: Any, contextual: int = 10,
              cls: bool = True):
    """VisionZip per set: (host [B, K] indices with -1 pads, float32 tokens per set, sizes per set)."""
    contextual = int(contextual)
    if contextual < 0:
        raise ValueError(f"visionzip: contextual must be >= 0, got {contextual}")
    lengths, offsets = batch.lengths, _segments.offsets_of(batch.lengths)
    values = np.asarray(_array.host_copy(batch.values, "tokens"), np.float32)
    key_values = _keys_per_token(keys, batch)
    out_idx, out_tok, out_size = [], [], []
    for i in range(len(batch)):
        n, o = int(lengths[i]), int(offsets[i])
        if n == 0:
            out_idx.append(np.zeros(0, np.int64)), out_tok.append(values[:0]), out_size.append(np.zeros(0, np.float32))
            continue
        k = int(ks[i])
        c = min(contextual, k - 1)
        dominant_k = k - c
        score = cls_attention[o:o + n].copy()
        first = 1 if cls else 0
        if cls:
            score[0] = -np.inf  # [CLS] is kept apart from the ranking
        order = np.lexsort((np.arange(n - first) + first, -score[first:]))[:dominant_k - first] + first
        dominant = np.sort(np.concatenate([[0], order]) if cls else order).astype(np.int64)
        rest = np.setdiff1d(np.arange(n), dominant)
        c = min(c, rest.shape[0])
        idx, toks, sizes = dominant, [values[o + dominant]], [np.ones(dominant.shape[0], np.float32)]
        if c > 0:
            step = max(1, rest.shape[0] // c)
            target_pos = np.arange(0, rest.shape[0], step)[:c]
            targets = rest[target_pos]
            others = np.delete(rest, target_pos)
            metric = key_values[o:o + n].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                metric = metric / np.linalg.norm(metric, axis=1, keepdims=True)
            if others.shape[0]:
                sim = metric[others] @ metric[targets].T
                assign = np.argmax(np.where(np.isnan(sim), -np.inf, sim), axis=1)
            else:
                assign = np.zeros(0, np.int64)
            counts = np.bincount(assign, minlength=c).astype(np.float64)
            sums = np.zeros((c, values.shape[1]))
            np.add.at(sums, assign, values[o + others].astype(np.float64))
            merged = values[o + targets].astype(np.float64) + sums / np.maximum(counts, 1.0)[:, None]
            idx = np.concatenate([dominant, targets])
            toks.append(merged.astype(np.float32))
            sizes.append((1.0 + counts).astype(np.float32))
        out_idx.append(idx), out_tok.append(np.concatenate(toks)), out_size.append(np.concatenate(sizes))
    width = max((x.shape[0] for x in out_idx), default=0)
    picks = np.full((len(batch), width), -1, np.int64)
    sizes = np.zeros((len(batch), width), np.float32)
    for i, (x, s) in enumerate(zip(out_idx, out_size)):
        picks[i, :x.shape[0]] = x
        sizes[i, :s.shape[0]] = s
    return picks, out_tok, sizes


def _keys_per_token(keys: Any, batch: Ragged) -> np.ndarray:
    """Head-mean keys, one row per token: a Ragged / list / [B, N, d] like the tokens, or a flat [T, d] array."""
    from .ragged import ragged

    if keys is None:
        raise ValueError("visionzip needs keys=: the head-mean keys of the tokens at the same layer ([B, N, d], a list "
                         "of [n_i, d] arrays or a flat [T, d] array), for the contextual tokens' cosine similarity")
    if _array.is_array(keys, "keys") and keys.ndim == 2 and keys.shape[0] == int(batch.lengths.sum()):
        return np.asarray(_array.host_copy(keys, "keys"), np.float64)
    kb = ragged(keys, name="keys")
    if kb.lengths.shape != batch.lengths.shape or np.any(kb.lengths[:] < batch.lengths):
        raise ValueError(f"keys must have one row per token of each set (lengths {batch.lengths.tolist()}), got "
                         f"lengths {kb.lengths.tolist()}")
    vals = np.asarray(_array.host_copy(kb.compact().values, "keys"), np.float64)
    offs = _segments.offsets_of(kb.lengths)
    return np.concatenate([vals[offs[i]:offs[i] + n] for i, n in enumerate(batch.lengths)]) if len(batch) else vals


def as_result(batch: Ragged, picks: np.ndarray, tokens: Sequence[np.ndarray], sizes: np.ndarray, padded: bool):
    """A PruneResult of per-set host tokens (VisionZip's merged output) in the input's library and device."""
    from .prune import finish

    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    lengths = (picks >= 0).sum(axis=1).astype(np.int64)
    flat = np.concatenate(tokens) if tokens else np.zeros((0, batch.dim), np.float32)
    values = _segments.from_host(np.ascontiguousarray(flat, np.float32), lib, dev)
    return finish(Ragged(values, _segments.offsets_of(lengths), name="tokens"), picks, sizes, lengths, lib, dev,
                  padded)
