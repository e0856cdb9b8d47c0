"""Exact inner-product top-k over stored vectors: the single-vector search behind FDE candidates.

.. math:: \\mathrm{top}_k \\; j \\mapsto \\langle q, v_j \\rangle

Stored vectors may be float32, float16 or bfloat16, or int8 codes with a float32 scale per row (half float16's bytes:
``score = scale_j * <q, codes_j>``, CPU), read in place, converted in registers as they are loaded, in tiles of rows x
up to 4 queries; queries are float32 (converted when given otherwise); accumulation is float32, one summation order
per (row, query), so a query scores the same bits alone or in any group.
"""
from __future__ import annotations

from typing import Any, Optional

from .ops import inner_product as _ops


def inner_product_topk(queries: Any, vectors: Any, k: int, *, mask: Optional[Any] = None,
                       scales: Optional[Any] = None):
    """The k vectors with the largest inner product with each query.

    Args:
        queries: ``[nq, F]`` (converted to float32).
        vectors: ``[n, F]`` float32, float16, bfloat16 or int8, rows contiguous (e.g. a memory-mapped matrix).
        k: results per query.
        mask: optional boolean ``[n]``: only vectors where True can be returned (e.g. not removed).
        scales: ``[n]`` float32, with int8 vectors only (``tokenset.quantize(v).scales``).

    Returns:
        ``(scores float32 [nq, k], indices int64 [nq, k])``, best first; ties to the lower index; NaN ranks as -inf;
        rows with fewer than k eligible vectors end with ``(-inf, -1)``.

    >>> import numpy as np, tokenset
    >>> v = np.array([[1, 0], [0, 1], [1, 1]], np.float16)
    >>> tokenset.inner_product_topk(np.array([[1.0, 0.5]]), v, k=2)
    (array([[1.5, 1. ]], dtype=float32), array([[2, 0]]))
    """
    return _ops.inner_product_topk(queries, vectors, k, mask, scales)
