"""The nearest-target op against the float64 reference, and its one fixed order.

Tolerance / exactness rule: indices equal the reference exactly on data whose candidates are not float32 near-ties
(seeded normal data), and on integer-valued tokens (every l2 / ip distance an exact integer in float32), where the
l2 / ip distances equal the reference bit for bit; float32 distances are within 2 d u of the reference's magnitude
elsewhere. Across SIMD levels, thread counts, batch vs alone and input layouts, indices and distances are identical
BIT FOR BIT on inputs full of ties (distance.h: every pair summed in k order with one FMA per element).
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import nearest as ref

from conftest import DTYPES, EDGE_LENGTHS, SIMD_LEVELS, U32, as_dtype, gapped, on_device, to_numpy

METRICS = ["l2", "cosine", "ip"]


def expected(queries, targets, metric):
    out = ref.nearest([np.asarray(to_numpy(q), np.float64) for q in queries],
                      [np.asarray(to_numpy(t), np.float64) for t in targets], metric)
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def as_host(result):
    index, distance = result
    return to_numpy(index), to_numpy(distance)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_sweep(device, simd, dtype, metric):
    rng = np.random.default_rng(5)
    for q_lengths, t_lengths, dim in [([1, 40, 300], [7, 97, 250], 33), ([5, 0, 3], [0, 4, 1], 8),
                                      ([257, 31], [96, 97], 130)]:
        queries = [as_dtype(rng.standard_normal((n, dim)), dtype) for n in q_lengths]
        targets = [as_dtype(rng.standard_normal((n, dim)), dtype) for n in t_lengths]
        index, distance = as_host(tokenset.nearest(on_device(queries, device, dtype), on_device(targets, device, dtype),
                                                   metric))
        want_index, want_distance = expected(queries, targets, metric)
        np.testing.assert_array_equal(index, want_index)
        assert index.dtype == np.int64 and distance.dtype == np.float32
        finite = np.isfinite(want_distance)
        np.testing.assert_array_equal(distance[~finite], want_distance[~finite])
        scale = 4.0 * dim if metric != "cosine" else 2.0
        assert (np.abs(distance[finite] - want_distance[finite]) <= 2 * dim * U32 * scale + 1e-6).all()


@pytest.mark.parametrize("metric", METRICS)
def test_integer_tokens_are_exact_and_ties_go_to_the_lowest_index(metric):
    rng = np.random.default_rng(9)
    queries = [rng.integers(-2, 3, (n, 6)).astype(np.float32) for n in (1, 33, 200)]
    targets = [rng.integers(-2, 3, (n, 6)).astype(np.float32) for n in (3, 40, 130)]
    targets[1][5] = targets[1][2]  # exact duplicates: the lower index wins
    index, distance = tokenset.nearest(queries, targets, metric)
    want_index, want_distance = expected(queries, targets, metric)
    if metric != "cosine":  # exact integers in float32: the same ties as the reference
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(distance, want_distance.astype(np.float32))
    assert not (index[1:34] == 5).any()  # set 1 (rows 1..33): target 5 duplicates target 2, which wins


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_simd_level_and_thread_count_gives_the_same_bits(metric, dtype):
    rng = np.random.default_rng(13)
    queries = [as_dtype(rng.integers(-2, 3, (n, d)), dtype) for n, d in [(300, 17), (1, 17), (64, 17)]]
    targets = [as_dtype(rng.integers(-2, 3, (n, d)), dtype) for n, d in [(200, 17), (9, 17), (0, 17)]]
    results = []
    threads = tokenset.get_num_threads()
    try:
        for level in [lvl for lvl in SIMD_LEVELS if lvl != "amx"]:
            tokenset.set_simd_level(level)
            for t in (1, 2):
                tokenset.set_num_threads(t)
                results.append(tokenset.nearest(queries, targets, metric))
    finally:
        tokenset.set_num_threads(threads)
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    for index, distance in results[1:]:
        np.testing.assert_array_equal(index, results[0][0])
        np.testing.assert_array_equal(distance.view(np.uint32), results[0][1].view(np.uint32))
    # a set alone gives the bits it gets in the batch
    alone = tokenset.nearest(queries[1:2], targets[1:2], metric)
    np.testing.assert_array_equal(alone[1].view(np.uint32), results[0][1][300:301].view(np.uint32))


@pytest.mark.parametrize("name", list(EDGE_LENGTHS))
def test_edge_lengths_and_layouts(device, name):
    rng = np.random.default_rng(17)
    lengths = EDGE_LENGTHS[name]
    queries = [rng.standard_normal((n, 16)).astype(np.float32) for n in lengths]
    targets = [rng.standard_normal((n, 16)).astype(np.float32) for n in lengths[::-1]]
    want = expected(queries, targets, "l2")
    got = as_host(tokenset.nearest(on_device(queries, device), on_device(targets, device)))
    np.testing.assert_array_equal(got[0], want[0])
    if device == "cpu" and sum(lengths):
        g = as_host(tokenset.nearest(gapped(queries), gapped(targets)))  # offsets not starting at 0, gap rows around
        np.testing.assert_array_equal(g[0], got[0])
        np.testing.assert_array_equal(g[1].view(np.uint32), got[1].view(np.uint32))
        strided = [np.asfortranarray(q) for q in queries]  # column-major sets: rows not contiguous
        s = as_host(tokenset.nearest(strided, targets))
        np.testing.assert_array_equal(s[1].view(np.uint32), got[1].view(np.uint32))


def test_nan_and_inf_count_as_plus_inf():
    q = np.array([[0, 0], [np.nan, 0], [1, 1]], np.float32)
    y = np.array([[np.inf, 0], [np.nan, 1], [2, 2]], np.float32)
    index, distance = tokenset.nearest(q, y, "l2")
    np.testing.assert_array_equal(index, [2, 0, 2])  # a NaN query is at +inf from everything: index 0
    assert distance[1] == np.inf and distance[0] == 8.0
    index, distance = tokenset.nearest(q[:1], np.zeros((0, 2), np.float32))
    assert index.tolist() == [-1] and distance.tolist() == [np.inf]


def test_padded_batches_and_bad_input():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 5, 4)).astype(np.float32)
    y = rng.standard_normal((2, 6, 4)).astype(np.float32)
    index, _ = tokenset.nearest(q, y, query_lengths=[5, 2], target_lengths=[1, 6])
    want = expected([q[0], q[1, :2]], [y[0, :1], y[1]], "l2")
    np.testing.assert_array_equal(index, want[0])
    with pytest.raises(ValueError, match="sets"):
        tokenset.nearest(q, y[:1])
    with pytest.raises(ValueError, match="dimension"):
        tokenset.nearest(q, y[:, :, :3])
    with pytest.raises(ValueError, match="metric"):
        tokenset.nearest(q, y, "manhattan")
    with pytest.raises(TypeError):
        tokenset.nearest(q.astype(np.float64), y)


def test_mixed_dtypes_are_compared_in_float32():
    """float32 queries against float16 targets: both converted to float32 (a query cast to float16 overflowed)."""
    targets = np.array([[0, 0], [65000, 0]], np.float16)  # 65000 rounds to 64992 in float16
    index, distance = tokenset.nearest(np.array([[70000.0, 0]], np.float32), targets)
    assert index.tolist() == [1] and distance.tolist() == [(70000.0 - float(targets[1, 0])) ** 2]
