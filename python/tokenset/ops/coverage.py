"""Typed wrapper of the greedy maximum coverage kernel: place, per-set sizes on the device, outputs, call."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _array
from . import _dispatch
from .kcenter import pick_outputs


def coverage(matrix: Any, rows: np.ndarray, cols: np.ndarray, k: np.ndarray, max_k: int,
             with_gains: bool = False) -> Tuple[Any, Optional[Any]]:
    """Greedy on padded coverage matrices ``[B, R, N]`` float32 (set i: ``[:rows[i], :cols[i]]``):
    ``(indices int64 [B, max_k], gains float32 [B, max_k] or None)``."""
    lib, dev = _dispatch.placement(matrix)
    stream = _dispatch.stream(lib, dev)
    if _array.is_torch(matrix):
        matrix = matrix.detach()
    if _array.dtype_name(matrix, "coverage matrix") != "float32":
        matrix = _array.astype(matrix, "float32")
    last_stride = matrix.stride(2) if _array.is_torch(matrix) else matrix.strides[2] // matrix.itemsize
    if matrix.shape[2] > 1 and last_stride != 1:
        if _array.is_torch(matrix):
            matrix = matrix.contiguous()
        else:
            matrix = (_array._cupy() if _array.is_cupy(matrix) else np).ascontiguousarray(matrix)
    host, device = zip(*(_dispatch.host_and_device(a, lib, dev) for a in (rows, cols, k)))
    b = int(matrix.shape[0])
    indices, gains = pick_outputs(b, int(max_k), int(cols.max()) if b else 0, with_gains, lib, dev)
    _dispatch.module(dev).coverage(matrix, host[0], device[0], host[1], device[1], host[2], device[2], int(max_k),
                                   indices, gains, stream, _dispatch.allocator(lib, dev))
    return indices, gains
