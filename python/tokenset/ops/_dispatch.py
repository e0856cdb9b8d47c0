"""Device, stream, batch and workspace plumbing shared by every op wrapper (``ops/<op>.py`` stays thin).

An op wrapper asks :func:`placement` where its inputs live, turns its Ragged batches into :class:`KernelBatch`
descriptions for the native converter, allocates outputs with :func:`empty`, and calls :func:`module` ``.<op>(...,
stream=..., allocate=...)``. The native side (``csrc/bindings``) checks shapes, dtypes, strides, offsets and indices.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from .. import _array, _backend
from ..ragged import Ragged

Device = Tuple[str, int]


class KernelBatch:
    """What the native converter reads of a set batch: ``values`` ``[rows, d]`` or ``sets`` (a list of ``[n_i, d]``
    arrays, CPU only, read in place), the host ``offsets`` it validates, and on a GPU ``device_offsets``."""

    __slots__ = ("values", "sets", "offsets", "device_offsets", "scales")

    def __init__(self, values, sets, offsets, device_offsets, scales=None):
        self.values, self.sets, self.offsets, self.device_offsets = values, sets, offsets, device_offsets
        self.scales = scales  # int8 values: float32 [rows], one per row


def placement(*arrays: Any) -> Tuple[str, Device]:
    """The library results come back in, and the one device every input is on (else a ValueError with the fix)."""
    lib = _array.result_library(*arrays)
    devices = {_array.device(a) for a in arrays}
    if len(devices) > 1:
        names = ", ".join(sorted(_array.device_name(d) for d in devices))
        raise ValueError(f"inputs are on different devices ({names}); move them to one device first "
                         f"(e.g. documents.to(queries.device))")
    return lib, devices.pop()


def module(dev: Device):
    """The native module for a device: ``_core`` (CPU) or ``_cuda`` (a RuntimeError that says how to get one)."""
    return _backend._core if dev[0] == "cpu" else _backend.cuda()


def stream(lib: str, dev: Device) -> int:
    return _array.current_stream(lib, dev)


def token_dtype(batch: Ragged, name: str) -> str:
    return _array.dtype_name(batch._any_values, name)


check_token_dim = _array.check_token_dim  # the one limit and message (_array.MAX_TOKEN_DIM), for the op wrappers


def _kernel_values(x: Any, dtype: Optional[str], lib: str, dev: Device) -> Any:
    torch_input = _array.is_torch(x)  # lib is the result's library; one side may be numpy (torch with numpy)
    if torch_input:
        x = x.detach()
    if dtype is not None and _array.dtype_name(x, "values") != dtype:
        x = _array.astype(x, dtype)
    x = _array.inner_contiguous(x)
    if torch_input and dev[0] == "cpu" and x.dtype != _array._torch().bfloat16:
        x = x.numpy()  # a view; the buffer protocol is cheaper than a DLPack export per set of a list
    return x


def kernel_batch(batch: Ragged, lib: str, dev: Device, stream_handle: int, name: str,
                 dtype: Optional[str] = None) -> KernelBatch:
    """The native description of a batch, its values converted to `dtype` when given (queries follow the documents'
    dtype). CPU lists are passed as lists (read in place); GPU lists are concatenated once (a device copy)."""
    token_dtype(batch, name)  # a clear TypeError for unsupported dtypes before anything is converted
    check_token_dim(batch.dim, name)  # and the hard limit before anything is copied
    if batch.sets is not None and dev[0] == "cpu":
        sets = [_kernel_values(s, dtype, lib, dev) for s in batch.sets]
        return KernelBatch(None, sets, batch.offsets, None)
    batch = batch.compact()  # a conversion or contiguous copy covers the sets' rows only, never a whole window
    values = _kernel_values(batch.values, dtype, lib, dev)
    device_offsets = None if dev[0] == "cpu" else batch.device_offsets(lib, dev, stream_handle)
    return KernelBatch(values, None, batch.offsets, device_offsets)


def quantized_batch(batch, name: str) -> KernelBatch:
    """The native description of a CPU :class:`tokenset.Quantized` batch: int8 values and their scales, read in
    place (torch tensors through numpy views)."""
    check_token_dim(batch.dim, name)
    values, scales = batch.values, batch.scales
    if _array.is_torch(values):
        values, scales = values.detach().numpy(), scales.detach().numpy()
    return KernelBatch(_array.inner_contiguous(values), None, batch.offsets, None, np.ascontiguousarray(scales))


def host_and_device(arr: Any, lib: str, dev: Device) -> Tuple[Any, Any]:
    """An int64 host array the native layer checks (immutable, so what it checks is what a CPU kernel reads) and,
    on a GPU, its device copy for the kernel (None on the CPU)."""
    host = _array.frozen(np.ascontiguousarray(arr, dtype=np.int64))
    return host, (None if dev[0] == "cpu" else _array.to_device(host, lib, dev))


def empty(shape, dtype: str, lib: str, dev: Device) -> Any:
    return _array.empty(shape, dtype, lib, dev)


def outputs_for_k(rows: int, k: int, dtypes: Tuple[str, ...], lib: str, dev: Device, beyond: str,
                  limit: int) -> Tuple[Any, ...]:
    """One ``[rows, k]`` array per dtype, or a ValueError naming k when they cannot be allocated (numpy's "array is
    too big" and MemoryError, torch's RuntimeError never named it). `beyond` says why a k past `limit` only pads."""
    entry = sum(np.dtype(d).itemsize for d in dtypes)
    try:
        if rows * k > (1 << 62) // entry:
            raise MemoryError
        return tuple(empty((rows, k), d, lib, dev) for d in dtypes)
    except (MemoryError, ValueError, RuntimeError) as exc:
        raise ValueError(f"k={k}: the output [{rows}, {k}] ({entry} bytes per entry) cannot be allocated; {beyond}: "
                         f"pass k <= {max(limit, 1)}") from (None if isinstance(exc, MemoryError) else exc)


def topk_outputs(rows: int, k: int, columns: int, lib: str, dev: Device) -> Tuple[Any, Any]:
    """``(scores float32 [rows, k], indices int64 [rows, k])`` of a top-k op over `columns` candidates."""
    return outputs_for_k(rows, k, ("float32", "int64"), lib, dev, f"there are {columns} candidates, and a k beyond "
                         f"them only adds (-inf, -1) padding", columns)


def allocator(lib: str, dev: Device) -> Optional[Callable[[int], Any]]:
    """The workspace allocator a GPU op calls with the bytes it needs (a uint8 array on the current stream)."""
    if dev[0] == "cpu":
        return None
    return lambda nbytes: _array.empty((int(nbytes),), "uint8", lib, dev)


def check_out(out: Any, lib: str, dev: Device) -> None:
    """A caller's output array must be of the inputs' library and device (its shape, dtype and layout are checked
    natively)."""
    if not _array.is_array(out) or _array.library(out) != lib or _array.device(out) != dev:
        raise ValueError(f"out must be a {lib} array on {_array.device_name(dev)}, like the input")
    if lib == "torch" and out.requires_grad:
        raise ValueError("out requires grad: autograd cannot follow writes into it; pass a tensor without "
                         "requires_grad (or call under torch.no_grad())")
