"""What was compiled, and the CPU runtime's knobs (SIMD level, threads)."""
from __future__ import annotations

import numbers
import os
import warnings
from typing import Any, Dict

from . import _backend

SIMD_LEVELS = ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "avx512bf16", "amx")

# The native runtime reads TOKENSET_SIMD once, at import, and ignores a name it does not know: say so.
if os.environ.get("TOKENSET_SIMD", "") not in ("",) + SIMD_LEVELS:
    warnings.warn(f"TOKENSET_SIMD={os.environ['TOKENSET_SIMD']!r} is not a SIMD level and was ignored (the level is "
                  f"{_backend._core.simd_level()!r}); use one of {', '.join(SIMD_LEVELS)}", RuntimeWarning,
                  stacklevel=2)


def build_info() -> Dict[str, Any]:
    """What this build contains and what it uses now.

    Keys: ``version``, ``compiler``, ``build_type``, ``simd_compiled`` (levels built), ``simd_best`` (best level this
    CPU runs), ``simd_active`` (level in use), ``avx_vnni`` (which build of the 'avxvnni' level's kernels this CPU
    runs: 'vex' (AVX-VNNI), 'evex' (AVX-512 VNNI's encoding of the same instructions), or None: the CPU has neither,
    or the build lacks the level), ``num_threads``, ``cuda`` (whether the CUDA module was built), ``cuda_archs``,
    ``cuda_version``, ``cuda_devices`` (visible GPUs, 0 without a driver), ``cuda_error``.
    """
    core = _backend._core
    info = dict(core.build_info())
    info["simd_compiled"] = core.compiled_simd_levels().split(",")
    info["simd_best"] = core.best_simd_level()
    info["simd_active"] = core.simd_level()
    info["avx_vnni"] = core.avx_vnni_encoding() or None
    info["num_threads"] = core.num_threads()
    cuda = _backend._cuda
    info["cuda"] = cuda is not None
    if cuda is not None:
        info.update(cuda.build_info())
    else:
        info.update({"cuda_archs": None, "cuda_version": None, "cuda_devices": 0,
                     "cuda_error": _backend.CUDA_IMPORT_ERROR})
    return info


def simd_level() -> str:
    """The SIMD level the CPU kernels use now: 'amx', 'avx512bf16', 'avx512vnni', 'avx512', 'avxvnni', 'avx2' or
    'scalar'. 'avxvnni' is AVX2 plus 256-bit VNNI (AVX-VNNI, or AVX-512 VNNI's encoding of it), which int8 x int8 and
    residual-code MaxSim use (every other kernel runs its AVX2 code there). 'avx512vnni' is AVX-512 plus VNNI, which
    int8 x int8 and residual-code MaxSim use; 'avx512bf16' adds AVX-512 BF16 dot products, which bfloat16 MaxSim uses;
    'amx' adds AMX-BF16 tiles, which bfloat16 MaxSim uses when dim is a multiple of 32 (every other kernel runs its
    AVX-512 code at those three)."""
    return _backend._core.simd_level()


def set_simd_level(level: str) -> None:
    """Use a SIMD level ('scalar', 'avx2', 'avxvnni', 'avx512', 'avx512vnni', 'avx512bf16', 'amx') for all CPU
    kernels; raises ValueError if this CPU or build lacks it. The environment variable ``TOKENSET_SIMD`` caps the level
    at import (the best level this CPU runs at or below the one named)."""
    _backend._core.set_simd_level(level)


def get_num_threads() -> int:
    """Threads used by CPU kernels (default: the CPUs this process may run on, or ``TOKENSET_NUM_THREADS``)."""
    return _backend._core.num_threads()


def set_num_threads(threads: int) -> None:
    """Threads for CPU kernels from now on (an integer >= 1). Safe to call at any time: a running job finishes
    first."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"set_num_threads takes an integer, got {threads!r}")
    if not 1 <= int(threads) <= 4096:
        raise ValueError(f"number of threads must be in 1..4096, got {int(threads)}")
    _backend._core.set_num_threads(int(threads))
