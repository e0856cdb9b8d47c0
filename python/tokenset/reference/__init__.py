"""Plain numpy references of every kernel: readable, slow, and the oracle every fast backend is tested against."""
from . import maxsim

__all__ = ["maxsim"]
