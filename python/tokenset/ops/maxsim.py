"""Typed wrappers of the MaxSim kernels: validate, pick the device and stream, allocate outputs, call _core / _cuda.

Inputs are :class:`~tokenset.Ragged` batches; results come back in the caller's array library and device.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _array, _backend
from ..ragged import Ragged


def _common_device(*arrays: Any) -> Tuple[str, int]:
    devices = {_array.device(a) for a in arrays}
    if len(devices) > 1:
        names = ", ".join(sorted(_array.device_name(d) for d in devices))
        raise ValueError(f"inputs are on different devices ({names}); move them to one device first "
                         f"(e.g. documents.to(queries.device))")
    return devices.pop()


def _check_sets(queries: Ragged, documents: Ragged) -> None:
    if not isinstance(queries, Ragged) or not isinstance(documents, Ragged):
        raise TypeError("ops.maxsim takes Ragged batches; use tokenset.maxsim for lists and padded arrays")
    if queries.dim != documents.dim:
        raise ValueError(f"queries have token dimension {queries.dim} but documents have {documents.dim}")
    lengths = queries.lengths
    if lengths.size and lengths.min() == 0:
        bad = int(np.argmin(lengths))
        raise ValueError(f"queries: set {bad} has no tokens, and an empty query has no MaxSim score; drop it")
    for name, batch in (("queries", queries), ("documents", documents)):
        _array.dtype_code(batch.values, name)


def _check_candidates(candidates: Any, nq: int, nd: int) -> np.ndarray:
    host = _array.int64_host(candidates, "candidates")
    if host.ndim != 2 or host.shape[0] != nq:
        raise ValueError(f"candidates must have shape [num_queries={nq}, c], got {tuple(host.shape)}")
    if host.size:
        lo, hi = int(host.min()), int(host.max())
        if lo < -1 or hi >= nd:
            bad = lo if lo < -1 else hi
            raise ValueError(f"candidates hold {bad}, which is not a document index in [0, {nd}) nor -1 (no "
                             f"candidate)")
    return host


def maxsim(queries: Ragged, documents: Ragged, candidates: Optional[Any] = None,
           with_argmax: bool = False) -> Tuple[Any, Optional[Any]]:
    """MaxSim of all pairs ([nq, nd]) or of candidate lists ([nq, c], candidate -1 scores -inf).

    Returns ``(scores float32, argmax int32 [.., .., max query length] or None)``.
    """
    _check_sets(queries, documents)
    arrays = [queries.values, documents.values] + ([candidates] if _array.is_array(candidates) else [])
    lib = _array.result_library(*arrays)
    dev = _common_device(*arrays)
    cand_host = None if candidates is None else _check_candidates(candidates, len(queries), len(documents))
    if dev[0] == "cpu":
        qv, qc = _array.host_view(queries.values, "queries")
        dv, dc = _array.host_view(documents.values, "documents")
        scores, argmax = _backend._core.maxsim(qv, qc, queries.offsets, dv, dc, documents.offsets,
                                               cand_host, bool(with_argmax))
        return _array.from_host(scores, lib), (None if argmax is None else _array.from_host(argmax, lib))
    return _maxsim_cuda(queries, documents, cand_host, with_argmax, lib, dev)


def maxsim_topk(queries: Ragged, documents: Ragged, k: int) -> Tuple[Any, Any]:
    """Fused top-k: ``(scores float32 [nq, k], indices int64 [nq, k])``; higher first, ties to the lower index,
    NaN ranks as -inf, missing entries (k > number of documents) are (-inf, -1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_sets(queries, documents)
    lib = _array.result_library(queries.values, documents.values)
    dev = _common_device(queries.values, documents.values)
    if dev[0] == "cpu":
        qv, qc = _array.host_view(queries.values, "queries")
        dv, dc = _array.host_view(documents.values, "documents")
        scores, indices = _backend._core.maxsim_topk(qv, qc, queries.offsets, dv, dc, documents.offsets, int(k))
        return _array.from_host(scores, lib), _array.from_host(indices, lib)
    return _topk_cuda(queries, documents, int(k), lib, dev)


# ---- CUDA -----------------------------------------------------------------------------------------------------------

# Documents scored per launch in the GPU top-k: bounds the score buffer at nq x this many floats.
TOPK_DOCUMENT_CHUNK = 1 << 16


def _device_batch(batch: Ragged, lib: str, dev, name: str, dtype_code: Optional[int] = None):
    values = batch.values
    code = _array.dtype_code(values, name)
    if dtype_code is not None and code != dtype_code:  # queries follow the documents' dtype on the GPU
        values = values.to(dtype=batch_dtype(lib, dtype_code)) if lib == "torch" else values.astype(
            _array.DTYPE_NAMES[dtype_code])
        code = dtype_code
    strides = _array.device_strides(values)
    if values.shape[1] > 1 and strides[1] != 1:
        values = values.contiguous() if lib == "torch" else _array._cupy().ascontiguousarray(values)
        strides = _array.device_strides(values)
    row_stride = strides[0] if values.shape[0] > 1 else values.shape[1]
    offsets_dev = batch.device_offsets(lib, dev)
    spec = (_array.device_pointer(values), code, int(values.shape[0]), int(values.shape[1]), int(row_stride),
            _array.device_pointer(offsets_dev), batch.offsets)
    return spec, (values, offsets_dev)  # the second item keeps the buffers alive during the launch


def batch_dtype(lib: str, code: int):
    torch = _array._torch()
    return {_array.FLOAT32: torch.float32, _array.FLOAT16: torch.float16, _array.BFLOAT16: torch.bfloat16}[code]


def _maxsim_cuda(queries, documents, cand_host, with_argmax, lib, dev, doc_range=None):
    cuda = _backend.cuda()
    d_spec, d_keep = _device_batch(documents, lib, dev, "documents")
    q_spec, q_keep = _device_batch(queries, lib, dev, "queries", dtype_code=d_spec[1])
    nq = len(queries)
    cand_dev = None
    if cand_host is not None:
        cand_dev = _array.to_device_int64(cand_host, lib, dev)
        columns = cand_host.shape[1]
    else:
        columns = len(documents)
    scores = _array.empty_device((nq, columns), "float32", lib, dev)
    argmax = None
    if with_argmax:
        argmax = _array.empty_device((nq, columns, int(queries.lengths.max()) if nq else 0), "int32", lib, dev)
    if nq * columns:
        cuda.maxsim(q_spec, d_spec, 0 if cand_dev is None else _array.device_pointer(cand_dev),
                    cand_host.shape[1] if cand_host is not None else 0, _array.device_pointer(scores),
                    0 if argmax is None else _array.device_pointer(argmax), dev[1], _array.current_stream(lib, dev))
    del q_keep, d_keep
    return scores, argmax


def _topk_cuda(queries: Ragged, documents: Ragged, k: int, lib: str, dev):
    """Scores documents in chunks on the GPU and keeps a running top-k with a stable sort (ties: lower index)."""
    nq, nd = len(queries), len(documents)
    xp = _array._torch() if lib == "torch" else _array._cupy()
    top_s = top_i = None
    for start in range(0, nd, TOPK_DOCUMENT_CHUNK):
        stop = min(nd, start + TOPK_DOCUMENT_CHUNK)
        cand = np.broadcast_to(np.arange(start, stop, dtype=np.int64), (nq, stop - start))
        scores, _ = _maxsim_cuda(queries, documents, np.ascontiguousarray(cand), False, lib, dev)
        idx = _array.to_device_int64(np.ascontiguousarray(cand), lib, dev)
        if top_s is not None:
            scores = xp.concatenate([top_s, scores], 1) if lib == "cupy" else xp.cat([top_s, scores], 1)
            idx = xp.concatenate([top_i, idx], 1) if lib == "cupy" else xp.cat([top_i, idx], 1)
        # Earlier columns hold lower indices, so a stable descending sort keeps ties in index order.
        key = xp.where(xp.isnan(scores), -float("inf"), scores)
        if lib == "torch":
            order = xp.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
            top_s, top_i = xp.gather(scores, 1, order), xp.gather(idx, 1, order)
        else:
            order = xp.argsort(-key, axis=1, kind="stable")[:, :k]
            top_s, top_i = xp.take_along_axis(scores, order, 1), xp.take_along_axis(idx, order, 1)
    out_s = _array.empty_device((nq, k), "float32", lib, dev)
    out_i = _array.empty_device((nq, k), "int64", lib, dev)
    out_s[...] = -float("inf")
    out_i[...] = -1
    if top_s is not None:
        out_s[:, : top_s.shape[1]] = top_s
        out_i[:, : top_i.shape[1]] = top_i
    return out_s, out_i
