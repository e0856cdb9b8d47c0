"""A retrieval index over token sets: MUVERA FDE candidates, then exact MaxSim reranking (the recipe of the MUVERA
paper, end to end).

``search`` encodes the queries' FDEs, scores every live document's stored float16 FDE with the fused
:func:`tokenset.inner_product_topk` (exact inner products, read in place; memory: per-thread heaps of ``candidates``
per query), keeps each query's ``candidates`` best, and reranks
them with the fused ``maxsim_pairs`` kernel reading the stored document tokens in place (a memory map after
``load``). Documents are stored once: tokens (float16 by default) with int64 offsets, FDEs as float16, int64 ids.

Storage (``save`` / ``load``): a directory holding ``manifest.json`` and one ``.npy`` per array, named by a
generation. Saving writes new files, fsyncs them, then atomically replaces the manifest (the only file that says
which arrays are current) and deletes the previous generation: a crash at any point leaves the previous index
loadable. ``load`` checks what is cheap and always needed (the manifest's own SHA-256, every file's header, dtype,
shape and exact size, offsets and ids) and memory-maps tokens and FDEs; ``verify`` also checks every array's SHA-256
(reads everything). ``remove`` marks tombstones; ``save`` compacts them away. Never pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _array, _storage
from .fde import FDE
from .inner_product import inner_product_topk
from .maxsim import maxsim_pairs, maxsim_topk
from .ragged import Ragged, ragged

_FORMAT = "tokenset.Index"
_FORMAT_VERSION = 1
_TOKEN_DTYPES = ("float16", "float32")
_ENCODE_BYTES = 64 << 20  # float32 FDEs encoded at once by add()


def default_fde(dim: int) -> FDE:
    """The index's default encoder: identity projection, 20 repetitions of 5 bits, Count-Sketch to 10,240 dims.
    Measured on real text (MiniLM tokens, 384-d, ~100 tokens per document): 0.95 recall of the exact top-10 at 200
    candidates, like proj_dim 32 (20,480 dims) at half the bytes."""
    return FDE(dim, reps=20, simhash_bits=5, proj_dim=None, fill_empty=True, final_dim=10240, seed=0)


class _Segment:
    """Documents stored together: tokens [T, d] + offsets [n + 1], FDEs [n, F] float16, ids [n] int64, alive [n]."""

    __slots__ = ("tokens", "offsets", "fde", "ids", "alive", "batch", "device_copies")

    def __init__(self, tokens, offsets, fde, ids):
        self.tokens, self.offsets, self.fde, self.ids = tokens, offsets, fde, ids
        self.alive = np.ones(len(ids), dtype=bool)
        self.batch = Ragged(tokens, offsets, name="index documents")
        self.device_copies: Dict[str, Tuple[Any, Ragged]] = {}  # device -> (FDEs, tokens) there (Index.to)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


_BACKENDS = ("exact", "usearch")
_USEARCH_OPTIONS = ("connectivity", "expansion_add", "expansion_search")


def _usearch():
    try:
        from usearch.index import Index as UsearchIndex
    except ImportError:
        raise ImportError('backend="usearch" needs usearch: pip install "tokenset[ann]"') from None
    return UsearchIndex


class Index:
    """Top-k retrieval of token sets by MaxSim, with FDE candidates.

    Args:
        dim: token dimension.
        fde: the FDE encoder (:func:`default_fde` when None); its ``dim`` must be ``dim``.
        dtype: how document tokens are stored, ``"float16"`` (default) or ``"float32"``.
        backend: how FDE candidates are found: ``"exact"`` (default: every live FDE scored by
            :func:`tokenset.inner_product_topk`) or ``"usearch"`` (an approximate HNSW graph over the float16 FDEs,
            inner-product metric, for large corpora; the ``[ann]`` extra). The graph is not stored on disk (a file
            another library parses is not checked by tokenset): it is rebuilt from the stored FDEs on the first
            search after :meth:`load`.
        backend_options: usearch's ``connectivity``, ``expansion_add``, ``expansion_search`` (searches use at least
            the number of candidates asked for).

    >>> import numpy as np, tokenset
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in rng.integers(5, 30, 50)]
    >>> index = tokenset.Index(16, fde=tokenset.FDE(16, reps=4, simhash_bits=3, seed=0))
    >>> added = index.add(docs)
    >>> ids, scores = index.search(docs[7][:4], k=3)
    >>> int(ids[0, 0])
    7
    """

    def __init__(self, dim: int, fde: Optional[FDE] = None, dtype: str = "float16", backend: str = "exact",
                 backend_options: Optional[Dict[str, int]] = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= 1 << 16:
            raise ValueError(f"dim must be an integer in 1..65536, got {dim!r}")
        self.dim = int(dim)
        self.fde = default_fde(self.dim) if fde is None else fde
        if not isinstance(self.fde, FDE):
            raise TypeError(f"fde must be a tokenset.FDE, got {type(self.fde).__name__}")
        if self.fde.dim != self.dim:
            raise ValueError(f"the FDE encodes {self.fde.dim}-d tokens but the index holds {self.dim}-d tokens")
        if dtype not in _TOKEN_DTYPES:
            raise ValueError(f"dtype must be one of {_TOKEN_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        options = dict(backend_options or {})
        unknown = set(options) - set(_USEARCH_OPTIONS)
        if unknown or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in options.values()):
            raise ValueError(f"backend_options: integers 1..4096 for {sorted(_USEARCH_OPTIONS)}, got {options!r}")
        if backend == "usearch":
            _usearch()  # a clear ImportError now rather than at the first search
        self.backend, self.backend_options = backend, options
        self._ann = None  # the usearch graph over FDEs, keyed by id (built on first search, then kept in sync)
        self._segments: List[_Segment] = []
        self._pending: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # tokens, offsets, fdes, ids
        self._where: Dict[int, Tuple[int, int]] = {}  # id -> (segment, row); pending rows: segment -1
        self._next_id = 0
        self._lock = threading.RLock()  # add/remove/flush vs concurrent searches
        self._device: Optional[str] = None  # None: search on the CPU; "cuda:N": on that GPU (Index.to)

    # ---- contents ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"Index(dim={self.dim}, documents={len(self)}, dtype={self.dtype}, fde={self.fde.output_dim} dims)"

    @property
    def ids(self) -> np.ndarray:
        """The ids of the live documents, in storage order."""
        self._flush()
        return np.concatenate([s.ids[s.alive] for s in self._segments] or [np.zeros(0, np.int64)])

    def add(self, documents: Any, ids: Any = None) -> np.ndarray:
        """Adds documents (any set batch on the CPU) and returns their ids: ``ids`` (distinct int64 not in the index)
        or generated ones (one more than the largest id ever used)."""
        batch = ragged(documents, name="documents")
        if batch.dim != self.dim:
            raise ValueError(f"documents have token dimension {batch.dim} but the index holds {self.dim}-d tokens")
        if _array.device(batch._any_values)[0] != "cpu":
            raise ValueError("Index stores documents on the CPU; move them with .cpu() first")
        n = len(batch)
        with self._lock:
            if ids is None:
                new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            else:
                new_ids = _array.int64_host(ids, "ids")
                if new_ids.shape != (n,):
                    raise ValueError(f"ids must have shape ({n},) (one per document), got {tuple(new_ids.shape)}")
                if len(np.unique(new_ids)) != n:
                    raise ValueError("ids must be distinct")
                taken = [int(i) for i in new_ids if int(i) in self._where]
                if taken:
                    raise ValueError(f"ids already in the index: {taken[:5]}; remove them first")
            # FDEs in chunks (the float32 encoder output is bounded by _ENCODE_BYTES), tokens copied once, straight
            # into one array of the stored dtype.
            fdes = np.empty((n, self.fde.output_dim), dtype=np.float16)
            step = max(1, _ENCODE_BYTES // (4 * self.fde.output_dim))
            for c0 in range(0, n, step):
                part = ragged([batch[i] for i in range(c0, min(n, c0 + step))], name="documents")
                fdes[c0:c0 + len(part)] = np.asarray(_array.host_copy(self.fde.encode_documents(part)))
            offsets = np.asarray(batch.offsets) - int(batch.offsets[0])
            tokens = np.empty((int(offsets[-1]), self.dim), dtype=self.dtype)
            for i in range(n):
                tokens[offsets[i]:offsets[i + 1]] = np.asarray(_array.host_copy(batch[i]))
            self._pending.append((tokens, offsets, fdes, new_ids))
            if self._ann is not None and n:
                self._ann.add(new_ids.view(np.uint64), fdes)
            for i in new_ids:
                self._where[int(i)] = (-1, 0)
            if n:
                self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Any) -> int:
        """Removes documents by id (tombstones; :meth:`save` compacts). Unknown ids are a ValueError. Returns the
        number removed."""
        ids = _array.int64_host(ids, "ids").reshape(-1)
        with self._lock:
            missing = [int(i) for i in ids if int(i) not in self._where]
            if missing:
                raise ValueError(f"ids not in the index: {missing[:5]}")
            self._flush()
            for i in ids:
                seg, row = self._where.pop(int(i))
                self._segments[seg].alive[row] = False
            if self._ann is not None and ids.size:
                self._ann.remove(ids.view(np.uint64))
        return int(ids.size)

    def _flush(self) -> None:
        """Moves pending additions into a new in-memory segment, then merges the last two in-memory segments while
        their sizes are comparable (older <= newer <= 8 x older, as an LSM tree): repeated small adds are copied
        O(log N) times each and leave O(log N) segments, and a small segment never makes a large one be copied (the
        transient copy of a merge is at most 9x the smaller side)."""
        with self._lock:
            if not self._pending:
                return
            if len(self._pending) == 1:
                tokens, offsets, fdes, ids = self._pending[0]
            else:
                tokens, offsets, fdes, ids = _concat_parts(self._pending)
            self._pending = []
            self._append_segment(tokens, offsets, fdes, ids)
            while len(self._segments) >= 2:
                older, newer = self._segments[-2], self._segments[-1]
                n_old, n_new = int(older.alive.sum()), int(newer.alive.sum())
                if isinstance(older.tokens, np.memmap) or n_old > n_new or n_new > 8 * max(n_old, 1):
                    break  # only comparable sizes merge: a small segment never makes a large one be copied
                del self._segments[-2:]
                self._append_segment(*_concat_parts([_live_parts(older), _live_parts(newer)]))

    def _append_segment(self, tokens, offsets, fdes, ids) -> None:
        self._segments.append(_Segment(tokens, offsets, np.ascontiguousarray(fdes), ids))
        seg = len(self._segments) - 1
        for row, i in enumerate(ids):
            self._where[int(i)] = (seg, row)

    # ---- device -----------------------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where :meth:`search` runs: ``"cpu"`` or ``"cuda:N"``."""
        return self._device or "cpu"

    def to(self, device: str) -> "Index":
        """Runs :meth:`search` on `device`: ``"cpu"`` (the default) or a CUDA device (``"cuda"``, ``"cuda:1"``).

        On a GPU every segment's FDEs and tokens are copied there once, on first use (torch CUDA tensors, or cupy
        arrays without torch), and kept while the segment lives; queries (from any device) are encoded, scanned
        (:func:`tokenset.inner_product_topk`) and reranked (``maxsim_pairs``) by the CUDA kernels, and only the
        candidate lists ``[nq, candidates]`` cross to the host. Storage, ``add``, ``remove`` and ``save`` stay on
        the host. Returns the index.
        """
        if not isinstance(device, str):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
        if device == "cpu":
            with self._lock:
                self._device = None
                for seg in self._segments:
                    seg.device_copies.clear()
            return self
        name, _, ordinal = device.partition(":")
        if name != "cuda" or (ordinal and not ordinal.isdigit()):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        from . import _backend
        from ._build import build_info

        _backend.cuda()  # a clear error when this build has no CUDA module
        visible = build_info()["cuda_devices"]
        if int(ordinal or 0) >= visible:
            raise RuntimeError(f"{device!r}: this machine has {visible} CUDA device(s) visible to tokenset")
        for name in ("torch", "cupy"):  # the device arrays' library: torch when installed, else cupy
            try:
                __import__(name)
                break
            except ImportError:
                continue
        else:
            raise ImportError("a GPU index keeps its arrays as torch CUDA tensors or cupy arrays: install torch "
                              "(pip install torch) or cupy")
        with self._lock:
            self._device = f"cuda:{int(ordinal or 0)}"
        return self

    def _device_library(self) -> str:
        return "torch" if _array._torch() is not None else "cupy"

    def _on_device(self, array: np.ndarray) -> Any:
        index = int(self._device.split(":")[1])
        array = np.ascontiguousarray(array)  # a memory-mapped segment is read once, here
        return _array.to_device(array, self._device_library(), ("cuda", index))

    def _device_copy(self, seg: _Segment) -> Tuple[Any, Ragged]:
        """(FDEs, tokens) of a segment on the search device, made on first use."""
        with self._lock:
            copy = seg.device_copies.get(self._device)
            if copy is None:
                copy = (self._on_device(seg.fde), Ragged(self._on_device(seg.tokens), seg.offsets,
                                                         name="index documents"))
                seg.device_copies[self._device] = copy
            return copy

    def _device_queries(self, q: Ragged) -> Ragged:
        if _array.device(q._any_values) == ("cuda", int(self._device.split(":")[1])) and \
                _array.library(q._any_values) == self._device_library():
            return q
        values = np.asarray(_array.host_copy(q.values))
        return Ragged(self._on_device(values), q.offsets - q.offsets[0], name="queries")

    # ---- search -----------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, candidates: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: ``(ids int64 [nq, k], scores float32 [nq, k])``, best first (exact MaxSim of
        the reranked candidates; ties to the earlier stored document), padded with ``(-1, -inf)`` when fewer
        documents exist. ``candidates``: FDE candidates reranked per query (default ``max(200, 4k)``)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        if candidates is None:
            candidates = max(200, 4 * k)
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < k:
            raise ValueError(f"candidates must be an integer >= k={k}, got {candidates!r}")
        q = ragged(queries, name="queries")
        if q.dim != self.dim:
            raise ValueError(f"queries have token dimension {q.dim} but the index holds {self.dim}-d tokens")
        self._flush()
        with self._lock:
            segments = list(self._segments)
            alive = [s.alive.copy() for s in segments]
        nq = len(q)
        gpu = self._device is not None
        if gpu:
            q_run = self._device_queries(q)
        else:
            q_run = q if _array.device(q._any_values)[0] == "cpu" else ragged(
                [np.asarray(_array.host_copy(q[i])) for i in range(nq)], name="queries")
        qf = self.fde.encode_queries(q_run)  # on the search device
        if self.backend == "exact":
            _, cand_pos = self._fde_candidates(qf, segments, alive, int(candidates))
        else:
            cand_pos = self._ann_candidates(np.asarray(_array.host_copy(qf), np.float32), segments, int(candidates))
        # Rerank: each candidate is a (segment, row); one fused maxsim_pairs per segment, rows of others are -1.
        bases = np.cumsum([0] + [len(s) for s in segments])
        exact = np.full(cand_pos.shape, -np.inf, dtype=np.float32)
        for si, seg in enumerate(segments):
            local = np.where((cand_pos >= bases[si]) & (cand_pos < bases[si + 1]), cand_pos - bases[si], -1)
            if (local >= 0).any():
                documents = self._device_copy(seg)[1] if gpu else seg.batch
                scores = np.asarray(_array.host_copy(maxsim_pairs(q_run, documents, local)))
                exact = np.where(local >= 0, scores, exact)
        # Top-k of the reranked candidates: higher score first, ties to the lower stored position; NaN ranks last.
        order = rank_order(exact, cand_pos, k)
        top_pos = np.take_along_axis(cand_pos, order, 1)
        top_scores = np.take_along_axis(exact, order, 1)
        all_ids = np.concatenate([s.ids for s in segments] or [np.zeros(0, np.int64)])
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
        valid = top_pos >= 0
        width = top_pos.shape[1]
        out_ids[:, :width] = np.where(valid, all_ids[np.maximum(top_pos, 0)] if all_ids.size else -1, -1)
        out_scores[:, :width] = np.where(valid, top_scores, -np.inf)
        return out_ids, out_scores

    def _fde_candidates(self, qf: Any, segments, alive, candidates: int):
        """Each query's best `candidates` live documents by FDE inner product: (scores, global positions), -1 where
        fewer exist. One fused top-k pass per segment over the stored float16 FDEs, read in place (memory: the
        per-thread heaps; on a GPU, the segment's device copy), then the segments' lists merged on the host."""
        nq = int(qf.shape[0])
        all_s, all_p = [np.full((nq, 0), -np.inf, np.float32)], [np.zeros((nq, 0), np.int64)]
        base = 0
        for seg, live in zip(segments, alive):
            if len(seg) and live.any():
                fdes = self._device_copy(seg)[0] if self._device is not None else seg.fde
                s, i = inner_product_topk(qf, fdes, min(candidates, len(seg)), mask=live)
                s, i = np.asarray(_array.host_copy(s)), np.asarray(_array.host_copy(i))
                all_s.append(s)  # (-inf, -1) where the segment has fewer live documents
                all_p.append(np.where(i >= 0, i + base, -1))
            base += len(seg)
        s, p = np.concatenate(all_s, 1), np.concatenate(all_p, 1)
        if len(all_s) > 2 and s.shape[1] > candidates:  # several segments: keep the best overall
            order = rank_order(s, p, candidates)
            s, p = np.take_along_axis(s, order, 1), np.take_along_axis(p, order, 1)
        return s, p

    def _ann_candidates(self, qf: np.ndarray, segments, candidates: int) -> np.ndarray:
        """Global positions [nq, candidates] (-1 padded) of the approximate FDE neighbours from the usearch graph."""
        with self._lock:
            if self._ann is None:
                options = dict(self.backend_options)
                expansion = options.pop("expansion_search", None)
                ann = _usearch()(ndim=self.fde.output_dim, metric="ip", dtype="f16", **options)
                if expansion:
                    ann.expansion_search = expansion
                for seg in self._segments:
                    live = np.flatnonzero(seg.alive)
                    for c0 in range(0, live.size, 4096):
                        rows = live[c0:c0 + 4096]
                        ann.add(seg.ids[rows].view(np.uint64), np.asarray(seg.fde[rows]))
                self._ann = ann
            nq = qf.shape[0]
            positions = np.full((nq, candidates), -1, dtype=np.int64)
            if len(self._ann) == 0 or nq == 0:
                return positions
            configured = self.backend_options.get("expansion_search", 0)
            self._ann.expansion_search = max(configured, candidates)
            matches = self._ann.search(qf.astype(np.float16), min(candidates, len(self._ann)))
            keys = np.asarray(matches.keys).reshape(nq, -1).view(np.int64)
            # One query gives usearch's Matches (no counts: its keys are the valid ones), several BatchMatches.
            counts = np.asarray(getattr(matches, "counts", [keys.shape[1]])).reshape(nq)
            bases = np.cumsum([0] + [len(seg) for seg in segments])
            for a in range(nq):
                for j in range(int(counts[a])):
                    where = self._where.get(int(keys[a, j]))
                    if where is not None and where[0] >= 0 and where[0] < len(segments):
                        positions[a, j] = bases[where[0]] + where[1]
            return positions

    # ---- evaluation -------------------------------------------------------------------------------------------------
    def exact_search(self, queries: Any, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """Brute-force MaxSim top-k over every live document (the reference :meth:`search` approximates)."""
        q = ragged(queries, name="queries")
        self._flush()
        nq = len(q)
        all_s, all_i = [np.full((nq, 0), -np.inf, np.float32)], [np.zeros((nq, 0), np.int64)]
        for seg in self._segments:
            s, i = maxsim_topk(q, seg.batch, k + int((~seg.alive).sum()))
            dead = (i >= 0) & ~seg.alive[np.maximum(i, 0)]
            s = np.where(dead | (i < 0), -np.inf, s)
            all_s.append(s)
            all_i.append(np.where(dead | (i < 0), -1, seg.ids[np.maximum(i, 0)] if len(seg) else -1))
        s, i = np.concatenate(all_s, 1), np.concatenate(all_i, 1)
        order = np.argsort(-np.where(np.isnan(s), -np.inf, s), axis=1, kind="stable")[:, :k]
        ids = np.full((nq, k), -1, np.int64)
        scores = np.full((nq, k), -np.inf, np.float32)
        ids[:, :order.shape[1]] = np.take_along_axis(i, order, 1)
        scores[:, :order.shape[1]] = np.take_along_axis(s, order, 1)
        return ids, scores

    def evaluate(self, queries: Any, k: int = 10, candidates: Sequence[int] = (50, 100, 200, 500),
                 repeats: int = 1) -> Dict[str, Any]:
        """Recall@k of :meth:`search` against exact MaxSim for each candidate count, single-query latency
        percentiles (ms), bytes per document and the process's peak resident memory."""
        q = ragged(queries, name="queries")
        exact, _ = self.exact_search(q, k)
        rows = []
        for c in candidates:
            c = max(int(c), k)
            got, _ = self.search(q, k, candidates=c)
            hits = [len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / max(1, int((b >= 0).sum()))
                    for a, b in zip(got, exact)]
            times = []
            for _ in range(repeats):
                for i in range(len(q)):
                    start = time.perf_counter()
                    self.search(q[i], k, candidates=c)
                    times.append((time.perf_counter() - start) * 1e3)
            rows.append({"candidates": c, "recall": float(np.mean(hits)) if hits else 1.0,
                         "latency_ms_p50": float(np.percentile(times, 50)) if times else 0.0,
                         "latency_ms_p95": float(np.percentile(times, 95)) if times else 0.0})
        return {"k": k, "queries": len(q), "documents": len(self), "bytes_per_document": self.bytes_per_document(),
                "results": rows, "peak_rss_bytes": _peak_rss_bytes()}

    def bytes_per_document(self) -> Dict[str, float]:
        """Average stored bytes per live document: FDE, tokens (and their offsets), id."""
        self._flush()
        n = max(1, len(self))
        tokens = sum(int(s.offsets[-1]) for s in self._segments) * self.dim * np.dtype(self.dtype).itemsize
        fde = self.fde.output_dim * 2
        return {"fde": float(fde), "tokens": tokens / n + 8, "ids": 8.0, "total": fde + tokens / n + 16}

    # ---- storage ----------------------------------------------------------------------------------------------------
    def save(self, directory: Any) -> None:
        """Writes the index to ``directory`` (created if needed), compacting removed documents away. New files are
        written and fsynced first, then the manifest is replaced atomically, then the previous files are deleted:
        a crash at any point leaves the previous index loadable."""
        directory = _storage.fspath(directory, "directory")
        os.makedirs(directory, exist_ok=True)
        self._flush()
        with self._lock:
            tokens, offsets, fdes, ids = _concat_parts([_live_parts(seg) for seg in self._segments]) \
                if self._segments else (np.zeros((0, self.dim), self.dtype), np.zeros(1, np.int64),
                                        np.zeros((0, self.fde.output_dim), np.float16), np.zeros(0, np.int64))
            arrays = {"tokens": np.ascontiguousarray(tokens, dtype=self.dtype), "offsets": offsets,
                      "fde": np.ascontiguousarray(fdes), "ids": ids}
        generation = secrets.token_hex(6)
        files = {}
        for name, a in arrays.items():
            fname = f"{name}-{generation}.npy"
            digest = hashlib.sha256()

            def write(f, a=a, digest=digest):
                np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
                data = np.ascontiguousarray(a).tobytes()
                f.write(data)
                digest.update(data)

            _storage.atomic_write(os.path.join(directory, fname), write)
            files[name] = {"file": fname, "dtype": str(a.dtype), "shape": list(a.shape), "sha256": digest.hexdigest()}
        fde_name = f"fde-{generation}.encoder"
        self.fde.save(os.path.join(directory, fde_name))
        with open(os.path.join(directory, fde_name), "rb") as f:
            fde_digest = hashlib.sha256(f.read()).hexdigest()
        manifest = {"format": _FORMAT, "version": _FORMAT_VERSION, "dim": self.dim, "dtype": self.dtype,
                    "documents": int(arrays["ids"].shape[0]), "next_id": self._next_id, "arrays": files,
                    "backend": {"name": self.backend, "options": self.backend_options},
                    "encoder": {"file": fde_name, "sha256": fde_digest}}
        manifest[_storage.CONFIG_DIGEST_KEY] = hashlib.sha256(_storage.canonical_json(manifest)).hexdigest()
        _storage.atomic_write(os.path.join(directory, "manifest.json"),
                              lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
        keep = {"manifest.json", fde_name} | {v["file"] for v in files.values()}
        for name in os.listdir(directory):  # the previous generation and leftovers of interrupted saves
            if name not in keep and (name.endswith(".npy") or name.endswith(".encoder") or name.endswith(".tmp")):
                try:
                    os.remove(os.path.join(directory, name))
                except OSError:
                    pass

    @classmethod
    def load(cls, directory: Any, mmap: bool = True) -> "Index":
        """Opens an index written by :meth:`save`: tokens and FDEs memory-mapped (``mmap=True``) or read. Checks the
        manifest's SHA-256, every file's header, dtype, shape and exact size, the encoder file's SHA-256 and the
        encoder itself, offsets (monotone, within the tokens) and ids (distinct). Content corruption of tokens and
        FDEs is found by :meth:`verify`. Every malformed index raises ValueError."""
        directory = _storage.fspath(directory, "directory")

        def corrupt(why: str) -> _storage.Corrupt:
            return _storage.Corrupt(f"{directory}: not a valid tokenset index ({why})")

        path = os.path.join(directory, "manifest.json")
        with open(path, "rb") as f:
            data = f.read(_storage.MAX_CONFIG_BYTES + 1)
        manifest = _storage.parse_config(data, corrupt)
        if manifest.get("format") != _FORMAT:
            raise corrupt("manifest.json does not describe a tokenset.Index")
        version = manifest.get("version")
        if isinstance(version, bool) or version != _FORMAT_VERSION:
            raise corrupt(f"format version {version!r}, this tokenset reads {_FORMAT_VERSION}")
        dim = _storage.config_int(manifest, "dim", 1, 1 << 16, corrupt)
        n = _storage.config_int(manifest, "documents", 0, 2**40, corrupt)
        next_id = _storage.config_int(manifest, "next_id", -(2**63), 2**63 - 1, corrupt)
        dtype = manifest.get("dtype")
        if dtype not in _TOKEN_DTYPES:
            raise corrupt(f"dtype {dtype!r}")
        encoder = manifest.get("encoder")
        if not isinstance(encoder, dict) or not _safe_name(encoder.get("file")):
            raise corrupt("encoder entry")
        enc_path = os.path.join(directory, encoder["file"])
        try:
            with open(enc_path, "rb") as f:
                enc_bytes = f.read()
        except OSError as exc:
            raise corrupt(f"encoder file unreadable: {exc}") from None
        if hashlib.sha256(enc_bytes).hexdigest() != encoder.get("sha256"):
            raise corrupt("encoder file does not match its checksum")
        fde = FDE.load(enc_path)
        if fde.dim != dim:
            raise corrupt("encoder dimension differs from the index's")
        arrays_meta = manifest.get("arrays")
        if not isinstance(arrays_meta, dict) or set(arrays_meta) != {"tokens", "offsets", "fde", "ids"}:
            raise corrupt("arrays entry")
        offsets = _open_npy(directory, arrays_meta["offsets"], np.int64, None, False, corrupt)
        if offsets.shape != (n + 1,):
            raise corrupt(f"offsets have shape {offsets.shape}, expected ({n + 1},)")
        total = int(offsets[-1]) if n + 1 else 0
        if offsets[0] != 0 or (n and np.diff(offsets).min() < 0):
            raise corrupt("offsets are not non-decreasing from 0")
        tokens = _open_npy(directory, arrays_meta["tokens"], np.dtype(dtype), (total, dim), mmap, corrupt)
        fdes = _open_npy(directory, arrays_meta["fde"], np.float16, (n, fde.output_dim), mmap, corrupt)
        ids = _open_npy(directory, arrays_meta["ids"], np.int64, (n,), False, corrupt)
        if len(np.unique(ids)) != n:
            raise corrupt("ids are not distinct")
        backend = manifest.get("backend")
        if not isinstance(backend, dict) or backend.get("name") not in _BACKENDS or \
                not isinstance(backend.get("options"), dict):
            raise corrupt("backend entry")
        try:
            self = cls(dim, fde=fde, dtype=dtype, backend=backend["name"], backend_options=backend["options"])
        except ValueError as exc:
            raise corrupt(f"backend options: {exc}") from None
        self._manifest = manifest
        self._directory = directory
        if n:
            self._segments.append(_Segment(tokens, offsets, fdes, ids))
            self._where = {int(i): (0, r) for r, i in enumerate(ids)}
        self._next_id = max(next_id, int(ids.max()) + 1 if n else 0)
        return self

    def verify(self) -> None:
        """Reads every stored array of a loaded index and checks its SHA-256 (:meth:`load` checks sizes and headers
        only, so that opening is fast). Raises ValueError on the first mismatch."""
        manifest = getattr(self, "_manifest", None)
        if manifest is None:
            raise ValueError("verify() checks an index opened with Index.load")
        for name, meta in manifest["arrays"].items():
            path = os.path.join(self._directory, meta["file"])
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                _storage.read_npy_header(f, name, lambda why: _storage.Corrupt(f"{self._directory}: {why}"))
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
            if digest.hexdigest() != meta.get("sha256"):
                raise _storage.Corrupt(f"{self._directory}: {meta['file']} does not match its checksum (damaged)")


def rank_order(scores: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column order of the best `k` entries: higher score first, NaN as -inf, ties to the lower
    `tiebreak` (positions or ids; -1 marks an empty entry and goes last). The one ranking rule of every merge of
    top-k lists (segments, candidates, shards), the same as the kernels'."""
    if scores.shape[1] == 0:
        return np.zeros((scores.shape[0], 0), np.int64)
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.where(tiebreak < 0, np.iinfo(np.int64).max, tiebreak), -key), axis=1)[:, :k]


def _live_parts(seg: "_Segment"):
    """(tokens, offsets, fdes, ids) of a segment's live documents: the arrays themselves when all are live."""
    if seg.alive.all():
        return seg.tokens, np.asarray(seg.offsets), seg.fde, seg.ids
    rows = np.flatnonzero(seg.alive)
    starts, ends = np.asarray(seg.offsets)[rows], np.asarray(seg.offsets)[rows + 1]
    lengths = ends - starts
    offsets = np.zeros(rows.size + 1, np.int64)
    offsets[1:] = np.cumsum(lengths)
    token_rows = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    return np.asarray(seg.tokens)[token_rows], offsets, np.asarray(seg.fde)[rows], seg.ids[rows]


def _concat_parts(parts):
    """One (tokens, offsets, fdes, ids) from several, offsets rebased."""
    tokens = np.concatenate([np.asarray(p[0]) for p in parts])
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(np.asarray(p[1][1:]) - int(p[1][0]) + base)
        base += int(p[1][-1]) - int(p[1][0])
    return tokens, np.concatenate(offsets), np.concatenate([np.asarray(p[2]) for p in parts]), \
        np.concatenate([p[3] for p in parts])


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (0 where the platform does not say)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


def _safe_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) < 200 and os.path.basename(name) == name and not name.startswith(".")


def _open_npy(directory, meta, dtype, shape, mmap, corrupt):
    """A stored array whose header, dtype, shape and file size are exactly as expected (shape None: 1-D, any
    length, read fully). Memory-mapped read-only when `mmap`."""
    if not isinstance(meta, dict) or not _safe_name(meta.get("file")):
        raise corrupt("array entry")
    path = os.path.join(directory, meta["file"])
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise corrupt(f"{meta.get('file')} unreadable: {exc}") from None
    with f:
        got_shape, fortran, got_dtype = _storage.read_npy_header(f, meta["file"], corrupt)
        start = f.tell()
        dtype = np.dtype(dtype)
        if got_dtype != dtype or fortran or (shape is not None and tuple(got_shape) != tuple(shape)) or \
                (shape is None and len(got_shape) != 1) or list(got_shape) != meta.get("shape"):
            raise corrupt(f"{meta['file']} holds {got_dtype} {tuple(got_shape)}, expected {dtype} "
                          f"{tuple(shape) if shape is not None else '(n,)'}")
        count = int(np.prod(got_shape, dtype=np.int64))
        size = os.fstat(f.fileno()).st_size
        if size != start + count * dtype.itemsize:
            raise corrupt(f"{meta['file']} is {size} bytes, its header says {start + count * dtype.itemsize} "
                          f"(truncated or resized)")
        if mmap and count:
            return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=tuple(got_shape))
        data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise corrupt(f"{meta['file']} is truncated")
        data = data.reshape(got_shape)
        data.setflags(write=False)
        return data
