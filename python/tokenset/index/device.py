"""Device copies for ``Index.to("cuda")``: each segment's FDEs and tokens uploaded once, on first use, in blocks.

A segment's copies live in ``segment.device_copies`` and go with the segment (a merge or a reload makes new ones).
Uploads go block by block (64 MiB of host memory at a time), so a memory-mapped segment is never read whole into RAM
first. The liveness mask of a snapshot is uploaded once per liveness array (a remove makes a new one).
"""
from __future__ import annotations

import threading
from typing import Any, Tuple

import numpy as np

from .. import _array
from ..ragged import Ragged, ragged
from .store import Segment

_upload_lock = threading.Lock()  # one upload of a segment at a time: concurrent first searches share it


def fresh_after_fork() -> None:
    """A forked child starts with a free upload lock (another thread of the parent may have held it)."""
    global _upload_lock
    _upload_lock = threading.Lock()


def parse_device(device: str) -> Tuple[str, int]:
    """``("cuda", N)`` for ``"cuda"`` / ``"cuda:N"``; ValueError otherwise."""
    name, _, ordinal = device.partition(":")
    if name != "cuda" or (ordinal and not ordinal.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return "cuda", int(ordinal or 0)


def library() -> str:
    """The device arrays' library: torch when installed, else cupy."""
    return "torch" if _array._torch() is not None else "cupy"


def segment_copy(seg: Segment, device: Tuple[str, int]) -> Tuple[Any, Ragged]:
    """(FDEs, tokens) of a segment on `device`, made on first use."""
    key = _array.device_name(device)
    copy = seg.device_copies.get(key)
    if copy is None:
        with _upload_lock:
            copy = seg.device_copies.get(key)
            if copy is None:
                lib = library()
                fde = _array.to_device_blocks(np.asarray(seg.fde), lib, device)
                tokens = Ragged(_array.to_device_blocks(np.asarray(seg.tokens), lib, device), seg.offsets,
                                name="index documents")
                copy = seg.device_copies[key] = (fde, tokens)
    return copy


def segment_mask(seg: Segment, alive: np.ndarray, device: Tuple[str, int]) -> Any:
    """The liveness array `alive` of `seg` on `device` (uploaded once per array: removes replace it)."""
    key = ("mask", _array.device_name(device))
    cached = seg.device_copies.get(key)
    if cached is None or cached[0] is not alive:
        cached = (alive, _array.to_device(alive, library(), device))
        seg.device_copies[key] = cached
    return cached[1]


def queries_on(q: Ragged, device: Tuple[str, int]) -> Ragged:
    """The queries on the search device (as they are when already there, else one copy of their tokens)."""
    lib = library()
    if _array.device(q._any_values) == device and _array.library(q._any_values) == lib:
        return q
    q = q.compact()
    if q.sets is not None:
        host = np.concatenate([np.asarray(_array.host_copy(q[i], "queries")) for i in range(len(q))]) if len(q) \
            else np.zeros((0, q.dim), np.float32)
    else:
        host = np.asarray(_array.host_copy(q.values, "queries"))
    return Ragged(_array.to_device(host, lib, device), q.offsets, name="queries")


def queries_on_host(q: Ragged) -> Ragged:
    """The queries on the CPU (themselves when already there)."""
    if _array.device(q._any_values)[0] == "cpu":
        return q
    return ragged([np.asarray(_array.host_copy(q[i], "queries")) for i in range(len(q))], name="queries") if len(q) \
        else q
