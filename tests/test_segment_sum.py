"""Weighted segment sums against the float64 reference.

Tolerance: each output element is a float32 sum of m weighted terms: |error| <= 2 u (m + 1) sum |w_i x_i|.
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import segment_sum as ref

from conftest import DTYPES, U32, as_dtype, requires_torch, to_numpy


def check(values, segments, count, weights=None):
    got = to_numpy(tokenset.segment_sum(values, segments, count, weights))
    x = np.asarray(to_numpy(values), np.float64)
    want = ref.segment_sum(x, segments, count, weights)
    magnitude = ref.segment_sum(np.abs(x), segments, count, None if weights is None else np.abs(weights))
    members = np.bincount(np.asarray(segments, np.int64), minlength=count)[:, None]
    assert got.shape == want.shape and got.dtype == np.float32
    assert (np.abs(got - want) <= 2 * U32 * (members + 1) * magnitude + 1e-30).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_sweep(simd, dtype):
    rng = np.random.default_rng(1)
    for rows, dim, count in [(0, 3, 4), (1, 1, 1), (100, 37, 7), (1000, 130, 300)]:
        values = as_dtype(rng.standard_normal((rows, dim)), dtype)
        segments = rng.integers(0, count, rows)
        check(values, segments, count)
        check(values, segments, count, rng.random(rows).astype(np.float32))


def test_empty_segments_are_zero_and_count_default():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = tokenset.segment_sum(x, [2, 2, 0])
    np.testing.assert_array_equal(out, [[4, 5], [0, 0], [2, 4]])
    out = tokenset.segment_sum(x[::-1], [0, 1, 1], 4)  # negative row stride, read in place
    np.testing.assert_array_equal(out, [[4, 5], [2, 4], [0, 0], [0, 0]])


def test_independent_of_threads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    seg = rng.integers(0, 50, 5000)
    old = tokenset.get_num_threads()
    try:
        tokenset.set_num_threads(1)
        one = tokenset.segment_sum(x, seg, 50)
        tokenset.set_num_threads(3)
        three = tokenset.segment_sum(x, seg, 50)
    finally:
        tokenset.set_num_threads(old)
    np.testing.assert_array_equal(one, three)


@requires_torch
def test_torch_in_torch_out():
    import torch

    x = torch.randn(10, 4)
    out = tokenset.segment_sum(x, torch.tensor([0, 1] * 5), 2, weights=torch.ones(10))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), [x[::2].sum(0).numpy(), x[1::2].sum(0).numpy()], rtol=1e-6)


def test_bad_input():
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"segments must have shape \(3,\)"):
        tokenset.segment_sum(x, [0, 1])
    with pytest.raises(ValueError, match=r"segments must lie in \[0, 2\)"):
        tokenset.segment_sum(x, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="count must be an integer >= 0"):
        tokenset.segment_sum(x, [0, 0, 0], -1)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        tokenset.segment_sum(x, [0, 0, 0], weights=[1, 2])
    with pytest.raises(TypeError, match="int64"):
        tokenset.segment_sum(x.astype(np.int64), [0, 0, 0])
    from tokenset import _core
    with pytest.raises(ValueError, match="is not a row of values"):
        _core.segment_sum(x, np.array([0, 5], np.int64), None, np.array([0, 2], np.int64), None, None,
                          np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="starts must be non-decreasing"):
        _core.segment_sum(x, np.array([0, 1], np.int64), None, np.array([0, 2, 1, 2], np.int64), None, None,
                          np.empty((3, 2), np.float32))


def test_gpu_matches_cpu(cuda):
    import torch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    seg = rng.integers(0, 40, 3000)
    w = rng.random(3000).astype(np.float32)
    cpu = tokenset.segment_sum(x, seg, 40, w)
    gpu = tokenset.segment_sum(torch.from_numpy(x).cuda(), seg, 40, torch.from_numpy(w).cuda())
    np.testing.assert_array_equal(to_numpy(gpu), cpu)  # the same FMAs in the same order


def test_host_weights_follow_gpu_values(cuda):
    """CUDA values with host weights (numpy, a list, a CPU tensor) failed with "inputs are on different devices". Host
    weights are per-row data copied to the values' device (like MaxSim's host candidate lists), on the current stream;
    the result is the CPU's (the same FMAs in the same order). Weights on a GPU must still be on the values' device,
    and the dtype rule is the CPU's."""
    import torch

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    seg = rng.integers(0, 40, 3000)
    w = rng.random(3000).astype(np.float32)
    want = tokenset.segment_sum(x, seg, 40, w)
    xg = torch.from_numpy(x).cuda()
    for weights in (w, w.tolist(), torch.from_numpy(w), torch.from_numpy(w).cuda()):
        for segments in (seg, seg.tolist(), torch.from_numpy(seg).cuda()):
            got = tokenset.segment_sum(xg, segments, 40, weights)
            assert isinstance(got, torch.Tensor) and got.device == xg.device
            np.testing.assert_array_equal(to_numpy(got), want)
    half = w.astype(np.float16)  # converted to float32, as on the CPU
    np.testing.assert_array_equal(to_numpy(tokenset.segment_sum(xg, seg, 40, half)),
                                  tokenset.segment_sum(x, seg, 40, half))
    with pytest.raises(TypeError, match="float64"):
        tokenset.segment_sum(xg, seg, 40, w.astype(np.float64))
    with pytest.raises(ValueError, match="inputs are on different devices"):
        tokenset.segment_sum(x, seg, 40, torch.from_numpy(w).cuda())
    side = torch.cuda.Stream()
    xg2 = xg * 1.0  # made on the default stream, then read on the side stream after a wait
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = tokenset.segment_sum(xg2, seg, 40, w)  # the upload and the kernel on the side stream
    side.synchronize()
    np.testing.assert_array_equal(to_numpy(got), want)
    try:
        import cupy
    except ImportError:
        return
    got = tokenset.segment_sum(cupy.asarray(x), seg, 40, w)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(to_numpy(got), want)


@requires_torch
def test_mixed_host_inputs_keep_their_result_library():
    """On the CPU nothing moves: the result is a tensor when the values or the weights are one, numpy otherwise, and
    the weights' dtype rule (float32 / float16 / bfloat16; lists converted) is unchanged."""
    import torch

    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    seg = rng.integers(0, 5, 50)
    w = rng.random(50).astype(np.float32)
    want = tokenset.segment_sum(x, seg, 5, w)
    for values, weights in [(x, torch.from_numpy(w)), (torch.from_numpy(x), w), (torch.from_numpy(x), w.tolist())]:
        got = tokenset.segment_sum(values, seg, 5, weights)
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        np.testing.assert_array_equal(got.numpy(), want)
    got = tokenset.segment_sum(x, seg, 5, w.tolist())
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="float64"):
        tokenset.segment_sum(x, seg, 5, w.astype(np.float64))
