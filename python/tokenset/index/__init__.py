"""tokenset.Index: late-interaction retrieval, MUVERA FDE candidates + exact MaxSim rerank (see ``core``)."""
from .core import Index, default_fde
from .ranking import rank_order, top_k
from .store import MAX_ID

__all__ = ["Index", "default_fde", "rank_order", "top_k", "MAX_ID"]
