"""One entry point for token reduction: ``prune`` keeps a subset of each set's tokens, ``merge`` (tokenset.merge)
combines them; both return a :class:`PruneResult`.

Pruning methods (all batched over ragged sets, CPU and GPU):

* ``"divprune"``: k-center with DivPrune's choices (1 - cosine, the most isolated token first).
* ``"kcenter"``: k-center with ``metric`` (cosine | l2 | ip), ``first`` ("isolated" | "random" | index), ``seed``.
* ``"mmtok"``: MMTok's coverage of ``text`` tokens and of the image (``text``, ``vision_keys``, ``text_temperature``,
  ``vision_temperature``, ``vision_weight``).
* ``"scores"``: the top tokens by a score you give per token (ties to the lower index).
* Attention-based (tokenset.selectors; the rows come from tokenset.attention_scores, no attention matrix):
  ``"vtc_cls"`` (``attention`` = per-layer head-mean [CLS] rows ``[L, B, N]``, ``start`` = 16, ``stop`` = -1),
  ``"fastv"`` (``attention`` = the head-mean last-row attention over the image tokens; a ratio keep is floored),
  ``"hiprune"`` (``object_attention`` and ``deep_attention`` = head-mean column means, ``grid``, ``alpha`` = 0.1),
  ``"visionzip"`` (``attention`` = the head-summed [CLS] row, ``keys`` = head-mean keys, ``contextual`` = 10,
  ``cls`` = True: the first token is [CLS] and always kept; returns dominant then contextual tokens).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _array, _segments, selectors
from .coverage import coverage
from .kcenter import kcenter, per_set_counts, scalar_of
from .ragged import Ragged, ragged

PRUNE_METHODS = ("divprune", "kcenter", "mmtok", "scores", "vtc_cls", "fastv", "hiprune", "visionzip")


class PruneResult(NamedTuple):
    """What a pruning or merging call returns.

    Attributes:
        indices: ``[B, K]`` int64 (K = the most tokens kept in a set), each set's kept tokens in original order (for
            a merge: each group's representative token), -1 after ``lengths[i]``; in the input's library and device.
        tokens: the reduced tokens: a :class:`Ragged` batch in the input's library (``[B, K, d]`` zero-padded when
            ``padded=True`` was asked). Merged tokens are size-weighted averages, float32.
        sizes: ``[B, K]`` float32: how many original tokens (or how much size, for weighted inputs) each kept token
            stands for: 1 for pruning; ToMe's proportional attention adds ``log(sizes)`` to the attention logits.
        lengths: host int64 ``[B]``: tokens kept per set.
    """

    indices: Any
    tokens: Any
    sizes: Any
    lengths: np.ndarray


def keep_counts(keep: Any, lengths: np.ndarray) -> np.ndarray:
    """`keep` as tokens per set: a count (int or one per set, >= 1) or a ratio in (0, 1] of each set's length
    (rounded, at least 1 token of a non-empty set), clamped to each set's length (at least 1) before anything is
    allocated by it: a huge count on small sets costs nothing. A 0-d array is the scalar it holds."""
    keep = scalar_of(keep, "keep")
    if isinstance(keep, (float, np.floating)):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep as a ratio must be in (0, 1], got {keep}; pass an int to keep a number of tokens")
        return np.where(lengths > 0, np.maximum(1, np.rint(keep * lengths)), 1).astype(np.int64)
    return np.minimum(per_set_counts(keep, lengths.shape[0], name="keep"), np.maximum(lengths, 1))


def token_batch(tokens: Any, lengths: Optional[Any], mask: Optional[Any]) -> Tuple[Ragged, Optional[np.ndarray]]:
    """The entry of the prune / merge pipelines: the batch with offsets from 0 and values holding exactly its tokens
    (``Ragged.compact``: per-token positions index ``values`` directly, whatever rows a given Ragged skips), its
    tokens checked (dtype, dimension), and the host boolean mask it was gathered with (None unless padded input came
    with ``mask``): per-token options given as ``[B, N]`` are gathered at the same positions."""
    batch = ragged(tokens, lengths=lengths, mask=mask, name="tokens").compact()
    _array.check_tokens(batch._any_values, batch.dim, "tokens")
    return batch, (_array.host_copy(mask, "tokens: mask") if mask is not None else None)


def _unknown(method: Any, known) -> ValueError:
    return ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, known))}")


def _real_host(values: Any, name: str) -> np.ndarray:
    """`values` as a host float64 array; complex values are a TypeError (their imaginary part was dropped)."""
    arr = _array.host_copy(values, name)
    if arr.dtype.kind == "c":
        raise TypeError(f"{name}: dtype {arr.dtype} is not supported; pass real numbers (e.g. x.real or abs(x)): "
                        f"the imaginary part would be dropped")
    return np.asarray(arr, np.float64)


def per_token_values(values: Any, batch: Ragged, name: str, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """One number per token of `batch` as host float64 [T], or a ValueError naming `name` (and the set):

    * a list of ``[n_i]`` arrays, one per set, each with its set's length;
    * ``[B, N]`` padded: the valid prefix of each row (N >= the longest set), or, when the batch was gathered from
      padded tokens with a boolean ``mask`` (host ``[B, N]``), the values at the mask's positions (the same
      positions the tokens were taken from);
    * a flat ``[T]`` array of every token in order.

    Real numbers only: complex values are a TypeError.
    """
    lengths = batch.lengths
    longest = int(lengths.max()) if lengths.size else 0
    if isinstance(values, (list, tuple)):
        if len(values) != len(batch):
            raise ValueError(f"{name}: a list needs one array per set ({len(batch)} sets), got {len(values)}")
        parts = []
        for i, v in enumerate(values):
            part = _real_host(v, f"{name}[{i}]").reshape(-1)
            if part.shape[0] != lengths[i]:
                raise ValueError(f"{name}[{i}] has {part.shape[0]} entries but set {i} has {lengths[i]} tokens: pass "
                                 f"one value per token of each set")
            parts.append(part)
        return np.concatenate(parts) if parts else np.zeros(0)
    arr = _real_host(values, name)
    if arr.ndim == 2 and arr.shape[0] == len(batch):
        if mask is not None:
            if arr.shape != mask.shape:
                raise ValueError(f"{name} [B, N] must have the mask's shape {tuple(mask.shape)} (the values at the "
                                 f"mask's valid positions are used), got {tuple(arr.shape)}")
            return arr[mask]
        if arr.shape[1] < longest:
            raise ValueError(f"{name} [B, N] must have B={len(batch)} rows and N >= the longest set ({longest}), "
                             f"got {arr.shape}")
        return arr[np.arange(arr.shape[1])[None, :] < lengths[:, None]]
    flat = arr.reshape(-1)
    if flat.shape[0] != int(lengths.sum()):
        raise ValueError(f"{name} must have one entry per token ({int(lengths.sum())} in all), got {flat.shape[0]}")
    return flat


def _score_picks(batch: Ragged, ks: np.ndarray, scores: Any, mask: Optional[np.ndarray]) -> np.ndarray:
    if scores is None:
        raise ValueError("method='scores' needs scores=: one score per token (a list of [n_i] arrays, [B, N] or a "
                         "flat [T] array)")
    flat = per_token_values(scores, batch, "scores", mask)
    return selectors.top_picks(batch, ks, np.where(np.isnan(flat), -np.inf, flat))


def assemble(batch: Ragged, picks: np.ndarray, padded: bool) -> PruneResult:
    """A PruneResult from per-set picks (host [B, K], -1 = none, any order) of a compact batch: indices sorted,
    tokens gathered."""
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    picks = np.where(picks < 0, np.iinfo(np.int64).max, picks)
    picks = np.sort(picks, axis=1)
    valid = picks != np.iinfo(np.int64).max
    picks = np.where(valid, picks, -1)
    lengths = valid.sum(axis=1).astype(np.int64)
    width = int(lengths.max()) if lengths.size else 0
    picks, valid = picks[:, :width], valid[:, :width]
    rows = (batch.offsets[:-1, None] + picks)[valid]
    values = batch.values
    kept = _segments.take(values, rows) if values.shape[0] else values[:0]
    tokens = Ragged(kept, _segments.offsets_of(lengths), name="tokens")
    sizes = np.where(valid, 1.0, 0.0).astype(np.float32)
    return finish(tokens, picks, sizes, lengths, lib, dev, padded)


def finish(tokens: Ragged, picks: np.ndarray, sizes: Any, lengths: np.ndarray, lib: str, dev, padded: bool
           ) -> PruneResult:
    indices = _segments.from_host(np.ascontiguousarray(picks), lib, dev)
    if not _array.is_array(sizes) or _array.library(sizes) == "numpy":
        sizes = _segments.from_host(np.ascontiguousarray(sizes, np.float32), lib, dev)
    out = tokens.to_padded()[0] if padded else tokens
    return PruneResult(indices, out, sizes, lengths)


def prune(tokens: Any, keep: Any, method: str = "divprune", *, lengths: Optional[Any] = None,
          mask: Optional[Any] = None, padded: bool = False, **options: Any) -> PruneResult:
    """Keep `keep` tokens of every set, chosen by `method`.

    Args:
        tokens: a set batch (``Ragged``, list of ``[n_i, d]``, ``[B, N, d]`` with optional ``lengths`` / ``mask``,
            or one ``[n, d]`` set).
        keep: tokens to keep per set: an int, one int per set, or a ratio in (0, 1] of each set's length
            (DivPrune's default is 0.098; a 0-d array is the scalar it holds); counts above a set's length keep the
            whole set. With a ``mask``, indices count the set's valid tokens (its mask's True positions in order),
            while ``[B, N]`` per-token ``scores`` are read at the mask's positions.
        method: ``"divprune"`` | ``"kcenter"`` | ``"mmtok"`` | ``"scores"`` | ``"vtc_cls"`` | ``"fastv"`` |
            ``"hiprune"`` | ``"visionzip"`` (see the module docstring).
        padded: return ``tokens`` as ``[B, K, d]`` zero-padded (``lengths`` tells the valid prefix).
        options: the method's options (``metric``, ``first``, ``seed``; ``text``, ``vision_keys``, temperatures;
            ``scores``). Per-token ``scores`` are a list of ``[n_i]`` arrays, a flat ``[T]`` array, or ``[B, N]``
            beside padded tokens (read at the tokens' positions: the prefix with ``lengths``, the mask's with
            ``mask``); ``vision_keys`` padded like the tokens are gathered like them.

    Returns:
        :class:`PruneResult`: kept indices in original order, the kept tokens, sizes (all 1), lengths.

    >>> import numpy as np, tokenset
    >>> x = np.random.default_rng(0).standard_normal((2, 576, 64)).astype(np.float32)
    >>> r = tokenset.prune(x, keep=0.1)
    >>> r.indices.shape, r.lengths.tolist(), r.tokens.values.shape
    ((2, 58), [58, 58], (116, 64))
    """
    if method not in PRUNE_METHODS:
        raise _unknown(method, PRUNE_METHODS)
    batch, host_mask = token_batch(tokens, lengths, mask)
    ks = keep_counts(keep, batch.lengths)
    if method == "fastv":
        floored = selectors.fastv_counts(scalar_of(keep, "keep"), batch.lengths)
        ks = ks if floored is None else floored
    allowed = {"divprune": set(), "kcenter": {"metric", "first", "seed"}, "scores": {"scores"},
               "mmtok": {"text", "vision_keys", "text_temperature", "vision_temperature", "vision_weight"},
               "vtc_cls": {"attention", "start", "stop"}, "fastv": {"attention"},
               "hiprune": {"object_attention", "deep_attention", "grid", "alpha"},
               "visionzip": {"attention", "keys", "contextual", "cls"}}[method]
    extra = set(options) - allowed
    if extra:
        raise TypeError(f"method={method!r} takes no option(s) {', '.join(sorted(extra))}; it takes "
                        f"{', '.join(sorted(allowed)) or 'none'}")
    def attention(name: str) -> np.ndarray:
        return selectors.attention_values(options.get(name), batch, name, host_mask)

    if method == "divprune":
        picks = kcenter(batch, ks, metric="cosine", first="isolated")
    elif method == "kcenter":
        picks = kcenter(batch, ks, **options)
    elif method == "mmtok":
        keys = options.get("vision_keys")
        if _array.is_array(keys, "vision_keys") and keys.ndim == 3 and (lengths is not None or mask is not None):
            options = dict(options, vision_keys=ragged(keys, lengths=lengths, mask=mask, name="vision_keys"))
        picks = coverage(batch, ks, **options)
    elif method == "scores":
        picks = _score_picks(batch, ks, options.get("scores"), host_mask)
    elif method == "vtc_cls":
        scores = selectors.vtc_cls_scores(options.get("attention"), batch, host_mask, options.get("start", 16),
                                          options.get("stop", -1))
        picks = selectors.top_picks(batch, ks, scores)
    elif method == "fastv":
        picks = selectors.top_picks(batch, ks, attention("attention"))
    elif method == "hiprune":
        picks = selectors.hiprune_picks(batch, ks, attention("object_attention"), attention("deep_attention"),
                                        options.get("grid"), options.get("alpha", 0.1))
    else:
        keys = options.get("keys")
        if _array.is_array(keys, "keys") and keys.ndim == 3 and (lengths is not None or mask is not None):
            keys = ragged(keys, lengths=lengths, mask=mask, name="keys")  # gathered where the tokens were
        picks, tokens_out, sizes = selectors.visionzip(batch, ks, attention("attention"), keys,
                                                       options.get("contextual", 10), options.get("cls", True))
        return selectors.as_result(batch, picks, tokens_out, sizes, padded)
    return assemble(batch, _array.host_copy(picks), padded)
