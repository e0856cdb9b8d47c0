"""Typed wrappers of the FDE kernels: validate, pick the device and stream, allocate outputs, call _core / _cuda.

Inputs are :class:`~tokenset.Ragged` batches and an encoder's kernel state (:meth:`tokenset.FDE.kernel_state`);
results come back in the caller's array library and device.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import _array, _backend
from ..ragged import Ragged

# GPU scratch per launch chunk (partition counts, and FDE rows before a Count-Sketch) is kept under this many bytes.
CUDA_SCRATCH_BYTES = 256 << 20


def _check(sets: Ragged, state: Dict[str, Any], documents: bool, name: str) -> None:
    if not isinstance(sets, Ragged):
        raise TypeError("ops.fde takes a Ragged batch; use tokenset.FDE for lists and padded arrays")
    if sets.dim != state["dim"]:
        raise ValueError(f"{name} have token dimension {sets.dim} but the encoder was built for dim={state['dim']}")
    _array.dtype_code(sets.values, name)
    if not documents:
        lengths = sets.lengths
        if lengths.size and lengths.min() == 0:
            bad = int(np.argmin(lengths))
            raise ValueError(f"queries: set {bad} has no tokens, and an empty query has no FDE; drop it")


def encode(sets: Ragged, state: Dict[str, Any], *, documents: bool, fill_empty: bool = False,
           with_partitions: bool = False, device_state=None, out: Any = None) -> Tuple[Any, Optional[Any]]:
    """FDE of every set: ``(fde [B, output_dim] float32, partitions [tokens, reps] int32 or None)``.

    ``state`` is a kernel state dict (host numpy arrays); ``device_state(lib, dev)`` returns its device copy for
    CUDA input. Documents average per partition (and fill empty ones if ``fill_empty``); queries sum. ``out``: an
    optional C-contiguous float32 ``[B, output_dim]`` array of the input's library and device to write into.
    """
    return _run(sets, state, documents, fill_empty, with_partitions, True, device_state, out)


def partitions(sets: Ragged, state: Dict[str, Any], *, device_state=None) -> Any:
    """``[tokens, reps]`` int32 partition of every token in every repetition (no encoding is computed)."""
    return _run(sets, state, True, False, True, False, device_state)[1]


def _output_dim(state: Dict[str, Any]) -> int:
    return state["final_dim"] or state["reps"] * (1 << state["simhash_bits"]) * state["proj_dim"]


def _check_out(out: Any, lib: str, dev, shape) -> None:
    if _array.library(out) != lib or _array.device(out) != dev:
        raise ValueError(f"out must be a {lib} array on {_array.device_name(dev)}, like the input")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if str(out.dtype).replace("torch.", "") != "float32":
        raise TypeError(f"out must be float32, got {out.dtype}")
    contiguous = out.is_contiguous() if lib == "torch" else out.flags.c_contiguous
    if not contiguous:
        raise ValueError("out must be C-contiguous (a row slice out[i:j] of a C-contiguous array is)")


def _run(sets, state, documents, fill_empty, with_partitions, encode_sets, device_state, out=None):
    name = "documents" if documents else "queries"
    _check(sets, state, documents, name)
    lib = _array.library(sets.values)
    dev = sets.device
    if out is not None:
        _check_out(out, lib, dev, (len(sets), _output_dim(state)))
    if dev[0] == "cpu":
        values, code = _array.host_view(sets.values, name)
        out_view = None if out is None else (out.detach().numpy() if lib == "torch" else out)
        result, parts = _backend._core.fde_encode(values, code, sets.offsets, state, bool(documents),
                                                  bool(fill_empty), bool(with_partitions), bool(encode_sets),
                                                  out_view)
        if out is not None:
            result = out
        elif result is not None:
            result = _array.from_host(result, lib)
        return result, (None if parts is None else _array.from_host(parts, lib))
    return _encode_cuda(sets, state, documents, fill_empty, with_partitions, encode_sets, lib, dev,
                        device_state, name, out)


def _encode_cuda(sets, state, documents, fill_empty, with_partitions, encode_sets, lib, dev, device_state, name,
                 given_out=None):
    from .maxsim import _device_batch  # shared device-batch description

    cuda = _backend.cuda()
    if device_state is None:
        raise ValueError("CUDA input needs the encoder's device state; use tokenset.FDE")
    spec, keep = _device_batch(sets, lib, dev, name)
    dstate = device_state(lib, dev)
    reps, bits, pd = state["reps"], state["simhash_bits"], state["proj_dim"]
    parts = 1 << bits
    fde_dim = reps * parts * pd
    final_dim = state["final_dim"]
    out_dim = _output_dim(state)
    count = len(sets)
    tokens = int(sets.offsets[-1] - sets.offsets[0])
    out = None
    if encode_sets:
        out = given_out if given_out is not None else _array.empty_device((count, out_dim), "float32", lib, dev)
    partitions = _array.empty_device((tokens, reps), "int32", lib, dev)
    codes = _array.empty_device((tokens, reps), "int32", lib, dev)  # uint32 patterns, stored in int32
    per_set = 4 * reps * parts + (4 * fde_dim if final_dim else 0)
    chunk = int(max(1, min(count, CUDA_SCRATCH_BYTES // per_set))) if count and encode_sets else 1
    counts = _array.empty_device((chunk if encode_sets else 1, reps, parts if encode_sets else 1), "int32", lib, dev)
    rows = _array.empty_device((chunk, fde_dim), "float32", lib, dev) if final_dim and encode_sets else None
    scratch = {
        "codes": _array.device_pointer(codes),
        "partitions": _array.device_pointer(partitions),
        "counts": _array.device_pointer(counts),
        "fde_rows": 0 if rows is None else _array.device_pointer(rows),
        "chunk_sets": chunk,
    }
    pointers = {k: (_array.device_pointer(v) if v is not None else 0) for k, v in dstate.items()}
    if count:
        cuda.fde_encode(spec, state, pointers, scratch, 0 if out is None else _array.device_pointer(out),
                        bool(documents), bool(fill_empty), bool(encode_sets), dev[1], _array.current_stream(lib, dev))
    del keep, counts, rows, codes
    return out, (partitions if with_partitions or not encode_sets else None)
