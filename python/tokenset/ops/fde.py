"""Typed wrappers of the FDE kernels on Ragged batches: place, allocate outputs, call the native op.

``state`` is an encoder's kernel state (:meth:`tokenset.FDE.kernel_state`: host arrays and sizes); for GPU input,
``device_state(lib, dev, stream)`` returns ``(the arrays on the device, the host state they came from)``. Everything is checked natively
(csrc/include/tokenset/fde.h, validate).
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Optional, Tuple

from ..ragged import Ragged
from . import _dispatch


def encode(sets: Ragged, state: Dict[str, Any], *, documents: bool, fill_empty: bool = False,
           with_partitions: bool = False, device_state=None, out: Any = None) -> Tuple[Any, Optional[Any]]:
    """FDE of every set: ``(fde [B, output_dim] float32, partitions [tokens, reps] int32 or None)``.

    Documents average per partition (and fill empty ones if ``fill_empty``); queries sum. ``out``: an optional
    C-contiguous float32 ``[B, output_dim]`` array of the input's library and device to write into.
    """
    return _run(sets, state, documents, fill_empty, with_partitions, True, device_state, out)


def partitions(sets: Ragged, state: Dict[str, Any], *, device_state=None) -> Any:
    """``[tokens, reps]`` int32 partition of every token in every repetition (no encoding is computed)."""
    return _run(sets, state, True, False, True, False, device_state)[1]


def _output_dim(state: Dict[str, Any]) -> int:
    """The output size, from sizes checked here enough to allocate safely (the native entry checks everything)."""
    for key in ("dim", "reps", "simhash_bits", "proj_dim", "final_dim"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"FDE state: '{key}' must be an integer, got {value!r}")
    if not 0 <= state["simhash_bits"] <= 30 or state["reps"] < 1 or state["proj_dim"] < 1 or state["final_dim"] < 0:
        raise ValueError("FDE state: reps and proj_dim must be >= 1, simhash_bits in 0..30, final_dim >= 0")
    size = state["final_dim"] or state["reps"] * (1 << state["simhash_bits"]) * state["proj_dim"]
    if size > 2**31 - 1:
        raise ValueError(f"FDE state: {size} output coordinates per set is more than 2^31 - 1")
    return int(size)


def _run(sets, state, documents, fill_empty, with_partitions, encode_sets, device_state, out=None):
    if not isinstance(sets, Ragged):
        raise TypeError("ops.fde takes a Ragged batch; use tokenset.FDE for lists and padded arrays")
    name = "documents" if documents else "queries"
    state = dict(state)  # a mapping from FDE.kernel_state() or the caller's own dict
    output_dim = _output_dim(state)
    if sets.dim != state["dim"]:
        raise ValueError(f"{name} have token dimension {sets.dim} but the encoder was built for dim={state['dim']}")
    lib, dev = _dispatch.placement(sets._any_values)
    stream = _dispatch.stream(lib, dev)
    batch = _dispatch.kernel_batch(sets, lib, dev, stream, name)
    if encode_sets:
        if out is None:
            out = _dispatch.empty((len(sets), output_dim), "float32", lib, dev)
        else:
            _dispatch.check_out(out, lib, dev)
    else:
        out = None
    parts = None
    if with_partitions or not encode_sets:
        parts = _dispatch.empty((int(sets.offsets[-1] - sets.offsets[0]), state["reps"]), "int32", lib, dev)
    kernel_state = state
    if dev[0] != "cpu":
        if device_state is None:
            raise ValueError("CUDA input needs the encoder's device state; use tokenset.FDE")
        kernel_state, state = device_state(lib, dev, stream)
    kernel_out = out.detach() if lib == "torch" and out is not None else out
    _dispatch.module(dev).fde_encode(batch, kernel_state, state, bool(documents), bool(fill_empty), kernel_out, parts,
                                     stream, _dispatch.allocator(lib, dev))
    return out, parts
