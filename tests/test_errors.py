"""Bad input gets a clear Python exception naming the argument and the fix; nothing reaches C++ unchecked, and what
does reach C++ directly is checked again there (no crash)."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset import _core

from conftest import requires_torch

Q = np.ones((3, 8), np.float32)
DOCS = [np.ones((2, 8), np.float32), np.ones((4, 8), np.float32)]


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"\[B, N, d\] or \[n, d\]"):
        tokenset.maxsim(np.ones(8, np.float32), DOCS)
    with pytest.raises(ValueError, match="each set must be 2-D"):
        tokenset.maxsim(Q, [np.ones(8, np.float32)])
    with pytest.raises(ValueError, match="must be 2-D"):
        tokenset.Ragged(np.ones((2, 3, 4), np.float32), [0, 2])


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension 8 but documents have 5"):
        tokenset.maxsim(Q, [np.ones((2, 5), np.float32)])
    with pytest.raises(ValueError, match="token dimension 5 differs"):
        tokenset.ragged([np.ones((2, 8), np.float32), np.ones((2, 5), np.float32)])


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.bool_])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=r"not supported.*float32, float16 or bfloat16.*astype"):
        tokenset.maxsim(Q.astype(dtype), DOCS)


def test_not_an_array():
    with pytest.raises(TypeError, match="set batch"):
        tokenset.maxsim("hello", DOCS)
    with pytest.raises(TypeError, match="expected an array"):
        tokenset.maxsim(Q, [[1.0, 2.0]])


@pytest.mark.parametrize("offsets,match", [
    ([0, 3, 2], "non-decreasing"),
    ([0, 2, 99], "past the end"),
    ([-1, 2], ">= 0"),
    ([], "B\\+1 >= 1"),
    ([[0, 1]], "1-D"),
    ([0.0, 1.5], "integers"),
])
def test_bad_offsets(offsets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tokenset.Ragged(np.ones((4, 8), np.float32), np.array(offsets))


def test_bad_lengths_and_mask():
    x = np.ones((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        tokenset.ragged(x, lengths=[1, 4])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        tokenset.ragged(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="boolean"):
        tokenset.ragged(x, mask=np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        tokenset.ragged(x, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="not both"):
        tokenset.ragged(x, lengths=[1, 1], mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="padded"):
        tokenset.ragged(Q, lengths=[1])


def test_empty_query_is_an_error():
    with pytest.raises(ValueError, match="set 1 has no tokens"):
        tokenset.maxsim([Q, np.zeros((0, 8), np.float32)], DOCS)


def test_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty list"):
        tokenset.maxsim([], DOCS)


@pytest.mark.parametrize("cand,match", [
    (np.array([[0, 2]]), r"2, which is not a document index in \[0, 2\)"),
    (np.array([[0, -2]]), "-2"),
    (np.array([0, 1]), r"shape \[num_queries=1, c\]"),
    (np.array([[0.5, 1.0]]), "integers"),
])
def test_bad_candidates(cand, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tokenset.maxsim_pairs(Q, DOCS, cand)


@pytest.mark.parametrize("k,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_k(k, exc):
    with pytest.raises(exc, match="k must be"):
        tokenset.maxsim_topk(Q, DOCS, k)


def test_bad_simd_level_and_threads():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        tokenset.set_simd_level("sse9")
    with pytest.raises(ValueError, match=">= 1"):
        tokenset.set_num_threads(0)


# ---- the C++ layer checks what it is given, even when Python's checks are bypassed ----------------------------------

def _call(q_values=Q, q_code=0, q_off=None, d_values=None, d_code=0, d_off=None, cand=None):
    q_off = np.array([0, 3], np.int64) if q_off is None else q_off
    d_values = np.ones((6, 8), np.float32) if d_values is None else d_values
    d_off = np.array([0, 2, 6], np.int64) if d_off is None else d_off
    return _core.maxsim(q_values, q_code, q_off, d_values, d_code, d_off, cand, False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_off=np.array([0, 2, 7], np.int64)), "exceeds"),
    (dict(d_off=np.array([0, 5, 2], np.int64)), "non-decreasing"),
    (dict(d_off=np.array([-4, 2], np.int64)), "negative"),
    (dict(d_off=np.array([0, 2], np.int32)), "int64"),
    (dict(d_off=np.array([[0, 2]], np.int64)), "1 dimension"),
    (dict(d_off=np.array([], np.int64)), "at least one"),
    (dict(d_code=1), "float16"),
    (dict(d_code=7), "unknown dtype"),
    (dict(d_values=np.ones((6, 5), np.float32)), "dimension"),
    (dict(d_values=np.ones(6, np.float32)), "2-D"),
    (dict(d_values=np.asfortranarray(np.ones((6, 8), np.float32))), "contiguous"),
    (dict(q_off=np.array([0, 0], np.int64)), "no tokens"),
    (dict(cand=np.array([[5]], np.int64)), "not a document index"),
    (dict(cand=np.array([[0]], np.int32)), "int64"),
    (dict(cand=np.array([[0], [1]], np.int64)), "rows"),
])
def test_core_rejects_bad_buffers(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _call(**kwargs)


def test_core_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core.maxsim_topk(Q, 0, np.array([0, 3], np.int64), Q, 0, np.array([0, 3], np.int64), 0)


@requires_torch
def test_unsupported_device():
    import torch

    with pytest.raises(ValueError, match="device 'meta' are not supported; use a CPU or CUDA tensor"):
        tokenset.maxsim(torch.ones(3, 8), torch.ones(2, 8, device="meta"))


@requires_torch
def test_torch_unsupported_dtype():
    import torch

    with pytest.raises(TypeError, match=r"torch.float64 is not supported.*x.float\(\)"):
        tokenset.maxsim(torch.ones(3, 8, dtype=torch.float64), DOCS)


def test_cuda_missing_is_a_clear_error():
    info = tokenset.build_info()
    if info["cuda"] and info["cuda_devices"] > 0:
        pytest.skip("a GPU is present")
    from tokenset import _backend

    if _backend._cuda is None:
        with pytest.raises(RuntimeError, match="TOKENSET_CUDA=ON"):
            _backend.cuda()
    else:
        assert info["cuda_devices"] == 0 and info["cuda_error"]
