"""Sparse attention over index lists: each query block attends only to the key blocks (or single key columns) its
list names, with an online softmax over those keys alone (no gathered copy of K / V, no score matrix), trainable
(backward for q, k and v from the saved log-sum-exp), on the CPU and on CUDA.

.. math:: O_i = \\sum_{j \\in S(i)} \\mathrm{softmax}_j(\\mathrm{scale}\\; q_i \\cdot k_j)\\, v_j, \\qquad
          S(i) = \\bigcup_{kb \\in \\mathrm{list}(b, h, \\lfloor i / \\mathrm{block\\_size} \\rfloor)}
          [kb \\cdot \\mathrm{key\\_block\\_size}, (kb + 1) \\cdot \\mathrm{key\\_block\\_size})

Lists are CSR: ``key_index[key_offsets[l]:key_offsets[l + 1]]`` is list ``l = (b * H + h) * ceil(N / block_size) +
qb`` (batch, head, query block, row-major; in the variable-length form the lists of sequence b follow those of
sequence b - 1, each with its own ``ceil(N_b / block_size)`` blocks). Entries are key block numbers in strictly
increasing order; an unsorted list, a duplicate or an entry past the keys is a ValueError naming the list.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np

from . import _array
from .ops import sparse_attention as _ops
from .ops.sparse_attention import AttentionPlan


def _int(value: Any, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _index_array(x: Any, name: str) -> np.ndarray:
    arr = _array.int64_host(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return _array.frozen(arr)


def _needs_grad(*arrays: Any) -> bool:
    torch = _array._torch()
    return (torch is not None and torch.is_grad_enabled()
            and any(_array.is_torch(a) and a.requires_grad for a in arrays))


def _native(x: Any) -> Any:
    """What the kernels read: detached, contiguous along the head dimension."""
    if _array.is_torch(x):
        x = x.detach()
    return _array.last_axis_contiguous(x)


def check_qkv(q: Any, k: Any, v: Any):
    """q, k, v as arrays of one library (numpy ones beside torch become torch views), with the errors that say what
    to fix."""
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if not _array.is_array(x, name):
            raise TypeError(f"{name} must be an array (numpy, torch or cupy), got {type(x).__name__}")
    lib = _array.result_library(q, k, v)
    if lib == "torch":  # numpy beside torch: a torch view (torch takes no negative strides: those are copied once)
        q, k, v = (_array.as_torch(np.ascontiguousarray(x) if isinstance(x, np.ndarray) and min(x.strides, default=0)
                                   < 0 else x) for x in (q, k, v))
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"q, k, v must all be 4-D [batch, heads, length, dim] or all 3-D [total, heads, dim] (with "
                         f"cu_seqlens); got {q.ndim}-D, {k.ndim}-D, {v.ndim}-D")
    dtypes = [_array.dtype_name(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v"))]
    if len(set(dtypes)) != 1:
        raise TypeError(f"q, k, v must share one dtype, got {', '.join(dtypes)}; convert them (e.g. k.to(q.dtype))")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    return q, k, v


def make_plan(q: Any, key_offsets: Any, key_index: Any, block_size: Any, key_block_size: Any, causal: bool,
              scale: Optional[float], cu_seqlens: Any, cu_seqlens_k: Any, row_map: Optional[np.ndarray] = None):
    block_size = _int(block_size, "block_size")
    key_block_size = block_size if key_block_size is None else _int(key_block_size, "key_block_size")
    if block_size < 1 or key_block_size < 1:
        raise ValueError(f"block_size and key_block_size must be >= 1, got {block_size} and {key_block_size}")
    dim = int(q.shape[-1])
    scale = float(dim ** -0.5 if dim > 0 else 1.0) if scale is None else float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    with np.errstate(over="ignore", under="ignore"):
        as_float32 = np.float32(scale)
    if not np.isfinite(as_float32) or (scale != 0.0 and as_float32 == 0.0):
        raise ValueError(f"scale={scale} is outside float32's range (the kernels scale in float32); pass a scale "
                         f"between about 1e-38 and 3e38 in magnitude")
    cu_q = cu_k = None
    if q.ndim == 3:
        if cu_seqlens is None:
            raise ValueError("3-D q, k, v ([total, heads, dim]) need cu_seqlens (batch + 1 row offsets)")
        cu_q = _index_array(cu_seqlens, "cu_seqlens")
        cu_k = cu_q if cu_seqlens_k is None else _index_array(cu_seqlens_k, "cu_seqlens_k")
    elif cu_seqlens is not None or cu_seqlens_k is not None:
        raise ValueError("cu_seqlens go with 3-D [total, heads, dim] q, k, v; 4-D inputs give every length by shape")
    return AttentionPlan(_index_array(key_offsets, "key_offsets"), _index_array(key_index, "key_index"), cu_q, cu_k,
                         row_map, block_size, key_block_size, bool(causal), scale)


def attend(q: Any, k: Any, v: Any, plan: AttentionPlan, return_lse: bool):
    """The forward through autograd when torch inputs require grad, else straight to the kernel."""
    if _needs_grad(q, k, v):
        out, lse = _SparseAttentionFunction.apply(q, k, v, plan)
    else:
        out, lse = _ops.forward(_native(q), _native(k), _native(v), plan, with_lse=return_lse)
    return (out, lse) if return_lse else out


def sparse_attention(q: Any, k: Any, v: Any, key_offsets: Any, key_index: Any, block_size: int = 64,
                     key_block_size: Optional[int] = None, causal: bool = False, scale: Optional[float] = None,
                     return_lse: bool = False, *, cu_seqlens: Any = None, cu_seqlens_k: Any = None):
    """Attention of every query block over the keys its list names.

    Args:
        q: ``[B, H, N, d]``, or ``[total, H, d]`` with ``cu_seqlens`` (variable length); float32, float16 or
            bfloat16 (numpy, torch or cupy; CPU or CUDA).
        k, v: ``[B, Hkv, M, d]`` (or ``[total_k, Hkv, d]``), the dtype of q; ``H`` a multiple of ``Hkv``: query head
            ``h`` reads key head ``h // (H // Hkv)`` (grouped-query attention).
        key_offsets: ``B * H * ceil(N / block_size) + 1`` integers (any library): list ``l`` is
            ``key_index[key_offsets[l]:key_offsets[l + 1]]``, lists ordered (batch, head, query block).
        key_index: key block numbers, strictly increasing within each list.
        block_size: query rows per block (64).
        key_block_size: keys per listed block (default ``block_size``; 1 = single key columns, "stripes").
        causal: query ``i`` also never sees key ``j > i + M - N`` (bottom-right aligned; ``j <= i`` when N = M).
        scale: score scale, default ``d ** -0.5``.
        return_lse: also return the log-sum-exp ``[B, H, N]`` (``[H, total]`` varlen) float32 (``-inf`` for a row
            that sees no key; not differentiable).
        cu_seqlens: ``B + 1`` row offsets of the sequences in 3-D q (and in k, v unless ``cu_seqlens_k`` is given).

    Returns:
        ``out`` in q's shape, dtype, library and device (and ``lse``). A row that sees no key gets zeros, as SDPA
        does for a fully masked row. Accumulation is float32. Differentiable for torch tensors (grad of q, k, v).

    >>> import numpy as np, tokenset
    >>> q = k = v = np.eye(4, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> offsets, index = [0, 1, 2], [0, 0]          # both query blocks of 2 rows see key block 0 only
    >>> out = tokenset.sparse_attention(q, k, v, offsets, index, block_size=2, scale=100.0)
    >>> np.round(out[0, 0], 2)[:, :2]
    array([[1. , 0. ],
           [0. , 1. ],
           [0.5, 0.5],
           [0.5, 0.5]], dtype=float32)
    """
    q, k, v = check_qkv(q, k, v)
    plan = make_plan(q, key_offsets, key_index, block_size, key_block_size, causal, scale, cu_seqlens, cu_seqlens_k)
    return attend(q, k, v, plan, return_lse)


# ---- autograd -------------------------------------------------------------------------------------------------------

def _make_function():
    torch = _array._torch()

    class SparseAttentionFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, plan):
            nq, nk, nv = _native(q), _native(k), _native(v)
            out, lse = _ops.forward(nq, nk, nv, plan, with_lse=True)
            ctx.save_for_backward(nq, nk, nv, out, lse)
            ctx.plan = plan
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, grad_out, _grad_lse):
            if torch.is_grad_enabled():  # create_graph=True: the kernel's gradients would carry no graph of their own
                raise RuntimeError("sparse_attention has no double backward: its backward is a kernel whose "
                                   "gradients carry no graph (create_graph=True asks for one); compute gradient "
                                   "penalties through a dense attention")
            q, k, v, out, lse = (t.detach() for t in ctx.saved_tensors)  # out is an output: it requires grad
            if grad_out is None:
                grad_out = torch.zeros_like(out)
            grad_out = _native(grad_out.to(q.dtype))
            grad_q, grad_k, grad_v = _ops.backward(q, k, v, out, lse, grad_out, ctx.plan)
            return (grad_q if ctx.needs_input_grad[0] else None, grad_k if ctx.needs_input_grad[1] else None,
                    grad_v if ctx.needs_input_grad[2] else None, None)

    return SparseAttentionFunction


_SparseAttentionFunction = _array.LazyAutogradFunction(_make_function)
