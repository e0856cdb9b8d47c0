"""Shared helpers: seeded random set batches, the error bound used against the float64 reference, SIMD levels."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # torch is an optional extra
    HAVE_TORCH = False

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BF16 = None

U32 = 2.0 ** -24  # float32 unit roundoff

requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install torch==2.13.0)")


def supported_simd_levels():
    levels = []
    for level in ("scalar", "avx2", "avx512", "amx"):
        if level in tokenset.build_info()["simd_compiled"]:
            try:
                tokenset.set_simd_level(level)
                levels.append(level)
            except ValueError:
                pass
    tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    return levels


SIMD_LEVELS = supported_simd_levels()


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Runs a test once per SIMD level this CPU and build support; restores the best level after."""
    tokenset.set_simd_level(request.param)
    yield request.param
    tokenset.set_simd_level(tokenset.build_info()["simd_best"])


def random_sets(rng, lengths, dim, dtype=np.float32):
    return [rng.standard_normal((int(n), dim)).astype(dtype) for n in lengths]


def as_float64(sets):
    return [np.asarray(s, dtype=np.float64) for s in sets]


def maxsim_error_bound(queries, documents):
    """Forward-error bound of float32 MaxSim against the float64 reference: each dot product of length d errs by at
    most ~d*u*<|q|,|d|>, and the sum of Lq maxima adds ~Lq*u of the sum of magnitudes. Factor 2 for slack."""
    from tokenset.reference import maxsim as ref

    qa = [np.abs(q) for q in as_float64(queries)]
    da = [np.abs(d) for d in as_float64(documents)]
    magnitude = np.nan_to_num(ref.maxsim(qa, da), neginf=0.0)
    dim = queries[0].shape[1]
    lq = np.array([q.shape[0] for q in queries])[:, None]
    return 2 * U32 * (dim + lq + 2) * magnitude + 1e-30
