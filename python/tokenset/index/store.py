"""The index's segment store: documents in immutable segments, tombstones, the id lookup, merges, snapshots.

A :class:`Segment` holds documents stored together: tokens ``[T, d]`` + offsets ``[n + 1]`` (from 0), FDEs
``[n, F]`` and ids ``[n]`` int64, with a liveness array ``alive [n]``; int8 tokens come with ``token_scales [T]`` and
int8 FDEs with ``fde_scales [n]`` (float32, one per row; None for float storage); residual-coded tokens are the packed
codes ``[T, dim * bits / 8]`` uint8 with ``centroid_ids [T]`` int32 and their inverse norms as ``token_scales``, read
through the index's :class:`tokenset.ResidualCodec`. Nothing of a segment is ever written
in place: :meth:`SegmentStore.remove` gives the segment a new ``alive`` array (copy on write), so a
:class:`Snapshot` (the segments and their liveness at one moment, taken under the lock without copying anything) stays
consistent for as long as a search or a save uses it, whatever happens to the store meanwhile.

Ids: every stored id is in ``0 .. MAX_ID`` (``2**63 - 2``); ``-1`` is the "no result" padding of every top-k list.
The id lookup is a sorted copy of each segment's ids (16 bytes per document, none when the ids are already increasing)
searched with ``np.searchsorted``: no per-document Python objects, and opening an index costs one sort at most.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..quantize import Quantized, dequantized
from ..ragged import Ragged
from ..residual import ResidualCodes, is_untrained

MAX_ID = 2**63 - 2  # 2**63 - 1 stays free, so "one more than the largest id" always fits in int64


def check_ids(ids: np.ndarray, what: str = "ids") -> None:
    """A ValueError unless every id is in the id domain ``0 .. 2**63 - 2`` and none repeats."""
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high > MAX_ID:
        bad = low if low < 0 else high
        raise ValueError(f"{what}: {bad} is outside the id domain 0..{MAX_ID} (-1 is the 'no result' padding of "
                         f"search results); use non-negative ids below 2**63 - 1")
    check_distinct(ids, what)


def check_distinct(ids: np.ndarray, what: str = "ids") -> None:
    """A ValueError naming the first id that repeats."""
    if ids.size > 1:
        ordered = np.sort(ids)
        repeats = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeats.size:
            raise ValueError(f"{what} must be distinct, but {int(repeats[0])} appears more than once")


class Segment:
    """Documents stored together (see the module docstring). ``alive`` is replaced, never written."""

    __slots__ = ("tokens", "offsets", "fde", "ids", "token_scales", "fde_scales", "centroid_ids", "codec", "alive",
                 "live", "batch", "_sorted_ids", "_sorted_rows", "device_copies")

    def __init__(self, tokens: Any, offsets: np.ndarray, fde: Any, ids: np.ndarray,
                 token_scales: Optional[np.ndarray] = None, fde_scales: Optional[np.ndarray] = None,
                 centroid_ids: Optional[np.ndarray] = None, codec: Any = None, alive: Optional[np.ndarray] = None):
        self.tokens, self.offsets, self.fde, self.ids = tokens, offsets, fde, ids
        self.token_scales, self.fde_scales = token_scales, fde_scales
        self.centroid_ids, self.codec = centroid_ids, codec
        self.alive = np.ones(len(ids), dtype=bool) if alive is None else alive
        self.live = int(self.alive.sum())
        self.batch = batch_of(tokens, offsets, token_scales, centroid_ids, codec)
        if ids.size < 2 or bool((ids[1:] > ids[:-1]).all()):  # the usual case (generated ids): no extra memory
            self._sorted_ids, self._sorted_rows = ids, None
        else:
            order = np.argsort(ids, kind="stable")
            self._sorted_ids, self._sorted_rows = ids[order], order
        self.device_copies: Dict[str, Any] = {}  # device -> (FDEs, tokens, ...) there (Index.to)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def fde_values(self, rows: Any) -> np.ndarray:
        """FDEs of `rows` as floats (int8 FDEs times their scales, float32), for consumers that take vectors."""
        fdes = np.asarray(self.fde[rows])
        return fdes if self.fde_scales is None else dequantized(fdes, np.asarray(self.fde_scales)[rows])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id in this segment (dead or alive), -1 where it is not stored here."""
        n = self._sorted_ids.shape[0]
        if n == 0:
            return np.full(ids.shape, -1, np.int64)
        where = np.searchsorted(self._sorted_ids, ids)
        clipped = np.minimum(where, n - 1)
        found = (where < n) & (self._sorted_ids[clipped] == ids)
        rows = clipped if self._sorted_rows is None else self._sorted_rows[clipped]
        return np.where(found, rows, -1)

    def has_distinct_ids(self) -> bool:
        s = self._sorted_ids
        return s.size < 2 or bool((s[1:] != s[:-1]).all())

    def live_parts(self) -> Tuple[Any, ...]:
        """(tokens, offsets, fdes, ids, token_scales, fde_scales, centroid_ids) of the live documents: the arrays
        themselves when all are live."""
        return live_parts(self, self.alive)


def batch_of(tokens: Any, offsets: np.ndarray, token_scales: Any, centroid_ids: Any, codec: Any,
             name: str = "index documents") -> Any:
    """What MaxSim reads of stored tokens: the tokens (float), the int8 codes with their scales, or residual codes."""
    if centroid_ids is not None:
        return ResidualCodes(tokens, centroid_ids, token_scales, offsets, codec, name=name)
    if token_scales is not None:
        return Quantized(tokens, token_scales, offsets, name=name)
    return Ragged(tokens, offsets, name=name)


class Snapshot:
    """The segments and their liveness at one moment (nothing copied). Positions number the snapshot's documents
    segment after segment (``bases[s] + row``), for the candidate stages."""

    __slots__ = ("segments", "alive", "live_counts", "bases")

    def __init__(self, segments: Sequence[Segment]):
        self.segments = tuple(segments)
        self.alive = tuple(s.alive for s in self.segments)
        self.live_counts = tuple(s.live for s in self.segments)  # taken with `alive`, under the store's lock
        self.bases = np.cumsum([0] + [len(s) for s in self.segments]).astype(np.int64)

    def __iter__(self) -> Iterator[Tuple[Segment, np.ndarray]]:
        return iter(zip(self.segments, self.alive))

    @property
    def live(self) -> int:
        return int(sum(self.live_counts))

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The position of each id among the snapshot's live documents, -1 where it is not one."""
        out = np.full(ids.shape, -1, np.int64)
        for base, seg, alive in zip(self.bases, self.segments, self.alive):
            rows = seg.rows_of(ids)
            hit = rows >= 0
            hit[hit] = alive[rows[hit]]
            out[hit] = base + rows[hit]
        return out

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The id at each position (-1 stays -1): O(positions x segments), never O(documents)."""
        out = np.full(positions.shape, -1, np.int64)
        for local, seg in self.split(positions):
            hit = local >= 0
            out[hit] = seg.ids[local[hit]]
        return out

    def split(self, positions: np.ndarray) -> Iterator[Tuple[np.ndarray, Segment]]:
        """For each segment that holds some of `positions`: (its rows, -1 elsewhere; the segment)."""
        for s, seg in enumerate(self.segments):
            inside = (positions >= self.bases[s]) & (positions < self.bases[s + 1])
            if inside.any():
                yield np.where(inside, positions - self.bases[s], -1), seg


class SegmentStore:
    """The segments of one index and the lock that orders their changes. Reads go through :meth:`snapshot`."""

    def __init__(self):
        self.lock = threading.RLock()
        self.segments: List[Segment] = []
        self.count = 0  # live documents

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(self.segments)

    def live_rows(self, ids: np.ndarray) -> List[Tuple[int, np.ndarray]]:
        """For each segment holding some of `ids` alive: (segment index, the rows, -1 for the other ids)."""
        out = []
        for s, seg in enumerate(self.segments):
            rows = seg.rows_of(ids)
            hit = rows >= 0
            hit[hit] = seg.alive[rows[hit]]
            if hit.any():
                out.append((s, np.where(hit, rows, -1)))
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(ids.shape, bool)
        for _, rows in self.live_rows(ids):
            found |= rows >= 0
        return found

    def append(self, segment: Segment) -> None:
        """Adds a segment (caller holds the lock), then merges the last two while their sizes are comparable (older
        <= newer <= 8 x older, as an LSM tree): repeated small adds are copied O(log N) times each and leave O(log N)
        segments, and a small segment never makes a large one be copied (a merge's transient copy is at most 9x the
        smaller side), and never more than 2 log2(N) + 2 segments stay in memory. Memory-mapped (loaded) segments are
        never merged."""
        self.segments.append(segment)
        self.count += segment.live
        while len(self.segments) >= 2:
            older, newer = self.segments[-2], self.segments[-1]
            if isinstance(older.tokens, np.memmap) or older.live > newer.live or newer.live > 8 * max(older.live, 1):
                break
            self._merge(len(self.segments) - 2)
        # Adds of shrinking sizes never meet the rule above: past 2 log2(N) + 2 segments in memory, merge the
        # adjacent pair with the fewest live documents (a search costs O(segments)).
        limit = 2 * max(1, int(self.count).bit_length()) + 2
        while True:
            pairs = [(a.live + b.live, i) for i, (a, b) in enumerate(zip(self.segments, self.segments[1:]))
                     if not isinstance(a.tokens, np.memmap) and not isinstance(b.tokens, np.memmap)]
            in_memory = sum(not isinstance(s.tokens, np.memmap) for s in self.segments)
            if in_memory <= limit or not pairs:
                break
            self._merge(min(pairs)[1])

    def _merge(self, i: int) -> None:
        """Segments i and i + 1 become one holding their live documents, in order."""
        pair = self.segments[i:i + 2]
        # Residual storage: the index's codec (a segment of token-less documents added before it was trained holds
        # the untrained placeholder).
        codec = next((seg.codec for seg in pair if seg.codec is not None and not is_untrained(seg.codec)),
                     pair[0].codec)
        merged = Segment(*concat_parts([pair[0].live_parts(), pair[1].live_parts()]), codec=codec)
        self.segments[i:i + 2] = [merged]

    def remove(self, ids: np.ndarray) -> None:
        """Tombstones for `ids` (caller holds the lock and has checked that every id is live and none repeats):
        each touched segment gets a new liveness array, so snapshots taken before keep theirs."""
        for s, rows in self.live_rows(ids):
            seg = self.segments[s]
            alive = seg.alive.copy()
            alive[rows[rows >= 0]] = False
            seg.alive = alive
            removed = seg.live - int(alive.sum())
            seg.live -= removed
            self.count -= removed


def document_rows(offsets: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the token rows of documents `rows`, in order; their offsets from 0): what gathers those documents' tokens."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    picked = np.zeros(rows.size + 1, np.int64)
    picked[1:] = np.cumsum(lengths)
    return np.repeat(starts - picked[:-1], lengths) + np.arange(int(picked[-1])), picked


def live_parts(seg: Segment, alive: np.ndarray):
    """(tokens, offsets, fdes, ids, token_scales, fde_scales, centroid_ids) of a segment's documents that `alive`
    marks: the arrays themselves when all are (scales and ids None where the storage has none)."""
    if alive.all():
        return (seg.tokens, np.asarray(seg.offsets), seg.fde, seg.ids, seg.token_scales, seg.fde_scales,
                seg.centroid_ids)
    rows = np.flatnonzero(alive)
    token_rows, offsets = document_rows(np.asarray(seg.offsets), rows)
    token_scales = None if seg.token_scales is None else np.asarray(seg.token_scales)[token_rows]
    fde_scales = None if seg.fde_scales is None else np.asarray(seg.fde_scales)[rows]
    centroid_ids = None if seg.centroid_ids is None else np.asarray(seg.centroid_ids)[token_rows]
    return (np.asarray(seg.tokens)[token_rows], offsets, np.asarray(seg.fde)[rows], seg.ids[rows], token_scales,
            fde_scales, centroid_ids)


def concat_parts(parts):
    """One (tokens, offsets, fdes, ids, token_scales, fde_scales, centroid_ids) from several, offsets rebased."""
    tokens = np.concatenate([np.asarray(p[0]) for p in parts])
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(np.asarray(p[1][1:]) - int(p[1][0]) + base)
        base += int(p[1][-1]) - int(p[1][0])
    scales = [None if parts[0][i] is None else np.concatenate([np.asarray(p[i]) for p in parts]) for i in (4, 5, 6)]
    return (tokens, np.concatenate(offsets), np.ascontiguousarray(np.concatenate([np.asarray(p[2]) for p in parts])),
            np.concatenate([p[3] for p in parts]), *scales)
