"""Array interop: numpy, torch (CPU and CUDA) and cupy arrays in and out without copies.

What the native converter (csrc/bindings/views.cpp) cannot see: which library an array comes from, its device as
the library names it, its current CUDA stream; and allocation of results in the caller's library and device.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Tuple

import numpy as np

SUPPORTED = "float32, float16 or bfloat16"


def _torch():
    return sys.modules.get("torch")


def _cupy():
    return sys.modules.get("cupy")


def is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_cupy(x: Any) -> bool:
    cupy = _cupy()
    return cupy is not None and isinstance(x, cupy.ndarray)


def is_int8(x: Any) -> bool:
    """Whether an array holds int8 elements (int8 codes: tokenset.Quantized values, int8 FDE rows)."""
    if is_torch(x):
        return x.dtype == _torch().int8
    return np.dtype(x.dtype) == np.int8


def check_dense(x: Any, name: str = "input") -> None:
    """A TypeError for a torch tensor tokenset cannot read: a sparse (COO, CSR, CSC, BSR, BSC) or MKL-DNN layout.
    Nested (jagged) tensors are set batches, read set by set."""
    if is_torch(x) and x.layout != _torch().strided and not is_nested(x):
        raise TypeError(f"{name}: a torch tensor with layout {x.layout} is not supported; tokenset reads dense "
                        f"(strided) tensors: call .to_dense() first")


def is_array(x: Any, name: str = "input") -> bool:
    """Whether `x` is a numpy array, torch tensor or cupy array; a torch tensor of a layout tokenset cannot read
    (sparse) is a TypeError naming `name`, so every entry point refuses it before any library call."""
    if is_torch(x):
        check_dense(x, name)
        return True
    return isinstance(x, np.ndarray) or is_cupy(x)


def is_nested(x: Any) -> bool:
    """A torch nested (jagged) tensor: a batch of sets, not one array."""
    return is_torch(x) and bool(getattr(x, "is_nested", False))


def library(x: Any) -> str:
    if is_torch(x):
        return "torch"
    if is_cupy(x):
        return "cupy"
    if isinstance(x, np.ndarray):
        return "numpy"
    raise TypeError(f"expected a numpy array, torch tensor or cupy array, got {type(x).__name__}")


def device(x: Any) -> Tuple[str, int]:
    """('cpu', -1) or ('cuda', index)."""
    if is_torch(x):
        if x.device.type == "cuda":
            return ("cuda", x.device.index if x.device.index is not None else _torch().cuda.current_device())
        if x.device.type != "cpu":
            raise ValueError(f"tensors on device '{x.device}' are not supported; use a CPU or CUDA tensor")
        return ("cpu", -1)
    if is_cupy(x):
        return ("cuda", x.device.id)
    return ("cpu", -1)


def device_name(dev: Tuple[str, int]) -> str:
    return "cpu" if dev[0] == "cpu" else f"cuda:{dev[1]}"


def dtype_name(x: Any, name: str) -> str:
    """'float32', 'float16' or 'bfloat16' for token values, or a TypeError that says how to convert."""
    if is_torch(x):
        torch = _torch()
        names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        if x.dtype in names:
            return names[x.dtype]
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; tokenset takes {SUPPORTED} (try x.float())")
    dt = np.dtype(x.dtype)
    if dt == np.float32:
        return "float32"
    if dt == np.float16:
        return "float16"
    if dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes.bfloat16 (numpy), cupy has none
        return "bfloat16"
    raise TypeError(f"{name}: dtype {dt} is not supported; tokenset takes {SUPPORTED} (try x.astype(np.float32))")


MAX_TOKEN_DIM = 1 << 16  # the token dimension limit of every kernel: kMaxTokenDim of csrc/include/tokenset/common.h


def check_token_dim(dim: int, name: str) -> None:
    """The hard limit on the token dimension, 1..MAX_TOKEN_DIM: a ValueError with the native check's message
    (check_token_values) and the fix. Every Python entry checks it before anything is converted or made contiguous (a
    broadcast [2, 2**31] view must be refused, not copied into 16 GiB first)."""
    dim = int(dim)
    if not 1 <= dim <= MAX_TOKEN_DIM:
        fix = "a token needs at least one coordinate" if dim < 1 else \
            f"project the tokens to at most {MAX_TOKEN_DIM} first"
        raise ValueError(f"{name}: token dimension must be in 1..{MAX_TOKEN_DIM}, got {dim} ({fix})")


def check_tokens(x: Any, dim: int, name: str) -> None:
    """Token values every op computes on: float32, float16 or bfloat16 (else a TypeError that says how to convert;
    complex, float64 and integer tokens are refused, never cast) and a token dimension within the limit
    (check_token_dim), checked before any work."""
    dtype_name(x, name)
    check_token_dim(dim, name)


def frozen(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a host array that no one can write: backed by immutable bytes, so even
    ``setflags(write=True)`` fails. What kernels follow (offsets, indices) is kept this way once checked."""
    a = np.ascontiguousarray(a)
    return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)


def as_torch(x: Any) -> Any:
    """`x` as a torch tensor sharing its memory (numpy via the buffer, bfloat16 through an int16 view; cupy via
    DLPack): the other side of an autograd call that mixes libraries."""
    if is_torch(x):
        return x
    torch = _torch()
    if is_cupy(x):
        return torch.from_dlpack(x)
    x = np.asarray(x)
    bfloat16 = x.dtype.name == "bfloat16" and x.dtype.itemsize == 2
    with warnings.catch_warnings():  # read-only arrays: the tensor is only read (detached) by the kernels
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(x.view(np.int16) if bfloat16 else x)
    return t.view(torch.bfloat16) if bfloat16 else t


def astype(x: Any, dtype: str) -> Any:
    """`x` converted to a token dtype name, in its own library and device (a copy; `x` itself when it has it)."""
    if is_torch(x):
        return x.to(getattr(_torch(), dtype))
    if dtype == "bfloat16" and not is_cupy(x):
        import ml_dtypes  # present whenever a bfloat16 numpy array exists

        return x.astype(ml_dtypes.bfloat16)
    return x.astype(dtype)


def inner_contiguous(x: Any) -> Any:
    """`x` ([n, d]) itself when its elements are contiguous within a row (rows may be strided), else one copy."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] <= 1:
        return x
    if is_torch(x):
        return x if x.stride(1) == 1 else x.contiguous()
    if x.strides[1] == x.itemsize:
        return x
    return _cupy().ascontiguousarray(x) if is_cupy(x) else np.ascontiguousarray(x)


def contiguous(x: Any) -> Any:
    """`x` itself when C-contiguous, else one contiguous copy (for native code that reads whole arrays)."""
    if is_torch(x):
        return x.contiguous()
    return _cupy().ascontiguousarray(x) if is_cupy(x) else np.ascontiguousarray(x)


def last_axis_contiguous(x: Any) -> Any:
    """`x` (any rank) itself when its elements are contiguous along the last axis, else one contiguous copy."""
    if x.ndim == 0 or x.shape[-1] <= 1 or int(np.prod(x.shape)) == 0:
        return x
    if is_torch(x):
        return x if x.stride(-1) == 1 else x.contiguous()
    if x.strides[-1] == x.itemsize:
        return x
    return _cupy().ascontiguousarray(x) if is_cupy(x) else np.ascontiguousarray(x)


def host_copy(x: Any, name: str = "input") -> np.ndarray:
    """A numpy array of anything array-like (device arrays are copied to the host; sparse tensors are a TypeError
    naming `name`)."""
    if is_torch(x):
        check_dense(x, name)
        x = x.detach().cpu()
        if x.dtype == _torch().bfloat16:  # numpy has no bfloat16: the bits, viewed through ml_dtypes
            try:
                import ml_dtypes
            except ImportError:
                raise TypeError(f"{name}: a torch bfloat16 tensor has no numpy form without ml_dtypes: pip install "
                                f"ml_dtypes, or convert it first (x.float())") from None
            return x.view(_torch().int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def int64_host(x: Any, name: str) -> np.ndarray:
    """An int64 numpy copy/view of an integer array from any library (device arrays are copied to the host), of the
    same shape. Values that int64 cannot hold (uint64 above 2**63 - 1) are a ValueError, never wrapped."""
    arr = host_copy(x, name)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: value {int(arr.max())} does not fit in int64")
    return np.asarray(arr, dtype=np.int64, order="C")


def result_library(*arrays: Any) -> str:
    libs = {library(a) for a in arrays}
    if "torch" in libs and "cupy" in libs:
        raise TypeError("mixing torch tensors and cupy arrays in one call is not supported; convert one side "
                        "(torch.as_tensor(cupy_array, device='cuda') shares memory)")
    if "torch" in libs:
        return "torch"
    if "cupy" in libs:
        return "cupy"
    return "numpy"


def empty(shape, dtype: str, lib: str, dev: Tuple[str, int]) -> Any:
    """An uninitialised C-contiguous array of `dtype` ('float32', 'int64', 'uint8', ...) in the caller's library and
    device (on a GPU: allocated on the current stream, which the kernel then uses)."""
    if lib == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device="cpu" if dev[0] == "cpu" else f"cuda:{dev[1]}")
    if lib == "cupy":
        cupy = _cupy()
        with cupy.cuda.Device(dev[1]):
            return cupy.empty(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


def to_device(arr: np.ndarray, lib: str, dev: Tuple[str, int]) -> Any:
    """A contiguous copy of a host array on CUDA device `dev`, in library `lib` (torch or cupy), made on the current
    stream."""
    arr = np.ascontiguousarray(arr)
    if lib == "torch":
        return _torch().from_numpy(arr if arr.flags.writeable else arr.copy()).to(f"cuda:{dev[1]}")
    cupy = _cupy()
    with cupy.cuda.Device(dev[1]):
        return cupy.asarray(arr)


def to_device_blocks(arr: np.ndarray, lib: str, dev: Tuple[str, int], block_bytes: int = 64 << 20) -> Any:
    """A contiguous copy of a host array (a memory map, say) on CUDA device `dev`, uploaded in row blocks of about
    `block_bytes`: host memory stays at one block, never the whole array."""
    rows = int(arr.shape[0]) if arr.ndim else 1
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize) if arr.ndim else 1
    if arr.ndim == 0 or rows * row_bytes <= block_bytes:
        return to_device(arr, lib, dev)
    out = empty(tuple(arr.shape), str(arr.dtype), lib, dev)
    step = max(1, block_bytes // row_bytes)
    for r0 in range(0, rows, step):
        block = np.array(arr[r0:r0 + step])  # a private, writeable host block
        if lib == "torch":
            out[r0:r0 + step].copy_(_torch().from_numpy(block))
        else:
            with _cupy().cuda.Device(dev[1]):
                out[r0:r0 + step].set(block)
    return out


def current_stream(lib: str, dev: Tuple[str, int]) -> int:
    """The caller's current CUDA stream as an integer handle; kernels are launched on it (0 on the CPU)."""
    if dev[0] == "cpu":
        return 0
    if lib == "torch":
        torch = _torch()
        return int(torch.cuda.current_stream(dev[1]).cuda_stream)
    cupy = _cupy()
    with cupy.cuda.Device(dev[1]):
        return int(cupy.cuda.get_current_stream().ptr)


class SmallCache:
    """A least-recently-used map of at most `size` entries, for device copies cached per (library, device, stream):
    a program that cycles through many streams keeps the last few copies, not one per stream it ever used."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 4):
        from collections import OrderedDict

        self._entries = OrderedDict()
        self._size = size

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        entries = self._entries
        try:
            value = entries[key]
            entries.move_to_end(key)
            return value
        except KeyError:
            pass
        value = make()
        entries[key] = value
        while len(entries) > self._size:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class LazyAutogradFunction:
    """A torch.autograd.Function built on first use by `make()` (torch stays optional): ``.apply(*args)``."""

    __slots__ = ("_make", "_fn")

    def __init__(self, make: Callable[[], Any]):
        self._make, self._fn = make, None

    def apply(self, *args):
        if self._fn is None:
            self._fn = self._make()
        return self._fn.apply(*args)

