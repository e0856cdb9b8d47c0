"""Typed wrapper of the inner-product top-k kernel: place, convert queries to float32, allocate outputs, call."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _array
from . import _dispatch


def inner_product_topk(queries: Any, vectors: Any, k: int, mask: Optional[Any] = None,
                       scales: Optional[Any] = None) -> Tuple[Any, Any]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, x in (("queries", queries), ("vectors", vectors)):
        if not _array.is_array(x):
            raise TypeError(f"{name} must be a numpy array, torch tensor or cupy array, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [count, dim], got shape {tuple(x.shape)}")
    # int8 rows and their scales are paired, and uint8 refused, by the native validate (the same rule on every path).
    int8 = _array.is_int8(vectors)
    lib, dev = _dispatch.placement(queries, vectors, *([] if scales is None else [scales]))
    if int8 and dev[0] != "cpu":
        raise ValueError("int8 vectors are scanned on the CPU; on a GPU store float16 or bfloat16 vectors")
    if not int8 and scales is None:
        _array.dtype_name(vectors, "vectors")  # float32 / float16 / bfloat16, or a TypeError that says how to convert
    for name, x in (("queries", queries), ("vectors", vectors)):  # before the conversions / copies below
        _dispatch.check_token_dim(x.shape[1], name)
    if _array.is_torch(queries):
        queries = queries.detach()
    if _array.is_torch(vectors):
        vectors = vectors.detach()
    q = _array.inner_contiguous(_array.astype(queries, "float32"))
    v = _array.inner_contiguous(vectors)
    if scales is not None and dev[0] == "cpu":
        scales = np.ascontiguousarray(_array.host_copy(scales, "scales"))  # a view of CPU numpy / torch scales
    host_mask = None
    if mask is not None:
        host_mask = np.asarray(_array.host_copy(mask))
        if host_mask.dtype != np.bool_:
            raise TypeError(f"mask must be boolean, got dtype {host_mask.dtype}")
        if host_mask.shape != (int(v.shape[0]),):
            raise ValueError(f"mask must have shape ({int(v.shape[0])},), got {host_mask.shape}")
        host_mask = np.ascontiguousarray(host_mask).view(np.uint8)
        if dev[0] != "cpu":
            host_mask = _array.to_device(host_mask, lib, dev)
    nq = int(q.shape[0])
    scores, indices = _dispatch.topk_outputs(nq, int(k), int(v.shape[0]), lib, dev)
    stream = _dispatch.stream(lib, dev)
    _dispatch.module(dev).inner_product_topk(q, v, int(k), scores, indices, host_mask, scales, stream,
                                             _dispatch.allocator(lib, dev))
    return scores, indices
