"""Typed wrappers of the MaxSim kernels on Ragged batches: place, allocate outputs, call the native op.

Results come back in the caller's array library and device. Queries are converted to the documents' dtype first
(the same rule on every device; against int8 documents, to float32 unless they are quantized too); everything else is
checked natively (csrc/include/tokenset/maxsim.h, validate).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _array
from ..quantize import Quantized
from ..ragged import Ragged
from ..residual import ResidualCodes
from . import _dispatch


class _ResidualArgs:
    """What the native maxsim reads of residual codes beside the documents batch (csrc/bindings/maxsim.cpp)."""

    __slots__ = ("bits", "centroids", "bucket_weights", "centroid_ids", "host_centroid_ids", "host_inverse_norms")

    def __init__(self, codes: ResidualCodes, lib: str, dev):
        codec = codes.codec
        self.bits = codec.bits
        self.centroids = codec.centroids_on(lib, dev)
        self.bucket_weights = codec.bucket_weights
        self.centroid_ids = codes.centroid_ids
        self.host_centroid_ids = self.host_inverse_norms = None
        if dev[0] != "cpu":  # checked on the host before the kernel runs
            self.host_centroid_ids = np.ascontiguousarray(_array.host_copy(codes.centroid_ids), dtype=np.int32)
            self.host_inverse_norms = np.ascontiguousarray(_array.host_copy(codes.inverse_norms), dtype=np.float32)


def _residual_batches(queries, documents: ResidualCodes, lib: str, dev, stream: int):
    """float32 queries (converted) against residual codes read in place."""
    if isinstance(queries, (Quantized, ResidualCodes)):
        raise TypeError("queries against residual codes are float tokens (float32, float16 or bfloat16; converted to "
                        "float32), not int8 or codes")
    if queries.dim != documents.dim:
        raise ValueError(f"queries have dimension {queries.dim} but the coded documents' tokens have "
                         f"{documents.dim} (their codec's)")
    q = _dispatch.kernel_batch(queries, lib, dev, stream, "queries", dtype="float32")
    codes = documents
    packed, ids, norms = codes.packed, codes.centroid_ids, codes.inverse_norms
    if _array.is_torch(packed) and dev[0] == "cpu":
        packed, ids, norms = packed.detach().numpy(), ids.detach().numpy(), norms.detach().numpy()
    # Strided arrays are copied once (whole-row reads): the ids and norms compact, the codes' rows contiguous.
    packed, ids, norms = _array.inner_contiguous(packed), _array.contiguous(ids), _array.contiguous(norms)
    if packed is not codes.packed or ids is not codes.centroid_ids or norms is not codes.inverse_norms:
        codes = ResidualCodes(packed, ids, norms, codes.offsets, codes.codec)
    d = _dispatch.KernelBatch(packed, None, codes.offsets,
                              None if dev[0] == "cpu" else _array.to_device(codes.offsets, lib, dev), norms)
    return q, d, _ResidualArgs(codes, lib, dev)


def _prepare(queries: Ragged, documents: Ragged, *extra: Any):
    """(lib, dev, stream, queries batch, documents batch, residual args or None)."""
    batches = (Ragged, Quantized, ResidualCodes)
    if not isinstance(queries, batches) or not isinstance(documents, batches):
        raise TypeError("ops.maxsim takes Ragged, Quantized or ResidualCodes batches; use tokenset.maxsim for lists "
                        "and padded arrays")
    lib, dev = _dispatch.placement(queries._any_values, documents._any_values, *extra)
    stream = _dispatch.stream(lib, dev)
    if isinstance(documents, ResidualCodes):
        return (lib, dev, stream) + _residual_batches(queries, documents, lib, dev, stream)
    if isinstance(queries, ResidualCodes):
        raise TypeError("residual codes are scored as documents; give float queries")
    if isinstance(documents, Quantized) or isinstance(queries, Quantized):
        return (lib, dev, stream) + _quantized_batches(queries, documents, lib, dev, stream) + (None,)
    dtype = _dispatch.token_dtype(documents, "documents")
    q = _dispatch.kernel_batch(queries, lib, dev, stream, "queries", dtype=dtype)
    d = _dispatch.kernel_batch(documents, lib, dev, stream, "documents")
    return lib, dev, stream, q, d, None


def _quantized_batches(queries, documents, lib: str, dev, stream: int):
    """int8 documents with int8 (Quantized) or float queries (converted to float32, scored dequantised)."""
    if not isinstance(documents, Quantized):
        raise TypeError("quantized (int8) queries are scored against quantized documents only; quantize the "
                        "documents too (tokenset.quantize) or pass float queries")
    if dev[0] != "cpu":
        raise ValueError("int8 documents (tokenset.Quantized) are scored on the CPU: quantize CPU tokens (and score "
                         "CPU queries against them), or keep float16 / bfloat16 tokens on the GPU "
                         "(documents.dequantize(dtype=...))")
    d = _dispatch.quantized_batch(documents, "documents")
    if isinstance(queries, Quantized):
        q = _dispatch.quantized_batch(queries, "queries")
    else:
        q = _dispatch.kernel_batch(queries, lib, dev, stream, "queries", dtype="float32")
    return q, d


def maxsim(queries: Ragged, documents: Ragged, candidates: Optional[Any] = None,
           with_argmax: bool = False) -> Tuple[Any, Optional[Any]]:
    """MaxSim of all pairs ([nq, nd]) or of candidate lists ([nq, c], candidate -1 scores -inf).

    Returns ``(scores float32, argmax int32 [.., .., max query length] or None)``.
    """
    # Candidate lists on the host (numpy, CPU torch) are index arrays, copied to the kernel's device below: they do not
    # take part in the device check. Device candidates must be on the documents' device.
    extra = [candidates] if _array.is_array(candidates) and _array.device(candidates)[0] != "cpu" else []
    lib, dev, stream, q, d, residual = _prepare(queries, documents, *extra)
    if residual is not None and with_argmax:
        raise ValueError("return_argmax is not available against residual codes (scored in place); decode() the "
                         "documents for explanations")
    nq = len(queries)
    cand = host_cand = None
    columns = len(documents)
    if candidates is not None:
        host_cand = _array.int64_host(candidates, "candidates")
        if host_cand.ndim != 2:
            raise ValueError(f"candidates must have shape [num_queries={nq}, c], got {tuple(host_cand.shape)}")
        columns = host_cand.shape[1]
        cand = host_cand if dev[0] == "cpu" else _array.to_device(host_cand, lib, dev)
    scores = _dispatch.empty((nq, columns), "float32", lib, dev)
    argmax = None
    if with_argmax:
        longest = int(queries.lengths.max()) if nq else 0
        argmax = _dispatch.empty((nq, columns, longest), "int32", lib, dev)
    _dispatch.module(dev).maxsim(q, d, scores, argmax, cand, host_cand, stream, residual=residual)
    return scores, argmax


def maxsim_topk(queries: Ragged, documents: Ragged, k: int) -> Tuple[Any, Any]:
    """Fused top-k: ``(scores float32 [nq, k], indices int64 [nq, k])``; higher first, ties to the lower index,
    NaN ranks as -inf, missing entries (k > number of documents) are (-inf, -1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lib, dev, stream, q, d, residual = _prepare(queries, documents)
    nq = len(queries)
    scores, indices = _dispatch.topk_outputs(nq, int(k), len(documents), lib, dev)
    _dispatch.module(dev).maxsim_topk(q, d, int(k), scores, indices, stream, _dispatch.allocator(lib, dev),
                                      residual=residual)
    return scores, indices
