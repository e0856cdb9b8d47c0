"""The public :class:`Index`: MUVERA FDE candidates, then exact MaxSim reranking (the recipe of the MUVERA paper, end
to end), over a store of immutable segments.

The index composes its parts, each in its own module: ``store`` (segments, tombstones, ids, snapshots), ``candidates``
(the exact FDE scan), ``ann`` (the usearch graph), ``device`` (GPU copies), ``ranking`` (the one top-k rule),
``files`` (save / load / verify) and ``evaluation``.

Concurrency: every method may be called from many threads at once. Changes (``add``, ``remove``) hold the store's
lock only to check ids and link new segments in (FDEs are encoded before); a search or a save takes a snapshot (no
copy) and runs without the lock. Saves to one folder exclude each other (an advisory lock file), also across
processes.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .. import _array
from ..fde import FDE
from ..maxsim import maxsim, maxsim_pairs
from ..quantize import Quantized, dequantized, quantize
from ..ragged import Ragged, ragged
from ..residual import ResidualCodec, ResidualCodes, untrained_codec
from . import device as _device
from . import evaluation, files
from .ann import AnnGraph, check_options, usearch_index_class
from .candidates import fde_candidates
from .ranking import top_k
from .store import MAX_ID, Segment, SegmentStore, Snapshot, check_distinct, check_ids, document_rows

_TOKEN_STORAGES = ("float16", "float32", "int8", "residual4", "residual2", "residual1")
_RESIDUAL_BITS = {"residual4": 4, "residual2": 2, "residual1": 1}
_FDE_STORAGES = ("float16", "int8")
_BACKENDS = ("exact", "usearch")
_ENCODE_BYTES = 64 << 20  # float32 FDEs encoded at once by add()
_EXACT_SCORE_BYTES = 64 << 20  # exact_search's scratch per block of documents: scores and the ranking's temporaries
_EXACT_BYTES_PER_SCORE = 48  # a score (4), its id (8), and what ranking a row of them costs (sort keys, order)
_FLOAT16_MAX = 65504.0
_SMALL_TRAINING_TOKENS = 10000  # a first add of residual storage with fewer tokens trains its codec with a warning


def default_fde(dim: int) -> FDE:
    """The index's default encoder: identity projection, 20 repetitions of 5 bits, Count-Sketch to 10,240 dims.
    Measured on real text (MiniLM tokens, 384-d, ~100 tokens per document): 0.95 recall of the exact top-10 at 200
    candidates, like proj_dim 32 (20,480 dims) at half the bytes."""
    return FDE(dim, reps=20, simhash_bits=5, proj_dim=None, fill_empty=True, final_dim=10240, seed=0)


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Index:
    """Top-k retrieval of token sets by MaxSim, with FDE candidates.

    Args:
        dim: token dimension.
        fde: the FDE encoder (:func:`default_fde` when None); its ``dim`` must be ``dim``.
        storage: how document tokens are stored: ``"float16"`` (default), ``"float32"`` or ``"int8"`` (a float32 scale
            per token, :func:`tokenset.quantize`: ``d + 4`` bytes per token instead of ``2d``; reranked against the
            float queries exactly as the dequantised tokens), or ``"residual4"`` / ``"residual2"`` / ``"residual1"``
            (PLAID residual codes, :class:`tokenset.ResidualCodec`: ``d * b / 8 + 8`` bytes per token, reranked in
            place from the codes). ``dtype=`` is the older name of this argument.
        codec: for residual storage, the :class:`tokenset.ResidualCodec` (its bits must match); default: trained by
            the first :meth:`add` on its documents (PLAID's rules) and kept for every later add (saved with the
            index). Train one on a representative sample when the first add is small.
        fde_storage: how FDEs are stored: ``"float16"`` (default) or ``"int8"`` (a float32 scale per document: half
            the bytes of the candidate scan).
        backend: how FDE candidates are found: ``"exact"`` (default: every live FDE scored by
            :func:`tokenset.inner_product_topk`) or ``"usearch"`` (an approximate HNSW graph over the float16 FDEs,
            inner-product metric, for large corpora; the ``[ann]`` extra). The graph is not stored on disk: it is
            built from the stored FDEs by the first search (outside the index's lock; searches meanwhile scan the
            FDEs exactly).
        backend_options: usearch's ``connectivity``, ``expansion_add``, ``expansion_search`` (searches use at least
            the number of candidates asked for).

    Ids are integers in ``0 .. 2**63 - 2``; ``-1`` pads results when fewer documents exist.

    >>> import numpy as np, tokenset
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in rng.integers(5, 30, 50)]
    >>> index = tokenset.Index(16, fde=tokenset.FDE(16, reps=4, simhash_bits=3, seed=0))
    >>> added = index.add(docs)
    >>> ids, scores = index.search(docs[7][:4], k=3)
    >>> int(ids[0, 0])
    7
    """

    MAX_ID = MAX_ID

    def __init__(self, dim: int, fde: Optional[FDE] = None, storage: Optional[str] = None, backend: str = "exact",
                 backend_options: Optional[Dict[str, int]] = None, *, fde_storage: str = "float16",
                 dtype: Optional[str] = None, codec: Optional[ResidualCodec] = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= 1 << 16:
            raise ValueError(f"dim must be an integer in 1..65536, got {dim!r}")
        self.dim = int(dim)
        self.fde = default_fde(self.dim) if fde is None else fde
        if not isinstance(self.fde, FDE):
            raise TypeError(f"fde must be a tokenset.FDE, got {type(self.fde).__name__}")
        if self.fde.dim != self.dim:
            raise ValueError(f"the FDE encodes {self.fde.dim}-d tokens but the index holds {self.dim}-d tokens")
        if storage is not None and dtype is not None and storage != dtype:
            raise ValueError(f"storage={storage!r} and dtype={dtype!r} disagree; dtype is the older name of storage")
        storage = storage or dtype or "float16"
        if storage not in _TOKEN_STORAGES:
            raise ValueError(f"storage must be one of {_TOKEN_STORAGES}, got {storage!r}")
        if fde_storage not in _FDE_STORAGES:
            raise ValueError(f"fde_storage must be one of {_FDE_STORAGES}, got {fde_storage!r}")
        self.storage, self.fde_storage = storage, fde_storage
        self._bits = _RESIDUAL_BITS.get(storage)
        if codec is not None:
            if self._bits is None:
                raise ValueError(f"a codec is for residual storage (residual4, residual2, residual1), not {storage!r}")
            if not isinstance(codec, ResidualCodec):
                raise TypeError(f"codec must be a tokenset.ResidualCodec, got {type(codec).__name__}")
            if codec.bits != self._bits or codec.dim != self.dim:
                raise ValueError(f"the codec codes {codec.dim}-d tokens in {codec.bits} bits, but the index stores "
                                 f"{self.dim}-d tokens as {storage}")
        elif self._bits is not None and self.dim * self._bits % 8:
            raise ValueError(f"{storage} storage packs dim x {self._bits} bits per token into whole bytes: dim "
                             f"{self.dim} does not fill them (use a dim that is a multiple of {8 // self._bits})")
        self.codec = codec
        self._codec_lock = threading.Lock()
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend, self.backend_options = backend, check_options(backend_options or {})
        if backend == "usearch":
            usearch_index_class()  # a clear ImportError now rather than at the first search
        self._ann = AnnGraph(self.fde.output_dim, self.backend_options) if backend == "usearch" else None
        self._store = SegmentStore()
        self._next_id = 0  # one more than the largest id ever stored
        self._device: Optional[Tuple[str, int]] = None  # None: search on the CPU (Index.to)
        self._saved: Optional[tuple] = None  # (directory, manifest) last loaded or saved: what verify() reads
        self._meta_lock = threading.Lock()
        _INDEXES.add(self)

    def _fresh_locks(self) -> None:
        """In a forked child: the locks other threads of the parent held at the fork stay held forever in the child
        (it has only the forking thread), so every lock of the index starts anew. A change another thread was making
        at the fork is as far as it got."""
        self._store.lock = threading.RLock()
        self._meta_lock = threading.Lock()
        self._codec_lock = threading.Lock()
        if self._ann is not None:
            self._ann.fresh_after_fork()

    # ---- contents ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._store.count

    def __repr__(self) -> str:
        return (f"Index(dim={self.dim}, documents={len(self)}, storage={self.storage}, fde={self.fde.output_dim} dims "
                f"{self.fde_storage})")

    @property
    def dtype(self) -> str:
        """The token storage (the older name of :attr:`storage`)."""
        return self.storage

    @property
    def ids(self) -> np.ndarray:
        """The ids of the live documents, in storage order."""
        snap = self._store.snapshot()
        return np.concatenate([seg.ids[alive] for seg, alive in snap] or [np.zeros(0, np.int64)])

    def add(self, documents: Any, ids: Any = None) -> np.ndarray:
        """Adds documents (any set batch) and returns their ids: ``ids`` (distinct integers in ``0 .. 2**63 - 2``,
        none in the index) or generated ones (one more than the largest id ever stored, upwards). A refused call
        changes nothing. With float16 storage, finite values beyond float16's range (65504) are refused rather than
        stored as inf."""
        batch = ragged(documents, name="documents").compact()
        if batch.dim != self.dim:
            raise ValueError(f"documents have token dimension {batch.dim} but the index holds {self.dim}-d tokens")
        n = len(batch)
        given = None
        if ids is not None:
            given = _array.int64_host(ids, "ids").copy()
            if given.shape != (n,):
                raise ValueError(f"ids must have shape ({n},) (one per document), got {tuple(given.shape)}")
            check_ids(given)
        tokens, offsets, fdes, token_scales, fde_scales, centroid_ids = self._encode(batch)  # before the lock
        with self._store.lock:
            if given is None:
                if self._next_id + n - 1 > MAX_ID:
                    raise ValueError(f"no generated ids left: the index has used ids up to {self._next_id - 1} and "
                                     f"generated ids stop at {MAX_ID}; pass ids= explicitly")
                new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            else:
                new_ids = given
                taken = new_ids[self._store.contains(new_ids)]
                if taken.size:
                    raise ValueError(f"ids already in the index: {taken[:5].tolist()}; remove them first")
            if n:
                codec = None if self._bits is None else \
                    self.codec if self.codec is not None else untrained_codec(self.dim, self._bits)
                self._store.append(Segment(tokens, offsets, fdes, new_ids, token_scales, fde_scales, centroid_ids,
                                           codec))
                if self._ann is not None:
                    self._ann.on_add(new_ids, fdes if fde_scales is None else dequantized(fdes, fde_scales))
                self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def _encode(self, batch: Ragged) -> Tuple[np.ndarray, ...]:
        """(tokens in the stored form, offsets from 0, FDEs, token scales, FDE scales, centroid ids) of a compact
        batch: FDEs encoded in chunks (the float32 encoder output is bounded by _ENCODE_BYTES), tokens copied (or
        quantised, or coded) once, straight into one array (in blocks of rows for an array batch, set by set for a
        list). Scales are None for float storage, centroid ids for all but residual storage."""
        n = len(batch)
        offsets = np.array(batch.offsets, dtype=np.int64)
        int8_fde = self.fde_storage == "int8"
        fdes = np.empty((n, self.fde.output_dim), dtype=np.int8 if int8_fde else np.float16)
        fde_scales = np.empty(n, np.float32) if int8_fde else None
        step = max(1, _ENCODE_BYTES // (4 * self.fde.output_dim))
        for c0 in range(0, n, step):
            c1 = min(n, c0 + step)
            part = ragged([batch[i] for i in range(c0, c1)], name="documents") if batch.sets is not None else \
                Ragged(batch.values, offsets[c0:c1 + 1], name="documents")
            encoded = np.asarray(_array.host_copy(self.fde.encode_documents(part)))
            if int8_fde:
                self._check_int8_fdes(encoded, c0, batch)
                q = quantize(encoded, name="the documents' FDEs")
                fdes[c0:c1], fde_scales[c0:c1] = q.values, q.scales
                continue
            with np.errstate(over="ignore"):
                fdes[c0:c1] = encoded
            self._check_half(fdes[c0:c1], encoded, "the documents' FDEs", c0)
        if self._bits is not None:
            packed, norms, centroid_ids = self._encode_residual(batch, offsets)
            return packed, offsets, fdes, norms, fde_scales, centroid_ids
        int8 = self.storage == "int8"
        tokens = np.empty((int(offsets[-1]), self.dim), dtype=self.storage)
        token_scales = np.empty(tokens.shape[0], np.float32) if int8 else None
        if batch.sets is not None:
            pieces = ((int(offsets[i]), batch[i]) for i in range(n))
        else:
            rows = max(1, _ENCODE_BYTES // (4 * self.dim))
            pieces = ((t0, batch.values[t0:t0 + rows]) for t0 in range(0, tokens.shape[0], rows))
        for t0, piece in pieces:
            source = np.asarray(_array.host_copy(piece, "documents"))
            target = tokens[t0:t0 + source.shape[0]]
            first = int(np.searchsorted(offsets, t0, side="right")) - 1
            if int8:
                bad = ~np.isfinite(source).all(axis=1)
                if bad.any():
                    row = t0 + int(np.flatnonzero(bad)[0])
                    doc = int(np.searchsorted(offsets, row, side="right")) - 1
                    raise ValueError(f"documents: document {doc}, token {row - int(offsets[doc])} holds NaN or "
                                     f"infinity; int8 storage needs finite values (clean or drop the token first)")
                q = quantize(source, name="documents")
                target[...], token_scales[t0:t0 + source.shape[0]] = q.values, q.scales
                continue
            with np.errstate(over="ignore"):
                target[...] = source
            self._check_half(target, source, "documents", first)
        return tokens, offsets, fdes, token_scales, fde_scales, None

    def _encode_residual(self, batch: Ragged, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(packed codes, inverse norms, centroid ids) of a compact batch for residual storage. The codec is trained
        on this batch when the index has none yet (once: a concurrent first add waits for it and uses it)."""
        if int(offsets[-1]) == 0:
            return np.zeros((0, self.dim * self._bits // 8), np.uint8), np.zeros(0, np.float32), np.zeros(0, np.int32)
        host = ragged([np.asarray(_array.host_copy(s, "documents")) for s in batch.sets], name="documents") \
            if batch.sets is not None else \
            Ragged(np.asarray(_array.host_copy(batch.values, "documents")), offsets, name="documents")
        values = host.compact().values
        step = max(1, _ENCODE_BYTES // (4 * self.dim))
        for t0 in range(0, values.shape[0], step):  # named by document and token, before the codec trains on them
            bad = ~np.isfinite(np.asarray(values[t0:t0 + step], np.float32)).all(axis=1)
            if bad.any():
                row = t0 + int(np.flatnonzero(bad)[0])
                doc = int(np.searchsorted(offsets, row, side="right")) - 1
                raise ValueError(f"documents: document {doc}, token {row - int(offsets[doc])} holds NaN or "
                                 f"infinity; residual storage needs finite values (clean or drop the token first)")
        if self.codec is None:
            with self._codec_lock:
                if self.codec is None:
                    tokens = int(offsets[-1])
                    if tokens < _SMALL_TRAINING_TOKENS:
                        warnings.warn(f"Index(storage={self.storage!r}): the residual codec is trained on this first "
                                      f"add's {tokens} tokens and kept for every later add; pass codec="
                                      f"tokenset.ResidualCodec.train(<a representative sample>, bits={self._bits}) "
                                      f"when the corpus is larger", stacklevel=4)
                    self.codec = ResidualCodec.train(host, bits=self._bits)
        codes = self.codec.encode(host, name="documents")
        return np.asarray(codes.packed), np.asarray(codes.inverse_norms), np.asarray(codes.centroid_ids)

    def _check_int8_fdes(self, encoded: np.ndarray, first: int, batch: Ragged) -> None:
        """int8 FDEs need finite values; with the usearch backend they are also dequantised into its float16 graph,
        so they must fit float16's range, as float16 storage requires. A non-finite FDE is named by its token."""
        limit = _FLOAT16_MAX if self._ann is not None else np.inf
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(encoded) & (np.abs(encoded) <= limit)).all(axis=1)
        if not bad.any():
            return
        doc = first + int(np.flatnonzero(bad)[0])
        tokens = np.asarray(_array.host_copy(batch[doc], "documents"))
        not_finite = np.flatnonzero(~np.isfinite(tokens).all(axis=1))
        if not_finite.size:
            raise ValueError(f"documents: document {doc}, token {int(not_finite[0])} holds NaN or infinity; int8 "
                             f"storage needs finite values (clean or drop the token first)")
        why = (f"values beyond float16's range ({_FLOAT16_MAX:g}), which usearch's float16 graph cannot hold"
               if np.isfinite(encoded[doc - first]).all() else "values beyond float32's range")
        raise ValueError(f"the documents' FDEs: document {doc} encodes to {why}; scale the embeddings down "
                         f"(e.g. normalise them)")

    def _check_half(self, stored: np.ndarray, source: np.ndarray, what: str, first: int) -> None:
        if stored.dtype != np.float16 or stored.size == 0 or np.isfinite(stored).all():
            return
        overflow = np.isinf(stored) & np.isfinite(np.asarray(source, np.float32))
        if overflow.any():
            raise ValueError(f"{what}: values beyond float16's range (|x| > {_FLOAT16_MAX:g}) near document "
                             f"{first}; they would be stored as inf and make every score NaN: scale the embeddings "
                             f"down or use Index(..., storage='float32')" if what == "documents" else
                             f"{what} exceed float16's range ({_FLOAT16_MAX:g}) near document {first}: the tokens "
                             f"are too large for FDE storage; scale the embeddings down (e.g. normalise them)")

    def remove(self, ids: Any) -> int:
        """Removes documents by id (tombstones; :meth:`save` compacts). Every id must be in the index and appear
        once, else a ValueError and nothing is removed. Returns the number removed."""
        ids = _array.int64_host(ids, "ids").reshape(-1).copy()
        check_distinct(ids, "ids to remove")
        with self._store.lock:
            missing = ids[~self._store.contains(ids)]
            if missing.size:
                raise ValueError(f"ids not in the index: {missing[:5].tolist()}")
            self._store.remove(ids)
            if self._ann is not None and ids.size:
                self._ann.on_remove(ids)
        return int(ids.size)

    # ---- device -----------------------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where :meth:`search` runs: ``"cpu"`` or ``"cuda:N"``."""
        return "cpu" if self._device is None else _array.device_name(self._device)

    def to(self, device: str) -> "Index":
        """Runs :meth:`search` on `device`: ``"cpu"`` (the default) or a CUDA device (``"cuda"``, ``"cuda:1"``).

        On a GPU every segment's FDEs and tokens are copied there once, on first use, in 64 MiB blocks (torch CUDA
        tensors, or cupy arrays without torch), and kept while the segment lives; queries (from any device) are
        encoded, scanned (:func:`tokenset.inner_product_topk`) and reranked (``maxsim_pairs``) by the CUDA kernels,
        and only the candidate lists ``[nq, candidates]`` cross to the host. Storage, ``add``, ``remove`` and
        ``save`` stay on the host. Returns the index.
        """
        if not isinstance(device, str):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
        if device == "cpu":
            with self._store.lock:
                self._device = None
                for seg in self._store.segments:
                    seg.device_copies.clear()
            return self
        target = _device.parse_device(device)
        if self.storage == "int8" or self.fde_storage == "int8":
            raise ValueError("int8 storage is searched on the CPU (the int8 kernels are CPU kernels); keep this index "
                             "on the CPU, or build a float16 one for the GPU")
        if self._bits is not None:
            raise ValueError(f"{self.storage} storage is searched on the CPU by the index (score ResidualCodes on a "
                             f"GPU with tokenset.maxsim directly); keep this index on the CPU, or build a float16 one "
                             f"for the GPU")
        from .. import _backend
        from .._build import build_info

        _backend.cuda()  # a clear error when this build has no CUDA module
        visible = build_info()["cuda_devices"]
        if target[1] >= visible:
            raise RuntimeError(f"{device!r}: this machine has {visible} CUDA device(s) visible to tokenset")
        if _array._torch() is None and _array._cupy() is None:
            raise ImportError("a GPU index keeps its arrays as torch CUDA tensors or cupy arrays: install torch "
                              "(pip install torch) or cupy")
        with self._store.lock:
            self._device = target
        return self

    # ---- search -----------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, candidates: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: ``(ids int64 [nq, k], scores float32 [nq, k])``, best first (exact MaxSim of
        the reranked candidates; ties to the lower id, NaN last), padded with ``(-1, -inf)`` when fewer documents
        exist. ``candidates``: FDE candidates reranked per query (default ``max(200, 4k)``). Per call, beyond the
        FDE scan itself: O(nq x candidates x segments) time and memory, independent of the corpus size."""
        k = _count(k, "k", 1)
        candidates = max(200, 4 * k) if candidates is None else candidates
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < k:
            raise ValueError(f"candidates must be an integer >= k={k}, got {candidates!r}")
        candidates = int(candidates)
        q = ragged(queries, name="queries")
        if q.dim != self.dim:
            raise ValueError(f"queries have token dimension {q.dim} but the index holds {self.dim}-d tokens")
        nq = len(q)
        if nq == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        with self._store.lock:
            snap, dev = self._store.snapshot(), self._device
            build = self._ann is not None and self._ann.begin_build()
        if build:
            self._ann.build(snap)  # outside the lock; this call's snapshot is what the graph starts from
        q_run = _device.queries_on(q, dev) if dev is not None else _device.queries_on_host(q)
        query_fdes = self.fde.encode_queries(q_run)  # on the search device
        positions = None
        if self._ann is not None:
            positions = self._ann.candidates(np.asarray(_array.host_copy(query_fdes), np.float32), snap, candidates)
        if positions is None:  # exact backend, or the graph is being built by another call
            positions = fde_candidates(query_fdes, snap, candidates, dev)
        return self._rerank(q_run, snap, positions, k, dev)

    def _build_graph_now(self) -> None:
        """With ``backend="usearch"``, builds the graph now instead of on the first search (shard workers do this
        when they start)."""
        if self._ann is None:
            return
        with self._store.lock:
            snap = self._store.snapshot()
            build = self._ann.begin_build()
        if build:
            self._ann.build(snap)

    def _rerank(self, q_run: Ragged, snap: Snapshot, positions: np.ndarray, k: int, dev) -> Tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim of each query's candidates (one fused ``maxsim_pairs`` per segment holding some), then the
        top k by the ranking rule."""
        exact = np.full(positions.shape, -np.inf, dtype=np.float32)
        for local, seg in snap.split(positions):
            documents = _device.segment_copy(seg, dev)[1] if dev is not None else seg.batch
            # Only the candidate documents, as a list of views of the stored tokens (read in place on the CPU): the
            # kernel's per-call checks then cost O(candidates), not O(documents in the segment).
            rows, columns = np.unique(local[local >= 0], return_inverse=True)
            picked = _candidate_documents(documents, rows)
            which = np.full(local.shape, -1, np.int64)
            which[local >= 0] = columns.reshape(-1)
            scores = np.asarray(_array.host_copy(maxsim_pairs(q_run, picked, which)))
            exact = np.where(local >= 0, scores, exact)
        return top_k(snap.ids_at(positions), exact, k)

    def exact_search(self, queries: Any, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """Brute-force MaxSim top-k over every live document, by the same ranking rule as :meth:`search` (the
        reference :meth:`search` approximates). Scores are computed in blocks of documents and merged into a running
        top-k: at most 64 MiB of scratch per block (48 bytes per score: the score, its id, the ranking's keys; the
        running top-k counts against it), or one document's column when k alone fills that."""
        k = _count(k, "k", 1)
        q = ragged(queries, name="queries")
        if q.dim != self.dim:
            raise ValueError(f"queries have token dimension {q.dim} but the index holds {self.dim}-d tokens")
        nq = len(q)
        best_ids, best_scores = np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32)
        if nq == 0:
            return best_ids, best_scores
        snap, dev = self._store.snapshot(), self._device
        q_run = _device.queries_on(q, dev) if dev is not None else _device.queries_on_host(q)
        step = max(1, _EXACT_SCORE_BYTES // (_EXACT_BYTES_PER_SCORE * nq) - k)  # the running top-k is ranked too
        for seg, alive in snap:
            documents = _device.segment_copy(seg, dev)[1] if dev is not None else seg.batch
            offsets = documents.offsets
            for d0 in range(0, len(seg), step):
                d1 = min(len(seg), d0 + step)
                if not alive[d0:d1].any():
                    continue
                block = _block(documents, offsets[d0:d1 + 1])
                scores = np.asarray(_array.host_copy(maxsim(q_run, block)))
                ids = np.where(alive[d0:d1], seg.ids[d0:d1], -1)
                best_ids, best_scores = top_k(np.concatenate([best_ids, np.broadcast_to(ids, (nq, d1 - d0))], 1),
                                              np.concatenate([best_scores, scores], 1), k)
        return best_ids, best_scores

    def evaluate(self, queries: Any, k: int = 10, candidates: Sequence[int] = (50, 100, 200, 500),
                 repeats: int = 1) -> Dict[str, Any]:
        """Recall@k of :meth:`search` against :meth:`exact_search` for each candidate count, single-query latency
        percentiles (ms), bytes per document and the process's peak resident memory."""
        return evaluation.evaluate(self, queries, k, candidates, repeats)

    def bytes_per_document(self) -> Dict[str, float]:
        """Average stored bytes per live document: FDE (and its scale when int8), tokens (their scales when int8, their
        centroid ids and inverse norms when residual-coded, and the offsets), id. Tokens of removed documents count until a save compacts them away."""
        snap = self._store.snapshot()
        n = max(1, snap.live)
        if self._bits is not None:  # codes, centroid id (int32), inverse norm (float32)
            per_token = self.dim * self._bits // 8 + 8
        else:
            per_token = self.dim * np.dtype(self.storage).itemsize + (4 if self.storage == "int8" else 0)
        tokens = sum(int(np.asarray(s.offsets)[-1]) for s in snap.segments) * per_token
        fde = self.fde.output_dim * np.dtype(self.fde_storage).itemsize + (4 if self.fde_storage == "int8" else 0)
        return {"fde": float(fde), "tokens": tokens / n + 8, "ids": 8.0, "total": fde + tokens / n + 16}

    # ---- storage ----------------------------------------------------------------------------------------------------
    def save(self, directory: Any) -> None:
        """Writes the index's live documents to ``directory`` (created if needed), compacting removed ones away.

        The folder must be new, empty or hold an index saved before; anything else is refused (a ValueError): a
        save never deletes or overwrites a file it did not write. Saves to one folder take an exclusive lock
        (threads and processes). New files are streamed in 64 MiB blocks, hashed as written and fsynced, then the
        manifest is replaced atomically, then the files of the previous generation are deleted: a crash at any
        point leaves the previous index loadable. Searches, adds and removes go on during a save (it writes a
        snapshot)."""
        saved = files.save(self, directory)
        with self._meta_lock:
            self._saved = saved

    def _snapshot_for_save(self) -> Tuple[Snapshot, int]:
        with self._store.lock:
            return self._store.snapshot(), self._next_id

    @classmethod
    def load(cls, directory: Any, mmap: bool = True) -> "Index":
        """Opens an index written by :meth:`save`: tokens and FDEs memory-mapped (``mmap=True``) or read. Checks the
        manifest's SHA-256, every file's header, dtype, shape and exact size, the encoder file's SHA-256 and the
        encoder itself, offsets (monotone, within the tokens) and ids (distinct, in the id domain); refuses files
        that are not regular files. Content corruption of tokens and FDEs is found by :meth:`verify`. Every
        malformed index raises ValueError; a folder without a manifest, FileNotFoundError."""
        return files.load(cls, directory, mmap)

    def _open_saved(self, segment: Optional[Segment], next_id: int, saved: tuple) -> None:
        with self._store.lock:
            if segment is not None:
                self._store.append(segment)
            self._next_id = next_id
        self._saved = saved

    def verify(self) -> None:
        """Reads every file of the generation this index last loaded or saved and checks its SHA-256 (:meth:`load`
        checks sizes and headers only, so that opening is fast). Raises ValueError on the first mismatch, or when
        the folder has been saved again since (the files are gone)."""
        with self._meta_lock:
            saved = self._saved
        files.verify(saved)


def _block(documents: Any, offsets: np.ndarray) -> Any:
    """Consecutive documents of a segment's batch (views), whatever its storage."""
    if isinstance(documents, ResidualCodes):
        return ResidualCodes(documents.packed, documents.centroid_ids, documents.inverse_norms, offsets,
                             documents.codec, name="index documents")
    if isinstance(documents, Quantized):
        return Quantized(documents.values, documents.scales, offsets, name="index documents")
    return Ragged(documents.values, offsets, name="index documents")


def _candidate_documents(documents: Any, rows: np.ndarray) -> Any:
    """Documents `rows` of a segment's batch, for reranking: a list of views of the stored tokens (read in place on
    the CPU, so the kernel's checks cost O(candidates), not O(documents in the segment)), or for int8 and residual
    storage one batch of their rows (a copy of the candidates' codes and per-token arrays)."""
    offsets = np.asarray(documents.offsets)
    if not isinstance(documents, (Quantized, ResidualCodes)):
        return [documents.values[offsets[r]:offsets[r + 1]] for r in rows.tolist()]
    token_rows, picked = document_rows(offsets, rows)
    if isinstance(documents, ResidualCodes):
        return ResidualCodes(np.asarray(documents.packed)[token_rows], np.asarray(documents.centroid_ids)[token_rows],
                             np.asarray(documents.inverse_norms)[token_rows], picked, documents.codec,
                             name="index documents")
    return Quantized(np.asarray(documents.values)[token_rows], np.asarray(documents.scales)[token_rows], picked,
                     name="index documents")


_INDEXES: "weakref.WeakSet[Index]" = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    _device.fresh_after_fork()
    for index in list(_INDEXES):
        index._fresh_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)
