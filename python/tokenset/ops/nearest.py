"""Typed wrapper of the nearest-target kernel on Ragged batches: place, convert the queries to the targets' dtype,
outputs, call."""
from __future__ import annotations

from typing import Any, Tuple

from ..ragged import Ragged
from . import _dispatch
from .kcenter import METRIC_CODES


def nearest(queries: Ragged, targets: Ragged, metric: str) -> Tuple[Any, Any]:
    """``(index int64 [Tq], distance float32 [Tq])`` in the arrays' library and device: for every token of query set
    i, its nearest token of target set i (see tokenset/nearest.h)."""
    if len(queries) != len(targets):
        raise ValueError(f"queries have {len(queries)} sets and targets {len(targets)}: query set i is matched "
                         f"against target set i")
    lib, dev = _dispatch.placement(queries._any_values, targets._any_values)
    stream = _dispatch.stream(lib, dev)
    # One dtype for both: the targets' when the queries share it, else float32 (exact for every input dtype; a
    # float32 query cast to float16 targets could overflow).
    dtype = _dispatch.token_dtype(targets, "targets")
    if _dispatch.token_dtype(queries, "queries") != dtype:
        dtype = "float32"
    q = _dispatch.kernel_batch(queries, lib, dev, stream, "queries", dtype=dtype)
    t = _dispatch.kernel_batch(targets, lib, dev, stream, "targets", dtype=dtype)
    rows = int(queries.lengths.sum())
    index = _dispatch.empty((rows,), "int64", lib, dev)
    distance = _dispatch.empty((rows,), "float32", lib, dev)
    _dispatch.module(dev).nearest(q, t, METRIC_CODES[metric], index, distance, stream, _dispatch.allocator(lib, dev))
    return index, distance
