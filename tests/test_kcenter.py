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

from conftest import (DTYPES, EDGE_LENGTHS, as_dtype, exact_float64, gapped, on_device, random_sets,
                      requires_torch, to_numpy)

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


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_tokens_agree_with_the_reference(device, simd, dtype, metric):
    """A token holding +-inf (kcenter.h, Semantics): l2 is the sum of squared differences, so it is at +inf from every
    finite token (the most isolated token) and at NaN, i.e. -inf, from a token with the same infinity in the same
    coordinate. The CPU's most-isolated pass computed |x|^2 + |y|^2 - 2<x, y> = inf - inf (NaN, or a wrong +-inf
    by the sign of the other token's coordinate) and picked another first token than the reference and the GPU."""
    rng = np.random.default_rng(21)
    for trial in range(30):
        n, dim = int(rng.integers(2, 40)), int(rng.integers(2, 20))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        for _ in range(1 + trial % 3):  # one to three infinities of either sign (sometimes in one token)
            x[rng.integers(n), rng.integers(dim)] = np.inf if rng.random() < 0.5 else -np.inf
        x = as_dtype(x, dtype)
        x64 = exact_float64([x])[0]
        for first in (None, int(rng.integers(n))):
            k = int(rng.integers(1, n + 1))
            got, dist = tokenset.kcenter(on_device([x], device, dtype), k, metric=metric,
                                         first="isolated" if first is None else first, return_distances=True)
            want, want_dist = ref.kcenter_set(x64, k, metric, first)
            got, dist = to_numpy(got)[0], to_numpy(dist)[0]
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}, first {first}")
            finite = np.isfinite(want_dist)
            np.testing.assert_array_equal(dist[~finite], want_dist[~finite])
            np.testing.assert_allclose(dist[finite], want_dist[finite], rtol=1e-4, atol=1e-5)


def test_native_per_set_arrays_are_checked():
    """The native entries check their per-set int64 arrays (a private copy, what the kernel then reads): arrays that
    are not contiguous int64 of one entry per set, or values out of range, are a ValueError or TypeError naming the
    array, never read."""
    core = tokenset._backend._core
    x = np.ones((6, 4), np.float32)

    class Batch:
        values, sets, device_offsets = x, None, None
        offsets = np.array([0, 2, 6], np.int64)

    good = {"k": np.array([2, 3], np.int64), "first": np.array([0, -1], np.int64),
            "rows": np.array([3, 1], np.int64), "cols": np.array([3, 2], np.int64)}
    odd = [  # (array, exception, message), for every array
        (np.array([2, 9, 3, 9], np.int64)[::2], ValueError, "must be C-contiguous"),
        (np.array([2, 3], np.int32), TypeError, "must be int64, got int32"),
        (np.array([2.0, 3.0]), TypeError, "dtype float64 is not supported"),
        (np.array([2, 3], np.uint64), TypeError, "dtype uint64 is not supported"),
        (np.array([2], np.int64), ValueError, r"must have shape \(2\), got \(1\)"),
        (np.array([2, 3, 1], np.int64), ValueError, r"must have shape \(2\), got \(3\)"),
        (np.array([[2, 3]], np.int64), ValueError, "must have 1 dimension"),
        ([2, 3], TypeError, "expected an array"),
        (None, TypeError, "expected an array"),
    ]
    values = {  # out of range, per array
        "k": [(np.array([0, 1], np.int64), r"k\[0\] must be in 1..3, got 0"),
              (np.array([1, 2**62], np.int64), r"k\[1\] must be in 1..3")],
        "first": [(np.array([-2, 0], np.int64), r"first\[0\]=-2 is not a token of set 0"),
                  (np.array([0, 4], np.int64), r"first\[1\]=4 is not a token of set 1, which has 4 tokens")],
        "rows": [(np.array([-1, 1], np.int64), r"rows\[0\]=-1 must be in 0..3"),
                 (np.array([1, 2**62], np.int64), r"rows\[1\]=\d+ must be in 0..3")],
        "cols": [(np.array([4, 1], np.int64), r"cols\[0\]=4 must be in 0..3")],
    }

    def kcenter(k=good["k"], first=good["first"]):
        core.kcenter(Batch(), 1, k, None, first, None, 3, np.empty((2, 3), np.int64))

    def coverage(rows=good["rows"], cols=good["cols"], k=good["k"]):
        core.coverage(np.ones((2, 3, 3), np.float32), rows, None, cols, None, k, None, 3, np.empty((2, 3), np.int64))

    calls = [(kcenter, "k"), (kcenter, "first"), (coverage, "rows"), (coverage, "cols"), (coverage, "k")]
    for call, name in calls:
        call()
        for array, exc, match in odd:
            with pytest.raises(exc, match=rf"{name}:? .*{match}|{name}.*{match}"):
                call(**{name: array})
        for array, match in values[name]:
            with pytest.raises(ValueError, match=match):
                call(**{name: array})


def test_padded_input_and_non_contiguous_rows():
    rng = np.random.default_rng(9)
    padded = rng.standard_normal((3, 20, 8)).astype(np.float32)
    lengths = np.array([20, 4, 11])
    got = tokenset.kcenter(padded, 6, lengths=lengths)
    assert_picks(got, expected([padded[i, :n] for i, n in enumerate(lengths)], 6, "cosine"), 6)
    base = rng.standard_normal((40, 8)).astype(np.float32)
    np.testing.assert_array_equal(tokenset.kcenter(base[::2], 5), tokenset.kcenter(np.ascontiguousarray(base[::2]), 5))


@pytest.mark.parametrize("metric", METRICS)
def test_gapped_ragged_reads_only_its_sets(metric):
    """A valid Ragged whose values start past row 0 and end after its last set, with sentinel rows (1e6) in the gaps:
    the same picks and distances as the list of its sets (a gap row read as a token would be the farthest)."""
    rng = np.random.default_rng(13)
    sets = random_sets(rng, [0, 7, 40, 1, 25], 8)
    want, want_dist = tokenset.kcenter(sets, 9, metric=metric, return_distances=True)
    for before, after in [(3, 2), (0, 4), (6, 0)]:
        for first in ("isolated", 0, [0, 3, 10, 0, 24]):
            got, dist = tokenset.kcenter(gapped(sets, before, after), 9, metric=metric, first=first,
                                         return_distances=True)
            np.testing.assert_array_equal(got, tokenset.kcenter(sets, 9, metric=metric, first=first))
        got, dist = tokenset.kcenter(gapped(sets, before, after), 9, metric=metric, return_distances=True)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(dist, want_dist)


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
