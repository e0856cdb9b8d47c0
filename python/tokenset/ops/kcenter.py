"""Typed wrapper of the k-center kernel on a Ragged batch: place, per-set k / first on the device, outputs, call."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..ragged import Ragged
from . import _dispatch

METRIC_CODES = {"cosine": 0, "l2": 1, "ip": 2}


def pick_outputs(rows: int, k: int, longest: int, with_values: bool, lib: str, dev) -> Tuple[Any, Optional[Any]]:
    """``(indices int64 [rows, k], values float32 [rows, k] or None)`` of a greedy selection (k-center, coverage) whose
    sets have at most `longest` tokens (a ValueError naming k when they cannot be allocated)."""
    out = _dispatch.outputs_for_k(rows, k, ("int64", "float32") if with_values else ("int64",), lib, dev,
                                  f"the longest set has {longest} tokens, and a k beyond it only adds -1 padding",
                                  longest)
    return out[0], (out[1] if with_values else None)


def kcenter(batch: Ragged, metric: str, k: np.ndarray, first: np.ndarray, max_k: int,
            with_distances: bool = False) -> Tuple[Any, Optional[Any]]:
    """``(indices int64 [B, max_k], distances float32 [B, max_k] or None)``; k and first: host int64 [B]."""
    lib, dev = _dispatch.placement(batch._any_values)
    stream = _dispatch.stream(lib, dev)
    tokens = _dispatch.kernel_batch(batch, lib, dev, stream, "tokens")
    k, k_dev = _dispatch.host_and_device(k, lib, dev)
    first, first_dev = _dispatch.host_and_device(first, lib, dev)
    b = len(batch)
    longest = int(batch.lengths.max()) if b else 0
    indices, distances = pick_outputs(b, int(max_k), longest, with_distances, lib, dev)
    _dispatch.module(dev).kcenter(tokens, METRIC_CODES[metric], k, k_dev, first, first_dev, int(max_k), indices,
                                  distances, stream, _dispatch.allocator(lib, dev))
    return indices, distances
