"""Thin typed wrappers over the native kernels, one module per op (Ragged in, arrays out).

Most users want the top-level API (``tokenset.maxsim``); these are for code that already holds ``Ragged`` batches.
"""
from . import fde, maxsim

__all__ = ["fde", "maxsim"]
