"""int8 tokens with a float32 scale per token: a quarter of float32's bytes, half of float16's.

.. math:: s_t = \\max_k |x_{tk}| / 127, \\qquad q_{tk} = \\mathrm{rint}(x_{tk} / s_t) \\in [-127, 127]

(float32 arithmetic, round half to even; a zero token has scale 0 and codes 0). Token ``t`` stands for
``s_t * q_t``: the rounding error of each element is at most ``s_t / 2``.

MaxSim takes :class:`Quantized` documents two ways (``tokenset.maxsim`` and friends):

* float queries: scored against the dequantised documents, bit-identical to float32 MaxSim on
  ``documents.dequantize()``;
* :class:`Quantized` queries: exact int8 dot products (AVX-512 VNNI where the CPU has it),
  ``m_i = max_j float(<q_i, d_j>) * s_j``, ``score = sum_i t_i * m_i``; the error against float32 MaxSim on the original
  tokens is bounded by the rounding of both sides (see the README's table).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _array
from .ragged import Ragged, _check_offsets, _frozen, _SetBatch, ragged

_CHUNK_BYTES = 32 << 20  # float32 rows quantised at a time (a few temporaries of this size), never the corpus


class Quantized(_SetBatch):
    """B sets of int8 tokens, each with a float32 scale: token ``t`` is ``scales[t] * values[t]``.

    ``values [tokens, d]`` int8, ``scales [tokens]`` float32 (finite, >= 0) and ``offsets [B+1]`` as in
    :class:`tokenset.Ragged`; arrays are kept as given (numpy, torch or cupy, one library and device). Build one with
    :func:`quantize`.

    >>> import numpy as np, tokenset
    >>> q = tokenset.quantize(np.array([[1.0, -0.5], [0.0, 0.0], [2.0, 4.0]], np.float32))
    >>> q.values.tolist(), q.scales.tolist()
    ([[127, -64], [0, 0], [64, 127]], [0.007874015718698502, 0.0, 0.031496062874794006])
    """

    __slots__ = ("values", "scales", "offsets")

    def __init__(self, values: Any, scales: Any, offsets: Any, *, name: str = "Quantized"):
        if not _array.is_array(values, f"{name}: values") or not _array.is_array(scales, f"{name}: scales"):
            raise TypeError(f"{name}: values and scales must be numpy arrays, torch tensors or cupy arrays")
        if _array.library(values) != _array.library(scales) or _array.device(values) != _array.device(scales):
            raise ValueError(f"{name}: values and scales must be of one array library and device")
        if values.ndim != 2 or not _array.is_int8(values):
            raise TypeError(f"{name}: values must be a 2-D int8 array [tokens, dim], got {values.dtype} of shape "
                            f"{tuple(values.shape)} (build them with tokenset.quantize)")
        if scales.ndim != 1 or int(scales.shape[0]) != int(values.shape[0]) or _float_name(scales) != "float32":
            raise ValueError(f"{name}: scales must be float32 [{values.shape[0]}] (one per token), got "
                             f"{scales.dtype} of shape {tuple(scales.shape)}")
        if not 1 <= int(values.shape[1]) <= _array.MAX_TOKEN_DIM:
            raise ValueError(f"{name}: token dimension must be in 1..{_array.MAX_TOKEN_DIM}, got {values.shape[1]}")
        host_scales = _array.host_copy(scales, f"{name}: scales")
        if host_scales.size and not (np.isfinite(host_scales).all() and (host_scales >= 0).all()):
            bad = int(np.flatnonzero(~(np.isfinite(host_scales) & (host_scales >= 0)))[0])
            raise ValueError(f"{name}: scales[{bad}] = {host_scales[bad]} is not a finite number >= 0")
        given = _array.int64_host(offsets, f"{name}: offsets")
        if given.ndim != 1:
            raise ValueError(f"{name}: offsets must be 1-D with B+1 >= 1 entries, got shape {tuple(given.shape)}")
        offsets = _frozen(given)
        _check_offsets(offsets, int(values.shape[0]), name)
        self.values, self.scales, self.offsets = values, scales, offsets

    @property
    def _any_values(self):
        return self.values

    @property
    def nbytes(self) -> int:
        """Bytes of the sets' tokens: dim + 4 (the scale) per token."""
        return int(self.offsets[-1] - self.offsets[0]) * (self.dim + 4)

    def __getitem__(self, i: int) -> Tuple[Any, Any]:
        """``(values [n_i, d] int8, scales [n_i] float32)`` of set ``i`` (views)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"set index {i} out of range for {n} sets")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.values[a:b], self.scales[a:b]

    def compact(self) -> "Quantized":
        """The same sets with offsets from 0 and only their rows (views); ``self`` when already compact."""
        start, end = int(self.offsets[0]), int(self.offsets[-1])
        if start == 0 and end == int(self.values.shape[0]):
            return self
        return Quantized(self.values[start:end], self.scales[start:end], self.offsets - start)

    def dequantize(self, dtype: str = "float32") -> Ragged:
        """The tokens as ``scales * values`` (float32 arithmetic), in ``dtype`` (float32, float16 or bfloat16)."""
        name = dtype if isinstance(dtype, str) and dtype == "bfloat16" else None
        if name is None:
            try:
                name = np.dtype(dtype).name  # np.float16, "f2", np.dtype("float32") ...
            except TypeError:
                name = str(dtype)
        if name not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dequantize gives float32, float16 or bfloat16 tokens, not {dtype!r}")
        dtype = name
        c = self.compact()
        values = dequantized(c.values, c.scales)
        if dtype != "float32":
            values = _array.astype(values, dtype)
        return Ragged(values, c.offsets)

    def __repr__(self) -> str:
        return (f"Quantized(sets={len(self)}, dim={self.dim}, tokens={int(self.offsets[-1] - self.offsets[0])}, "
                f"int8, device={_array.device_name(self.device)})")


def dequantized(codes: Any, scales: Any) -> Any:
    """int8 rows times their scales, float32 (one rounding per element), in the arrays' own library."""
    return _array.astype(codes, "float32") * scales[:, None]


def _float_name(x: Any) -> str:
    """'float32' for float32 in this machine's byte order (what the kernels read), else the dtype's description."""
    if _array.is_torch(x):
        return "float32" if x.dtype == _array._torch().float32 else str(x.dtype)
    dt = np.dtype(x.dtype)
    return "float32" if dt == np.dtype(np.float32) else dt.str


def _scales(x: Any) -> Any:
    """float32 [rows] scales of a [rows, d] float32 array of any library: max_k |x_k| / 127."""
    if _array.is_torch(x):
        torch = _array._torch()
        return x.abs().amax(dim=1) / 127.0 if x.shape[0] else torch.zeros(0, dtype=x.dtype, device=x.device)
    xp = _array._cupy() if _array.library(x) == "cupy" else np
    return ((xp.abs(x).max(axis=1) if x.shape[0] else xp.zeros(0, np.float32)) / np.float32(127)).astype(np.float32)


def _codes(x: Any, scales: Any) -> Any:
    """int8 codes rint(x / scale) in [-127, 127] (0 where the scale is 0) of finite rows."""
    if _array.is_torch(x):
        torch = _array._torch()
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(x / safe[:, None]).clamp_(-127, 127)
        return torch.where((scales > 0)[:, None], codes, torch.zeros_like(codes)).to(torch.int8)
    xp = _array._cupy() if _array.library(x) == "cupy" else np
    safe = xp.where(scales > 0, scales, np.float32(1))
    codes = xp.clip(xp.rint(x / safe[:, None]), -127, 127)
    return xp.where((scales > 0)[:, None], codes, np.float32(0)).astype(np.int8)


def quantize(tokens: Any, *, name: str = "tokens") -> Quantized:
    """Symmetric int8 quantisation with one float32 scale per token (see the module docstring for the formula).

    Args:
        tokens: a set batch (``Ragged``, list of ``[n_i, d]`` arrays, ``[B, N, d]`` or ``[n, d]`` array) of float32,
            float16 or bfloat16 values, on any device; NaN and infinity are refused.

    Returns:
        a :class:`Quantized` in the input's library and device. Memory: the output plus float32 temporaries of
        32 MiB of tokens at a time (a few of them).

    >>> import numpy as np, tokenset
    >>> docs = tokenset.quantize([np.ones((3, 4), np.float32), np.full((1, 4), -2.0, np.float32)])
    >>> docs.values[:, 0].tolist(), docs.scales.tolist()
    ([127, 127, 127, -127], [0.007874015718698502, 0.007874015718698502, 0.007874015718698502, 0.015748031437397003])
    """
    if isinstance(tokens, Quantized):
        return tokens
    batch = ragged(tokens, name=name).compact()
    _array.dtype_name(batch._any_values, name)  # a clear TypeError for unsupported dtypes
    _array.check_token_dim(batch.dim, name)
    values = batch.values
    rows = int(values.shape[0])
    lib, dev = _array.library(values), _array.device(values)
    codes = _array.empty((rows, batch.dim), "int8", lib, dev)
    scales = _array.empty((rows,), "float32", lib, dev)
    step = max(1, _CHUNK_BYTES // (4 * batch.dim))
    for start in range(0, rows, step):
        chunk = _array.astype(values[start:start + step], "float32")
        s = _scales(chunk)
        host = _array.host_copy(s, name)
        if not np.isfinite(host).all():
            row = start + int(np.flatnonzero(~np.isfinite(host))[0])
            at = int(np.searchsorted(batch.offsets, row, side="right") - 1)
            raise ValueError(f"{name}: set {at}, token {row - int(batch.offsets[at])} holds NaN or infinity; int8 "
                             f"codes need finite values (clean or drop the token first)")
        codes[start:start + step] = _codes(chunk, s)
        scales[start:start + step] = s
    return Quantized(codes, scales, batch.offsets, name=name)
