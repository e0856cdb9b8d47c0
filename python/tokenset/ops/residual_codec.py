"""Typed wrapper of the residual codec kernels (csrc/include/tokenset/residual_codec.h): place, allocate, call.

Tokens are float32 rows already matched to their nearest centroid (tokenset.ResidualCodec does both, a chunk at a
time); everything else is checked natively.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .. import _array
from . import _dispatch


def _host_ids(ids: Any) -> np.ndarray:
    return np.ascontiguousarray(_array.host_copy(ids, "centroid ids"), dtype=np.int32)


def encode(tokens: Any, centroid_ids: Any, centroids: Any, cutoffs: np.ndarray, weights: np.ndarray,
           bits: int) -> Tuple[Any, Any]:
    """``(packed uint8 [rows, dim * bits / 8], inverse_norms float32 [rows])`` of float32 ``tokens [rows, dim]``."""
    lib, dev = _dispatch.placement(tokens, centroid_ids, centroids)
    rows, dim = int(tokens.shape[0]), int(tokens.shape[1])
    packed = _dispatch.empty((rows, dim * bits // 8), "uint8", lib, dev)
    norms = _dispatch.empty((rows,), "float32", lib, dev)
    _dispatch.module(dev).residual_codec(True, bits, centroids, cutoffs, weights, centroid_ids,
                                         host_centroid_ids=_host_ids(centroid_ids) if dev[0] != "cpu" else None,
                                         tokens=tokens, packed=packed, inverse_norms=norms,
                                         stream=_dispatch.stream(lib, dev))
    return packed, norms


def decode(packed: Any, centroid_ids: Any, inverse_norms: Any, centroids: Any, cutoffs: np.ndarray,
           weights: np.ndarray, bits: int) -> Any:
    """``decoded float32 [rows, dim]``: (centroid + weights[code]) * inverse norm per token."""
    lib, dev = _dispatch.placement(packed, centroid_ids, inverse_norms, centroids)
    rows, dim = int(packed.shape[0]), int(centroids.shape[1])
    out = _dispatch.empty((rows, dim), "float32", lib, dev)
    _dispatch.module(dev).residual_codec(False, bits, centroids, cutoffs, weights, centroid_ids,
                                         host_centroid_ids=_host_ids(centroid_ids) if dev[0] != "cpu" else None,
                                         packed=packed, inverse_norms=inverse_norms, decoded=out,
                                         stream=_dispatch.stream(lib, dev))
    return out
