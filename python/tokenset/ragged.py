"""Ragged batches of token sets: ``values [T, d]`` + ``offsets [B+1]`` (int64, CSR).

Every op takes a *set batch*: a :class:`Ragged`, a list of ``[n_i, d]`` arrays, a 3-D ``[B, N, d]`` array (all tokens
valid) or a 2-D ``[n, d]`` array (one set). Padded input goes through :func:`ragged` with ``lengths`` or ``mask``:
padded tokens do not exist for any kernel.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from . import _array


def _frozen(offsets: np.ndarray) -> np.ndarray:
    """Offsets kept as checked: an immutable int64 copy, so kernels (and the device copies cached per stream) always
    see the offsets that were checked."""
    return _array.frozen(np.asarray(offsets, dtype=np.int64))


def _check_offsets(offsets: np.ndarray, rows: int, name: str) -> None:
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError(f"{name}: offsets must be 1-D with B+1 >= 1 entries, got shape {tuple(offsets.shape)}")
    if offsets[0] < 0:
        raise ValueError(f"{name}: offsets[0] must be >= 0, got {offsets[0]}")
    steps = np.diff(offsets)
    if steps.size and steps.min() < 0:
        bad = int(np.argmax(steps < 0))
        raise ValueError(f"{name}: offsets must be non-decreasing, but offsets[{bad + 1}]={offsets[bad + 1]} < "
                         f"offsets[{bad}]={offsets[bad]}")
    if offsets[-1] > rows:
        raise ValueError(f"{name}: offsets[-1]={offsets[-1]} is past the end of values, which has {rows} rows")


class _SetBatch:
    """What every set batch answers from its offsets and an array of its values (``_any_values``): Ragged, and
    tokenset.Quantized (int8 tokens with scales)."""

    __slots__ = ()

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dim(self) -> int:
        return int(self._any_values.shape[1])

    @property
    def device(self):
        return _array.device(self._any_values)


class Ragged(_SetBatch):
    """B sets of d-dimensional tokens: set ``i`` is ``values[offsets[i]:offsets[i+1]]``.

    ``values`` is a 2-D numpy array, torch tensor or cupy array, kept as given (no copy); ``offsets`` are validated
    once, here, and kept as a private read-only int64 host copy, which is what every kernel reads (device copies are
    made on demand and cached for the last few streams). :func:`ragged` builds a Ragged from a list of arrays without concatenating
    them: CPU kernels read such a batch in place through a per-set pointer table, and ``values`` is only built (one
    copy) when asked for.

    >>> import numpy as np, tokenset
    >>> r = tokenset.Ragged(np.ones((5, 4), np.float32), [0, 2, 5])
    >>> len(r), r.lengths.tolist(), r.dim
    (2, [2, 3], 4)
    """

    __slots__ = ("_values", "_sets", "offsets", "_device_offsets")

    def __init__(self, values: Any, offsets: Any, *, name: str = "Ragged"):
        if not _array.is_array(values, f"{name}: values"):
            raise TypeError(f"{name}: values must be a numpy array, torch tensor or cupy array, got "
                            f"{type(values).__name__}")
        if values.ndim != 2:
            raise ValueError(f"{name}: values must be 2-D [tokens, dim], got shape {tuple(values.shape)}")
        given = _array.int64_host(offsets, f"{name}: offsets")
        if given.ndim != 1:
            raise ValueError(f"{name}: offsets must be 1-D with B+1 >= 1 entries, got shape {tuple(given.shape)}")
        offsets = _frozen(given)  # checked as kept, not as given
        _check_offsets(offsets, int(values.shape[0]), name)
        self._values = values
        self._sets = None
        self.offsets = offsets
        self._device_offsets = _array.SmallCache()

    @classmethod
    def _from_sets(cls, sets: Sequence[Any]) -> "Ragged":
        """A batch over a list of checked ``[n_i, d]`` arrays of one library, read in place."""
        self = cls.__new__(cls)
        offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([int(a.shape[0]) for a in sets])
        offsets = _frozen(offsets)
        self._values = None
        self._sets = list(sets)
        self.offsets = offsets
        self._device_offsets = _array.SmallCache()
        return self

    @property
    def values(self):
        """``[tokens, d]``: all sets' tokens (for a batch built from a list, concatenated on first use, one copy)."""
        if self._values is None:
            self._values = _concat(self._sets)
        return self._values

    @property
    def sets(self):
        """The list of per-set arrays this batch was built from, or None."""
        return self._sets

    @property
    def _any_values(self):
        """An array of the batch's library, device and dtype, without concatenating a list."""
        return self._values if self._values is not None else self._sets[0]

    @property
    def dtype(self):
        return self._any_values.dtype

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"set index {i} out of range for {n} sets")
        i %= n
        if self._sets is not None:
            return self._sets[i]
        return self._values[int(self.offsets[i]):int(self.offsets[i + 1])]

    def compact(self) -> "Ragged":
        """The same sets with offsets starting at 0 and ``values`` holding exactly their tokens (row ``offsets[0]`` of
        the original is row 0 here): a view of the values and rebased offsets, no copy of the tokens. A valid Ragged
        may start past row 0 (``offsets[0] > 0``) or end before the last row; code that indexes ``values`` with
        per-token positions (gathers, segment ids, masks) works on ``batch.compact()``. Returns ``self`` when already
        compact (and for a batch built from a list)."""
        start, end = int(self.offsets[0]), int(self.offsets[-1])
        if self._values is None or (start == 0 and end == int(self._values.shape[0])):
            return self
        return Ragged(self._values[start:end], self.offsets - start, name="Ragged")

    def device_offsets(self, lib: str, dev, stream: int = 0):
        """Offsets as an int64 array on the values' device, cached per (library, device, stream) for the last few
        of them: each copy is made and freed on the stream that uses it, so a kernel on one stream never reads memory
        another stream reuses."""
        return self._device_offsets.get((lib, dev, stream), lambda: _array.to_device(self.offsets, lib, dev))

    def to_padded(self, fill: float = 0.0):
        """``(padded [B, N, d], lengths [B])`` in the values' library, N the longest set."""
        lengths = self.lengths
        n_max = int(lengths.max()) if lengths.size else 0
        like = self._any_values
        lib = _array.library(like)
        if lib == "torch":
            torch = _array._torch()
            out = torch.full((len(self), n_max, self.dim), fill, dtype=like.dtype, device=like.device)
        elif lib == "cupy":
            out = _array._cupy().full((len(self), n_max, self.dim), fill, dtype=like.dtype)
        else:
            out = np.full((len(self), n_max, self.dim), fill, dtype=like.dtype)
        for i in range(len(self)):
            out[i, : lengths[i]] = self[i]
        return out, lengths

    def __repr__(self) -> str:
        return (f"Ragged(sets={len(self)}, dim={self.dim}, tokens={int(self.offsets[-1] - self.offsets[0])}, "
                f"dtype={self.dtype}, device={_array.device_name(self.device)})")


def _concat(arrays: Sequence[Any]):
    lib = _array.library(arrays[0])
    if lib == "torch":
        return _array._torch().cat(list(arrays), dim=0)
    if lib == "cupy":
        return _array._cupy().concatenate(list(arrays), axis=0)
    return np.concatenate(arrays, axis=0)


def ragged(x: Any, lengths: Optional[Any] = None, mask: Optional[Any] = None, *, name: str = "x") -> Ragged:
    """Turns any set batch into a :class:`Ragged`.

    * ``Ragged``: returned as is.
    * list of ``[n_i, d]`` arrays: kept as a list, read in place by CPU kernels (GPU kernels concatenate once).
    * ``[B, N, d]`` array: all tokens valid (a view), or padded with ``lengths [B]`` (valid prefix of each row) or a
      boolean ``mask [B, N]`` (valid tokens anywhere): the valid tokens are gathered (one copy).
    * ``[n, d]`` array: one set.

    >>> import numpy as np, tokenset
    >>> x = np.zeros((2, 3, 4), np.float32)
    >>> tokenset.ragged(x, lengths=[1, 3]).lengths.tolist()
    [1, 3]
    """
    if type(x).__name__ == "Quantized" and hasattr(x, "scales"):  # tokenset.Quantized (imported lazily: a cycle)
        raise TypeError(f"{name}: int8 tokens (tokenset.Quantized) are scored by maxsim, maxsim_pairs and "
                        f"maxsim_topk only; call .dequantize() for this op")
    if isinstance(x, Ragged):
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: lengths/mask apply to padded [B, N, d] arrays, not to a Ragged")
        return x
    if _array.is_nested(x):  # a torch nested tensor [B, (n_i), d]: its sets, as views, read like a list
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: a nested tensor carries its own lengths; do not pass lengths/mask")
        if x.dim() != 3:
            raise ValueError(f"{name}: a nested tensor must be [B, (n_i), d], got {x.dim()} dimensions")
        x = list(x.unbind())
        if not x:
            raise ValueError(f"{name}: the nested tensor has no sets")
    if isinstance(x, (list, tuple)):
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: lengths/mask apply to padded [B, N, d] arrays, not to a list of sets")
        if len(x) == 0:
            raise ValueError(f"{name}: an empty list has no sets and no token dimension; pass a Ragged with zero sets")
        first = x[0]
        if not _array.is_array(first, f"{name}[0]"):
            raise TypeError(f"{name}[0]: expected an array, got {type(first).__name__}")
        kind, dtype = type(first), first.dtype
        dim = first.shape[1] if first.ndim == 2 else None
        device = _array.device(first)
        torch_device = first.device if _array.is_torch(first) else None
        for i, a in enumerate(x):  # one pass of cheap checks: lists of thousands of sets are common
            if type(a) is not kind and not (isinstance(a, np.ndarray) and isinstance(first, np.ndarray)):
                # (numpy subclasses mix freely: a memory map's empty slice is a plain ndarray)
                if not _array.is_array(a):
                    raise TypeError(f"{name}[{i}]: expected an array, got {type(a).__name__}")
                raise TypeError(f"{name}: all sets must come from one array library, got "
                                f"{sorted({_array.library(first), _array.library(a)})}")
            if a.ndim != 2:
                raise ValueError(f"{name}[{i}]: each set must be 2-D [n_i, d], got shape {tuple(a.shape)}")
            if a.shape[1] != dim:
                raise ValueError(f"{name}[{i}]: token dimension {a.shape[1]} differs from {name}[0]'s {dim}")
            if a.dtype != dtype:
                raise TypeError(f"{name}: all sets must have one dtype, got {dtype} and {a.dtype} ({name}[{i}])")
            if torch_device is not None:
                _array.check_dense(a, f"{name}[{i}]")
            if torch_device is not None and a.device != torch_device or (
                    torch_device is None and device[0] == "cuda" and _array.device(a) != device):
                raise ValueError(f"{name}: all sets must be on one device, got {_array.device_name(device)} and "
                                 f"{_array.device_name(_array.device(a))} ({name}[{i}])")
        return Ragged._from_sets(x)
    if not _array.is_array(x, name):
        raise TypeError(f"{name}: expected a set batch (Ragged, list of [n, d] arrays, [B, N, d] or [n, d] array), "
                        f"got {type(x).__name__}")
    if x.ndim == 2:
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: lengths/mask need a padded [B, N, d] array, got a 2-D array (one set)")
        return Ragged(x, np.array([0, x.shape[0]], dtype=np.int64), name=name)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a [B, N, d] or [n, d] array, got shape {tuple(x.shape)}")
    b, n, d = (int(s) for s in x.shape)
    if (lengths is not None or mask is not None) and not 1 <= d <= 1 << 16:  # before the gather below copies tokens
        raise ValueError(f"{name}: token dimension must be in 1..{1 << 16}, got {d}")
    if lengths is not None and mask is not None:
        raise ValueError(f"{name}: pass lengths or mask, not both")
    lib = _array.library(x)
    if lengths is None and mask is None:
        return Ragged(x.reshape(b * n, d), np.arange(b + 1, dtype=np.int64) * n, name=name)
    if lengths is not None:
        lens = _array.int64_host(lengths, f"{name}: lengths")
        if lens.shape != (b,):
            raise ValueError(f"{name}: lengths must have shape ({b},), got {tuple(lens.shape)}")
        if lens.size and (lens.min() < 0 or lens.max() > n):
            raise ValueError(f"{name}: lengths must lie in [0, {n}], got min {lens.min()} max {lens.max()}")
        keep = np.arange(n)[None, :] < lens[:, None]
    else:
        keep = _array.host_copy(mask, f"{name}: mask")
        if keep.dtype != np.bool_:
            raise TypeError(f"{name}: mask must be boolean, got dtype {keep.dtype}")
        if keep.shape != (b, n):
            raise ValueError(f"{name}: mask must have shape ({b}, {n}), got {tuple(keep.shape)}")
        lens = keep.sum(axis=1).astype(np.int64)
    offsets = np.zeros(b + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    flat_index = np.flatnonzero(keep.reshape(-1))
    flat = x.reshape(b * n, d)
    if lib == "torch":
        torch = _array._torch()
        values = flat.index_select(0, torch.from_numpy(flat_index).to(flat.device))
    elif lib == "cupy":
        values = flat[_array._cupy().asarray(flat_index)]
    else:
        values = flat[flat_index]
    return Ragged(values, offsets, name=name)
