"""Plain numpy references of every kernel: readable, slow, and the oracle every fast backend is tested against."""
from . import (attention_scores, coverage, fde, inner_product, kcenter, maxsim, merge, nearest, routing_attention,
               residual, segment_sum, selectors, sparse_attention, sparse_lists)

__all__ = ["attention_scores", "coverage", "fde", "inner_product", "kcenter", "maxsim", "merge", "nearest",
           "routing_attention", "residual", "segment_sum", "selectors", "sparse_attention", "sparse_lists"]
