"""MaxSim, the late-interaction score of ColBERT, ColPali and XTR.

.. math:: \\mathrm{score}(q, D) = \\sum_{i \\in q} \\max_{j \\in D} \\langle q_i, d_j \\rangle

Padded tokens do not exist (they never win a max); a document with no tokens scores ``-inf``; an all-negative
document scores negative (never clamped at 0); NaN in a query token's similarities makes the score NaN.
Accumulation is float32 for float32, float16 and bfloat16 inputs.

int8 documents (:class:`tokenset.Quantized`, from :func:`tokenset.quantize`) are scored on the CPU: against float
queries exactly as float32 MaxSim on ``documents.dequantize()``; against quantised queries with exact int8 dot products,
``sum_i t_i max_j float(<q_i, d_j>) s_j`` (``t``, ``s`` the tokens' scales).

Residual-coded documents (:class:`tokenset.ResidualCodes`, from :meth:`tokenset.ResidualCodec.encode`) are scored in
place through per-query lookup tables (:mod:`tokenset.residual`): within a stated bound of MaxSim on
``documents.decode()``, bit-identical across SIMD levels; no argmax, no gradients.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _array
from .ops import _dispatch
from .ops import maxsim as _ops  # the ops module, not the function
from .quantize import Quantized
from .ragged import Ragged, ragged
from .residual import ResidualCodes


def _batch(x: Any, name: str):
    """A Ragged, or the Quantized / ResidualCodes batch as given (scored in values mode)."""
    return x if isinstance(x, (Quantized, ResidualCodes)) else ragged(x, name=name)


def _needs_grad(*batches: Ragged) -> bool:
    torch = _array._torch()
    if torch is None or not torch.is_grad_enabled():
        return False
    needs = any(_array.is_torch(a) and a.requires_grad
                for b in batches if not isinstance(b, (Quantized, ResidualCodes))
                for a in (b.sets if b.sets is not None else [b.values]))
    if needs and isinstance(batches[-1], ResidualCodes):
        raise TypeError("MaxSim against residual codes is not differentiable: train on float tokens "
                        "(documents.decode()), or score under torch.no_grad() / with detached queries")
    if needs and isinstance(batches[0], Quantized) and not isinstance(batches[-1], Quantized):
        return False  # int8 queries against float documents: the ops layer says why that is refused
    if needs and isinstance(batches[-1], Quantized):
        raise TypeError("MaxSim against int8 (Quantized) tokens is not differentiable: train on float tokens "
                        "(documents.dequantize()), or score under torch.no_grad() / with detached queries")
    return needs


def maxsim(queries: Any, documents: Any, *, return_argmax: bool = False):
    """MaxSim scores of every query against every document.

    Args:
        queries: a set batch (``Ragged``, list of ``[n_i, d]`` arrays, ``[B, N, d]`` or ``[n, d]`` array), or a
            :class:`tokenset.Quantized` batch against Quantized documents.
        documents: a set batch with the same token dimension, on the same device, or a :class:`tokenset.Quantized`
            batch (CPU).
        return_argmax: also return ``argmax [nq, nd, max query length]`` (int32): for query token ``i`` of query
            ``a``, the index within document ``b`` of its best token (lowest index on ties; -1 for padding query
            tokens and empty documents).

    Returns:
        ``scores [nq, nd]`` float32 in the caller's library and device (and ``argmax`` if asked).

    Differentiable for torch tensors: gradients flow to each query token's best document token.

    >>> import numpy as np, tokenset
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    >>> docs = [np.array([[1.0, 0.0]], np.float32), np.array([[-1.0, -1.0], [0.5, 0.5]], np.float32)]
    >>> tokenset.maxsim(q, docs)
    array([[1. , 1. ]], dtype=float32)
    """
    q = _batch(queries, "queries")
    d = _batch(documents, "documents")
    if _needs_grad(q, d):
        _dispatch.placement(q._any_values, d._any_values)  # one device, or the error that says how to get there
        for batch, name in ((q, "queries"), (d, "documents")):
            _dispatch.check_token_dim(batch.dim, name)  # before a list is concatenated below
        q, d = q.compact(), d.compact()  # only the sets' rows (a view: gradients reach the caller's tensor)
        scores, argmax = _MaxSimFunction.apply(_array.as_torch(q.values), _array.as_torch(d.values), q.offsets,
                                               d.offsets)
        return (scores, argmax) if return_argmax else scores
    scores, argmax = _ops.maxsim(q, d, with_argmax=return_argmax)
    return (scores, argmax) if return_argmax else scores


def maxsim_pairs(queries: Any, documents: Any, candidates: Any):
    """MaxSim of each query against its own candidate documents (reranking).

    Args:
        candidates: integers ``[nq, c]``: document indices, or -1 for "no candidate" (scores ``-inf``).

    Returns:
        ``scores [nq, c]`` float32.

    >>> import numpy as np, tokenset
    >>> q = [np.ones((2, 4), np.float32)]
    >>> docs = [np.ones((3, 4), np.float32), -np.ones((1, 4), np.float32)]
    >>> tokenset.maxsim_pairs(q, docs, np.array([[1, -1, 0]]))
    array([[ -8., -inf,   8.]], dtype=float32)
    """
    if candidates is None:
        raise TypeError("maxsim_pairs needs candidates [num_queries, c] (document indices, -1 for none); for all "
                        "pairs use tokenset.maxsim")
    q = _batch(queries, "queries")
    d = _batch(documents, "documents")
    scores, _ = _ops.maxsim(q, d, candidates=candidates)
    return scores


def maxsim_topk(queries: Any, documents: Any, k: int):
    """Top-k documents per query by MaxSim, fused: the full score matrix is never kept.

    Returns:
        ``(scores float32 [nq, k], indices int64 [nq, k])``, best first; ties go to the lower document index, NaN
        ranks as -inf, and with fewer than k documents the rest of a row is ``(-inf, -1)``.

    >>> import numpy as np, tokenset
    >>> q = [np.ones((1, 2), np.float32)]
    >>> docs = [np.zeros((1, 2), np.float32), np.ones((2, 2), np.float32)]
    >>> tokenset.maxsim_topk(q, docs, k=1)
    (array([[2.]], dtype=float32), array([[1]]))
    """
    q = _batch(queries, "queries")
    d = _batch(documents, "documents")
    return _ops.maxsim_topk(q, d, k)


# ---- autograd -------------------------------------------------------------------------------------------------------

def _sparse_assignment(grad, argmax, q_offsets: np.ndarray, d_offsets: np.ndarray, q_rows: int, d_rows: int):
    """W [q_rows, d_rows] with W[query token, its argmax document token] += dL/dscore; grad_q = W @ D, grad_d = W^T Q.

    W has at most nq * nd * max_query_length entries (the size of argmax), never a dense similarity tensor.
    """
    torch = _array._torch()
    dev = grad.device
    nq, nd, lmax = argmax.shape
    arg = argmax.long()
    valid = arg >= 0
    q_off = torch.tensor(q_offsets[:-1], device=dev)
    d_off = torch.tensor(d_offsets[:-1], device=dev)
    rows = (q_off[:, None, None] + torch.arange(lmax, device=dev)[None, None, :]).expand(nq, nd, lmax)
    cols = d_off[None, :, None] + arg
    vals = grad.float()[:, :, None].expand(nq, nd, lmax)
    index = torch.stack([rows[valid], cols[valid]])
    return torch.sparse_coo_tensor(index, vals[valid], (q_rows, d_rows), check_invariants=False).coalesce()


def _make_function():
    torch = _array._torch()

    class MaxSimFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q_values, d_values, q_offsets, d_offsets):
            q = Ragged(q_values.detach(), q_offsets, name="queries")
            d = Ragged(d_values.detach(), d_offsets, name="documents")
            scores, argmax = _ops.maxsim(q, d, with_argmax=True)
            ctx.save_for_backward(q_values.detach(), d_values.detach(), argmax)
            ctx.offsets = (q_offsets, d_offsets)
            ctx.mark_non_differentiable(argmax)
            return scores, argmax

        @staticmethod
        def backward(ctx, grad_scores, _grad_argmax):
            q_values, d_values, argmax = ctx.saved_tensors
            q_offsets, d_offsets = ctx.offsets
            grad_q = grad_d = None
            # NaN/inf scores would spread through W; only finite incoming gradients are routed.
            w = _sparse_assignment(torch.nan_to_num(grad_scores, nan=0.0, posinf=0.0, neginf=0.0), argmax,
                                   q_offsets, d_offsets, q_values.shape[0], d_values.shape[0])
            if ctx.needs_input_grad[0]:
                grad_q = torch.sparse.mm(w, d_values.float()).to(q_values.dtype)
            if ctx.needs_input_grad[1]:
                grad_d = torch.sparse.mm(w.t().coalesce(), q_values.float()).to(d_values.dtype)
            return grad_q, grad_d, None, None

    return MaxSimFunction


_MaxSimFunction = _array.LazyAutogradFunction(_make_function)
