"""Array interop: numpy, torch (CPU and CUDA) and cupy arrays in and out without copies.

Kernels never see a Python object: this module turns arrays into (pointer or buffer, dtype code, shape, strides)
and allocates results in the caller's library and device.
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np

FLOAT32, FLOAT16, BFLOAT16 = 0, 1, 2
DTYPE_NAMES = {FLOAT32: "float32", FLOAT16: "float16", BFLOAT16: "bfloat16"}
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


def is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_torch(x) or is_cupy(x)


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


def dtype_code(x: Any, name: str) -> int:
    """The kernel dtype code of an array, or a TypeError that says how to convert."""
    if is_torch(x):
        torch = _torch()
        codes = {torch.float32: FLOAT32, torch.float16: FLOAT16, torch.bfloat16: BFLOAT16}
        if x.dtype in codes:
            return codes[x.dtype]
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; tokenset takes {SUPPORTED} (try x.float())")
    dt = x.dtype
    if dt == np.float32:
        return FLOAT32
    if dt == np.float16:
        return FLOAT16
    if dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes.bfloat16
        return BFLOAT16
    raise TypeError(f"{name}: dtype {dt} is not supported; tokenset takes {SUPPORTED} (try x.astype(np.float32))")


def host_view(x: Any, name: str) -> Tuple[np.ndarray, int]:
    """A numpy view of a CPU array (bfloat16 viewed as uint16) whose elements are contiguous within a row.

    Rows may be strided (no copy). If elements within a row are strided, this makes the one documented copy.
    """
    code = dtype_code(x, name)
    if is_torch(x):
        t = x.detach()
        if t.dtype == _torch().bfloat16:
            t = t.view(_torch().int16)
        arr = t.numpy()
    else:
        arr = x
        if code == BFLOAT16:
            arr = arr.view(np.uint16)
    if arr.ndim == 2 and arr.shape[0] > 0 and arr.shape[1] > 1 and arr.strides[1] != arr.itemsize:
        arr = np.ascontiguousarray(arr)
    return arr, code


def host_copy(x: Any) -> np.ndarray:
    """A numpy array of anything array-like (device arrays are copied to the host)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def int64_host(x: Any, name: str) -> np.ndarray:
    """An int64 numpy copy/view of an integer array from any library (device arrays are copied to the host)."""
    arr = host_copy(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


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


def from_host(arr: np.ndarray, lib: str) -> Any:
    """Wraps a numpy result for the caller's library (zero-copy for torch)."""
    if lib == "torch":
        return _torch().from_numpy(arr)
    if lib == "cupy":  # a CPU result for cupy inputs cannot happen: cupy arrays live on the GPU
        return _cupy().asarray(arr)
    return arr


def empty_device(shape, dtype: str, lib: str, dev: Tuple[str, int]) -> Any:
    if lib == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=f"cuda:{dev[1]}")
    cupy = _cupy()
    with cupy.cuda.Device(dev[1]):
        return cupy.empty(shape, dtype=dtype)


def to_device(arr: np.ndarray, lib: str, dev: Tuple[str, int]) -> Any:
    """A contiguous copy of a host array on CUDA device `dev`, in library `lib` (torch or cupy)."""
    arr = np.ascontiguousarray(arr)
    if lib == "torch":
        return _torch().from_numpy(arr if arr.flags.writeable else arr.copy()).to(f"cuda:{dev[1]}")
    cupy = _cupy()
    with cupy.cuda.Device(dev[1]):
        return cupy.asarray(arr)


def to_device_int64(arr: np.ndarray, lib: str, dev: Tuple[str, int]) -> Any:
    return to_device(np.ascontiguousarray(arr, dtype=np.int64), lib, dev)


def device_pointer(x: Any) -> int:
    if is_torch(x):
        return int(x.data_ptr())
    return int(x.data.ptr)


def device_strides(x: Any) -> Tuple[int, ...]:
    """Strides in elements of a device array."""
    if is_torch(x):
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


def current_stream(lib: str, dev: Tuple[str, int]) -> int:
    """The caller's current CUDA stream as an integer handle; kernels are launched on it."""
    if lib == "torch":
        torch = _torch()
        return int(torch.cuda.current_stream(dev[1]).cuda_stream)
    cupy = _cupy()
    with cupy.cuda.Device(dev[1]):
        return int(cupy.cuda.get_current_stream().ptr)
