"""Typed wrappers of the sparse-attention kernels (forward, backward): place, lists to checked int64 host arrays (and
their device copies on a GPU), outputs, call. Shapes, layouts and every list entry are checked natively
(tokenset/sparse_attention.h)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from .. import _array
from . import _dispatch


@dataclass(frozen=True)
class AttentionPlan:
    """What both directions need besides the arrays: the checked host lists and layout, and the settings."""

    key_offsets: np.ndarray
    key_index: np.ndarray
    cu_seqlens_q: Optional[np.ndarray]
    cu_seqlens_k: Optional[np.ndarray]
    row_map: Optional[np.ndarray]
    block_size: int
    key_block_size: int
    causal: bool
    scale: float


def _host(x: Optional[np.ndarray], lib: str, dev) -> Tuple[Any, Any]:
    if x is None:
        return None, None
    return _dispatch.host_and_device(x, lib, dev)


def _common(plan: AttentionPlan, lib: str, dev) -> dict:
    args = {}
    for name, value in (("cu_seqlens_q", plan.cu_seqlens_q), ("cu_seqlens_k", plan.cu_seqlens_k),
                        ("key_offsets", plan.key_offsets), ("key_index", plan.key_index), ("row_map", plan.row_map)):
        host, device = _host(value, lib, dev)
        args[name], args[name + "_device"] = host, device
    args.update(block_size=plan.block_size, key_block_size=plan.key_block_size, causal=plan.causal,
                scale=plan.scale)
    return args


def _output(shape, dtype: str, lib: str, dev, zeroed: bool) -> Any:
    """An output array; zeroed when the kernel may leave rows unwritten (rows of a 3-D array outside every sequence,
    rows no row-map entry names)."""
    out = _dispatch.empty(shape, dtype, lib, dev)
    if zeroed:
        if lib == "torch":
            out.zero_()
        elif lib == "cupy":
            out.fill(0)
        else:
            out[...] = 0
    return out


def _covers(cu: Optional[np.ndarray], rows: int) -> bool:
    return cu is None or (len(cu) > 0 and cu[0] == 0 and cu[-1] == rows)


def _gaps(plan: AttentionPlan, q: Any, k: Any) -> Tuple[bool, bool]:
    """Whether the kernel may leave rows of the query-side / key-side outputs unwritten: 3-D rows outside every
    sequence, rows the row map does not name."""
    mapped = plan.row_map is None or int((plan.row_map >= 0).sum()) == q.shape[2]
    if q.ndim == 3:
        return not _covers(plan.cu_seqlens_q, q.shape[0]), not _covers(plan.cu_seqlens_k, k.shape[0])
    return not mapped, not mapped


def lse_shape(q: Any) -> Tuple[int, ...]:
    """``[B, H, N]`` for 4-D q, ``[H, total]`` for 3-D (varlen) q."""
    return tuple(q.shape[:3]) if q.ndim == 4 else (q.shape[1], q.shape[0])


def forward(q: Any, k: Any, v: Any, plan: AttentionPlan, with_lse: bool = True) -> Tuple[Any, Any]:
    """``(out, lse)`` (lse None unless `with_lse`) for native-ready q, k, v (one library, dtype and device; elements
    contiguous along the head dimension)."""
    lib, dev = _dispatch.placement(q, k, v)
    gaps, _ = _gaps(plan, q, k)
    out = _output(tuple(q.shape), _array.dtype_name(q, "q"), lib, dev, gaps)
    lse = _output(lse_shape(q), "float32", lib, dev, gaps) if with_lse else None
    stream = _dispatch.stream(lib, dev)
    _dispatch.module(dev).sparse_attention(q, k, v, out, lse, **_common(plan, lib, dev), stream=stream,
                                           allocate=_dispatch.allocator(lib, dev))
    return out, lse


def backward(q: Any, k: Any, v: Any, out: Any, lse: Any, grad_out: Any, plan: AttentionPlan) -> Tuple[Any, Any, Any]:
    """``(grad_q, grad_k, grad_v)`` in the inputs' dtype, from the forward's out and lse."""
    lib, dev = _dispatch.placement(q, k, v, out, grad_out)
    dtype = _array.dtype_name(q, "q")
    query_gaps, key_gaps = _gaps(plan, q, k)
    grad_q = _output(tuple(q.shape), dtype, lib, dev, query_gaps)
    grad_k = _output(tuple(k.shape), dtype, lib, dev, key_gaps)
    grad_v = _output(tuple(v.shape), dtype, lib, dev, key_gaps)
    stream = _dispatch.stream(lib, dev)
    _dispatch.module(dev).sparse_attention_backward(q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v,
                                                    **_common(plan, lib, dev), stream=stream,
                                                    allocate=_dispatch.allocator(lib, dev))
    return grad_q, grad_k, grad_v
