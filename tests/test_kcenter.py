"""k-center (DivPrune's farthest-first greedy) against the numpy reference and the published DivPrune loop.

Tolerance: picks are compared exactly. The kernels accumulate distances in float32 and the reference in float64;
on the seeded random data below no two candidate distances are within float32 rounding of each other, and exact
ties (identical tokens) are computed identically on both sides.
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import kcenter as ref

from conftest import DTYPES, EDGE_LENGTHS, as_dtype, exact_float64, on_device, random_sets, requires_torch, to_numpy

METRICS = ["cosine", "l2", "ip"]


def expected(sets, k, metric, first=None):
    x64 = exact_float64(sets)
    firsts = [None] * len(sets) if first is None else list(first)
    return [ref.kcenter_set(x, k, metric, f if f is None or f >= 0 else None) for x, f in zip(x64, firsts)]


def assert_picks(got, want, k):
    got = to_numpy(got)
    assert got.shape[1] == k
    for i, (idx, _) in enumerate(want):
        np.testing.assert_array_equal(got[i, :len(idx)], idx, err_msg=f"set {i}")
        assert (got[i, len(idx):] == -1).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_sweep(device, simd, dtype, metric):
    rng = np.random.default_rng(7)
    for lengths, dim, k in [([1, 5, 40, 130], 48, 12), ([577, 3], 130, 58), ([64] * 5, 7, 64)]:
        sets = on_device(random_sets(rng, lengths, dim), device, dtype)
        got = tokenset.kcenter(sets, k, metric=metric)
        assert_picks(got, expected(sets, k, metric), k)


def test_equals_published_divprune():
    rng = np.random.default_rng(3)
    for n, dim, k in [(576, 64, 58), (100, 1024, 10), (33, 16, 33)]:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        np.testing.assert_array_equal(tokenset.kcenter(x, k), ref.divprune_published(x, k))


@pytest.mark.parametrize("name", list(EDGE_LENGTHS))
def test_edge_lengths(device, name):
    rng = np.random.default_rng(11)
    sets = on_device(random_sets(rng, EDGE_LENGTHS[name], 16), device)
    for k in (1, 2, 40):
        assert_picks(tokenset.kcenter(sets, k), expected(sets, k, "cosine"), k)


def test_first_pick_options(device):
    rng = np.random.default_rng(5)
    sets = on_device(random_sets(rng, [9, 0, 30], 12), device)
    assert_picks(tokenset.kcenter(sets, 5, first=2), expected(sets, 5, "cosine", [2, -1, 2]), 5)
    assert_picks(tokenset.kcenter(sets, 5, first=[8, 0, 29]), expected(sets, 5, "cosine", [8, -1, 29]), 5)
    a = to_numpy(tokenset.kcenter(sets, 5, first="random", seed=4))
    b = to_numpy(tokenset.kcenter(sets, 5, first="random", seed=4))
    np.testing.assert_array_equal(a, b)
    firsts = np.floor(np.random.default_rng(4).random(3) * np.array([9, 0, 30])).astype(int)
    assert_picks(a, expected(sets, 5, "cosine", [firsts[0], -1, firsts[2]]), 5)


def test_per_set_k_and_distances():
    rng = np.random.default_rng(2)
    sets = random_sets(rng, [20, 5, 50], 10)
    idx, dist = tokenset.kcenter(sets, np.array([3, 10, 7]), metric="l2", return_distances=True)
    assert idx.shape == (3, 10)
    for i, (s, k) in enumerate(zip(sets, [3, 10, 7])):
        want_idx, want_dist = ref.kcenter_set(s, k, "l2")
        np.testing.assert_array_equal(idx[i, :len(want_idx)], want_idx)
        np.testing.assert_allclose(dist[i, :len(want_idx)], want_dist, rtol=1e-5)
        assert np.isinf(dist[i, 0]) and (np.diff(dist[i, 1:len(want_idx)]) <= 1e-6).all()
        assert np.isnan(dist[i, len(want_idx):]).all()


def test_identical_tokens_tie_to_lowest_index(device):
    x = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (6, 1))
    x[4] = [-3, 1, 0]
    got = to_numpy(tokenset.kcenter(on_device([x], device), 4))[0]
    # Token 4 is the only one whose nearest other token is not a copy of itself; then the copies tie exactly.
    np.testing.assert_array_equal(got, [4, 0, 1, 2])
    assert len(set(got.tolist())) == 4


def test_zero_vectors_and_nan(device):
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    x[3] = 0  # cosine similarity 0 with everything: distance exactly 1
    x[5, 2] = np.nan  # its distances are NaN, counted as -inf: picked after every finite token
    got = to_numpy(tokenset.kcenter(on_device([x], device), 8))[0]
    np.testing.assert_array_equal(got, ref.kcenter_set(x, 8)[0])
    assert got[-1] == 5 and sorted(got.tolist()) == list(range(8))


def test_padded_input_and_non_contiguous_rows():
    rng = np.random.default_rng(9)
    padded = rng.standard_normal((3, 20, 8)).astype(np.float32)
    lengths = np.array([20, 4, 11])
    got = tokenset.kcenter(padded, 6, lengths=lengths)
    assert_picks(got, expected([padded[i, :n] for i, n in enumerate(lengths)], 6, "cosine"), 6)
    base = rng.standard_normal((40, 8)).astype(np.float32)
    np.testing.assert_array_equal(tokenset.kcenter(base[::2], 5), tokenset.kcenter(np.ascontiguousarray(base[::2]), 5))


def test_threads_within_a_set_equal_threads_over_sets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((700, 40)).astype(np.float16)
    old = tokenset.get_num_threads()
    try:
        tokenset.set_num_threads(3)
        alone = tokenset.kcenter(x, 70)  # one set: its passes are split across threads
        many = tokenset.kcenter([x] * 4, 70)  # four sets: one thread each
        tokenset.set_num_threads(1)
        single = tokenset.kcenter(x, 70)
    finally:
        tokenset.set_num_threads(old)
    np.testing.assert_array_equal(alone, single)
    assert (many == alone).all()


@requires_torch
def test_torch_in_torch_out():
    import torch

    x = torch.randn(2, 30, 8)
    got = tokenset.kcenter(x, 4)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), tokenset.kcenter(x.numpy(), 4))


def test_bad_input():
    x = np.ones((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        tokenset.kcenter(x, 0)
    with pytest.raises(ValueError, match=r"one entry per set, shape \(2,\)"):
        tokenset.kcenter(x, [1, 2, 3])
    with pytest.raises(TypeError, match="k must be an integer"):
        tokenset.kcenter(x, True)
    with pytest.raises(ValueError, match="metric must be one of"):
        tokenset.kcenter(x, 2, metric="manhattan")
    with pytest.raises(ValueError, match="first"):
        tokenset.kcenter(x, 2, first="middle")
    with pytest.raises(ValueError, match=r"first\[0\]=5 is not a token of set 0"):
        tokenset.kcenter(x, 2, first=5)
    with pytest.raises(TypeError, match="int64"):
        tokenset.kcenter(x.astype(np.int64), 2)


def test_gpu_matches_cpu(cuda):
    import torch

    rng = np.random.default_rng(4)
    sets = random_sets(rng, [0, 1, 300, 577, 33], 96)
    for dtype in DTYPES:
        for metric in METRICS:
            cpu = tokenset.kcenter([as_dtype(s, dtype) for s in sets], 40, metric=metric)
            gpu = tokenset.kcenter(on_device(sets, "cuda", dtype), 40, metric=metric)
            np.testing.assert_array_equal(to_numpy(gpu), cpu)
    assert torch.cuda.is_available()
