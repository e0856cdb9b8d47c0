"""The one reader and writer of every file format tokenset writes (the FDE file now, the index next).

Nothing on disk is trusted. Every malformed input is a ``ValueError`` that names the file and what is wrong, whatever
the damage (a truncated zip, a flipped byte, an edited or deeply nested config, an ``.npy`` header claiming 2^40
elements): sizes are checked against hard limits and against what the config implies *before* anything is allocated,
only stored (uncompressed) zip members are read, and the whole config (sizes, flags and format version included) is
covered by one SHA-256, as is every array. Writes go to a unique temporary file beside the target, are fsynced, then
renamed over it (atomic on POSIX and Windows), so concurrent saves to one path leave one complete file and a crash
leaves the previous one. Never pickle.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any, Callable, Dict, Iterable, Tuple, Union

import numpy as np

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

MAX_CONFIG_BYTES = 1 << 20   # a config is a few hundred bytes
MAX_JSON_DEPTH = 8           # configs nest two levels; anything deeper is not ours
MAX_NPY_HEADER = 4096        # numpy writes 64..200 bytes
MAX_MEMBERS = 64
DIGEST_KEY = "sha256"        # per-array digests, inside the config
CONFIG_DIGEST_KEY = "config_sha256"  # digest of the canonical config (everything but this key)


class Corrupt(ValueError):
    """A file that is not a valid tokenset file: a ValueError that names the file and what is wrong."""


def fspath(path: Any, what: str = "path") -> str:
    """A filesystem path as str (str, bytes or os.PathLike), else a TypeError."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what} must be a str, bytes or os.PathLike, got {type(path).__name__}") from None
    return os.fsdecode(p)


# ---- writing --------------------------------------------------------------------------------------------------------

def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Calls ``write(file)`` on a new, uniquely named temporary file in the target's directory, fsyncs it, renames it
    over ``path`` and fsyncs the directory. Concurrent writers (threads or processes) each use their own temporary
    file; the last rename wins and every reader sees one complete file."""
    path = fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(directory)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def canonical_json(config: Dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def seal(config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The config with a digest of every array and, over all of that, the config's own digest."""
    sealed = dict(config)
    sealed[DIGEST_KEY] = {name: array_digest(a) for name, a in arrays.items()}
    sealed[CONFIG_DIGEST_KEY] = hashlib.sha256(canonical_json(sealed)).hexdigest()
    return sealed


def write_zip(path: PathLike, config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """``config.json`` (sealed) plus one stored ``<name>.npy`` per array, written atomically."""
    sealed = seal(config, arrays)

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("config.json", json.dumps(sealed, indent=1, sort_keys=True, allow_nan=False))
            for name, a in arrays.items():
                z.writestr(f"{name}.npy", npy_bytes(a))

    atomic_write(path, write)


# ---- reading --------------------------------------------------------------------------------------------------------

def _depth_checked(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for v in value.values():
            _depth_checked(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _depth_checked(v, depth + 1)


def _no_duplicate_keys(pairs: Iterable[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nesting(data: bytes) -> int:
    """The deepest bracket nesting outside strings: bounded before the recursive parser sees it (deep nesting is a
    RecursionError there)."""
    depth = peak = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            peak = max(peak, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return peak


def parse_config(data: bytes, corrupt: Callable[[str], Exception]) -> Dict[str, Any]:
    """A JSON object of at most MAX_CONFIG_BYTES, MAX_JSON_DEPTH levels, no duplicate keys, no NaN/Infinity, whose
    ``config_sha256`` matches the canonical form of everything else."""
    if len(data) > MAX_CONFIG_BYTES:
        raise corrupt("config.json is too large")
    if _nesting(data) > MAX_JSON_DEPTH + 1:
        raise corrupt(f"config.json nests more than {MAX_JSON_DEPTH} levels")
    try:
        config = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                            parse_constant=_reject_constant)
        _depth_checked(config)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise corrupt(f"config.json unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise corrupt("config.json is not an object")
    digest = config.get(CONFIG_DIGEST_KEY)
    rest = {k: v for k, v in config.items() if k != CONFIG_DIGEST_KEY}
    try:
        actual = hashlib.sha256(canonical_json(rest)).hexdigest()
    except (ValueError, TypeError, RecursionError) as exc:
        raise corrupt(f"config.json unreadable: {exc}") from None
    if not isinstance(digest, str) or digest != actual:
        raise corrupt("config.json does not match its checksum (edited or damaged)")
    return config


def config_int(config: Dict[str, Any], key: str, low: int, high: int, corrupt, allow_none: bool = False):
    """An exact JSON integer (not a bool, not a float) in [low, high], or None when allowed."""
    value = config.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise corrupt(f"{key} must be an integer{' or null' if allow_none else ''}, got {value!r}")
    if not low <= value <= high:
        raise corrupt(f"{key} must be in {low}..{high}, got {value}")
    return value


def read_npy_header(f, name: str, corrupt) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` header at f's position (left just after it), at most
    MAX_NPY_HEADER bytes; any malformed header is one ValueError."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
        raise ValueError(f"npy format version {version}")
    except Exception as exc:  # numpy raises ValueError, SyntaxError, EOFError...: all mean a damaged header
        raise corrupt(f"{name} header unreadable: {type(exc).__name__}: {exc}") from None


def parse_npy(data: bytes, name: str, dtype: np.dtype, shape: Tuple[int, ...], corrupt) -> np.ndarray:
    """The array of a stored ``.npy`` whose dtype and shape must be exactly ``dtype`` / ``shape`` (checked from the
    header before the data is looked at; the data must be exactly that many bytes). A read-only view of ``data``."""
    dtype = np.dtype(dtype)
    f = io.BytesIO(data[:MAX_NPY_HEADER + 16])
    header = read_npy_header(f, f"{name}.npy", corrupt)
    got_shape, fortran, got_dtype = header
    if got_dtype != dtype or tuple(got_shape) != tuple(shape) or (fortran and len(shape) > 1):
        raise corrupt(f"{name}.npy holds {got_dtype} {tuple(got_shape)}{' (Fortran order)' if fortran else ''}, "
                      f"expected {dtype} {tuple(shape)}")
    start = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - start != nbytes:
        raise corrupt(f"{name}.npy has {len(data) - start} bytes of data, its shape {tuple(shape)} needs {nbytes}")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=start).reshape(shape)


def header_bytes_bound() -> int:
    return MAX_NPY_HEADER + 16


class ZipReader:
    """A tokenset zip, opened for checked reads: only stored, unencrypted members of known size."""

    def __init__(self, path: PathLike, kind: str):
        self.path = fspath(path)
        self.kind = kind
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
            infos = self._zip.infolist()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise  # not a malformed file: the usual OSError
        except Exception as exc:  # BadZipFile, EOFError, OSError (bad seek), NotImplementedError, ...
            raise self.corrupt(f"not a readable zip archive: {type(exc).__name__}: {exc}") from None
        if len(infos) > MAX_MEMBERS:
            raise self.corrupt(f"{len(infos)} members")
        self.members = {}
        for info in infos:
            if info.filename in self.members:
                raise self.corrupt(f"member {info.filename!r} appears twice")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise self.corrupt(f"member {info.filename!r} is compressed or encrypted; tokenset stores members")
            if info.compress_size != info.file_size:
                raise self.corrupt(f"member {info.filename!r} has inconsistent sizes")
            self.members[info.filename] = info

    def corrupt(self, why: str) -> Corrupt:
        return Corrupt(f"{self.path}: not a valid {self.kind} file ({why})")

    def __enter__(self) -> "ZipReader":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def read(self, member: str, max_bytes: int) -> bytes:
        """The bytes of a member that the caller expects to be at most ``max_bytes`` (checked before reading)."""
        info = self.members.get(member)
        if info is None:
            raise self.corrupt(f"{member} missing")
        if info.file_size > max_bytes:
            raise self.corrupt(f"{member} is {info.file_size} bytes, more than the {max_bytes} its configuration "
                               f"allows")
        try:
            with self._zip.open(info) as f:
                data = f.read(max_bytes + 1)
        except Exception as exc:  # BadZipFile (CRC), EOFError (truncated), OSError, NotImplementedError, ...
            raise self.corrupt(f"{member} unreadable: {type(exc).__name__}: {exc}") from None
        if len(data) != info.file_size:
            raise self.corrupt(f"{member} is truncated")
        return data

    def config(self) -> Dict[str, Any]:
        return parse_config(self.read("config.json", MAX_CONFIG_BYTES), self.corrupt)

    def array(self, name: str, dtype, shape: Tuple[int, ...], digest: Any) -> np.ndarray:
        """A checked, read-only array: exact dtype, shape and byte count from the header, then its SHA-256."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        data = self.read(f"{name}.npy", nbytes + header_bytes_bound())
        a = parse_npy(data, name, dtype, shape, self.corrupt)
        if not isinstance(digest, str) or array_digest(a) != digest:
            raise self.corrupt(f"{name}.npy does not match its checksum")
        return a
