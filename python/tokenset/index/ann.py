"""The approximate FDE candidate stage (``backend="usearch"``): an HNSW graph over the stored float16 FDEs, keyed by
document id, inner-product metric.

The graph is built on the first search from a snapshot of the store, outside the index's lock: adds, removes and
other searches go on meanwhile (searches that find the graph still building scan the FDEs exactly instead). Every
add or remove made after the snapshot is logged while the graph builds and replayed before it is swapped in, so no
document is ever left out of it. Keys found by the graph are mapped to positions of the *searching* call's snapshot
(documents removed or added since are skipped), never to positions of another moment. The graph is not stored on
disk (a file another library parses is not checked by tokenset): it is rebuilt after :meth:`Index.load`.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .store import Snapshot

OPTIONS = ("connectivity", "expansion_add", "expansion_search")
_BUILD_ROWS = 4096  # FDE rows handed to usearch at once while building (bounded host memory)


def usearch_index_class():
    try:
        from usearch.index import Index as UsearchIndex
    except ImportError:
        raise ImportError('backend="usearch" needs usearch: pip install "tokenset[ann]"') from None
    return UsearchIndex


def check_options(options: Dict[str, Any]) -> Dict[str, int]:
    options = dict(options or {})
    unknown = set(options) - set(OPTIONS)
    if unknown or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in options.values()):
        raise ValueError(f"backend_options: integers 1..4096 for {sorted(OPTIONS)}, got {options!r}")
    return options


class AnnGraph:
    """One index's usearch graph and its build state. ``on_add`` / ``on_remove`` are called with the store's lock
    held (so the order of changes is the store's); ``begin_build`` too, with the snapshot the build will read."""

    def __init__(self, dim: int, options: Dict[str, int]):
        self.dim, self.options = dim, dict(options)
        self._lock = threading.Lock()  # the graph object and the build state
        self._graph = None
        self._building = False
        self._log: List[Tuple[str, np.ndarray, Optional[np.ndarray]]] = []

    def fresh_after_fork(self) -> None:
        """A forked child's copy: a new lock, and no build in progress (the thread building it is not in the child;
        the next search builds the graph again)."""
        self._lock = threading.Lock()
        if self._building:
            self._building, self._log = False, []

    def on_add(self, ids: np.ndarray, fdes: np.ndarray) -> None:
        with self._lock:
            if self._graph is not None:
                self._add(self._graph, ids, fdes)
            elif self._building:
                self._log.append(("add", ids, fdes))

    def on_remove(self, ids: np.ndarray) -> None:
        with self._lock:
            if self._graph is not None:
                self._graph.remove(ids.view(np.uint64))
            elif self._building:
                self._log.append(("remove", ids, None))

    def begin_build(self) -> bool:
        """True when the caller must build the graph now (none exists and nobody builds it); from here on changes
        are logged for it."""
        with self._lock:
            if self._graph is not None or self._building:
                return False
            self._building, self._log = True, []
            return True

    def build(self, snapshot: Snapshot) -> None:
        """Builds the graph from the snapshot's live FDEs (no index lock held), then replays what changed since and
        swaps it in."""
        try:
            options = dict(self.options)
            expansion = options.pop("expansion_search", None)
            graph = usearch_index_class()(ndim=self.dim, metric="ip", dtype="f16", **options)
            if expansion:
                graph.expansion_search = expansion
            for seg, alive in snapshot:
                live = np.flatnonzero(alive)
                for c0 in range(0, live.size, _BUILD_ROWS):
                    rows = live[c0:c0 + _BUILD_ROWS]
                    self._add(graph, seg.ids[rows], seg.fde_values(rows))
            with self._lock:
                for kind, ids, fdes in self._log:
                    if kind == "add":
                        self._add(graph, ids, fdes)
                    else:
                        graph.remove(ids.view(np.uint64))
                self._graph, self._log = graph, []
        finally:
            with self._lock:
                self._building = False
                self._log = [] if self._graph is not None else self._log

    @staticmethod
    def _add(graph, ids: np.ndarray, fdes: np.ndarray) -> None:
        for c0 in range(0, ids.size, _BUILD_ROWS):
            graph.add(ids[c0:c0 + _BUILD_ROWS].view(np.uint64), np.asarray(fdes[c0:c0 + _BUILD_ROWS]))

    @property
    def ready(self) -> bool:
        return self._graph is not None

    def candidates(self, queries: np.ndarray, snapshot: Snapshot, candidates: int) -> Optional[np.ndarray]:
        """Positions in `snapshot` ``[nq, min(candidates, graph size)]`` (-1 padded) of each query's approximate FDE
        neighbours, or None while the graph is not built."""
        nq = queries.shape[0]
        with self._lock:
            graph = self._graph
            if graph is None:
                return None
            candidates = min(candidates, len(graph))  # never more than the graph holds (memory: nq x this)
            positions = np.full((nq, candidates), -1, dtype=np.int64)
            if candidates == 0 or nq == 0:
                return positions
            configured = self.options.get("expansion_search", 0)
            graph.expansion_search = max(configured, candidates)
            matches = graph.search(queries.astype(np.float16), candidates)
            keys = np.asarray(matches.keys).reshape(nq, -1).view(np.int64)
            # One query gives usearch's Matches (no counts: its keys are the valid ones), several BatchMatches.
            counts = np.asarray(getattr(matches, "counts", [keys.shape[1]])).reshape(nq)
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        found = snapshot.positions_of(np.where(valid, keys, -1))
        width = found.shape[1]
        positions[:, :width] = found
        return positions
