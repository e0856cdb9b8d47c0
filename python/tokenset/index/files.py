"""An index's folder: ``save``, ``load`` and ``verify`` (every byte through :mod:`tokenset._storage`).

Layout: ``manifest.json`` (sealed by its own SHA-256) names one *generation* of files, ``tokens-<g>.npy``,
``offsets-<g>.npy``, ``fde-<g>.npy``, ``ids-<g>.npy`` and ``fde-<g>.encoder`` (``<g>``: 12 hex digits), with the
SHA-256 of each; ``.tokenset-index.lock`` is the lock file of saves.

Saving, under an exclusive lock on the folder (threads and processes alike):
  1. the folder must be new, empty, or hold a tokenset index (its ``manifest.json``); anything else is refused;
  2. the live documents of a snapshot are streamed into the new generation's files in blocks (memory: one block,
     64 MiB, whatever the corpus), hashed as they are written; each file is fsynced and renamed into place;
  3. the manifest is replaced atomically: from here on the new generation is the index;
  4. the files the *previous* manifest named, and temporary files of tokenset's own pattern, are deleted. Nothing
     else in the folder is touched.
A crash at any point leaves the previous generation loadable; a save waiting for the lock never deletes what the one
before it wrote (it reads the previous manifest only once it holds the lock).

Loading checks what is cheap and always needed: the manifest's SHA-256, every file's header, dtype, shape and exact
size (on the descriptor that is then memory-mapped), the encoder (parsed from the very bytes that were hashed),
offsets and ids. A file that is not a regular file (a FIFO, ``/dev/zero``) is refused before it is read. When a file
of the manifest is gone (a save replaced the generation meanwhile), the manifest is read once more. ``verify`` reads
every array and checks its SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from typing import Any, Callable, Dict, Iterator, Optional, Set

import numpy as np

from .. import _storage
from ..fde import FDE
from .store import MAX_ID, Segment, Snapshot, live_runs

FORMAT = "tokenset.Index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".tokenset-index.lock"
ARRAYS = ("tokens", "offsets", "fde", "ids")
BLOCK_BYTES = 64 << 20  # what one streamed block of a save holds
MAX_ENCODER_BYTES = 1 << 31
_GENERATION_FILE = re.compile(r"^(?:(?:tokens|offsets|fde|ids)-[0-9a-f]{12}\.npy|fde-[0-9a-f]{12}\.encoder)$")


def _ours(name: str) -> bool:
    """A name tokenset's index saves write: the manifest or a generation's file."""
    return name == MANIFEST or bool(_GENERATION_FILE.match(name))


class _Gone(Exception):
    """A file the manifest names vanished while loading (a save replaced the generation)."""


# ---- save -----------------------------------------------------------------------------------------------------------

def save(index: Any, directory: Any) -> Dict[str, Any]:
    """Writes `index` to `directory` (see the module docstring) and returns the manifest written."""
    directory = _storage.fspath(directory, "directory")
    os.makedirs(directory, exist_ok=True)
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory}: not a directory")
    _previous_generation(directory)  # a folder that is not ours is refused before the lock file is made in it
    with _storage.DirectoryLock(directory, LOCK):
        previous = _previous_generation(directory)  # read again under the lock: what the last save wrote
        snapshot, next_id = index._snapshot_for_save()
        generation = secrets.token_hex(6)
        files = _write_arrays(index, snapshot, directory, generation)
        encoder_bytes = index.fde.to_bytes()
        encoder_name = f"fde-{generation}.encoder"
        _storage.atomic_write(os.path.join(directory, encoder_name), lambda f: f.write(encoder_bytes))
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "dim": index.dim, "dtype": index.dtype,
                    "documents": files["ids"]["shape"][0], "next_id": next_id, "arrays": files,
                    "backend": {"name": index.backend, "options": index.backend_options},
                    "encoder": {"file": encoder_name, "sha256": hashlib.sha256(encoder_bytes).hexdigest(),
                                "bytes": len(encoder_bytes)}}
        manifest[_storage.CONFIG_DIGEST_KEY] = hashlib.sha256(_storage.canonical_json(manifest)).hexdigest()
        _storage.atomic_write(os.path.join(directory, MANIFEST),
                              lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
        keep = {encoder_name} | {meta["file"] for meta in files.values()}
        for name in os.listdir(directory):
            if (name in previous and name not in keep) or _storage.is_temporary_of(name, _ours):
                try:
                    os.remove(os.path.join(directory, name))
                except OSError:
                    pass
    return manifest


def _previous_generation(directory: str) -> Set[str]:
    """The generation files the folder's current manifest names (to delete once the new one is in place); refuses a
    folder that holds other things and no tokenset manifest."""
    entries = os.listdir(directory)
    if MANIFEST not in entries:
        foreign = [e for e in entries if e != LOCK and not _ours(e) and not _storage.is_temporary_of(e, _ours)]
        if foreign:
            raise ValueError(f"{directory} is not empty and holds no tokenset index (found {sorted(foreign)[:3]}); "
                             f"Index.save writes into a new or empty folder, or over an index it saved before: "
                             f"choose another folder (it never deletes files it did not write)")
        return set()

    def corrupt(why: str) -> ValueError:
        return ValueError(f"{directory} holds a manifest.json that is not a tokenset index manifest ({why}); "
                          f"Index.save never overwrites files it did not write: choose another folder")

    try:
        with _storage.open_regular(os.path.join(directory, MANIFEST), MANIFEST, corrupt,
                                   _storage.MAX_CONFIG_BYTES) as f:
            manifest = _storage.parse_config(f.read(_storage.MAX_CONFIG_BYTES + 1), corrupt)
    except FileNotFoundError:
        return set()
    if manifest.get("format") != FORMAT:
        raise corrupt("another format")
    named = [meta.get("file") for meta in (manifest.get("arrays") or {}).values() if isinstance(meta, dict)]
    named.append((manifest.get("encoder") or {}).get("file"))
    return {name for name in named if isinstance(name, str) and _GENERATION_FILE.match(name)}


def _write_arrays(index: Any, snapshot: Snapshot, directory: str, generation: str) -> Dict[str, Dict[str, Any]]:
    """Streams the snapshot's live documents into the generation's four ``.npy`` files."""
    docs = snapshot.live
    tokens = 0
    for seg, alive in snapshot:
        offsets = np.asarray(seg.offsets)
        starts, ends = live_runs(seg, alive)
        tokens += int((offsets[ends] - offsets[starts]).sum())
    specs = {"tokens": (np.dtype(index.dtype), (tokens, index.dim), _token_blocks(snapshot, index)),
             "offsets": (np.dtype(np.int64), (docs + 1,), _offset_blocks(snapshot)),
             "fde": (np.dtype(np.float16), (docs, index.fde.output_dim), _row_blocks(snapshot, "fde")),
             "ids": (np.dtype(np.int64), (docs,), _row_blocks(snapshot, "ids"))}
    files = {}
    for name, (dtype, shape, blocks) in specs.items():
        file = f"{name}-{generation}.npy"
        digest = _storage.write_npy(os.path.join(directory, file), dtype, shape, blocks)
        files[name] = {"file": file, "dtype": str(dtype), "shape": list(shape), "sha256": digest}
    return files


def _token_blocks(snapshot: Snapshot, index: Any) -> Iterator[np.ndarray]:
    step = max(1, BLOCK_BYTES // (index.dim * np.dtype(index.dtype).itemsize))
    for seg, alive in snapshot:
        offsets = np.asarray(seg.offsets)
        starts, ends = live_runs(seg, alive)
        for a, b in zip(offsets[starts].tolist(), offsets[ends].tolist()):
            for t0 in range(a, b, step):
                yield seg.tokens[t0:min(b, t0 + step)]


def _row_blocks(snapshot: Snapshot, field: str) -> Iterator[np.ndarray]:
    for seg, alive in snapshot:
        array = getattr(seg, field)
        row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
        step = max(1, BLOCK_BYTES // row_bytes)
        starts, ends = live_runs(seg, alive)
        for a, b in zip(starts.tolist(), ends.tolist()):
            for r0 in range(a, b, step):
                yield array[r0:min(b, r0 + step)]


def _offset_blocks(snapshot: Snapshot) -> Iterator[np.ndarray]:
    yield np.zeros(1, np.int64)
    base = 0
    step = BLOCK_BYTES // 8
    for seg, alive in snapshot:
        offsets = np.asarray(seg.offsets)
        starts, ends = live_runs(seg, alive)
        for a, b in zip(starts.tolist(), ends.tolist()):
            for r0 in range(a, b, step):
                r1 = min(b, r0 + step)
                lengths = offsets[r0 + 1:r1 + 1] - offsets[r0:r1]
                ends_out = base + np.cumsum(lengths)
                base = int(ends_out[-1])
                yield ends_out


# ---- load -----------------------------------------------------------------------------------------------------------

def load(cls: Any, directory: Any, mmap: bool) -> Any:
    directory = _storage.fspath(directory, "directory")
    for attempt in range(2):
        try:
            return _load_generation(cls, directory, mmap)
        except _Gone as gone:
            if attempt:  # the manifest read again names a missing file too: the folder is damaged
                raise _storage.Corrupt(f"{directory}: not a valid tokenset index ({gone} is missing)") from None
    raise AssertionError("unreachable")


def _load_generation(cls: Any, directory: str, mmap: bool) -> Any:
    def corrupt(why: str) -> _storage.Corrupt:
        return _storage.Corrupt(f"{directory}: not a valid tokenset index ({why})")

    try:
        with _storage.open_regular(os.path.join(directory, MANIFEST), MANIFEST, corrupt,
                                   _storage.MAX_CONFIG_BYTES) as f:
            data = f.read(_storage.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: no {MANIFEST}, so no tokenset index is saved there "
                                f"(Index.save writes one)") from None
    manifest = _storage.parse_config(data, corrupt)
    if manifest.get("format") != FORMAT:
        raise corrupt("manifest.json does not describe a tokenset.Index")
    version = manifest.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise corrupt(f"format version {version!r}, this tokenset reads {FORMAT_VERSION}")
    dim = _storage.config_int(manifest, "dim", 1, 1 << 16, corrupt)
    n = _storage.config_int(manifest, "documents", 0, 2**40, corrupt)
    next_id = _storage.config_int(manifest, "next_id", 0, MAX_ID + 1, corrupt)
    dtype = manifest.get("dtype")
    if dtype not in ("float16", "float32"):
        raise corrupt(f"dtype {dtype!r}")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict) or not _storage.safe_name(encoder.get("file")):
        raise corrupt("encoder entry")
    size = encoder.get("bytes", MAX_ENCODER_BYTES)  # older manifests do not record it
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_ENCODER_BYTES:
        raise corrupt("encoder size")
    with _open(directory, encoder["file"], corrupt, size) as f:
        enc_bytes = f.read(size + 1)
    if "bytes" in encoder and len(enc_bytes) != size:
        raise corrupt(f"{encoder['file']} is {len(enc_bytes)} bytes, the manifest says {size}")
    if hashlib.sha256(enc_bytes).hexdigest() != encoder.get("sha256"):
        raise corrupt("encoder file does not match its checksum")
    fde = FDE.from_bytes(enc_bytes, os.path.join(directory, encoder["file"]))  # the bytes that were hashed
    if fde.dim != dim:
        raise corrupt("encoder dimension differs from the index's")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or set(arrays) != set(ARRAYS):
        raise corrupt("arrays entry")
    offsets = _array(directory, arrays["offsets"], np.int64, (n + 1,), False, corrupt)
    if offsets[0] != 0 or (n and np.diff(offsets).min() < 0):
        raise corrupt("offsets are not non-decreasing from 0")
    total = int(offsets[-1])
    tokens = _array(directory, arrays["tokens"], np.dtype(dtype), (total, dim), mmap, corrupt)
    fdes = _array(directory, arrays["fde"], np.float16, (n, fde.output_dim), mmap, corrupt)
    ids = _array(directory, arrays["ids"], np.int64, (n,), False, corrupt)
    if n and (int(ids.min()) < 0 or int(ids.max()) > MAX_ID):
        raise corrupt(f"ids outside 0..{MAX_ID}")
    backend = manifest.get("backend")
    if not isinstance(backend, dict) or not isinstance(backend.get("options"), dict):
        raise corrupt("backend entry")
    try:
        index = cls(dim, fde=fde, dtype=dtype, backend=backend.get("name"), backend_options=backend["options"])
    except (ValueError, TypeError) as exc:
        raise corrupt(f"backend: {exc}") from None
    except ImportError as exc:
        raise ImportError(f"{directory}: {exc}") from None
    segment = Segment(tokens, offsets, fdes, ids) if n else None
    if segment is not None and not segment.has_distinct_ids():
        raise corrupt("ids are not distinct")
    index._open_saved(segment, max(next_id, int(ids.max()) + 1 if n else 0), (directory, manifest))
    return index


def _open(directory: str, name: str, corrupt: Callable[[str], Exception], max_bytes: int = -1):
    try:
        return _storage.open_regular(os.path.join(directory, name), name, corrupt, max_bytes)
    except FileNotFoundError:
        raise _Gone(name) from None


def _array(directory: str, meta: Any, dtype: Any, shape: Any, mmap: bool, corrupt) -> np.ndarray:
    if not isinstance(meta, dict) or not _storage.safe_name(meta.get("file")):
        raise corrupt("array entry")
    if list(shape) != meta.get("shape"):
        raise corrupt(f"{meta['file']}: the manifest says shape {meta.get('shape')}, expected {list(shape)}")
    with _open(directory, meta["file"], corrupt) as f:
        return _storage.read_npy_file(f, meta["file"], dtype, shape, mmap, corrupt)


# ---- verify ---------------------------------------------------------------------------------------------------------

def verify(saved: Optional[tuple]) -> None:
    """Reads every file of the generation last loaded or saved by this index and checks its SHA-256."""
    if saved is None:
        raise ValueError("verify() checks the files of an index opened with Index.load or written by Index.save")
    directory, manifest = saved

    def corrupt(why: str) -> _storage.Corrupt:
        return _storage.Corrupt(f"{directory}: {why}")

    entries = [(meta["file"], meta.get("sha256"), True) for meta in manifest["arrays"].values()]
    entries.append((manifest["encoder"]["file"], manifest["encoder"].get("sha256"), False))
    for name, want, is_npy in entries:
        try:
            f = _storage.open_regular(os.path.join(directory, name), name, corrupt)
        except FileNotFoundError:
            raise _storage.Corrupt(f"{directory}: {name} is gone: the folder was saved again (by another Index or "
                                   f"process) since this index loaded or saved it; Index.load it again") from None
        digest = hashlib.sha256()
        with f:
            if is_npy:
                _storage.read_npy_header(f, name, corrupt)
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != want:
            raise _storage.Corrupt(f"{directory}: {name} does not match its checksum (damaged)")
