"""An index sharded across Ray workers (Ray is an optional extra: ``pip install "tokenset[ray]"``).

Each shard is an :class:`tokenset.Index` saved in its own directory and served by one Ray actor that loads it
(memory-mapped) from disk. ``search`` sends the queries to every shard at once, each returns its exact top-k (FDE
candidates + MaxSim rerank over its documents), and the lists are merged exactly: the global top-k is the top-k of
the union (higher score first, ties to the lower id). Each shard cuts its own top-k by that same rule (an
:class:`Index` breaks ties by id, never by storage position), so a tie at a shard's k-th place cannot drop a lower id.
Ids must be distinct across shards: checked when the sharded index starts.

Failure: an actor whose process dies is restarted by Ray (``max_restarts``) and reloads its shard from disk; the
interrupted call is retried (``max_task_retries``). When a shard still cannot answer, or does not answer within
``timeout`` seconds, ``search`` raises :class:`ShardUnavailableError` naming the shard: never a partial answer
presented as complete.

>>> import numpy as np, ray, tokenset.distributed as td                      # doctest: +SKIP
>>> ray.init(num_cpus=2)                                                    # doctest: +SKIP
>>> sharded = td.ShardedIndex.build(docs, "/data/idx", shards=2, dim=128)   # doctest: +SKIP
>>> ids, scores = sharded.search(queries, k=10)                             # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _array
from .fde import FDE
from .index import Index, top_k
from .ragged import ragged
from .residual import ResidualCodec


class ShardUnavailableError(RuntimeError):
    """A shard's worker died and could not be brought back: the answer would be incomplete."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError('tokenset.distributed needs Ray: pip install "tokenset[ray]"') from None
    return ray


class _Shard:
    """The body of one shard's actor: an Index loaded from its directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self.index = Index.load(directory)
        self.index._build_graph_now()  # usearch: before the first search, which a timeout bounds

    def search(self, values: np.ndarray, offsets: np.ndarray, k: int, candidates: Optional[int]):
        from .ragged import Ragged

        return self.index.search(Ragged(values, offsets, name="queries"), k, candidates)

    def size(self) -> int:
        return len(self.index)

    def ids(self) -> np.ndarray:
        return self.index.ids

    def pid(self) -> int:
        return os.getpid()


class ShardedIndex:
    """Shards (directories written by :meth:`Index.save`) served by Ray actors.

    Args:
        directories: one saved index per shard (ids must be distinct across shards).
        max_restarts: how many times Ray restarts a dead shard worker (it reloads the shard from disk).
        num_cpus: CPUs reserved per shard worker.
        timeout: seconds to wait for a shard's answer to a search (None: no limit) before
            :class:`ShardUnavailableError`. Starting (each worker loads its shard and, with ``backend="usearch"``,
            builds its graph) is bounded by ``start_timeout`` instead (default an hour; None: no limit; a usearch
            graph over 100k documents took minutes). A cluster with fewer CPUs than ``shards x num_cpus`` is refused
            at once; a shard that cannot start in time is a :class:`ShardUnavailableError`.
    """

    def __init__(self, directories: Sequence[Any], *, max_restarts: int = 1, num_cpus: float = 1,
                 timeout: Optional[float] = 300.0, start_timeout: Optional[float] = 3600.0):
        ray = _ray()
        self.directories = [os.fspath(d) for d in directories]
        self._check_serving(len(self.directories), num_cpus=num_cpus, timeout=timeout, start_timeout=start_timeout)
        self.timeout = timeout
        actor = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts,
                           max_task_retries=max_restarts)(_Shard)
        self._actors = [actor.remote(d) for d in self.directories]
        # Loading a shard (and building its usearch graph: minutes at 100k documents) is bounded by start_timeout.
        self._sizes = self._gather([a.size.remote() for a in self._actors], timeout=start_timeout)
        shard_ids = self._gather([a.ids.remote() for a in self._actors])
        every = np.sort(np.concatenate(shard_ids)) if shard_ids else np.zeros(0, np.int64)
        repeated = every[1:][every[1:] == every[:-1]]
        if repeated.size:
            holders = [d for d, ids in zip(self.directories, shard_ids) if int(repeated[0]) in set(ids.tolist())]
            self.close()
            raise ValueError(f"id {int(repeated[0])} is stored in more than one shard ({holders}); ids must be "
                             f"distinct across shards, or a search could return one document twice")

    @staticmethod
    def _check_serving(shards: int, *, max_restarts: int = 1, num_cpus: float = 1, timeout: Optional[float] = 300.0,
                       start_timeout: Optional[float] = 3600.0) -> None:
        """The serving arguments against the running Ray cluster (build checks them before writing any shard)."""
        ray = _ray()
        if not ray.is_initialized():
            raise RuntimeError("call ray.init(...) first (e.g. ray.init(num_cpus=2) on one machine)")
        if not shards:
            raise ValueError("a sharded index needs at least one shard directory")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"max_restarts must be an integer >= 0 (or -1: no limit), got {max_restarts!r}")
        for name, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                      not value > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
        total = float(ray.cluster_resources().get("CPU", 0))
        if shards * num_cpus > total:
            raise ValueError(f"{shards} shards x num_cpus={num_cpus} need more CPUs than this Ray "
                             f"cluster has ({total:g}): the workers could never all start. Pass a smaller num_cpus "
                             f"(e.g. {total / shards:g}) or fewer shards")

    @classmethod
    def build(cls, documents: Any, directory: Any, shards: int, dim: int, ids: Any = None,
              fde: Optional[FDE] = None, storage: Optional[str] = None, fde_storage: str = "float16",
              dtype: Optional[str] = None, codec: Optional[ResidualCodec] = None, backend: str = "exact",
              backend_options: Optional[Dict[str, int]] = None, **kwargs) -> "ShardedIndex":
        """Splits documents round-robin into `shards` indexes saved under ``directory/shard-<i>`` (token and FDE
        storage, ``backend`` and ``backend_options`` as :class:`tokenset.Index`'s, saved with each shard; ``dtype``
        is the older name of ``storage``) and serves them; other keyword arguments go to :class:`ShardedIndex`.

        Residual storage: every shard codes its tokens with one codec (``codec``, or one trained on all the documents
        here by PLAID's rules), so that scores from different shards compare and the merge stays exact."""
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
        batch = ragged(documents, name="documents")
        n = len(batch)
        all_ids = np.arange(n, dtype=np.int64) if ids is None else _array.int64_host(ids, "ids")
        if all_ids.shape != (n,) or len(np.unique(all_ids)) != n:
            raise ValueError(f"ids must be {n} distinct integers")
        directory = os.fspath(directory)
        settings = dict(fde=fde, storage=storage, dtype=dtype, fde_storage=fde_storage, backend=backend,
                        backend_options=backend_options)
        # Every argument is checked before any training or writing: the shards' and the serving ones (a misspelt
        # keyword raises TypeError here).
        Index(dim, codec=codec, **settings)
        cls._check_serving(shards, **kwargs)
        bits = {"residual4": 4, "residual2": 2, "residual1": 1}.get(storage or dtype)
        if bits is not None and codec is None and int(batch.lengths.sum()):
            codec = ResidualCodec.train(batch, bits=bits)
        paths = []
        for s in range(shards):
            rows = np.arange(s, n, shards)
            index = Index(dim, codec=codec, **settings)
            if rows.size:  # more shards than documents: the rest stay empty (valid, searchable indexes)
                index.add([batch[int(r)] for r in rows], ids=all_ids[rows])
            path = os.path.join(directory, f"shard-{s}")
            index.save(path)
            paths.append(path)
        return cls(paths, **kwargs)

    def __len__(self) -> int:
        return int(sum(self._sizes))

    def _gather(self, refs: List[Any], timeout: Any = "default") -> List[Any]:
        ray = _ray()
        timeout = self.timeout if timeout == "default" else timeout
        out = []
        for directory, ref in zip(self.directories, refs):
            try:
                out.append(ray.get(ref, timeout=timeout))
            except ray.exceptions.GetTimeoutError as exc:
                raise ShardUnavailableError(f"shard {directory} did not answer within {timeout} s; no partial "
                                            f"result is returned") from exc
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                raise ShardUnavailableError(f"shard {directory} did not answer (its worker died and could not be "
                                            f"restarted: {type(exc).__name__}); no partial result is returned") from exc
        return out

    def search(self, queries: Any, k: int = 10, candidates: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard: ``(ids int64 [nq, k], scores float32 [nq, k])``, merged exactly."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        q = ragged(queries, name="queries").compact()
        values = np.ascontiguousarray(_array.host_copy(q.values, "queries"))
        offsets = np.asarray(q.offsets)
        parts = self._gather([a.search.remote(values, offsets, k, candidates) for a in self._actors])
        ids = np.concatenate([p[0] for p in parts], axis=1)
        scores = np.concatenate([p[1] for p in parts], axis=1)
        return top_k(ids, scores, k)

    def worker_pids(self) -> List[int]:
        """The process id of every shard's worker (for monitoring, and for tests that kill one)."""
        return self._gather([a.pid.remote() for a in self._actors])

    def close(self) -> None:
        ray = _ray()
        for a in self._actors:
            ray.kill(a)
        self._actors = []
