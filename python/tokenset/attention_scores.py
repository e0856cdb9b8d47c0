"""Attention rows without the attention matrix: the softmax attention of a few query rows ([CLS] = row 0, the last
row, any list) over all keys, or the column mean over all query rows (HiPrune's score), from q and k alone, so it works
beside fused (flash / SDPA) attention, which never returns attention weights.

.. math:: P_{b,h} = \\mathrm{softmax}(\\mathrm{scale}\\; q_{b,h} k_{b,g(h)}^T), \\qquad
          \\mathrm{rows:}\\; P_{b,h}[r, :] \\qquad \\mathrm{column\\ mean:}\\; \\tfrac{1}{N_b} \\textstyle\\sum_i P_{b,h}[i, :]

per head, or summed / averaged over the heads. Cost O(R M d) per head for R rows; the column mean is two tiled passes
over the scores (O(N M d)) with a 64 x 256 tile per thread, or one pass keeping a 64-row tile's scores of every key
(at most 16,384 keys: 4 MiB per thread) when 8 or more (batch, head) pairs share the work.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np

from . import _array
from .ops import attention_scores as _ops

REDUCE = ("mean", "sum", "none")


def _lengths(x: Any, name: str, batch: int, extent: int) -> Optional[np.ndarray]:
    if x is None:
        return None
    arr = _array.int64_host(x, name).reshape(-1)
    if arr.shape[0] != batch:
        raise ValueError(f"{name} must have one entry per sequence ({batch}), got {arr.shape[0]}")
    bad = np.flatnonzero((arr < 0) | (arr > extent))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]={arr[bad[0]]} is outside 0..{extent} (the padded length)")
    return _array.frozen(arr)


def _row_table(rows: Any, query_lengths: np.ndarray) -> Optional[np.ndarray]:
    """rows as a host int64 [B, R] table of row numbers within each sequence (negative: from each sequence's end), or
    None for the column mean."""
    batch = query_lengths.shape[0]
    if _array.is_array(rows, "rows") and rows.ndim == 0:  # a 0-d array is the row number it holds
        rows = int(_array.int64_host(rows, "rows"))
    if isinstance(rows, str):
        if rows == "mean":
            return None
        if rows in ("cls", "first"):
            rows = 0
        elif rows == "last":
            rows = -1
        else:
            raise ValueError(f"rows={rows!r}: pass 'cls' (row 0), 'last', 'mean' (the column mean), a row number, a "
                             f"list of row numbers, or a [batch, R] array")
    if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
        table = np.full((batch, 1), operator.index(rows), np.int64)
    else:
        arr = _array.int64_host(rows, "rows")
        if arr.ndim == 1:
            table = np.broadcast_to(arr, (batch, arr.shape[0])).copy()
        elif arr.ndim == 2 and arr.shape[0] == batch:
            table = arr.copy()
        else:
            raise ValueError(f"rows must be a row number, a list of them, or a [batch={batch}, R] array, got shape "
                             f"{tuple(arr.shape)}")
    resolved = np.where(table < 0, table + query_lengths[:, None], table)
    bad = np.argwhere((resolved < 0) | (resolved >= query_lengths[:, None]))
    if bad.size:
        b, r = bad[0]
        raise ValueError(f"row {table[b, r]} is out of range for sequence {b}, which has {query_lengths[b]} query rows "
                         f"(negative rows count from each sequence's end)")
    return _array.frozen(resolved)


def attention_scores(q: Any, k: Any, rows: Any = 0, reduce: str = "mean", *, causal: bool = False,
                     scale: Optional[float] = None, lengths: Any = None, key_lengths: Any = None,
                     cu_seqlens: Any = None, cu_seqlens_k: Any = None) -> Any:
    """Softmax attention of chosen query rows over all keys, or the column mean over all rows, from q and k.

    Args:
        q: ``[B, H, N, d]`` (the layout Hugging Face attention functions receive), or ``[total, H, d]`` with
            ``cu_seqlens`` (variable length); float32, float16 or bfloat16; numpy, torch or cupy, CPU or CUDA.
        k: ``[B, Hkv, M, d]`` (or ``[total_k, Hkv, d]``), q's dtype; ``H`` a multiple of ``Hkv`` (grouped-query:
            query head ``h`` reads key head ``h // (H // Hkv)``).
        rows: which query rows: ``0`` / ``"cls"`` (the [CLS] row), ``-1`` / ``"last"`` (each sequence's last row,
            as FastV reads it), any row number (negative counts from each sequence's end), a list of row numbers, a
            ``[B, R]`` array (different rows per sequence), or ``"mean"``: the column mean over all query rows
            (``attn.mean(-2)``, HiPrune's score).
        reduce: over the heads: ``"mean"`` (the head mean all selectors use), ``"sum"`` (VisionZip), ``"none"``.
        causal: row ``i`` sees key ``j`` only when ``j <= i + M - N`` (``j <= i`` for self-attention).
        scale: default ``d ** -0.5``.
        lengths: 4-D padded input: the valid (right-padded) rows of each sequence, ``[B]``; keys too unless
            ``key_lengths`` is given. Row numbers count within each sequence's valid rows.
        cu_seqlens, cu_seqlens_k: ``B + 1`` offsets of the sequences of 3-D q and k (``cu_seqlens_k`` defaults to
            ``cu_seqlens``).

    Returns:
        float32 in q's library and device: ``[B, R, M]`` (reduced) or ``[B, H, R, M]``, without the ``R`` axis when
        ``rows`` is a single row number or name; the column mean ``[B, M]`` or ``[B, H, M]``. ``M`` is the longest
        key length; keys past a sequence's length are 0. A row that sees no key (or only ``-inf`` scores) is 0; a
        NaN or ``+inf`` score makes its row NaN. Accumulation is float32: within 2e-6 absolute + 2e-5 relative of
        the dense float64 softmax for logits of moderate size; the float32 scores lose relative precision as the
        logits grow (at a shared logit offset of 1,000, about 4e-4 relative, like torch's float32 softmax).

    >>> import numpy as np, tokenset
    >>> q = k = np.random.default_rng(0).standard_normal((2, 8, 577, 64)).astype(np.float32)
    >>> cls = tokenset.attention_scores(q, k, rows="cls")           # head-mean [CLS] row, [2, 577]
    >>> cls.shape, bool(np.allclose(cls.sum(-1), 1.0, atol=1e-5))
    ((2, 577), True)
    >>> tokenset.attention_scores(q, k, rows="mean", reduce="none").shape   # per-head column mean
    (2, 8, 577)
    """
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if reduce not in REDUCE:
        raise ValueError(f"reduce={reduce!r}: choose one of {', '.join(map(repr, REDUCE))}")
    for x, name in ((q, "q"), (k, "k")):
        if not _array.is_array(x, name):
            raise TypeError(f"{name} must be an array (numpy, torch or cupy), got {type(x).__name__}")
    if _array.result_library(q, k) == "torch":
        q, k = (_array.as_torch(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x) for x in (q, k))
    if q.ndim not in (3, 4) or k.ndim != q.ndim:
        raise ValueError(f"q and k must both be 4-D [batch, heads, length, dim] or both 3-D [total, heads, dim] (with "
                         f"cu_seqlens); got {q.ndim}-D and {k.ndim}-D")
    dq, dk = _array.dtype_name(q, "q"), _array.dtype_name(k, "k")
    if dq != dk:
        raise TypeError(f"q and k must share one dtype, got {dq} and {dk}; convert one (e.g. k.to(q.dtype))")
    if _array.is_torch(q):
        q, k = q.detach(), k.detach()
    q, k = _array.last_axis_contiguous(q), _array.last_axis_contiguous(k)
    dim = int(q.shape[-1])
    scale = float(dim ** -0.5 if dim > 0 else 1.0) if scale is None else float(scale)
    with np.errstate(over="ignore", under="ignore"):
        as_float32 = np.float32(scale)
    if not np.isfinite(scale) or not np.isfinite(as_float32) or (scale != 0.0 and as_float32 == 0.0):
        raise ValueError(f"scale must be finite and within float32's range (the kernels scale in float32), got "
                         f"{scale}")
    cu_q = cu_k = q_len = k_len = None
    if q.ndim == 3:
        if lengths is not None or key_lengths is not None:
            raise ValueError("lengths go with 4-D padded q and k; 3-D inputs give them by cu_seqlens")
        if cu_seqlens is None:
            raise ValueError("3-D q and k ([total, heads, dim]) need cu_seqlens (batch + 1 row offsets)")
        cu_q = _array.frozen(_array.int64_host(cu_seqlens, "cu_seqlens").reshape(-1))
        cu_k = cu_q if cu_seqlens_k is None else _array.frozen(_array.int64_host(cu_seqlens_k, "cu_seqlens_k")
                                                               .reshape(-1))
        if cu_q.shape[0] < 1 or cu_k.shape[0] != cu_q.shape[0]:
            raise ValueError(f"cu_seqlens ({cu_q.shape[0]} entries) and cu_seqlens_k ({cu_k.shape[0]}) need batch + 1 "
                             f"entries each")
        for cu, name, total in ((cu_q, "cu_seqlens", q.shape[0]), (cu_k, "cu_seqlens_k", k.shape[0])):
            if cu[0] < 0 or np.any(np.diff(cu) < 0) or cu[-1] > total:
                raise ValueError(f"{name} must be non-decreasing offsets within the {total} rows, got {cu.tolist()}")
        query_counts, key_counts = np.diff(cu_q), np.diff(cu_k)
        width = int(key_counts.max()) if key_counts.size else 0
    else:
        if cu_seqlens is not None or cu_seqlens_k is not None:
            raise ValueError("cu_seqlens go with 3-D [total, heads, dim] q and k; 4-D inputs take lengths=")
        batch = int(q.shape[0])
        if int(k.shape[0]) != batch:
            raise ValueError(f"q has batch {batch} and k {int(k.shape[0])}; they must match")
        q_len = _lengths(lengths, "lengths", batch, int(q.shape[2]))
        key_source = key_lengths if key_lengths is not None else (lengths if q.shape[2] == k.shape[2] else None)
        if key_lengths is None and lengths is not None and q.shape[2] != k.shape[2]:
            raise ValueError("q and k have different padded lengths: give key_lengths= too")
        k_len = _lengths(key_source, "key_lengths", batch, int(k.shape[2]))
        query_counts = q_len if q_len is not None else np.full(batch, int(q.shape[2]), np.int64)
        width = int(k.shape[2])
    single = (isinstance(rows, (int, np.integer, str)) and not isinstance(rows, bool) and rows != "mean") or \
        (_array.is_array(rows, "rows") and rows.ndim == 0)
    table = _row_table(rows, np.asarray(query_counts, np.int64))
    out = _ops.attention_scores(q, k, table, reduce, bool(causal), scale, width, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                query_lengths=q_len, key_lengths=k_len)
    if reduce != "none":
        out = out[:, 0]
    if single:
        out = out[:, :, 0] if reduce == "none" else out[:, 0]
    return out
