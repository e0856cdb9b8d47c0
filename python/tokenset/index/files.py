"""An index's folder: ``save``, ``load`` and ``verify`` (every byte through :mod:`tokenset._storage`).

Layout: ``manifest.json`` (sealed by its own SHA-256) names one *generation* of files, ``tokens-<g>.npy``,
``offsets-<g>.npy``, ``fde-<g>.npy``, ``ids-<g>.npy`` (with int8 storage also ``token_scales-<g>.npy`` /
``fde_scales-<g>.npy``; with residual storage the packed codes as ``tokens``, their inverse norms as
``token_scales``, ``centroid_ids-<g>.npy`` and the codec ``residual-<g>.codec``) and ``fde-<g>.encoder`` (``<g>``: 12
hex digits), with the SHA-256 of each;
``.tokenset-index.lock`` is the lock file of saves.

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
from typing import Any, Callable, Dict, Iterator, Optional, Set, Tuple

import numpy as np

from .. import _storage
from ..fde import FDE
from ..residual import ResidualCodec, untrained_codec
from .store import MAX_ID, Segment, Snapshot

FORMAT = "tokenset.Index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".tokenset-index.lock"
_FLOAT16_MAX = 65504.0
ARRAYS = ("tokens", "offsets", "fde", "ids")  # and, for int8 storage, "token_scales" / "fde_scales"
SCALE_ARRAYS = ("token_scales", "fde_scales", "centroid_ids")  # centroid ids: residual storage
RESIDUAL_STORAGES = {"residual4": 4, "residual2": 2, "residual1": 1}
MAX_CODEC_BYTES = 1 << 31
BLOCK_BYTES = 64 << 20  # what one streamed block of a save holds
MAX_ENCODER_BYTES = 1 << 31
_GENERATION_FILE = re.compile(r"^(?:(?:tokens|offsets|fde|ids|token_scales|fde_scales|centroid_ids)-[0-9a-f]{12}"
                              r"\.npy|fde-[0-9a-f]{12}\.encoder|residual-[0-9a-f]{12}\.codec)$")


def _ours(name: str) -> bool:
    """A name tokenset's index saves write: the manifest or a generation's file."""
    return name == MANIFEST or bool(_GENERATION_FILE.match(name))


class _Gone(Exception):
    """A file the manifest names vanished while loading (a save replaced the generation)."""


# ---- save -----------------------------------------------------------------------------------------------------------

def save(index: Any, directory: Any) -> Tuple[str, Dict[str, Any]]:
    """Writes `index` to `directory` (see the module docstring); returns ``(directory, the manifest written)``:
    what :func:`verify` checks."""
    directory = _storage.fspath(directory, "directory")
    os.makedirs(directory, exist_ok=True)
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory}: not a directory")
    _check_folder(directory)  # a folder that is not ours is refused before the lock file is made in it
    with _storage.DirectoryLock(directory, LOCK) as lock:
        previous = _check_folder(directory)  # again under the lock: what the last save wrote
        snapshot, next_id = index._snapshot_for_save()
        generation = secrets.token_hex(6)
        written = [f"{name}-{generation}.npy" for name in ARRAYS + SCALE_ARRAYS] + [f"fde-{generation}.encoder",
                                                                                      f"residual-{generation}.codec"]
        try:
            manifest = _write_generation(index, snapshot, next_id, directory, generation)
        except BaseException:
            if not _manifest_names(directory, generation):  # (an interrupt just after the manifest's rename: kept)
                for name in written:  # a failed save (a full disk, say) leaves no partial generation behind
                    try:
                        os.remove(os.path.join(directory, name))
                    except OSError:
                        pass
            raise
        keep = set(written)
        # Leftovers of interrupted saves (temporaries, and a generation killed before its manifest: tokenset's own
        # names, made after the lock file, by saves, which hold the lock) are swept only where the lock excludes
        # other saves: without one, a concurrent save's files look the same. Files older than the lock file were
        # there before tokenset first saved here: never touched.
        since = os.stat(os.path.join(directory, LOCK)).st_mtime_ns if lock.exclusive else None
        for name in os.listdir(directory):
            if name in keep:
                continue
            leftover = since is not None and (_storage.is_temporary_of(name, _ours, _is_generation_file) or
                                              (_GENERATION_FILE.match(name) and _made_since(directory, name, since)))
            if name in previous or leftover:
                try:
                    os.remove(os.path.join(directory, name))
                except OSError:
                    pass
    return directory, manifest


def _made_since(directory: str, name: str, since: int) -> bool:
    """Strictly after the lock file (same clock tick: kept; not deleting is the safe side)."""
    try:
        return os.stat(os.path.join(directory, name)).st_mtime_ns > since
    except OSError:
        return False


def _is_generation_file(name: str) -> bool:
    return bool(_GENERATION_FILE.match(name))


def _write_generation(index: Any, snapshot: Snapshot, next_id: int, directory: str, generation: str) -> Dict[str, Any]:
    """The generation's files, then the manifest that makes it the index."""
    files = _write_arrays(index, snapshot, directory, generation)
    encoder_bytes = index.fde.to_bytes()
    encoder_name = f"fde-{generation}.encoder"
    _storage.atomic_write(os.path.join(directory, encoder_name), lambda f: f.write(encoder_bytes))
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "dim": index.dim, "dtype": index.storage,
                "fde_dtype": index.fde_storage,
                "documents": files["ids"]["shape"][0], "next_id": next_id, "arrays": files,
                "backend": {"name": index.backend, "options": index.backend_options},
                "encoder": {"file": encoder_name, "sha256": hashlib.sha256(encoder_bytes).hexdigest(),
                            "bytes": len(encoder_bytes)}}
    if index.storage in RESIDUAL_STORAGES:
        codec = index.codec if index.codec is not None else untrained_codec(index.dim, RESIDUAL_STORAGES[index.storage])
        codec_bytes = codec.to_bytes()
        codec_name = f"residual-{generation}.codec"
        _storage.atomic_write(os.path.join(directory, codec_name), lambda f: f.write(codec_bytes))
        manifest["codec"] = {"file": codec_name, "sha256": hashlib.sha256(codec_bytes).hexdigest(),
                             "bytes": len(codec_bytes), "trained": index.codec is not None}
    manifest[_storage.CONFIG_DIGEST_KEY] = hashlib.sha256(_storage.canonical_json(manifest)).hexdigest()
    _storage.atomic_write(os.path.join(directory, MANIFEST),
                          lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
    return manifest


def _check_folder(directory: str) -> Set[str]:
    """The generation files the folder's manifest names (deleted once a new manifest is in place: a loser of a race
    between saves never deletes the winner's files, with or without a working lock). Refuses a folder that holds
    other things and no tokenset manifest, or someone else's manifest.json."""
    entries = os.listdir(directory)
    if MANIFEST not in entries:
        foreign = [e for e in entries
                   if e != LOCK and not _ours(e) and not _storage.is_temporary_of(e, _ours, _is_generation_file)]
        if foreign:
            raise ValueError(f"{directory} is not empty and holds no tokenset index (found {sorted(foreign)[:3]}); "
                             f"Index.save writes into a new or empty folder, or over an index it saved before: "
                             f"choose another folder (it never deletes files it did not write)")
        return set()
    try:
        with _storage.open_regular(os.path.join(directory, MANIFEST), MANIFEST, ValueError,
                                   _storage.MAX_CONFIG_BYTES) as f:
            data = f.read(_storage.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return set()
    except ValueError as exc:
        raise ValueError(f"{directory}: its manifest.json cannot be read as a tokenset index manifest ({exc}); "
                         f"Index.save never overwrites files it did not write: choose another folder") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{directory} holds a manifest.json that is not a tokenset index manifest; Index.save never "
                         f"overwrites files it did not write: choose another folder")
    # A damaged tokenset manifest (its checksum fails) is still ours: saving over it repairs the folder.
    arrays, encoder = manifest.get("arrays"), manifest.get("encoder")
    named = [meta.get("file") for meta in arrays.values() if isinstance(meta, dict)] if isinstance(arrays, dict) \
        else []
    named.append(encoder.get("file") if isinstance(encoder, dict) else None)
    codec = manifest.get("codec")
    named.append(codec.get("file") if isinstance(codec, dict) else None)
    return {name for name in named if isinstance(name, str) and _GENERATION_FILE.match(name)}


def _manifest_names(directory: str, generation: str) -> bool:
    """Whether the folder's manifest names files of `generation` (read back after an interrupted save)."""
    try:
        with open(os.path.join(directory, MANIFEST), "rb") as f:
            return generation.encode() in f.read(_storage.MAX_CONFIG_BYTES)
    except OSError:
        return False


def _write_arrays(index: Any, snapshot: Snapshot, directory: str, generation: str) -> Dict[str, Dict[str, Any]]:
    """Streams the snapshot's live documents into the generation's four ``.npy`` files."""
    docs = snapshot.live
    tokens = 0
    for seg, alive in snapshot:
        offsets = np.asarray(seg.offsets)
        for rows in _live_chunks(seg, alive):
            tokens += int((offsets[_after(rows)] - offsets[rows]).sum())
    bits = RESIDUAL_STORAGES.get(index.storage)
    stored = (np.dtype(np.uint8), (tokens, index.dim * bits // 8)) if bits else (np.dtype(index.storage),
                                                                                 (tokens, index.dim))
    specs = {"tokens": (*stored, _token_blocks(snapshot, "tokens")),
             "offsets": (np.dtype(np.int64), (docs + 1,), _offset_blocks(snapshot)),
             "fde": (np.dtype(index.fde_storage), (docs, index.fde.output_dim), _row_blocks(snapshot, "fde")),
             "ids": (np.dtype(np.int64), (docs,), _row_blocks(snapshot, "ids"))}
    if index.storage == "int8" or bits:
        specs["token_scales"] = (np.dtype(np.float32), (tokens,), _token_blocks(snapshot, "token_scales"))
    if bits:
        specs["centroid_ids"] = (np.dtype(np.int32), (tokens,), _token_blocks(snapshot, "centroid_ids"))
    if index.fde_storage == "int8":
        specs["fde_scales"] = (np.dtype(np.float32), (docs,), _row_blocks(snapshot, "fde_scales"))
    files = {}
    for name, (dtype, shape, blocks) in specs.items():
        file = f"{name}-{generation}.npy"
        digest = _storage.write_npy(os.path.join(directory, file), dtype, shape, blocks)
        files[name] = {"file": file, "dtype": str(dtype), "shape": list(shape), "sha256": digest}
    return files


_DOCS_PER_CHUNK = 1 << 16  # live documents looked at together: 8 bytes each for their rows


def _live_chunks(seg: Segment, alive: np.ndarray) -> Iterator[Any]:
    """A segment's live documents in chunks of at most _DOCS_PER_CHUNK rows: a slice where they are consecutive
    rows, else their rows (int64). Scratch: one chunk's rows, whatever the segment's size or its tombstones."""
    for r0 in range(0, len(seg), _DOCS_PER_CHUNK):
        r1 = min(len(seg), r0 + _DOCS_PER_CHUNK)
        part = alive[r0:r1]
        if part.all():
            yield slice(r0, r1)
            continue
        rows = np.flatnonzero(part) + r0
        if rows.size == 0:
            continue
        yield slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == rows.size else rows


def _after(rows: Any) -> Any:
    return slice(rows.start + 1, rows.stop + 1) if isinstance(rows, slice) else rows + 1


def _pieces(rows: Any, step: int) -> Iterator[Any]:
    """`rows` (a slice or an index array) cut into pieces of at most `step` rows."""
    if isinstance(rows, slice):
        for r0 in range(rows.start, rows.stop, step):
            yield slice(r0, min(rows.stop, r0 + step))
    else:
        for r0 in range(0, rows.size, step):
            yield rows[r0:r0 + step]


def _token_blocks(snapshot: Snapshot, field: str) -> Iterator[np.ndarray]:
    """The live documents' rows of a per-token array (`field`: tokens, or their scales)."""
    for seg, alive in snapshot:
        tokens, offsets = getattr(seg, field), np.asarray(seg.offsets)
        row_bytes = max(1, int(np.prod(tokens.shape[1:], dtype=np.int64)) * tokens.dtype.itemsize)
        step = max(1, BLOCK_BYTES // max(row_bytes, 8))  # the block, and its gather index (8 bytes a row)
        for rows in _live_chunks(seg, alive):
            if isinstance(rows, slice):  # consecutive documents: their tokens are one range, read as views
                for piece in _pieces(slice(int(offsets[rows.start]), int(offsets[rows.stop])), step):
                    yield tokens[piece]
                continue
            starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
            ends = np.cumsum(lengths)
            first = 0
            while first < rows.size:  # groups of documents holding at most `step` tokens (or one longer one)
                base = int(ends[first - 1]) if first else 0
                last = max(first + 1, int(np.searchsorted(ends, base + step, side="right")))
                if last == first + 1 and lengths[first] > step:  # one long document: its own range, in pieces
                    a = int(starts[first])
                    for piece in _pieces(slice(a, a + int(lengths[first])), step):
                        yield tokens[piece]
                elif lengths[first:last].any():  # (documents without tokens add no rows)
                    lens = lengths[first:last]
                    local = np.arange(int(lens.sum()), dtype=np.int64)
                    local += np.repeat(starts[first:last] - (np.cumsum(lens) - lens), lens)
                    yield tokens[local]
                first = last


def _row_blocks(snapshot: Snapshot, field: str) -> Iterator[np.ndarray]:
    for seg, alive in snapshot:
        array = getattr(seg, field)
        row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
        step = max(1, BLOCK_BYTES // row_bytes)
        for rows in _live_chunks(seg, alive):
            for piece in _pieces(rows, step):
                yield array[piece]


def _offset_blocks(snapshot: Snapshot) -> Iterator[np.ndarray]:
    yield np.zeros(1, np.int64)
    base = 0
    for seg, alive in snapshot:
        offsets = np.asarray(seg.offsets)
        for rows in _live_chunks(seg, alive):
            ends = base + np.cumsum(offsets[_after(rows)] - offsets[rows])
            base = int(ends[-1])
            yield ends


# ---- load -----------------------------------------------------------------------------------------------------------

def load(cls: Any, directory: Any, mmap: bool) -> Any:
    directory = _storage.fspath(directory, "directory")
    seen = None
    for _ in range(2):
        try:
            return _load_generation(cls, directory, mmap)
        except _Gone as gone:
            # A save replaced the generation while it was being opened: read the new manifest. When the same
            # manifest names a missing file twice, the folder is damaged.
            manifest, missing = gone.args
            if manifest == seen:
                raise _storage.Corrupt(f"{directory}: not a valid tokenset index ({missing} is missing)") from None
            seen = manifest
    # Saves keep replacing the generation faster than it opens: open it holding the folder's lock shared, so that
    # saves wait for this load (a folder no save of this version wrote has no lock file and needs none).
    with _storage.SharedDirectoryLock(directory, LOCK):
        try:
            return _load_generation(cls, directory, mmap)
        except _Gone as gone:
            raise _storage.Corrupt(f"{directory}: not a valid tokenset index ({gone.args[1]} is missing)") from None


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
    manifest = _storage.parse_config(data, corrupt, MANIFEST)
    digest = manifest[_storage.CONFIG_DIGEST_KEY]
    if manifest.get("format") != FORMAT:
        raise corrupt("manifest.json does not describe a tokenset.Index")
    version = manifest.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise corrupt(f"format version {version!r}, this tokenset reads {FORMAT_VERSION}")
    dim = _storage.config_int(manifest, "dim", 1, 1 << 16, corrupt)
    n = _storage.config_int(manifest, "documents", 0, 2**40, corrupt)
    next_id = _storage.config_int(manifest, "next_id", 0, MAX_ID + 1, corrupt)
    dtype = manifest.get("dtype")
    if dtype not in ("float16", "float32", "int8", *RESIDUAL_STORAGES):
        raise corrupt(f"dtype {dtype!r}")
    bits = RESIDUAL_STORAGES.get(dtype)
    fde_dtype = manifest.get("fde_dtype", "float16")  # older manifests: float16 FDEs
    if fde_dtype not in ("float16", "int8"):
        raise corrupt(f"fde_dtype {fde_dtype!r}")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict) or not _storage.safe_name(encoder.get("file")):
        raise corrupt("encoder entry")
    size = encoder.get("bytes", MAX_ENCODER_BYTES)  # older manifests do not record it
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_ENCODER_BYTES:
        raise corrupt("encoder size")
    with _open(directory, encoder["file"], corrupt, digest, size) as f:
        enc_bytes = f.read(size + 1)
    if "bytes" in encoder and len(enc_bytes) != size:
        raise corrupt(f"{encoder['file']} is {len(enc_bytes)} bytes, the manifest says {size}")
    if hashlib.sha256(enc_bytes).hexdigest() != encoder.get("sha256"):
        raise corrupt("encoder file does not match its checksum")
    fde = FDE.from_bytes(enc_bytes, os.path.join(directory, encoder["file"]))  # the bytes that were hashed
    if fde.dim != dim:
        raise corrupt("encoder dimension differs from the index's")
    codec = _load_codec(directory, manifest, corrupt, digest, dim, bits) if bits else None
    arrays = manifest.get("arrays")
    expected = set(ARRAYS) | ({"token_scales"} if dtype == "int8" or bits else set()) | \
        ({"fde_scales"} if fde_dtype == "int8" else set()) | ({"centroid_ids"} if bits else set())
    if not isinstance(arrays, dict) or set(arrays) != expected:
        raise corrupt("arrays entry")
    offsets = _array(directory, arrays["offsets"], np.int64, (n + 1,), False, corrupt, digest)
    if offsets[0] != 0 or (n and np.diff(offsets).min() < 0):
        raise corrupt("offsets are not non-decreasing from 0")
    total = int(offsets[-1])
    stored = (np.uint8, (total, dim * bits // 8)) if bits else (np.dtype(dtype), (total, dim))
    tokens = _array(directory, arrays["tokens"], *stored, mmap, corrupt, digest)
    fdes = _array(directory, arrays["fde"], np.dtype(fde_dtype), (n, fde.output_dim), mmap, corrupt, digest)
    scales = {}
    for name, rows in (("token_scales", total), ("fde_scales", n)):
        if name in arrays:  # read whole (4 bytes a row) and checked: NaN, inf or negative scales are damage
            scales[name] = _array(directory, arrays[name], np.float32, (rows,), False, corrupt, digest)
            if rows and not (np.isfinite(scales[name]).all() and scales[name].min() >= 0):
                raise corrupt(f"{name} hold values that are not finite numbers >= 0")
    centroid_ids = None
    if bits:  # read whole (4 bytes a token) and checked against the codec: an id outside it is damage
        centroid_ids = _array(directory, arrays["centroid_ids"], np.int32, (total,), False, corrupt, digest)
        if total and (codec is None or int(centroid_ids.min()) < 0 or int(centroid_ids.max()) >= codec.num_centroids):
            raise corrupt("centroid_ids outside the codec's centroids")
    ids = _array(directory, arrays["ids"], np.int64, (n,), False, corrupt, digest)
    if n and int(ids.max()) > MAX_ID:
        raise corrupt(f"ids outside 0..{MAX_ID}")
    if n and int(ids.min()) < 0:  # valid in version 1 before the id domain was defined: not damage, but not loadable
        raise ValueError(f"{directory}: this index holds negative ids (e.g. {int(ids.min())}), which an older "
                         f"tokenset accepted; ids are now 0..{MAX_ID} (-1 pads search results). Load it with that "
                         f"older version, or re-add its documents with non-negative ids")
    backend = manifest.get("backend")
    if not isinstance(backend, dict) or not isinstance(backend.get("options"), dict):
        raise corrupt("backend entry")
    try:
        index = cls(dim, fde=fde, storage=dtype, backend=backend.get("name"), backend_options=backend["options"],
                    fde_storage=fde_dtype, codec=codec)
    except (ValueError, TypeError) as exc:
        raise corrupt(f"backend: {exc}") from None
    except ImportError as exc:
        raise ImportError(f"{directory}: {exc}") from None
    fde_scales = scales.get("fde_scales")
    if index.backend == "usearch" and fde_scales is not None and fde_scales.size and \
            float(fde_scales.max()) * 127 > _FLOAT16_MAX:  # the graph holds the dequantised FDEs in float16
        raise ValueError(f"{directory}: its int8 FDEs reach {float(fde_scales.max()) * 127:.3g}, beyond float16's "
                         f"range ({_FLOAT16_MAX:g}), which the usearch backend's float16 graph cannot hold; re-add "
                         f"the documents scaled down (e.g. normalised), or use the exact backend")
    segment = Segment(tokens, offsets, fdes, ids, scales.get("token_scales"), fde_scales, centroid_ids,
                      codec if codec is not None or not bits else untrained_codec(dim, bits)) if n else None
    if segment is not None and not segment.has_distinct_ids():
        raise corrupt("ids are not distinct")
    index._open_saved(segment, max(next_id, int(ids.max()) + 1 if n else 0), (directory, manifest))
    return index


def _load_codec(directory: str, manifest: Dict[str, Any], corrupt, digest: str, dim: int,
                bits: int) -> Optional[ResidualCodec]:
    """The residual codec the manifest names (hashed bytes, parsed and checked as ResidualCodec.load does); None for
    an index saved before its first add trained one."""
    entry = manifest.get("codec")
    if not isinstance(entry, dict) or not _storage.safe_name(entry.get("file")) or \
            not isinstance(entry.get("trained"), bool):
        raise corrupt("codec entry")
    size = entry.get("bytes")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_CODEC_BYTES:
        raise corrupt("codec size")
    with _open(directory, entry["file"], corrupt, digest, size) as f:
        data = f.read(size + 1)
    if len(data) != size or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise corrupt("codec file does not match its checksum")
    codec = ResidualCodec.from_bytes(data, os.path.join(directory, entry["file"]))
    if codec.dim != dim or codec.bits != bits:
        raise corrupt(f"the codec codes {codec.dim}-d tokens in {codec.bits} bits, the index {dim}-d in {bits}")
    return codec if entry["trained"] else None


def _open(directory: str, name: str, corrupt: Callable[[str], Exception], digest: str, max_bytes: int = -1):
    try:
        return _storage.open_regular(os.path.join(directory, name), name, corrupt, max_bytes)
    except FileNotFoundError:
        raise _Gone(digest, name) from None


def _array(directory: str, meta: Any, dtype: Any, shape: Any, mmap: bool, corrupt, digest: str) -> np.ndarray:
    if not isinstance(meta, dict) or not _storage.safe_name(meta.get("file")):
        raise corrupt("array entry")
    if list(shape) != meta.get("shape"):
        raise corrupt(f"{meta['file']}: the manifest says shape {meta.get('shape')}, expected {list(shape)}")
    with _open(directory, meta["file"], corrupt, digest) as f:
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
    if "codec" in manifest:
        entries.append((manifest["codec"]["file"], manifest["codec"].get("sha256"), False))
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
