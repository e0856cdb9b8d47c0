"""tokenset: one fast native engine for sets of token vectors.

MaxSim for late-interaction retrieval (ColBERT, ColPali, XTR) and MUVERA Fixed Dimensional Encodings, on ragged
batches, on CPU and GPU, with numpy, torch and cupy arrays in and out without copies.
"""
from __future__ import annotations

from ._backend import _core
from .attention_scores import attention_scores
from ._build import build_info, get_num_threads, set_num_threads, set_simd_level, simd_level
from .coverage import coverage, max_coverage
from .fde import FDE
from .index import Index
from .inner_product import inner_product_topk
from .kcenter import kcenter
from .maxsim import maxsim, maxsim_pairs, maxsim_topk
from .merge import merge
from .prune import PruneResult, prune
from .quantize import Quantized, quantize
from .ragged import Ragged, ragged
from .residual import ResidualCodec, ResidualCodes
from .nearest import nearest
from .segment_sum import segment_sum
from .sparse_attention import sparse_attention
from .routing_attention import routing_attention
from .sparse_lists import (SparseLists, anchor_stripe_lists, list_density, lists_from_block_mask,
                           topk_block_lists)

__version__ = _core.build_info()["version"]

__all__ = [
    "Ragged",
    "ragged",
    "maxsim",
    "maxsim_pairs",
    "maxsim_topk",
    "Quantized",
    "quantize",
    "ResidualCodec",
    "ResidualCodes",
    "FDE",
    "Index",
    "inner_product_topk",
    "kcenter",
    "coverage",
    "max_coverage",
    "prune",
    "merge",
    "PruneResult",
    "nearest",
    "segment_sum",
    "sparse_attention",
    "attention_scores",
    "routing_attention",
    "SparseLists",
    "lists_from_block_mask",
    "topk_block_lists",
    "anchor_stripe_lists",
    "list_density",
    "build_info",
    "simd_level",
    "set_simd_level",
    "get_num_threads",
    "set_num_threads",
]
