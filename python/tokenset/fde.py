"""MUVERA Fixed Dimensional Encodings: one vector per token set whose inner products approximate MaxSim.

For each of ``reps`` repetitions, ``simhash_bits`` random Gaussian hyperplanes cut token space into
``2**simhash_bits`` partitions; a query's FDE block for partition ``p`` is the SUM of its (projected) tokens in ``p``,
a document's the AVERAGE, so that

.. math:: \\langle \\mathrm{FDE}(q), \\mathrm{FDE}(D) \\rangle = \\sum_r \\sum_{i \\in q} \\langle q_i,
          \\overline{D}_{r, p_r(q_i)} \\rangle \\approx \\mathrm{reps} \\cdot \\mathrm{MaxSim}(q, D)

when the tokens that share a partition with ``q_i`` are close to its best match. This is exactly the algorithm of the
authors' C++ (google/graph-mining ``fixed_dimensional_encoding.cc``): Gray-code partition ids, the sparse ±1 "AMS"
projection, Hamming-distance filling of a document's empty partitions, and an optional final Count-Sketch.
"""
from __future__ import annotations

import numbers
import types
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _array, _storage
from .ops import fde as _ops
from .ragged import ragged

_FORMAT = "tokenset.FDE"
_FORMAT_VERSION = 2  # 2: the whole config is covered by a checksum (version 1 files: re-create and save)
_MAX_FDE_DIM = 2**31 - 1
# Hard limits (far above any published setting: MUVERA uses up to ~40 repetitions and 128-1024-d tokens). They bound
# construction time and the state a config on disk can make us allocate.
MAX_DIM = _array.MAX_TOKEN_DIM  # an FDE encodes tokens: the one token-dimension limit
MAX_REPS = 1 << 12
MAX_STATE_FLOATS = 1 << 28  # hyperplanes: reps * dim * simhash_bits (1 GiB)


def _int_arg(value: Any, name: str, low: int, high: Optional[int] = None, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def _check_state_size(reps: int, dim: int, bits: int) -> None:
    if reps * dim * bits > MAX_STATE_FLOATS:
        raise ValueError(f"reps * dim * simhash_bits = {reps * dim * bits} hyperplane coordinates is more than "
                         f"{MAX_STATE_FLOATS}; lower reps or simhash_bits")


def _real_array(x: Any, name: str) -> np.ndarray:
    """A float32 host copy of a real-valued array (bool, integer or float); complex or object input is a TypeError
    (numpy would silently drop the imaginary part)."""
    a = np.asarray(_array.host_copy(x))
    if a.dtype.kind not in "biuf" and a.dtype.name != "bfloat16":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return np.array(a, dtype=np.float32, copy=True)


def _fde_dim(reps: int, bits: int, pd: int) -> int:
    size = reps * (1 << bits) * pd
    if size > _MAX_FDE_DIM:
        raise ValueError(f"reps * 2**simhash_bits * proj_dim = {size} coordinates per set is more than 2^31 - 1; lower "
                         f"simhash_bits or reps, or project tokens to fewer dimensions with proj_dim")
    return size


class FDE:
    """A MUVERA Fixed Dimensional Encoder for sets of ``dim``-dimensional tokens.

    Args:
        dim: token dimension.
        reps: independent repetitions (each with its own hyperplanes and projection), concatenated.
        simhash_bits: hyperplanes per repetition, 0..30; ``2**simhash_bits`` partitions.
        proj_dim: AMS projection of each token to this many dimensions (one random ±1 per input coordinate, in a
            random output column, unscaled), or None for the identity.
        fill_empty: documents fill an empty partition with the token nearest to it in Hamming distance.
        final_dim: optional final Count-Sketch to this many dimensions.
        seed: random state. Repetition ``r`` draws its hyperplanes then its projection from
            ``numpy.random.default_rng([seed, 0, r])``; the Count-Sketch from ``default_rng([seed, 1])``.

    Output size: ``reps * 2**simhash_bits * (proj_dim or dim)`` (or ``final_dim``), float32.

    >>> import numpy as np, tokenset
    >>> fde = tokenset.FDE(dim=8, reps=2, simhash_bits=2, proj_dim=4, seed=1)
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)]
    >>> fde.encode_documents(docs).shape
    (2, 32)
    >>> fde.encode_queries(docs[0][:2]).shape
    (1, 32)
    """

    def __init__(self, dim: int, reps: int = 20, simhash_bits: int = 5, proj_dim: Optional[int] = None,
                 fill_empty: bool = True, final_dim: Optional[int] = None, seed: int = 0):
        dim = _int_arg(dim, "dim", 1, MAX_DIM)
        reps = _int_arg(reps, "reps", 1, MAX_REPS)
        bits = _int_arg(simhash_bits, "simhash_bits", 0, 30)
        proj_dim = _int_arg(proj_dim, "proj_dim", 1, MAX_DIM, allow_none=True)
        final_dim = _int_arg(final_dim, "final_dim", 1, _MAX_FDE_DIM, allow_none=True)
        seed = _int_arg(seed, "seed", 0, 2**63 - 1)
        if not isinstance(fill_empty, (bool, np.bool_)):
            raise TypeError(f"fill_empty must be a bool, got {fill_empty!r}")
        _check_state_size(reps, dim, bits)
        _fde_dim(reps, bits, proj_dim or dim)
        simhash = np.empty((reps, dim, bits), dtype=np.float32)
        proj_index = proj_weight = None
        if proj_dim is not None:
            proj_index = np.empty((reps, dim), dtype=np.int32)
            proj_weight = np.empty((reps, dim), dtype=np.float32)
        for r in range(reps):
            rng = np.random.default_rng([seed, 0, r])
            simhash[r] = rng.standard_normal((dim, bits))
            if proj_dim is not None:
                proj_index[r] = rng.integers(0, proj_dim, size=dim)
                proj_weight[r] = 2.0 * rng.integers(0, 2, size=dim) - 1.0
        final_index = final_sign = None
        if final_dim is not None:
            rng = np.random.default_rng([seed, 1])
            n = _fde_dim(reps, bits, proj_dim or dim)
            final_index = rng.integers(0, final_dim, size=n).astype(np.int32)
            final_sign = (2.0 * rng.integers(0, 2, size=n) - 1.0).astype(np.float32)
        self._set_state(simhash, proj_index, proj_weight, proj_dim, bool(fill_empty), final_index, final_sign,
                        final_dim, seed)

    # ---- construction from explicit matrices --------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, simhash: Any, projection: Any = None, *, fill_empty: bool = True,
                    final_index: Any = None, final_sign: Any = None, final_dim: Optional[int] = None) -> "FDE":
        """An encoder with given random state, e.g. another implementation's hyperplanes.

        Args:
            simhash: ``[reps, dim, simhash_bits]`` hyperplanes.
            projection: ``[reps, dim, proj_dim]`` with at most one nonzero per row (an AMS-style projection), or
                None for the identity.
            final_index, final_sign, final_dim: a Count-Sketch (``[fde_dim]`` output index and weight per coordinate).
        """
        simhash = _real_array(simhash, "simhash")
        if simhash.ndim != 3:
            raise ValueError(f"simhash must be [reps, dim, simhash_bits], got shape {simhash.shape}")
        reps, dim, bits = simhash.shape
        _int_arg(reps, "reps (simhash.shape[0])", 1, MAX_REPS)
        _int_arg(dim, "dim (simhash.shape[1])", 1, MAX_DIM)
        _int_arg(bits, "simhash_bits (simhash.shape[2])", 0, 30)
        if not np.isfinite(simhash).all():
            raise ValueError("simhash holds NaN or inf")
        proj_index = proj_weight = proj_dim = None
        if projection is not None:
            dense = _real_array(projection, "projection")
            if dense.ndim != 3 or dense.shape[:2] != (reps, dim) or not 1 <= dense.shape[2] <= MAX_DIM:
                raise ValueError(f"projection must be [reps={reps}, dim={dim}, proj_dim], got shape {dense.shape}")
            if not np.isfinite(dense).all():
                raise ValueError("projection holds NaN or inf")
            nonzeros = (dense != 0).sum(axis=2)
            if nonzeros.max(initial=0) > 1:
                r, i = np.argwhere(nonzeros > 1)[0]
                raise ValueError(f"projection[{r}, {i}] has {nonzeros[r, i]} nonzeros; an AMS projection sends each "
                                 f"input coordinate to one output column")
            proj_dim = dense.shape[2]
            proj_index = np.argmax(dense != 0, axis=2).astype(np.int32)
            proj_weight = np.take_along_axis(dense, proj_index[..., None].astype(np.int64), 2)[..., 0].copy()
        n = _fde_dim(reps, bits, proj_dim or dim)
        if (final_index is None) != (final_dim is None) or (final_index is None) != (final_sign is None):
            raise ValueError("a Count-Sketch needs final_index, final_sign and final_dim together")
        if final_dim is not None:
            final_dim = _int_arg(final_dim, "final_dim", 1, _MAX_FDE_DIM)
            final_index = np.asarray(_array.host_copy(final_index))
            if final_index.shape != (n,) or not np.issubdtype(final_index.dtype, np.integer):
                raise ValueError(f"final_index must be {n} integers (one per FDE coordinate), got {final_index.dtype} "
                                 f"{final_index.shape}")
            if final_index.min(initial=0) < 0 or final_index.max(initial=0) >= final_dim:
                raise ValueError(f"final_index values must lie in [0, final_dim={final_dim})")
            final_index = final_index.astype(np.int32)
            final_sign = _real_array(final_sign, "final_sign")
            if final_sign.shape != (n,) or not np.isfinite(final_sign).all():
                raise ValueError(f"final_sign must be {n} finite numbers, got shape {final_sign.shape}")
        self = cls.__new__(cls)
        self._set_state(simhash, proj_index, proj_weight, proj_dim, bool(fill_empty), final_index, final_sign,
                        final_dim, None)
        return self

    def _set_state(self, simhash, proj_index, proj_weight, proj_dim, fill_empty, final_index, final_sign, final_dim,
                   seed) -> None:
        # Immutable from here on (backed by bytes: not even setflags can make them writable): the kernels follow the
        # indices that were checked, whatever another thread does.
        simhash, proj_index, proj_weight, final_index, final_sign = (
            None if a is None else _array.frozen(a)
            for a in (simhash, proj_index, proj_weight, final_index, final_sign))
        self._simhash = simhash
        self._proj_index, self._proj_weight, self._proj_dim = proj_index, proj_weight, proj_dim
        self._fill_empty = fill_empty
        self._final_index, self._final_sign, self._final_dim = final_index, final_sign, final_dim
        self._seed = seed
        self._kernel_state: Optional[Dict[str, Any]] = None
        self._grouping: Optional[Dict[str, np.ndarray]] = None
        self._device_states = _array.SmallCache()  # (library, device, stream) -> (device state, host state)

    # ---- configuration ------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._simhash.shape[1])

    @property
    def reps(self) -> int:
        return int(self._simhash.shape[0])

    @property
    def simhash_bits(self) -> int:
        return int(self._simhash.shape[2])

    @property
    def proj_dim(self) -> Optional[int]:
        """Projected dimension, or None for the identity."""
        return self._proj_dim

    @property
    def fill_empty(self) -> bool:
        return self._fill_empty

    @property
    def final_dim(self) -> Optional[int]:
        return self._final_dim

    @property
    def seed(self) -> Optional[int]:
        """The seed the state was drawn from (None for :meth:`from_arrays` / loaded-from-arrays encoders)."""
        return self._seed

    @property
    def num_partitions(self) -> int:
        return 1 << self.simhash_bits

    @property
    def fde_dim(self) -> int:
        """Size before the Count-Sketch: ``reps * 2**simhash_bits * (proj_dim or dim)``."""
        return self.reps * self.num_partitions * (self._proj_dim or self.dim)

    @property
    def output_dim(self) -> int:
        """Size of every encoding: ``final_dim``, or ``fde_dim`` without a Count-Sketch."""
        return self._final_dim or self.fde_dim

    # ---- inspectable random state -------------------------------------------------------------------------------
    @property
    def simhash(self) -> np.ndarray:
        """``[reps, dim, simhash_bits]`` float32 Gaussian hyperplanes (read-only)."""
        return self._simhash

    @property
    def projection(self) -> Optional[np.ndarray]:
        """``[reps, dim, proj_dim]`` float32 AMS matrix (one ±1 per row), or None for the identity. A new array."""
        if self._proj_index is None:
            return None
        dense = np.zeros((self.reps, self.dim, self._proj_dim), dtype=np.float32)
        np.put_along_axis(dense, self._proj_index[..., None].astype(np.int64), self._proj_weight[..., None], axis=2)
        return dense

    @property
    def projection_index(self) -> Optional[np.ndarray]:
        """``[reps, dim]`` int32: the output column of every input coordinate (read-only), or None."""
        return self._proj_index

    @property
    def projection_weight(self) -> Optional[np.ndarray]:
        """``[reps, dim]`` float32: the weight (±1) of every input coordinate (read-only), or None."""
        return self._proj_weight

    @property
    def final_index(self) -> Optional[np.ndarray]:
        """``[fde_dim]`` int32: the Count-Sketch output coordinate of every FDE coordinate, or None."""
        return self._final_index

    @property
    def final_sign(self) -> Optional[np.ndarray]:
        """``[fde_dim]`` float32: the Count-Sketch sign of every FDE coordinate, or None."""
        return self._final_sign

    def __repr__(self) -> str:
        return (f"FDE(dim={self.dim}, reps={self.reps}, simhash_bits={self.simhash_bits}, proj_dim={self._proj_dim}, "
                f"fill_empty={self._fill_empty}, final_dim={self._final_dim}, seed={self._seed}) -> "
                f"{self.output_dim} dims")

    # ---- encoding -----------------------------------------------------------------------------------------------
    def kernel_state(self) -> Mapping[str, Any]:
        """The state as the CPU kernels take it, read-only: sizes and host arrays (hyperplanes as
        ``[dim, reps * simhash_bits]``). ``dict(fde.kernel_state())`` gives a copy to experiment with through
        :mod:`tokenset.ops.fde`; every value is checked natively."""
        return types.MappingProxyType(self._host_state())

    def _host_state(self) -> Dict[str, Any]:
        if self._kernel_state is None:
            columns = np.ascontiguousarray(self._simhash.transpose(1, 0, 2).reshape(self.dim, -1))
            self._kernel_state = {
                "dim": self.dim, "reps": self.reps, "simhash_bits": self.simhash_bits,
                "proj_dim": self._proj_dim or self.dim, "simhash": _array.frozen(columns),
                "proj_index": self._proj_index, "proj_weight": self._proj_weight,
                "final_dim": self._final_dim or 0, "final_index": self._final_index, "final_sign": self._final_sign}
        return self._kernel_state

    def _gpu_grouping(self) -> Dict[str, np.ndarray]:
        """What only the GPU kernels need, built on first GPU use (never for CPU-only encoders): the projection
        grouped by output column per repetition, and the Count-Sketch grouped by output coordinate (int32 starts:
        4 * (fde_dim + final_dim + 1) bytes), so every output is summed in the CPU's order without atomics."""
        if self._grouping is None:
            grouping = {}
            if self._proj_index is not None:
                pd = self._proj_dim
                grouping["proj_order"] = np.argsort(self._proj_index, axis=1, kind="stable").astype(np.int32)
                starts = np.zeros((self.reps, pd + 1), dtype=np.int32)
                for r in range(self.reps):
                    starts[r, 1:] = np.cumsum(np.bincount(self._proj_index[r], minlength=pd))
                grouping["proj_starts"] = starts
            if self._final_index is not None:
                grouping["final_order"] = np.argsort(self._final_index, kind="stable").astype(np.int32)
                starts = np.zeros(self._final_dim + 1, dtype=np.int32)
                np.cumsum(np.bincount(self._final_index, minlength=self._final_dim), out=starts[1:])
                grouping["final_starts"] = starts
            self._grouping = {k: _array.frozen(v) for k, v in grouping.items()}
        return self._grouping

    def _device_state(self, lib: str, dev, stream: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``(state on the GPU, the host state it was copied from)``, cached per (library, device, stream): each copy
        is made and freed on the stream that uses it. The host state (with the GPU grouping) is what the native
        entry checks."""
        def make():
            host = dict(self._host_state())
            host.update(self._gpu_grouping())
            names = ("simhash", "proj_index", "proj_weight", "proj_order", "proj_starts", "final_index",
                     "final_sign", "final_order", "final_starts")
            device = {n: (None if host.get(n) is None else _array.to_device(host[n], lib, dev)) for n in names}
            return device, host

        return self._device_states.get((lib, dev, stream), make)

    def encode_documents(self, documents: Any, *, lengths: Any = None, mask: Any = None, out: Any = None):
        """FDEs of documents, ``[nd, output_dim]`` float32 in the input's library and device.

        Each partition holds the average of the document's projected tokens in it; with ``fill_empty`` an empty
        partition takes the token nearest to it in Hamming distance. A document with no tokens encodes to zeros.
        ``documents`` is any set batch (``Ragged``, list of ``[n_i, dim]`` arrays, ``[B, N, dim]`` with optional
        ``lengths`` / ``mask``, or one ``[n, dim]`` set). ``out``: write into this C-contiguous float32
        ``[nd, output_dim]`` array instead (e.g. a slice of a memory-mapped file, when encoding a corpus in batches).
        """
        sets = ragged(documents, lengths, mask, name="documents")
        result, _ = _ops.encode(sets, self._host_state(), documents=True, fill_empty=self._fill_empty,
                                device_state=self._device_state, out=out)
        return result

    def encode_queries(self, queries: Any, *, lengths: Any = None, mask: Any = None, out: Any = None):
        """FDEs of queries, ``[nq, output_dim]`` float32: each partition holds the SUM of the query's projected
        tokens in it (never filled). An empty query is a ValueError. ``out`` as in :meth:`encode_documents`."""
        sets = ragged(queries, lengths, mask, name="queries")
        result, _ = _ops.encode(sets, self._host_state(), documents=False, device_state=self._device_state,
                                out=out)
        return result

    def partitions(self, sets: Any, *, lengths: Any = None, mask: Any = None):
        """``[tokens, reps]`` int32: the partition of every token in every repetition (tokens in batch order)."""
        batch = ragged(sets, lengths, mask, name="sets")
        return _ops.partitions(batch, self._host_state(), device_state=self._device_state)

    # ---- persistence --------------------------------------------------------------------------------------------
    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"simhash": self._simhash}
        if self._proj_index is not None:
            arrays["projection_index"] = self._proj_index
            arrays["projection_weight"] = self._proj_weight
        if self._final_index is not None:
            arrays["final_index"] = self._final_index
            arrays["final_sign"] = self._final_sign
        return arrays

    def _config(self) -> Dict[str, Any]:
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "dim": self.dim, "reps": self.reps,
                "simhash_bits": self.simhash_bits, "proj_dim": self._proj_dim, "fill_empty": self._fill_empty,
                "final_dim": self._final_dim, "seed": self._seed}

    def save(self, path: Any) -> None:
        """Writes the encoder to ``path``: a zip of ``config.json`` and one stored ``.npy`` per array (never pickle),
        with a SHA-256 of every array and of the whole config. Written to a unique temporary file beside ``path``,
        fsynced, then renamed over it: safe from many threads or processes at once, and a crash leaves the previous
        file."""
        _storage.write_zip(path, self._config(), self._arrays())

    def to_bytes(self) -> bytes:
        """The bytes :meth:`save` writes (read back by :meth:`from_bytes`)."""
        return _storage.zip_bytes(self._config(), self._arrays())

    @classmethod
    def load(cls, path: Any) -> "FDE":
        """Reads an encoder written by :meth:`save`. Nothing on disk is trusted: every size is checked against hard
        limits (``dim <= 2**16``, ``reps <= 4096``, the FDE size) and the config before anything is allocated, every
        array against its shape, dtype and SHA-256, the whole config against its own SHA-256, and every index against
        its range. Any malformed file raises ValueError (a missing file: the usual OSError)."""
        return cls._read(_storage.ZipReader(path, "tokenset FDE"))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> "FDE":
        """An encoder from the bytes of a file written by :meth:`save` (checked exactly as :meth:`load` checks a
        file; `name` names it in messages)."""
        return cls._read(_storage.ZipReader(name, "tokenset FDE", data=bytes(data)))

    @classmethod
    def _read(cls, reader: "_storage.ZipReader") -> "FDE":
        with reader as z:
            corrupt = z.corrupt
            config = z.config()
            _storage.check_format(config, _FORMAT, _FORMAT_VERSION, corrupt)
            dim = _storage.config_int(config, "dim", 1, MAX_DIM, corrupt)
            reps = _storage.config_int(config, "reps", 1, MAX_REPS, corrupt)
            bits = _storage.config_int(config, "simhash_bits", 0, 30, corrupt)
            proj_dim = _storage.config_int(config, "proj_dim", 1, MAX_DIM, corrupt, allow_none=True)
            final_dim = _storage.config_int(config, "final_dim", 1, _MAX_FDE_DIM, corrupt, allow_none=True)
            seed = _storage.config_int(config, "seed", 0, 2**63 - 1, corrupt, allow_none=True)
            try:
                _check_state_size(reps, dim, bits)
                n = _fde_dim(reps, bits, proj_dim or dim)
            except ValueError as exc:
                raise corrupt(str(exc)) from None
            fill_empty = config.get("fill_empty")
            if not isinstance(fill_empty, bool):
                raise corrupt("fill_empty must be true or false")
            expected = {"simhash": (np.float32, (reps, dim, bits))}
            if proj_dim is not None:
                expected["projection_index"] = (np.int32, (reps, dim))
                expected["projection_weight"] = (np.float32, (reps, dim))
            if final_dim is not None:
                expected["final_index"] = (np.int32, (n,))
                expected["final_sign"] = (np.float32, (n,))
            if set(z.members) != {"config.json"} | {f"{k}.npy" for k in expected}:
                raise corrupt(f"members {sorted(z.members)} do not match the configuration")
            digests = config.get(_storage.DIGEST_KEY)
            if not isinstance(digests, dict) or set(digests) != set(expected):
                raise corrupt("array checksums missing")
            arrays = {name: z.array(name, dtype, shape, digests[name]) for name, (dtype, shape) in expected.items()}
        simhash = arrays["simhash"]
        if not np.isfinite(simhash).all():
            raise corrupt("simhash holds NaN or inf")
        proj_index, proj_weight = arrays.get("projection_index"), arrays.get("projection_weight")
        if proj_index is not None and (proj_index.min(initial=0) < 0 or proj_index.max(initial=0) >= proj_dim
                                       or not np.isfinite(proj_weight).all()):
            raise corrupt("projection index out of range or weights not finite")
        final_index, final_sign = arrays.get("final_index"), arrays.get("final_sign")
        if final_index is not None and (final_index.min(initial=0) < 0 or final_index.max(initial=0) >= final_dim
                                        or not np.isfinite(final_sign).all()):
            raise corrupt("Count-Sketch index out of range or signs not finite")
        self = cls.__new__(cls)
        self._set_state(simhash, proj_index, proj_weight, proj_dim, fill_empty, final_index, final_sign, final_dim,
                        seed)
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FDE):
            return NotImplemented
        mine, theirs = self._arrays(), other._arrays()
        return (self._proj_dim == other._proj_dim and self._fill_empty == other._fill_empty
                and self._final_dim == other._final_dim and mine.keys() == theirs.keys()
                and all(np.array_equal(mine[k], theirs[k]) for k in mine))

    __hash__ = None  # mutable-looking, array-valued: not hashable

