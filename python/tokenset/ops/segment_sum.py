"""Typed wrapper of the weighted segment-sum kernel: CSR members on the device, output, call."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _array
from . import _dispatch


def segment_sum(values: Any, order: np.ndarray, starts: np.ndarray, weights: Optional[Any] = None,
                out: Optional[Any] = None) -> Any:
    """``out [S, d]`` float32 with ``out[s] = sum_{m in starts[s]..starts[s+1]} weights[order[m]] values[order[m]]``;
    order / starts: host int64 (checked natively). `out`: an array to write into (checked natively: shape, dtype,
    device), e.g. a buffer an iteration reuses instead of allocating [S, d] again."""
    # Host weights (numpy, a CPU tensor; a list arrives as numpy) are per-row data copied to the values' device below,
    # like MaxSim's host candidate lists: they choose the result's library with the values but take no part in the
    # device check. Weights already on a GPU must be on the values' device.
    lib = _array.result_library(values, *([weights] if weights is not None else []))
    on_gpu = [weights] if weights is not None and _array.device(weights)[0] != "cpu" else []
    _, dev = _dispatch.placement(values, *on_gpu)
    stream = _dispatch.stream(lib, dev)
    if _array.is_torch(values):
        values = values.detach()
    _dispatch.check_token_dim(values.shape[1], "values")  # before a copy of a (broadcast, strided) view
    values = _array.inner_contiguous(values)
    if weights is not None:
        if _array.is_torch(weights):
            weights = weights.detach()
        if _array.dtype_name(weights, "weights") != "float32":  # the same dtype rule on every device
            weights = _array.astype(weights, "float32")
        if dev[0] != "cpu" and not on_gpu:  # float32 on the host: one upload on the current stream (the kernel's)
            weights = _array.to_device(_array.host_copy(weights, "weights"), lib, dev)
    order, order_dev = _dispatch.host_and_device(order, lib, dev)
    starts, starts_dev = _dispatch.host_and_device(starts, lib, dev)
    if out is None:
        out = _dispatch.empty((max(int(starts.shape[0]) - 1, 0), int(values.shape[1])), "float32", lib, dev)
    _dispatch.module(dev).segment_sum(values, order, order_dev, starts, starts_dev, weights, out, stream,
                                      _dispatch.allocator(lib, dev))
    return out
