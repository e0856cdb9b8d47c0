"""Loads the native modules: `_core` (CPU, always built) and `_cuda` (only when built with nvcc)."""
from __future__ import annotations

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - a broken install
    raise ImportError(
        "tokenset's native module _core is missing: the package was not built. Install it with "
        "`pip install .` from the source tree (not by putting python/ on sys.path without building)."
    ) from exc

import importlib
import importlib.util

_cuda = None
CUDA_IMPORT_ERROR = None
if importlib.util.find_spec(__package__ + "._cuda") is None:
    CUDA_IMPORT_ERROR = "this build has no CUDA module (nvcc was not found when it was built)"
else:
    try:
        _cuda = importlib.import_module(__package__ + "._cuda")
    except ImportError as exc:  # built, but cannot load here
        CUDA_IMPORT_ERROR = f"the CUDA module failed to load: {exc}"


def cuda():
    """The CUDA module, or a RuntimeError that says how to get a CUDA build."""
    if _cuda is None:
        raise RuntimeError(
            "tokenset cannot run CUDA kernels here. To get a CUDA build, rebuild on a machine "
            "with the CUDA toolkit: `TOKENSET_CUDA=ON pip install --no-build-isolation --force-reinstall .`, "
            f"or pass CPU arrays. ({CUDA_IMPORT_ERROR})")
    return _cuda
