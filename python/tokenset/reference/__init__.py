"""Plain numpy references of every kernel: readable, slow, and the oracle every fast backend is tested against."""
from . import fde, inner_product, kcenter, maxsim

__all__ = ["fde", "inner_product", "kcenter", "maxsim"]
