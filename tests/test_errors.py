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
    with pytest.raises(ValueError, match="query 1 has no tokens"):
        tokenset.maxsim([Q, np.zeros((0, 8), np.float32)], DOCS)


def test_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty list"):
        tokenset.maxsim([], DOCS)


@pytest.mark.parametrize("cand,match", [
    (np.array([[0, 2]]), r"candidates\[0, 1\] = 2 is not a document index in \[0, 2\)"),
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
    with pytest.raises(ValueError, match="in 1..4096"):
        tokenset.set_num_threads(0)


# ---- the C++ layer checks what it is given, even when Python's checks are bypassed ----------------------------------

class Batch:
    """What ops/_dispatch.KernelBatch carries, built by hand to bypass every Python check."""

    def __init__(self, values=None, offsets=None, sets=None, device_offsets=None):
        self.values, self.offsets, self.sets, self.device_offsets = values, offsets, sets, device_offsets


def _call(q_values=Q, q_off=None, d_values=None, d_off=None, d_sets=None, cand=None, scores=None, argmax=None):
    q_off = np.array([0, 3], np.int64) if q_off is None else q_off
    d_values = np.ones((6, 8), np.float32) if d_values is None else d_values
    d_off = np.array([0, 2, 6], np.int64) if d_off is None else d_off
    columns = max(len(d_off) - 1, 0) if cand is None else np.shape(cand)[-1]
    scores = np.empty((len(q_off) - 1, columns), np.float32) if scores is None else scores
    return _core.maxsim(Batch(q_values, q_off), Batch(d_values, d_off, d_sets), scores, argmax, cand)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), None),
    (dict(d_off=np.array([0, 2, 7], np.int64)), "exceeds"),
    (dict(d_off=np.array([0, 5, 2], np.int64)), "non-decreasing"),
    (dict(d_off=np.array([-4, 2], np.int64)), "negative"),
    (dict(d_off=np.array([0, 2], np.int32)), "int64"),
    (dict(d_off=np.array([[0, 2]], np.int64)), "1-D"),
    (dict(d_off=np.array([], np.int64)), "at least one"),
    (dict(d_values=np.ones((6, 8), np.float16)), "queries are float32 but documents are float16"),
    (dict(d_values=np.ones((6, 8), np.float64)), "float64 is not supported"),
    (dict(d_values=np.ones((6, 8), np.int32)), "int32 is not supported"),
    (dict(d_values=np.ones((6, 5), np.float32)), "dimension"),
    (dict(d_values=np.ones(6, np.float32)), "2-D"),
    (dict(d_values=np.asfortranarray(np.ones((6, 8), np.float32))), "contiguous"),
    (dict(d_values="not an array"), "expected an array"),
    (dict(d_sets=[np.ones((2, 8), np.float32)]), "1 sets but 2 offsets"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((3, 8), np.float32)]), "3 tokens but the offsets give it 4"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((4, 7), np.float32)]), "token dimension 7"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((4, 8), np.float16)]), "one dtype"),
    (dict(q_off=np.array([0, 0], np.int64)), "no tokens"),
    (dict(cand=np.array([[5]], np.int64)), "not a document index"),
    (dict(cand=np.array([[0]], np.int32)), "int64"),
    (dict(cand=np.array([[0], [1]], np.int64)), "shape"),
    (dict(scores=np.empty((1, 3), np.float32)), r"scores must have shape \(1, 2\), got \(1, 3\)"),
    (dict(scores=np.empty((1, 2), np.float64)), "scores: dtype float64 is not supported"),
    (dict(scores=np.empty((1, 2), np.int64)), "scores must be float32, got int64"),
    (dict(scores=np.empty((1, 4), np.float32)[:, ::2]), "C-contiguous"),
    (dict(scores=np.empty((1, 2), np.float32)[:, ::-1]), "C-contiguous"),
    (dict(argmax=np.empty((1, 2, 2), np.int32)), r"argmax must have shape \(1, 2, 3\)"),
])
def test_core_rejects_bad_buffers(kwargs, match):
    if match is None:  # the baseline call is valid
        _call(**kwargs)
        return
    with pytest.raises((ValueError, TypeError), match=match):
        _call(**kwargs)


def test_core_rejects_read_only_output():
    scores = np.empty((1, 2), np.float32)
    scores.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _call(scores=scores)


def test_core_topk_rejects_bad_k():
    off = np.array([0, 3], np.int64)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core.maxsim_topk(Batch(Q, off), Batch(Q, off), 0, np.empty((1, 0), np.float32), np.empty((1, 0), np.int64))
    with pytest.raises(ValueError, match="top-k indices must have shape"):
        _core.maxsim_topk(Batch(Q, off), Batch(Q, off), 2, np.empty((1, 2), np.float32), np.empty((1, 3), np.int64))


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
