"""PLAID residual codes: a centroid id, b bits per dimension (b = 1, 2, 4) and 1/||reconstruction|| per token.

.. math:: \\hat x_t = \\frac{C_{id_t} + w[c_t]}{\\lVert C_{id_t} + w[c_t] \\rVert}, \\qquad
          c_{tk} = \\#\\{j : \\mathrm{cutoff}_j < x_{tk} - C_{id_t,k}\\}

ColBERT / PLAID's codec, rule for rule (../shared/ANCHORS.md): ``2^floor(log2(16 sqrt(tokens)))`` centroids from
k-means (4 iterations) on a sample, L2-normalised and stored float16; each token's centroid is the one of largest inner
product (lowest index on ties); the residual's buckets are global: cutoffs at the quantiles ``i / 2^b`` of all
residual values, weights at ``(i + 0.5) / 2^b``. Codes are packed as PLAID packs them: bit ``j`` of a dimension's code
is ``(code >> j) & 1``, least significant first, dimensions in order, 8 stream bits per byte with the first in the
byte's most significant bit (``np.packbits``): ``dim * b / 8`` bytes per token, which a PLAID reader decodes to the
same codes. tokenset also stores each token's ``1 / ||C + w[code]||`` (float32), so that scores need no decoding.

:func:`tokenset.maxsim` and friends score float queries against :class:`ResidualCodes` in place, through per-query
lookup tables: the centroid table ``<q_i, C_c>``, plus the residual's part ``<q_i, w[code_t]>`` as an exact int8 dot
product of the query token quantised like :func:`tokenset.quantize` with the int8 bucket weights (expanded from the
codes in registers, never into memory), times the stored ``1/||reconstruction||``. The difference from MaxSim on
:meth:`ResidualCodes.decode` is bounded by the two int8 roundings (``reference.residual.lut_error_bound``; the README
gives the bound and measured figures).

Bytes per token: ``dim * b / 8`` codes + 4 (centroid id, int32) + 4 (inverse norm): 40 bytes at 2 bits and dim 128,
6.4x smaller than float16.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _array, _storage
from .ops import residual_codec as _ops
from .ragged import Ragged, _check_offsets, _frozen, _SetBatch, ragged

BITS = (1, 2, 4)
MAX_CENTROIDS = 1 << 22  # a file's limit: 4M centroids of dim <= 2**16 is checked against the array sizes too
_CHUNK_BYTES = 32 << 20  # float32 tokens encoded / decoded at a time
_FORMAT = "tokenset.ResidualCodec"
_FORMAT_VERSION = 1


def centroid_count(tokens: int) -> int:
    """PLAID's number of centroids for ``tokens`` tokens: ``2^floor(log2(16 sqrt(tokens)))``.

    >>> import tokenset
    >>> tokenset.residual.centroid_count(1_000_000)
    8192
    """
    return int(2 ** math.floor(math.log2(16 * math.sqrt(max(int(tokens), 1)))))


_UNTRAINED: Dict[Tuple[int, int], "ResidualCodec"] = {}


def untrained_codec(dim: int, bits: int) -> "ResidualCodec":
    """The placeholder codec of a residual index that has stored no token yet (one centroid of zeros, zero buckets):
    what its token-less documents are read with and what a save writes until the first tokens train the real one
    (the manifest marks it untrained; :func:`is_untrained` tells it apart)."""
    key = (int(dim), int(bits))
    if key not in _UNTRAINED:
        levels = 1 << bits
        _UNTRAINED[key] = ResidualCodec(np.zeros((1, dim), np.float16), np.zeros(levels - 1, np.float32),
                                        np.zeros(levels, np.float32), bits)
    return _UNTRAINED[key]


def is_untrained(codec: Any) -> bool:
    return codec is not None and _UNTRAINED.get((codec.dim, codec.bits)) is codec


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in BITS:
        raise ValueError(f"bits must be 1, 2 or 4 (bits per dimension of a residual code), got {bits!r}")
    return int(bits)


def _check_packing(dim: int, bits: int) -> None:
    if dim * bits % 8:
        raise ValueError(f"dim x bits = {dim} x {bits} is not a multiple of 8: every token's codes fill whole bytes "
                         f"(PLAID's packing); use a dim that is a multiple of {8 // math.gcd(8, bits)}")


def _host_float32(x: Any, name: str) -> np.ndarray:
    return np.ascontiguousarray(_array.host_copy(x, name), dtype=np.float32)


class ResidualCodec:
    """A trained codec: ``centroids [C, dim]`` float16 (unit norm), ``bucket_cutoffs [2^b - 1]`` and
    ``bucket_weights [2^b]`` float32, ``bits``. Build one with :meth:`train`, or from PLAID's arrays.

    >>> import numpy as np, tokenset
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((30, 16)).astype(np.float32) for _ in range(8)]
    >>> codec = tokenset.ResidualCodec.train(docs, bits=2, centroids=4)
    >>> codes = codec.encode(docs)
    >>> codes.packed.shape, codes.nbytes // len(codes.packed)   # 16 dims x 2 bits = 4 bytes, + id + norm
    ((240, 4), 12)
    >>> scores = tokenset.maxsim(docs[:2], codes)               # scored in place
    """

    __slots__ = ("_centroids", "_centroids32", "_cutoffs", "_weights", "_bits", "_device_centroids")

    def __init__(self, centroids: Any, bucket_cutoffs: Any, bucket_weights: Any, bits: int):
        bits = _check_bits(bits)
        c = np.asarray(_array.host_copy(centroids, "centroids"))
        if c.ndim != 2 or not 1 <= c.shape[0] <= MAX_CENTROIDS or not 1 <= c.shape[1] <= _array.MAX_TOKEN_DIM:
            raise ValueError(f"centroids must be [C, dim] with 1 <= C <= {MAX_CENTROIDS} and 1 <= dim <= "
                             f"{_array.MAX_TOKEN_DIM}, got shape {c.shape}")
        c = np.ascontiguousarray(c, dtype=np.float16)
        if not np.isfinite(c).all():
            raise ValueError("centroids hold NaN or infinity (or values beyond float16's range)")
        _check_packing(int(c.shape[1]), bits)
        cutoffs = _host_float32(bucket_cutoffs, "bucket_cutoffs").ravel()
        weights = _host_float32(bucket_weights, "bucket_weights").ravel()
        if cutoffs.shape != ((1 << bits) - 1,) or weights.shape != (1 << bits,):
            raise ValueError(f"{bits} bits need {(1 << bits) - 1} bucket cutoffs and {1 << bits} weights, got "
                             f"{cutoffs.size} and {weights.size}")
        if not (np.isfinite(cutoffs).all() and np.isfinite(weights).all()):
            raise ValueError("bucket cutoffs and weights must be finite")
        if np.any(np.diff(cutoffs) < 0):
            raise ValueError(f"bucket cutoffs must be non-decreasing, got {cutoffs.tolist()}")
        self._centroids = _array.frozen(c)
        self._centroids32 = _array.frozen(c.astype(np.float32))
        self._cutoffs = _array.frozen(cutoffs)
        self._weights = _array.frozen(weights)
        self._bits = bits
        self._device_centroids = _array.SmallCache(2)

    # ---- state ----------------------------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def dim(self) -> int:
        return int(self._centroids.shape[1])

    @property
    def num_centroids(self) -> int:
        return int(self._centroids.shape[0])

    @property
    def centroids(self) -> np.ndarray:
        """``[C, dim]`` float16, unit norm (read-only)."""
        return self._centroids

    @property
    def bucket_cutoffs(self) -> np.ndarray:
        return self._cutoffs

    @property
    def bucket_weights(self) -> np.ndarray:
        return self._weights

    @property
    def bytes_per_token(self) -> int:
        """Codes + centroid id (int32) + inverse norm (float32)."""
        return self.dim * self._bits // 8 + 8

    def centroids_on(self, lib: str, dev) -> Any:
        """The float32 centroids (the float16 values widened) where the kernels read them."""
        if dev[0] == "cpu":
            return self._centroids32
        return self._device_centroids.get((lib, dev), lambda: _array.to_device(self._centroids32, lib, dev))

    # ---- training -------------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, tokens: Any, bits: int = 2, *, centroids: Optional[int] = None, sample: Optional[int] = None,
              iters: int = 4, seed: int = 0) -> "ResidualCodec":
        """PLAID's training on a sample of ``tokens`` (a set batch, or ``[n, d]``).

        Args:
            bits: bits per dimension of the residual codes (1, 2 or 4).
            centroids: how many; default PLAID's rule for the corpus size, ``centroid_count(tokens)``, at most the
                sample's size. Or the centroids themselves (``[C, dim]``, e.g. ``other.centroids``: codecs of several
                bit widths over one k-means): only the buckets are trained then.
            sample: tokens sampled (without replacement, ``seed``) for k-means and the buckets; default
                ``min(tokens, max(64 * centroids, 2**16))``. k-means costs ``iters * sample * centroids * dim`` FMAs.
            iters: k-means iterations (PLAID: 4), from ``centroids`` distinct sampled tokens (Lloyd's steps with the
                native nearest-centre op; an empty cluster keeps its centre).
        """
        bits = _check_bits(bits)
        batch = ragged(tokens, name="tokens").compact()
        _array.dtype_name(batch._any_values, "tokens")
        total = int(batch.offsets[-1] - batch.offsets[0])
        if total == 0:
            raise ValueError("cannot train a codec on no tokens")
        _check_packing(batch.dim, bits)
        for name, value in (("iters", iters), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        given = None
        if centroids is not None and _array.is_array(centroids, "centroids"):
            given = ResidualCodec(centroids, np.zeros((1 << bits) - 1, np.float32), np.zeros(1 << bits, np.float32),
                                  bits).centroids  # checked as a codec's (shape, finite, float16)
            if given.shape[1] != batch.dim:
                raise ValueError(f"the centroids have dimension {given.shape[1]}, the tokens {batch.dim}")
            centroids = given.shape[0]
        count = centroid_count(total) if centroids is None else centroids
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_CENTROIDS:
            raise ValueError(f"centroids must be an integer in 1..{MAX_CENTROIDS} or a [C, dim] array, got {count!r}")
        if sample is None:
            sample = min(total, max(64 * int(count), 1 << 16))
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise ValueError(f"sample must be an integer >= 1, got {sample!r}")
        sample = min(int(sample), total)
        count = int(count) if given is not None else min(int(count), sample)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(total, size=sample, replace=False)) if sample < total else np.arange(total)
        values = batch.values
        picked = _array.host_copy(values[_array.to_device(rows, _array.library(values), _array.device(values))
                                         if _array.device(values)[0] != "cpu" else rows], "tokens")
        x = np.ascontiguousarray(picked, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError("the training sample holds NaN or infinity: clean the tokens first")
        if given is not None:
            unit = given
        else:
            means = _kmeans(x, int(count), int(iters), rng)
            norms = np.linalg.norm(means, axis=1, keepdims=True)
            unit = np.where(norms > 0, means / np.where(norms > 0, norms, 1), means).astype(np.float16)
        c32 = unit.astype(np.float32)
        residuals = x - c32[_nearest(x, c32, "ip")]
        levels = 1 << bits
        cutoffs = np.quantile(residuals.ravel(), np.arange(1, levels) / levels).astype(np.float32)
        weights = np.quantile(residuals.ravel(), (np.arange(levels) + 0.5) / levels).astype(np.float32)
        return cls(unit, cutoffs, weights, bits)

    # ---- codes ----------------------------------------------------------------------------------------------------
    def encode(self, tokens: Any, *, centroid_ids: Any = None, name: str = "tokens") -> "ResidualCodes":
        """Codes of a set batch (float32, float16 or bfloat16; NaN and infinity refused), in the tokens' library and
        device. Memory: the codes plus 32 MiB of float32 tokens at a time.

        The nearest-centroid search (``tokens x centroids x dim`` FMAs, the bulk of the cost) is skipped when
        ``centroid_ids`` (int32 ``[tokens]``, e.g. ``codes.centroid_ids`` of a codec with the same centroids) are
        given; they are checked to be in range, not to be the nearest."""
        batch = ragged(tokens, name=name).compact()
        _array.dtype_name(batch._any_values, name)
        if batch.dim != self.dim:
            raise ValueError(f"{name} have dimension {batch.dim} but the codec's is {self.dim}")
        values = batch.values
        rows = int(values.shape[0])
        lib, dev = _array.library(values), _array.device(values)
        packed = _array.empty((rows, self.dim * self._bits // 8), "uint8", lib, dev)
        ids = _array.empty((rows,), "int32", lib, dev)
        norms = _array.empty((rows,), "float32", lib, dev)
        centroids = self.centroids_on(lib, dev)
        if centroid_ids is not None:
            if not _array.is_array(centroid_ids, "centroid_ids") or tuple(centroid_ids.shape) != (rows,) or \
                    _dtype_str(centroid_ids) != "int32" or _array.device(centroid_ids) != dev:
                raise ValueError(f"centroid_ids must be int32 [{rows}] (one per token) on the tokens' device")
            self._check_ids(centroid_ids, "centroid_ids", "are not this codec's centroids")
            centroid_ids = _in_library(centroid_ids, lib)
        step = max(1, _CHUNK_BYTES // (4 * self.dim))
        for start in range(0, rows, step):
            chunk = _array.inner_contiguous(_array.astype(values[start:start + step], "float32"))
            finite = _array.host_copy(_finite_rows(chunk), name)
            if not finite.all():
                row = start + int(np.flatnonzero(~finite)[0])
                at = int(np.searchsorted(batch.offsets, row, side="right") - 1)
                raise ValueError(f"{name}: set {at}, token {row - int(batch.offsets[at])} holds NaN or infinity; "
                                 f"residual codes need finite values (clean or drop the token first)")
            if centroid_ids is not None:
                chunk_ids = centroid_ids[start:start + step]
            else:
                chunk_ids = _nearest(chunk, centroids, "ip")
                chunk_ids = _array.astype(chunk_ids, "int32") if _array.is_torch(chunk_ids) else \
                    chunk_ids.astype(np.int32)
            p, n = _ops.encode(chunk, chunk_ids, centroids, self._cutoffs, self._weights, self._bits)
            packed[start:start + step] = p
            ids[start:start + step] = chunk_ids
            norms[start:start + step] = n
        return ResidualCodes(packed, ids, norms, batch.offsets, self, name=name)

    def decode(self, codes: "ResidualCodes") -> Ragged:
        """The normalised reconstructions ``(C_id + w[code]) * inverse_norm``, float32, as a Ragged batch."""
        if not isinstance(codes, ResidualCodes):
            raise TypeError(f"decode takes tokenset.ResidualCodes, got {type(codes).__name__}")
        if codes.codec is not self and codes.codec != self:
            raise ValueError("these codes were made by another codec; decode them with codes.codec")
        c = codes.compact()
        self._check_ids(c.centroid_ids, "the codes' centroid ids", "the codes do not belong to this codec")
        lib, dev = _array.library(c.packed), _array.device(c.packed)
        rows = int(c.packed.shape[0])
        out = _array.empty((rows, self.dim), "float32", lib, dev)
        centroids = self.centroids_on(lib, dev)
        step = max(1, _CHUNK_BYTES // (4 * self.dim))
        for start in range(0, rows, step):
            out[start:start + step] = _ops.decode(_array.contiguous(c.packed[start:start + step]),
                                                  _array.contiguous(c.centroid_ids[start:start + step]),
                                                  _array.contiguous(c.inverse_norms[start:start + step]), centroids,
                                                  self._cutoffs, self._weights, self._bits)
        return Ragged(out, c.offsets)

    def _check_ids(self, ids: Any, what: str, why: str) -> None:
        """Every id a centroid of this codec (checked here so that the message names the token in the batch; the
        native layer checks again, per chunk)."""
        host = np.asarray(_array.host_copy(ids, what))
        if host.size == 0:
            return
        bad = (host < 0) | (host >= self.num_centroids)
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what}[{t}] = {int(host[t])} is not in [0, {self.num_centroids}): {why}")

    # ---- files ----------------------------------------------------------------------------------------------------
    def _arrays(self) -> Dict[str, np.ndarray]:
        return {"centroids": self._centroids, "bucket_cutoffs": self._cutoffs, "bucket_weights": self._weights}

    def _config(self) -> Dict[str, Any]:
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "bits": self._bits, "dim": self.dim,
                "centroids": self.num_centroids}

    def save(self, path: Any) -> None:
        """Writes the codec to ``path``: a zip of ``config.json`` and one stored ``.npy`` per array (never pickle),
        each with its SHA-256, written atomically (as :meth:`tokenset.FDE.save`)."""
        _storage.write_zip(path, self._config(), self._arrays())

    def to_bytes(self) -> bytes:
        return _storage.zip_bytes(self._config(), self._arrays())

    @classmethod
    def load(cls, path: Any) -> "ResidualCodec":
        """Reads a codec written by :meth:`save`; sizes, dtypes, checksums and values are checked before use (a
        malformed file raises ValueError)."""
        return cls._read(_storage.ZipReader(path, "tokenset ResidualCodec"))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> "ResidualCodec":
        return cls._read(_storage.ZipReader(name, "tokenset ResidualCodec", data=bytes(data)))

    @classmethod
    def _read(cls, reader: "_storage.ZipReader") -> "ResidualCodec":
        with reader as z:
            corrupt = z.corrupt
            config = z.config()
            _storage.check_format(config, _FORMAT, _FORMAT_VERSION, corrupt)
            bits = _storage.config_int(config, "bits", 1, 4, corrupt)
            if bits not in BITS:
                raise corrupt(f"bits {bits} is not 1, 2 or 4")
            dim = _storage.config_int(config, "dim", 1, _array.MAX_TOKEN_DIM, corrupt)
            count = _storage.config_int(config, "centroids", 1, MAX_CENTROIDS, corrupt)
            if count * dim * 2 > 1 << 31:
                raise corrupt(f"{count} centroids of dim {dim} exceed the 2 GiB a codec file may hold")
            expected = {"centroids": (np.float16, (count, dim)), "bucket_cutoffs": (np.float32, ((1 << bits) - 1,)),
                        "bucket_weights": (np.float32, (1 << bits,))}
            if set(z.members) != {"config.json"} | {f"{k}.npy" for k in expected}:
                raise corrupt(f"members {sorted(z.members)} do not match a codec")
            digests = config.get(_storage.DIGEST_KEY)
            if not isinstance(digests, dict) or set(digests) != set(expected):
                raise corrupt("array checksums missing")
            arrays = {k: z.array(k, dtype, shape, digests[k]) for k, (dtype, shape) in expected.items()}
            try:
                return cls(arrays["centroids"], arrays["bucket_cutoffs"], arrays["bucket_weights"], bits)
            except ValueError as exc:
                raise corrupt(str(exc)) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResidualCodec):
            return NotImplemented
        return self._bits == other._bits and all(np.array_equal(a, b) for a, b in
                                                 zip(self._arrays().values(), other._arrays().values()))

    __hash__ = None

    def __repr__(self) -> str:
        return f"ResidualCodec(bits={self._bits}, dim={self.dim}, centroids={self.num_centroids})"


class ResidualCodes(_SetBatch):
    """B sets of residual-coded tokens: ``packed [tokens, dim * bits / 8]`` uint8, ``centroid_ids [tokens]`` int32,
    ``inverse_norms [tokens]`` float32, ``offsets [B+1]`` as in :class:`tokenset.Ragged`, and the ``codec`` that made
    them. Scored in place by :func:`tokenset.maxsim`, :func:`tokenset.maxsim_pairs` and :func:`tokenset.maxsim_topk`;
    :meth:`decode` gives the tokens back (normalised)."""

    __slots__ = ("packed", "centroid_ids", "inverse_norms", "offsets", "codec")

    def __init__(self, packed: Any, centroid_ids: Any, inverse_norms: Any, offsets: Any, codec: ResidualCodec, *,
                 name: str = "ResidualCodes"):
        if not isinstance(codec, ResidualCodec):
            raise TypeError(f"{name}: codec must be a tokenset.ResidualCodec, got {type(codec).__name__}")
        arrays = (packed, centroid_ids, inverse_norms)
        if not all(_array.is_array(a, name) for a in arrays):
            raise TypeError(f"{name}: packed, centroid_ids and inverse_norms must be numpy, torch or cupy arrays")
        if len({_array.library(a) for a in arrays}) > 1 or len({_array.device(a) for a in arrays}) > 1:
            raise ValueError(f"{name}: packed, centroid_ids and inverse_norms must be of one library and device")
        width = codec.dim * codec.bits // 8
        if packed.ndim != 2 or int(packed.shape[1]) != width or _dtype_str(packed) != "uint8":
            raise ValueError(f"{name}: packed must be uint8 [tokens, {width}] (dim {codec.dim} x {codec.bits} bits / "
                             f"8), got {packed.dtype} of shape {tuple(packed.shape)}")
        rows = int(packed.shape[0])
        if centroid_ids.ndim != 1 or int(centroid_ids.shape[0]) != rows or _dtype_str(centroid_ids) != "int32":
            raise ValueError(f"{name}: centroid_ids must be int32 [{rows}], got {centroid_ids.dtype} of shape "
                             f"{tuple(centroid_ids.shape)}")
        if inverse_norms.ndim != 1 or int(inverse_norms.shape[0]) != rows or _dtype_str(inverse_norms) != "float32":
            raise ValueError(f"{name}: inverse_norms must be float32 [{rows}], got {inverse_norms.dtype} of shape "
                             f"{tuple(inverse_norms.shape)}")
        given = _array.int64_host(offsets, f"{name}: offsets")
        if given.ndim != 1:
            raise ValueError(f"{name}: offsets must be 1-D with B+1 >= 1 entries, got shape {tuple(given.shape)}")
        offsets = _frozen(given)
        _check_offsets(offsets, rows, name)
        self.packed, self.centroid_ids, self.inverse_norms = packed, centroid_ids, inverse_norms
        self.offsets, self.codec = offsets, codec

    @property
    def _any_values(self):
        return self.packed

    @property
    def dim(self) -> int:
        """The tokens' dimension (the codec's), not the bytes per token."""
        return self.codec.dim

    @property
    def nbytes(self) -> int:
        """Bytes of the sets' tokens: codes + 4 (centroid id) + 4 (inverse norm) per token."""
        return int(self.offsets[-1] - self.offsets[0]) * self.codec.bytes_per_token

    def __getitem__(self, i: int) -> Tuple[Any, Any, Any]:
        """``(packed, centroid_ids, inverse_norms)`` of set ``i`` (views)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"set index {i} out of range for {n} sets")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.packed[a:b], self.centroid_ids[a:b], self.inverse_norms[a:b]

    def compact(self) -> "ResidualCodes":
        start, end = int(self.offsets[0]), int(self.offsets[-1])
        if start == 0 and end == int(self.packed.shape[0]):
            return self
        return ResidualCodes(self.packed[start:end], self.centroid_ids[start:end], self.inverse_norms[start:end],
                             self.offsets - start, self.codec)

    def decode(self) -> Ragged:
        """The tokens as their codec reconstructs them (unit norm, float32)."""
        return self.codec.decode(self)

    def __repr__(self) -> str:
        return (f"ResidualCodes(sets={len(self)}, dim={self.dim}, bits={self.codec.bits}, "
                f"tokens={int(self.offsets[-1] - self.offsets[0])}, device={_array.device_name(self.device)})")


def _dtype_str(x: Any) -> str:
    if _array.is_torch(x):
        return str(x.dtype).replace("torch.", "")
    dt = np.dtype(x.dtype)
    return dt.name if dt.isnative or dt.itemsize == 1 else dt.str


def _in_library(x: Any, lib: str) -> Any:
    """A CPU array in library `lib` (numpy <-> torch views); device arrays must already be in it."""
    if _array.library(x) == lib:
        return x
    if _array.device(x)[0] != "cpu":
        raise ValueError(f"centroid_ids are a {_array.library(x)} array but the tokens are {lib}: give both in one "
                         f"library")
    if lib == "torch":
        return _array._torch().from_numpy(np.ascontiguousarray(x))
    return np.asarray(x.detach().numpy() if _array.is_torch(x) else x)


def _finite_rows(x: Any) -> Any:
    if _array.is_torch(x):
        return _array._torch().isfinite(x).all(dim=1)
    xp = _array._cupy() if _array.is_cupy(x) else np
    return xp.isfinite(x).all(axis=1)


def _nearest(x: Any, centroids: Any, metric: str) -> Any:
    """Index of each row's nearest centroid (native, lowest index on ties), in x's library."""
    from .nearest import nearest

    index, _ = nearest(Ragged(x, np.array([0, x.shape[0]])), Ragged(centroids, np.array([0, centroids.shape[0]])),
                       metric)
    return index


def _kmeans(x: np.ndarray, count: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means (squared L2) from `count` distinct sample rows; an empty cluster keeps its centre."""
    centres = x[np.sort(rng.choice(x.shape[0], size=count, replace=False))].copy()
    for _ in range(iters):
        assign = np.asarray(_nearest(x, centres, "l2"))
        sizes = np.bincount(assign, minlength=count)
        order = np.argsort(assign, kind="stable")
        filled = np.flatnonzero(sizes)
        starts = np.concatenate([[0], np.cumsum(sizes[filled])[:-1]])
        sums = np.add.reduceat(x[order], starts, axis=0)
        centres[filled] = (sums / sizes[filled, None]).astype(np.float32)
    return centres
