"""Typed wrapper of the attention-scores kernel: place, host int64 arrays (and their device copies on a GPU), the
float32 output, call. Shapes, lengths and every row number are checked natively (tokenset/attention_scores.h)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _dispatch

REDUCE_CODES = {"none": 0, "sum": 1, "mean": 2}


def attention_scores(q: Any, k: Any, rows: Optional[np.ndarray], reduce: str, causal: bool, scale: float, width: int,
                     cu_seqlens_q: Optional[np.ndarray] = None, cu_seqlens_k: Optional[np.ndarray] = None,
                     query_lengths: Optional[np.ndarray] = None, key_lengths: Optional[np.ndarray] = None) -> Any:
    """float32 ``[B, H', R, width]`` (rows: host int64 ``[B, R]``) or ``[B, H', width]`` (rows None: the column mean)
    for native-ready q, k (one library, dtype and device; contiguous along the head dimension)."""
    lib, dev = _dispatch.placement(q, k)
    batch = q.shape[0] if q.ndim == 4 else len(cu_seqlens_q) - 1
    out_heads = q.shape[1] if reduce == "none" else 1
    shape = (batch, out_heads, width) if rows is None else (batch, out_heads, rows.shape[1], width)
    out = _dispatch.empty(shape, "float32", lib, dev)
    args = {}
    for name, value in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k),
                        ("query_lengths", query_lengths), ("key_lengths", key_lengths),
                        ("rows", None if rows is None else np.ascontiguousarray(rows.reshape(-1)))):
        host, device = (None, None) if value is None else _dispatch.host_and_device(value, lib, dev)
        args[name], args[name + "_device"] = host, device
    _dispatch.module(dev).attention_scores(q, k, out, **args, rows_per_batch=0 if rows is None else rows.shape[1],
                                           reduce=REDUCE_CODES[reduce], causal=causal, scale=scale,
                                           stream=_dispatch.stream(lib, dev), allocate=_dispatch.allocator(lib, dev))
    return out
