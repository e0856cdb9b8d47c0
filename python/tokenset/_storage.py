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
import math
import os
import re
import secrets
import stat
import threading
import zipfile
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

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

def temporary_name(path: PathLike) -> str:
    """A fresh name for ``path``'s temporary file, beside it: ``.<name>.<16 hex>.tmp`` (:func:`is_temporary_of`)."""
    path = fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{16}\.tmp$")
# What versions that used tempfile.mkstemp left behind (8 characters of [a-z0-9_]): a user's ".notes.original.tmp"
# matches too, so callers accept these only for names no user would choose (`legacy`).
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def is_temporary_of(entry: str, names: Callable[[str], bool],
                    legacy: Optional[Callable[[str], bool]] = None) -> bool:
    """Whether a directory entry is a temporary file that :func:`atomic_write` made for a name accepted by `names`
    (what an interrupted write leaves behind), or one an older tokenset made for a name accepted by `legacy`;
    nothing else is ever deleted as a temporary."""
    match = _TEMPORARY.match(entry)
    if match and names(match.group("name")):
        return True
    match = _LEGACY_TEMPORARY.match(entry) if legacy is not None else None
    return bool(match) and legacy(match.group("name"))


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Calls ``write(file)`` on a new, uniquely named temporary file in the target's directory, fsyncs it, renames it
    over ``path`` and fsyncs the directory. Concurrent writers (threads or processes) each use their own temporary
    file; the last rename wins and every reader sees one complete file. The file is created with mode 0o666 less the
    process's umask, like any file ``open(path, "w")`` makes (the kernel applies the umask)."""
    path = fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(directory)
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


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
    atomic_write(path, lambda f: _write_zip_to(f, config, arrays))


def zip_bytes(config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> bytes:
    """The bytes :func:`write_zip` writes (for small files that are hashed or embedded as a whole)."""
    buf = io.BytesIO()
    _write_zip_to(buf, config, arrays)
    return buf.getvalue()


def _write_zip_to(f, config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    sealed = seal(config, arrays)
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("config.json", json.dumps(sealed, indent=1, sort_keys=True, allow_nan=False))
        for name, a in arrays.items():
            z.writestr(f"{name}.npy", npy_bytes(a))


def write_npy(path: PathLike, dtype: Any, shape: Tuple[int, ...], blocks: Iterable[np.ndarray]) -> str:
    """Writes a ``.npy`` of `dtype` / `shape` atomically from `blocks` (arrays whose rows, in order, are the whole
    array: each is written as it comes, so memory stays at one block whatever the array's size) and returns the
    SHA-256 of its data (the bytes after the header). A block count that does not add up is a RuntimeError and
    leaves the previous file."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    expected = math.prod(shape) * dtype.itemsize
    digest = hashlib.sha256()

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        written = 0
        for block in blocks:
            if block.size == 0:  # (a memoryview of a zero-size array cannot be cast)
                continue
            data = memoryview(np.ascontiguousarray(block, dtype=dtype)).cast("B")
            f.write(data)
            digest.update(data)
            written += data.nbytes
        if written != expected:
            raise RuntimeError(f"{os.path.basename(path)}: {written} bytes written, {shape} {dtype} needs {expected}")

    atomic_write(path, write)
    return digest.hexdigest()


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


def parse_config(data: bytes, corrupt: Callable[[str], Exception], name: str = "config.json") -> Dict[str, Any]:
    """A JSON object of at most MAX_CONFIG_BYTES, MAX_JSON_DEPTH levels, no duplicate keys, no NaN/Infinity, whose
    ``config_sha256`` matches the canonical form of everything else. `name` names the file in messages."""
    if len(data) > MAX_CONFIG_BYTES:
        raise corrupt(f"{name} is too large")
    if _nesting(data) > MAX_JSON_DEPTH + 1:
        raise corrupt(f"{name} nests more than {MAX_JSON_DEPTH} levels")
    try:
        config = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                            parse_constant=_reject_constant)
        _depth_checked(config)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise corrupt(f"{name} unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise corrupt(f"{name} is not an object")
    digest = config.get(CONFIG_DIGEST_KEY)
    rest = {k: v for k, v in config.items() if k != CONFIG_DIGEST_KEY}
    try:
        actual = hashlib.sha256(canonical_json(rest)).hexdigest()
    except (ValueError, TypeError, RecursionError) as exc:
        raise corrupt(f"{name} unreadable: {exc}") from None
    if not isinstance(digest, str) or digest != actual:
        raise corrupt(f"{name} does not match its checksum (edited or damaged)")
    return config


def check_format(config: Dict[str, Any], name: str, version: int, corrupt: Callable[[str], Exception]) -> None:
    """A config's format name (e.g. tokenset.FDE) and the one version this tokenset reads, else `corrupt`."""
    if config.get("format") != name:
        raise corrupt(f"config.json does not describe a {name}")
    found = config.get("version")
    if isinstance(found, bool) or not isinstance(found, int) or found != version:
        raise corrupt(f"format version {found!r}, this tokenset reads {version}")


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


def _checked_header(f, name: str, dtype: np.dtype, shape: Any, corrupt) -> Tuple[Tuple[int, ...], int, int]:
    """(shape, element count, data offset) of the ``.npy`` header at f's position, whose dtype must be `dtype` and
    shape `shape` (``None``: any 1-D length), C order; the count in Python ints (a crafted shape cannot wrap)."""
    got_shape, fortran, got_dtype = read_npy_header(f, name, corrupt)
    if got_dtype != dtype or (fortran and len(got_shape) > 1) or \
            (shape is not None and tuple(got_shape) != tuple(shape)) or (shape is None and len(got_shape) != 1):
        raise corrupt(f"{name} holds {got_dtype} {tuple(got_shape)}{' (Fortran order)' if fortran else ''}, "
                      f"expected {dtype} {tuple(shape) if shape is not None else '(n,)'}")
    return tuple(got_shape), math.prod(int(n) for n in got_shape), f.tell()


def parse_npy(data: bytes, name: str, dtype: np.dtype, shape: Tuple[int, ...], corrupt) -> np.ndarray:
    """The array of a stored ``.npy`` whose dtype and shape must be exactly ``dtype`` / ``shape`` (checked from the
    header before the data is looked at; the data must be exactly that many bytes). A read-only view of ``data``."""
    dtype = np.dtype(dtype)
    f = io.BytesIO(data[:MAX_NPY_HEADER + 16])
    _, count, start = _checked_header(f, f"{name}.npy", dtype, shape, corrupt)
    nbytes = count * dtype.itemsize
    if len(data) - start != nbytes:
        raise corrupt(f"{name}.npy has {len(data) - start} bytes of data, its shape {tuple(shape)} needs {nbytes}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)


def header_bytes_bound() -> int:
    return MAX_NPY_HEADER + 16


class ZipReader:
    """A tokenset zip, opened for checked reads: only stored, unencrypted members of known size."""

    def __init__(self, path: PathLike, kind: str, data: Optional[bytes] = None):
        """Opens the zip at `path`, or, when `data` is given, the zip held in those bytes (already read and checked
        by the caller: `path` then only names it in messages)."""
        self.path = fspath(path)
        self.kind = kind
        # A path is opened as a checked regular file: a FIFO or a device is refused, never read.
        self._file = open_regular(self.path, "the file", self.corrupt) if data is None else io.BytesIO(data)
        try:
            self._zip = zipfile.ZipFile(self._file, "r")
            infos = self._zip.infolist()
        except Exception as exc:  # BadZipFile, EOFError, OSError (bad seek), NotImplementedError, ...
            self._file.close()
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
        self._file.close()

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


# ---- files of a directory -------------------------------------------------------------------------------------------

def safe_name(name: Any) -> bool:
    """A plain file name: no directory part, not hidden, not empty, at most 200 characters."""
    return isinstance(name, str) and 0 < len(name) < 200 and os.path.basename(name) == name and \
        not name.startswith(".") and "\x00" not in name


def open_regular(path: PathLike, what: str, corrupt: Callable[[str], Exception], max_bytes: int = -1):
    """``path`` opened for reading, after checking on the open descriptor that it is a regular file (a FIFO, a
    device such as ``/dev/zero`` or a directory is refused: opening never blocks, reading never runs forever) of at
    most `max_bytes` (``-1``: any size). A missing file raises FileNotFoundError; other failures are `corrupt`."""
    path = fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise corrupt(f"{what} unreadable: {exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise corrupt(f"{what} is not a regular file")
        if max_bytes >= 0 and info.st_size > max_bytes:
            raise corrupt(f"{what} is {info.st_size} bytes, more than the {max_bytes} it can be")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_npy_file(f, name: str, dtype: Any, shape: Any, mmap: bool, corrupt) -> np.ndarray:
    """The array stored in the open ``.npy`` file `f` (from :func:`open_regular`): header, dtype, shape (a tuple, or
    ``None`` for any 1-D length) and the file's exact size are checked on this descriptor, and the data is
    memory-mapped read-only from the same descriptor (``mmap``) or read, so what was checked is what is used even
    when the path is replaced meanwhile."""
    dtype = np.dtype(dtype)
    f.seek(0)
    got_shape, count, start = _checked_header(f, name, dtype, shape, corrupt)
    size = os.fstat(f.fileno()).st_size
    if size != start + count * dtype.itemsize:
        raise corrupt(f"{name} is {size} bytes, its header says {start + count * dtype.itemsize} (truncated or "
                      f"resized)")
    if mmap and count:
        return np.memmap(f, dtype=dtype, mode="r", offset=start, shape=tuple(got_shape))
    data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise corrupt(f"{name} is truncated")
    data = data.reshape(got_shape)
    data.setflags(write=False)
    return data


def _open_lock_file(path: str, flags: int) -> int:
    """The lock file's descriptor, opened without blocking (a FIFO planted there cannot hang the caller) and checked
    to be a regular file."""
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file: tokenset keeps its lock there; remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


class DirectoryLock:
    """An exclusive advisory lock on a directory, held while tokenset changes it: ``fcntl.flock`` on the lock file
    `name` inside it (created once, with the umask's mode, and never deleted: deleting a lock file lets two holders
    lock two different files). Excludes other threads and other processes alike (each holder opens its own
    descriptor). Where ``fcntl`` does not exist (Windows), only threads of this process are excluded, and
    ``exclusive`` is False.

    Fork: a child gets none of the parent's lock descriptors (they are closed in the child, so a parent's lock is
    never kept by a child's copy) and fresh in-process locks."""

    _process_locks: Dict[str, Any] = {}
    _guard = threading.Lock()  # around opening + registering a descriptor, and around fork
    _held_fds: set = set()  # descriptors of locks held or being waited for

    def __init__(self, directory: str, name: str):
        self.path = os.path.join(directory, name)
        self._fd = None
        self.exclusive = False
        with DirectoryLock._guard:
            key = os.path.realpath(self.path)
            self._thread_lock = DirectoryLock._process_locks.setdefault(key, threading.Lock())

    def __enter__(self) -> "DirectoryLock":
        self._thread_lock.acquire()
        try:
            try:
                import fcntl
            except ImportError:
                return self
            self._fd = _register(lambda: _open_lock_file(self.path, os.O_RDWR | os.O_CREAT))
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self.exclusive = True
        except BaseException:
            self._close()
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._close()
        finally:
            self._thread_lock.release()

    def _close(self) -> None:
        if self._fd is not None:
            _unregister(self._fd)
            self._fd = None

    @classmethod
    def _before_fork(cls) -> None:
        cls._guard.acquire()  # no fork between opening a lock file and registering its descriptor

    @classmethod
    def _after_fork_in_parent(cls) -> None:
        cls._guard.release()

    @classmethod
    def _forget_in_child(cls) -> None:
        # A forked child has only the forking thread: locks other threads held at the fork would stay held forever,
        # and an inherited descriptor would keep the parent's flock held for as long as the child lives.
        for fd in list(cls._held_fds):
            try:
                os.close(fd)
            except OSError:
                pass
        cls._held_fds = set()
        cls._process_locks = {}
        cls._guard = threading.Lock()


def _register(open_fd: Callable[[], int]) -> int:
    with DirectoryLock._guard:
        fd = open_fd()
        DirectoryLock._held_fds.add(fd)
        return fd


def _unregister(fd: int) -> None:
    with DirectoryLock._guard:
        DirectoryLock._held_fds.discard(fd)
        os.close(fd)  # releases the flock


class SharedDirectoryLock:
    """The lock of :class:`DirectoryLock` taken shared (``LOCK_SH``): readers exclude writers, not each other. Opens
    the lock file read-only and never creates it (a reader may not be allowed to write, and a folder without the
    file has no writer of this version to wait for). A lock file that cannot be opened is an error that says so."""

    def __init__(self, directory: str, name: str):
        self.path = os.path.join(directory, name)
        self._fd = None

    def __enter__(self) -> "SharedDirectoryLock":
        try:
            import fcntl
        except ImportError:
            return self
        try:
            self._fd = _register(lambda: _open_lock_file(self.path, os.O_RDONLY))
        except FileNotFoundError:
            return self
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot open the folder's lock file to wait for saves ({exc})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        except BaseException:
            _unregister(self._fd)
            self._fd = None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _unregister(self._fd)
            self._fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=DirectoryLock._before_fork, after_in_parent=DirectoryLock._after_fork_in_parent,
                        after_in_child=DirectoryLock._forget_in_child)
