"""Typed wrapper of the k-center kernel on a Ragged batch: place, per-set k / first on the device, outputs, call."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..ragged import Ragged
from . import _dispatch

METRIC_CODES = {"cosine": 0, "l2": 1, "ip": 2}


def kcenter(batch: Ragged, metric: str, k: np.ndarray, first: np.ndarray, max_k: int,
            with_distances: bool = False) -> Tuple[Any, Optional[Any]]:
    """``(indices int64 [B, max_k], distances float32 [B, max_k] or None)``; k and first: host int64 [B]."""
    lib, dev = _dispatch.placement(batch._any_values)
    stream = _dispatch.stream(lib, dev)
    tokens = _dispatch.kernel_batch(batch, lib, dev, stream, "tokens")
    k, k_dev = _dispatch.host_and_device(k, lib, dev)
    first, first_dev = _dispatch.host_and_device(first, lib, dev)
    b = len(batch)
    indices = _dispatch.empty((b, int(max_k)), "int64", lib, dev)
    distances = _dispatch.empty((b, int(max_k)), "float32", lib, dev) if with_distances else None
    _dispatch.module(dev).kcenter(tokens, METRIC_CODES[metric], k, k_dev, first, first_dev, int(max_k), indices,
                                  distances, stream, _dispatch.allocator(lib, dev))
    return indices, distances
