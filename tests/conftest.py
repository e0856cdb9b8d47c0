"""Shared helpers: seeded random set batches, the error bound used against the float64 reference, SIMD levels."""
from __future__ import annotations

import contextlib
import os
import sys
import threading

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

# ---- the test matrix, defined once: devices x dtypes x SIMD levels ---------------------------------------------------
DTYPES = ["float32", "float16", "bfloat16"]
TORCH_SEES_GPU = HAVE_TORCH and torch.cuda.is_available()
_INFO = tokenset.build_info()
TOKENSET_SEES_GPU = bool(_INFO["cuda"] and _INFO["cuda_devices"] > 0)
# A GPU that torch sees is a CUDA device of the matrix even when tokenset cannot use it: its tests then fail with the
# reason, never skip silently.
DEVICES = ["cpu"] + (["cuda"] if TORCH_SEES_GPU or TOKENSET_SEES_GPU else [])


def require_cuda():
    if not TORCH_SEES_GPU:
        pytest.skip("no GPU here (torch.cuda.is_available() is False)")
    if not TOKENSET_SEES_GPU:
        pytest.fail(f"torch sees a GPU but tokenset cannot use it: cuda={_INFO['cuda']}, "
                    f"cuda_error={_INFO['cuda_error']!r}; rebuild with TOKENSET_CUDA=ON")


@pytest.fixture(params=DEVICES)
def device(request):
    """Runs a test on the CPU and, where present, on the GPU (torch CUDA tensors)."""
    if request.param == "cuda":
        require_cuda()
    return request.param


@pytest.fixture
def cuda():
    """For GPU-only tests (streams, cupy, CPU-vs-GPU agreement): skips without a GPU, fails on a broken build."""
    require_cuda()
    return "cuda"


def as_dtype(x, dtype):
    """A numpy array in a token dtype name (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        return np.asarray(x).astype(BF16)
    return np.asarray(x).astype(dtype)


def on_device(sets, device, dtype="float32"):
    """numpy sets as the test matrix's input: numpy arrays on the CPU, torch CUDA tensors on the GPU."""
    if device == "cpu":
        return [as_dtype(s, dtype) for s in sets]
    return [torch.from_numpy(np.asarray(s, np.float32)).to("cuda", getattr(torch, dtype)) for s in sets]


def to_numpy(x):
    """Any result (numpy, torch on any device, cupy) as a numpy array."""
    if HAVE_TORCH and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x.get() if hasattr(x, "get") else np.asarray(x)


def exact_float64(sets):
    """What a kernel sees after converting its inputs: float64 copies of (possibly torch, low-precision) sets."""
    out = []
    for s in sets:
        if HAVE_TORCH and isinstance(s, torch.Tensor):
            out.append(s.detach().double().cpu().numpy())
        else:
            out.append(np.asarray(s).astype(np.float64))
    return out


# Hand-made set lengths every op is tested on: empty sets, one token, ragged tails around a 32-token panel.
EDGE_LENGTHS = {
    "empty and one": [0, 1, 0, 2],
    "tails 31/32/33": [31, 32, 33],
    "one token": [1],
    "long and short": [300, 1, 12, 13],
}


def supported_simd_levels():
    levels = []
    for level in tokenset._build.SIMD_LEVELS:
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


GAP_FILL = 1e6  # what gap rows of a gapped Ragged hold (inf in float16): a read of one shows in any result


def gapped(sets, before=3, after=2, fill=GAP_FILL):
    """The sets (numpy, one dtype) as one valid Ragged whose values hold `before` rows ahead of the first set
    (offsets[0] = before) and `after` rows past the last (offsets[-1] < rows), filled with `fill`, so that code that
    reads values from row 0 or up to the last row, instead of by the offsets, returns or mixes in sentinel rows."""
    dim, dtype = sets[0].shape[1], sets[0].dtype
    gap = lambda n: np.full((n, dim), fill).astype(dtype)  # noqa: E731
    values = np.concatenate([gap(before), *sets, gap(after)])
    offsets = before + np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return tokenset.Ragged(values, offsets)


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


# ---- FDE helpers (tests/test_fde.py, CPU and CUDA) ------------------------------------------------------------------
def fde_sanitize(rng, sets, simhash, dtype):
    """Redraws tokens with a near-zero hyperplane dot product (an ambiguous sign bit); returns sets in `dtype`."""
    out = []
    g = np.asarray(simhash, np.float64)
    for s in sets:
        s = np.asarray(s, dtype)
        for _ in range(100):
            x = np.asarray(s, np.float64)
            dots = np.einsum("nd,rdk->nrk", x, g)
            scale = np.einsum("nd,rdk->nrk", np.abs(x), np.abs(g))
            bad = (np.abs(dots) <= 1e-4 * scale).any(axis=(1, 2))
            if not bad.any():
                break
            s = s.copy()
            s[bad] = rng.standard_normal((int(bad.sum()), s.shape[1])).astype(dtype)
        out.append(s)
    return out


def check_fde_against_reference(fde, sets, documents, got):
    """Asserts `got` equals the float64 reference within the float32 forward-error bound."""
    from tokenset.reference import fde as ref

    x64 = [np.asarray(s, np.float64) for s in sets]
    proj = fde.projection
    kwargs = dict(documents=documents, fill_empty=fde.fill_empty and documents, final_index=fde.final_index,
                  final_sign=fde.final_sign, final_dim=fde.final_dim)
    exact = ref.encode(x64, fde.simhash, proj, **kwargs)
    parts = [ref.partitions(s, fde.simhash) for s in x64]
    pats = [ref._patterns(ref.sign_bits(s, fde.simhash)) for s in x64]
    magnitude = ref.encode([np.abs(s) for s in x64], np.abs(fde.simhash), None if proj is None else np.abs(proj),
                           **dict(kwargs, final_sign=None if fde.final_sign is None else np.abs(fde.final_sign)),
                           token_partitions=parts, token_patterns=pats)
    n = max([len(s) for s in sets] + [1])
    m = int(np.bincount(fde.final_index).max()) if fde.final_index is not None else 0
    bound = 4 * U32 * (n + fde.dim + m + 2) * magnitude + 1e-30
    got = np.asarray(got, np.float64)
    assert got.shape == exact.shape
    err = np.abs(got - exact)
    assert (err <= bound).all(), f"max error {err.max()} over bound at {np.unravel_index(np.argmax(err - bound), err.shape)}"


FDE_SWEEP = [
    # dim, reps, bits, proj_dim, fill, final_dim
    (16, 3, 3, None, True, None),
    (16, 3, 3, 5, True, None),
    (16, 3, 3, 5, False, 37),
    (1, 2, 0, None, True, None),
    (3, 1, 1, 2, True, None),
    (64, 4, 5, 16, True, None),
    (64, 2, 8, 8, True, None),
    (130, 2, 4, None, False, None),
    (130, 2, 4, 70, True, 500),   # proj_dim not a multiple of the vector width: tail columns
    (33, 5, 2, 33, True, 9),
    (20, 2, 12, 3, True, None),   # 4096 partitions, mostly empty: fill dominates
    (8, 2, 16, 1, True, None),    # 2^16 partitions, one projected coordinate each
    (20, 1, 16, None, True, None),  # 2^16 partitions x dim > the partition-sum scratch cap: tokens added in place
]


def subprocess_env(**extra: str) -> dict:
    """The environment of a child interpreter that imports this tokenset (the tree under test first on its path),
    plus `extra` variables: for tests that run code where a crash or a hang is possible, or that kill a process."""
    path = os.pathsep.join([os.path.dirname(os.path.dirname(tokenset.__file__))] + sys.path)
    return dict(os.environ, PYTHONPATH=path, **extra)


# Peak memory of a child interpreter, for the bounded-memory tests: its own high-water RSS (VmHWM). Not ru_maxrss: on
# Linux a child's ru_maxrss starts at its parent's RSS at fork and is kept across exec, so under a ~230 MiB pytest it
# hid up to ~190 MiB of growth.
PEAK_OF_THIS_PROCESS = """
import resource
def peak():  # bytes
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS; an upper bound here)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


@contextlib.contextmanager
def held_by_another_thread(lock):
    """Holds `lock` (any context manager: a lock, a DirectoryLock) on another thread until the block ends: for the
    fork tests, where a child is forked while a thread it will not have holds a lock."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30), "the other thread never got the lock"
        yield
    finally:
        release.set()
        holder.join()
