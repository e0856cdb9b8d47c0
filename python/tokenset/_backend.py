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


# The oldest Linux driver each CUDA major version's runtime runs on (NVIDIA's minor-version compatibility:
# https://docs.nvidia.com/deploy/cuda-compatibility/). A _cuda module links its runtime statically.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

_usable = False  # a device was seen once: the module can run here


def cuda():
    """The CUDA module, or a RuntimeError that says why it cannot run here and how to get a build that can."""
    global _usable
    if _cuda is None:
        raise RuntimeError(
            "tokenset cannot run CUDA kernels here. To get a CUDA build, rebuild on a machine "
            "with the CUDA toolkit: `TOKENSET_CUDA=ON pip install --no-build-isolation --force-reinstall .`, "
            f"or pass CPU arrays. ({CUDA_IMPORT_ERROR})")
    if not _usable:
        info = _cuda.build_info()
        if info["cuda_devices"] > 0:
            _usable = True
        else:
            version = str(info.get("cuda_version") or "?")
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else None
            driver = MIN_DRIVER.get(major, "the one its CUDA version needs")
            raise RuntimeError(
                f"tokenset's CUDA module cannot run here: {info.get('cuda_error') or 'no CUDA device is visible'}. "
                f"It was built with CUDA {version} (architectures {info.get('cuda_archs')}) and needs an NVIDIA GPU "
                f"with a driver >= {driver}. With an older driver, install a tokenset built with a CUDA toolkit your "
                f"driver supports (TOKENSET_CUDA=ON with that nvcc), or a CPU-only build "
                f"(TOKENSET_CUDA=OFF pip install tokenset), and pass CPU arrays.")
    return _cuda
