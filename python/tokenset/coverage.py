"""Greedy maximum coverage (MMTok): keep the tokens that best cover the question's tokens and the image itself.

.. math:: C = \\begin{bmatrix} P \\\\ w\\,Q \\end{bmatrix},\\quad
          P = \\tfrac{1}{m}\\,\\mathrm{softmax}_j\\!\\left(\\frac{\\hat t_i \\cdot \\hat v_j}{\\tau_t}\\right),\\quad
          Q = \\tfrac{1}{n}\\,\\mathrm{softmax}_j\\!\\left(\\frac{\\hat v_i \\cdot \\hat v_j}{\\tau_v}\\right)

    gain(j) = sum_r max(0, C[r, j] - best[r]);  pick argmax over unpicked j;  best = max(best, C[:, j])

with MMTok's defaults tau_t = 0.01, tau_v = 0.2, w = 0.5. Coverage matrices are built per set in the input's
array library (one GEMM + softmax each, sets in chunks of at most 256 MiB of matrices); the greedy is one native
kernel over the batch that reads, per pick, only the rows that can still gain. Gains are float32 sums in row order on
every device, so the CPU, the GPU and the reference pick the same tokens.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from . import _array
from .kcenter import per_set_counts
from .ops import coverage as _ops
from .ragged import Ragged, ragged

_CHUNK_BYTES = 256 << 20  # padded coverage matrices built at once
_SOFTMAX_BLOCK_BYTES = 1 << 20  # rows of one matrix scaled and softmaxed at once (a few temporaries of this size)


def _library_ops(x: Any):
    """(unit rows, row softmax, matmul into a given output) in x's library."""
    if _array.is_torch(x):
        torch = _array._torch()
        # detached: selection is not differentiable, and matmul(out=) refuses inputs that require grad
        return (lambda a: a.detach().float() / torch.linalg.vector_norm(a.detach().float(), dim=1,
                                                                         keepdim=True).clamp_min(1e-8),
                lambda s: torch.softmax(s, dim=1),
                lambda a, b, out: torch.matmul(a, b, out=out))
    xp = _array._cupy() if _array.is_cupy(x) else np

    def unit(a):
        a = a.astype(xp.float32)
        return a / xp.maximum(xp.sqrt((a * a).sum(axis=1, keepdims=True)), xp.float32(1e-8))

    def softmax(s):
        e = xp.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # numpy writes a row-strided out in place (BLAS with ldc); cupy's 2-D matmul goes through one contiguous temporary
    return unit, softmax, lambda a, b, out: xp.matmul(a, b, out=out)


def _set(batch: Optional[Ragged], i: int) -> Any:
    return None if batch is None else batch[i]


def _scaled_softmax(s: Any, inverse_temperature: float, softmax, finish) -> None:
    """s <- finish(softmax(s * inverse_temperature)) row by row, in place, in blocks of rows of at most
    _SOFTMAX_BLOCK_BYTES: the same element-wise operations and row reductions as on the whole matrix (so the same
    bits), with temporaries of one block instead of several copies of the matrix."""
    rows, cols = int(s.shape[0]), int(s.shape[1])
    step = max(1, _SOFTMAX_BLOCK_BYTES // (4 * max(1, cols)))
    for r0 in range(0, rows, step):
        block = s[r0:r0 + step]
        block *= inverse_temperature
        block[...] = softmax(block)
        finish(block)


def mmtok_matrix(vision: Any, text: Any = None, vision_keys: Any = None, text_temperature: float = 0.01,
                 vision_temperature: float = 0.2, vision_weight: float = 0.5, out: Any = None) -> Any:
    """One set's coverage matrix ``[m + n, n]`` float32 in its library: ``[P; w Q]`` (``w Q`` without text), written
    into `out` (a ``[m + n, n]`` float32 view whose rows may be strided, e.g. a slice of a padded batch; allocated
    when None) and returned. Each GEMM writes straight into its rows of `out` and the softmax runs there in place,
    so the matrix exists once (beside the unit rows and one block of softmax temporaries)."""
    unit, softmax, matmul = _library_ops(vision)
    v = unit(vision)
    n = v.shape[0]
    keys = unit(vision_keys) if vision_keys is not None else v
    m = int(text.shape[0]) if text is not None else 0
    if out is None:
        out = _array.empty((m + n, n), "float32", _array.library(vision), _array.device(vision))
    if m > 0:
        def per_text_token(block):
            block /= m

        _scaled_softmax(matmul(unit(text), v.T, out[:m]), 1.0 / text_temperature, softmax, per_text_token)

    def weighted(block):
        block *= vision_weight / n

    _scaled_softmax(matmul(keys, keys.T, out[m:]), 1.0 / vision_temperature, softmax, weighted)
    return out


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _text_batch(text: Any, vision: Ragged) -> Optional[Ragged]:
    if text is None:
        return None
    if _array.is_array(text, "text") and text.ndim == 2:  # one question for every image
        text = [text] * len(vision)
    t = ragged(text, name="text")
    _array.check_tokens(t._any_values, t.dim, "text")
    if len(t) != len(vision):
        raise ValueError(f"text has {len(t)} sets but vision has {len(vision)}: pass one text set per vision set "
                         f"(or one [m, d] array for all)")
    if t.dim != vision.dim:
        raise ValueError(f"text tokens have dimension {t.dim} but vision tokens have {vision.dim}; project them into "
                         f"one space first (MMTok compares them after the projector)")
    return t


def max_coverage(matrix: Any, k: Any, *, rows: Optional[Any] = None, cols: Optional[Any] = None,
                 return_gains: bool = False):
    """Greedy maximum coverage on coverage matrices you give.

    Args:
        matrix: ``[rows, cols]`` (one set), a list of 2-D matrices, or ``[B, R, N]`` with optional ``rows`` / ``cols``
            [B] (valid rows / columns of each padded matrix); numpy, torch or cupy; float32, float16 or bfloat16
            (converted to float32). Other dtypes (float64, integers, complex) are a TypeError in every form, a
            list's entries included, never cast.
        k: picks per set (int or one per set); a k whose ``[B, max k]`` output cannot be allocated is a
            ValueError naming k.
        return_gains: also return each pick's gain (float32).

    Returns:
        column indices ``[B, max(k)]`` int64 in pick order (``[max(k)]`` for one matrix); -1 after min(k, cols) picks.

    >>> import numpy as np, tokenset
    >>> c = np.array([[0.9, 0.8, 0.0], [0.0, 0.1, 0.7], [0.0, 0.6, 0.6]], np.float32)
    >>> tokenset.max_coverage(c, 2)
    array([1, 2])
    """
    single = _array.is_array(matrix, "matrix") and matrix.ndim == 2
    if isinstance(matrix, (list, tuple)):
        if not matrix:
            raise ValueError("matrix: an empty list has no sets")
        for i, m in enumerate(matrix):
            if not _array.is_array(m, f"matrix[{i}]"):
                raise TypeError(f"matrix[{i}] must be a 2-D numpy array, torch tensor or cupy array [rows, cols], got "
                                f"{type(m).__name__}; pass a [0, 0] matrix for a set with nothing to cover")
            if m.ndim != 2:
                raise ValueError(f"matrix[{i}] must be 2-D [rows, cols], got shape {tuple(m.shape)}")
            _array.dtype_name(m, f"matrix[{i}]")  # refused as the [B, R, N] form refuses it, before any copy
            if _array.library(m) != _array.library(matrix[0]):  # as a list of token sets (ragged)
                raise TypeError(f"matrix: all matrices must come from one array library, got "
                                f"{sorted({_array.library(matrix[0]), _array.library(m)})} (matrix[{i}])")
            if _array.device(m) != _array.device(matrix[0]):
                raise ValueError(f"matrix: all matrices must be on one device, got "
                                 f"{_array.device_name(_array.device(matrix[0]))} and "
                                 f"{_array.device_name(_array.device(m))} (matrix[{i}])")
        r = np.array([int(m.shape[0]) for m in matrix], np.int64)
        c = np.array([int(m.shape[1]) for m in matrix], np.int64)
        padded = _array.empty((len(matrix), int(r.max()), int(c.max())), "float32", _array.library(matrix[0]),
                              _array.device(matrix[0]))
        for i, m in enumerate(matrix):
            padded[i, :r[i], :c[i]] = m
        matrix, rows, cols = padded, r, c
    if not _array.is_array(matrix):
        raise TypeError(f"matrix must be a numpy array, torch tensor, cupy array or a list of them, got "
                        f"{type(matrix).__name__}")
    _array.dtype_name(matrix, "matrix")  # float32, float16 or bfloat16, or a TypeError that says how to convert
    if single:
        matrix = matrix[None]
    if matrix.ndim != 3:
        raise ValueError(f"matrix must be [rows, cols] or [B, R, N], got shape {tuple(matrix.shape)}")
    b, R, N = (int(s) for s in matrix.shape)
    rows = np.full(b, R, np.int64) if rows is None else _array.int64_host(rows, "rows")
    cols = np.full(b, N, np.int64) if cols is None else _array.int64_host(cols, "cols")
    for name, arr in (("rows", rows), ("cols", cols)):
        if arr.shape != (b,):
            raise ValueError(f"{name} must have shape ({b},), got {tuple(arr.shape)}")
    ks = per_set_counts(k, b)
    max_k = int(ks.max()) if b else int(k) if isinstance(k, (int, np.integer)) else 0
    indices, gains = _ops.coverage(matrix, rows, cols, ks, max_k, return_gains)
    if single:
        indices, gains = indices[0], (gains[0] if gains is not None else None)
    return (indices, gains) if return_gains else indices


def coverage(vision: Any, k: Any, text: Any = None, *, vision_keys: Any = None, text_temperature: float = 0.01,
             vision_temperature: float = 0.2, vision_weight: float = 0.5, lengths: Optional[Any] = None,
             mask: Optional[Any] = None, return_gains: bool = False):
    """MMTok's coverage selection of every set of vision tokens.

    Args:
        vision: a set batch of vision tokens (after the projector), float32 / float16 / bfloat16.
        k: tokens to keep per set (int or one per set); a k whose ``[B, max k]`` output cannot be allocated is a
            ValueError naming k.
        text: the text tokens to cover: one set per vision set, or one ``[m, d]`` array for all; None covers the image
            only (Q).
        vision_keys: optional second feature space for vision-vision coverage (MMTok uses CLIP features), with the
            vision sets' lengths (``[B, N, dk]`` beside padded vision: gathered with the same ``lengths`` / ``mask``).
        text_temperature, vision_temperature, vision_weight: tau_t, tau_v and w (MMTok's defaults).

    Returns:
        indices ``[B, max(k)]`` int64 in pick order (``[max(k)]`` for one ``[n, d]`` set), -1 after n picks.

    >>> import numpy as np, tokenset
    >>> v = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    >>> tokenset.coverage(v, 3, text=v[:1]).tolist()[0]
    0
    """
    single = _array.is_array(vision, "vision") and vision.ndim == 2 and lengths is None and mask is None
    batch = ragged(vision, lengths=lengths, mask=mask, name="vision")
    _array.check_tokens(batch._any_values, batch.dim, "vision")
    tt = _check_positive(text_temperature, "text_temperature")
    tv = _check_positive(vision_temperature, "vision_temperature")
    if isinstance(vision_weight, bool) or not isinstance(vision_weight, (int, float, np.floating, np.integer)) \
            or not vision_weight >= 0:
        raise ValueError(f"vision_weight must be a number >= 0, got {vision_weight!r}")
    texts = _text_batch(text, batch)
    keys = None
    if vision_keys is not None:
        padded_like = _array.is_array(vision_keys, "vision_keys") and vision_keys.ndim == 3  # gathered like vision
        keys = ragged(vision_keys, lengths=lengths if padded_like else None, mask=mask if padded_like else None,
                      name="vision_keys")
        _array.check_tokens(keys._any_values, keys.dim, "vision_keys")
        if not np.array_equal(keys.lengths, batch.lengths):
            raise ValueError("vision_keys must have one token per vision token (the same lengths per set)")
    b = len(batch)
    ks = per_set_counts(k, b)
    max_k = int(ks.max()) if b else 0
    lens = batch.lengths
    text_lens = texts.lengths if texts is not None else np.zeros(b, np.int64)
    lib, dev = _array.library(batch._any_values), _array.device(batch._any_values)
    pieces: List[Tuple[int, Any, Optional[Any]]] = []
    start = 0
    while start < b:  # chunks of sets whose padded matrices fit the budget
        stop, R, N = start, 1, 1
        while stop < b:
            R2, N2 = max(R, int(lens[stop] + text_lens[stop])), max(N, int(lens[stop]))
            if stop > start and (stop - start + 1) * R2 * N2 * 4 > _CHUNK_BYTES:
                break
            R, N, stop = R2, N2, stop + 1
        padded = _array.empty((stop - start, R, N), "float32", lib, dev)
        rows = np.zeros(stop - start, np.int64)
        for i in range(start, stop):
            if lens[i] == 0:
                continue
            rows[i - start] = int(lens[i] + text_lens[i])
            mmtok_matrix(batch[i], _set(texts, i), _set(keys, i), tt, tv, float(vision_weight),
                         out=padded[i - start, :rows[i - start], :lens[i]])  # built in place: no copy of C
        idx, gains = _ops.coverage(padded, rows, lens[start:stop], ks[start:stop], max_k, return_gains)
        pieces.append((start, idx, gains))
        start = stop
    indices = _concat_rows([p[1] for p in pieces], (b, max_k), "int64", lib, dev)
    gains = _concat_rows([p[2] for p in pieces], (b, max_k), "float32", lib, dev) if return_gains else None
    if single:
        indices, gains = indices[0], (gains[0] if gains is not None else None)
    return (indices, gains) if return_gains else indices


def _concat_rows(parts: List[Any], shape, dtype: str, lib: str, dev) -> Any:
    if len(parts) == 1:
        return parts[0]
    out = _array.empty(shape, dtype, lib, dev)
    row = 0
    for p in parts:
        out[row:row + p.shape[0]] = p
        row += p.shape[0]
    return out
