"""k-center and the l2 merges computed in one fixed order: the same bits on every SIMD level, thread count and input
layout, exact values where float32 is exact, and no loss of precision from a large common offset.

The contract (the CPU k-center kernels and merge's nearest-centre passes): tokens are converted exactly to float32;
each pair's distance is summed in k order, one fused multiply-add per element: dot = fma(x_i[k], x_j[k], acc),
l2 = fma(diff, diff, acc) with diff = x_i[k] - x_j[k] rounded to float32 (the difference form, never
|x|^2 + |y|^2 - 2<x, y>); cosine distance = 1 - dot * (r_i * r_j), each operation rounded separately (no fused
1 - a * b), r = 1 / sqrt(sum of squares summed the same way), rounded after the sqrt and after the division (0 for a
zero vector); ip distance = -dot; l2 compared squared and returned as its float32 sqrt. A NaN distance counts as
-inf; ties go to the lowest index.

Tolerance / exactness rule of this file:
- across SIMD levels (scalar, avx2, avx512; amx is MaxSim-only), thread counts (1 vs 2: a 3000-token set is
  streamed with one thread's 32 MiB and read from its distance matrix with two threads' 64 MiB; a 44 MB set is
  packed per pick with one thread and once with two), batch vs one set per call, and input layouts (strided rows,
  column views, Fortran order, gapped Ragged, padded): picks equal and distances equal BIT FOR BIT (compared as
  uint32), on inputs full of exact and rounding-decided ties (small integers, duplicated tokens, lattices, parallel
  tokens, NaN / inf entries) and on normal data;
- against the float32 model of the contract written here in numpy (fma emulated exactly: the float64 product is
  exact and the float64 sum is rounded to odd before the one rounding to float32): picks and distances bit for bit;
- integer-valued tokens (|x| <= 4, d <= 64): every l2 / ip distance is an exact integer in float32, so picks and
  distances equal the float64 reference (tokenset/reference/kcenter.py) exactly, ties to the lowest index included;
- a common offset (offset + noise * N(0, 1), offsets 300, 100, -250, noise 1 and 0.1): float32 l2 picks equal the
  float64 reference (run on the float32 values) wherever the reference's candidates are more than a relative 1e-4
  apart (at most 1 set of 20 may be skipped as a near tie; the float32 difference form errs by ~d * 2^-24);
  float16 and bfloat16 inputs are coarse enough there that every difference, square and sum is exact, so their
  picks and distances match the reference on the rounded values exactly, ties included;
- merges (k-means, k-medoids, DPC-KNN) of four well-separated clusters: groups of exactly 30, the reference's
  representatives and sizes exactly, centroids within 0.05 of the true cluster means (one misplaced point moves a
  mean by > 0.1), and the same groups at offsets 0, +-300 and 3000 (the data is quantised so that the offset is
  added exactly), with the same representatives (result.indices) at every offset.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import tokenset
from tokenset.reference import kcenter as ref
from tokenset.reference import merge as merge_ref

from conftest import DTYPES, SIMD_LEVELS, as_dtype, gapped

METRICS = ["cosine", "l2", "ip"]
LEVELS = [level for level in SIMD_LEVELS if level != "amx"]  # amx tiles serve MaxSim only
LENGTHS = [1, 2, 7, 64, 577]
DIMS = [1, 7, 16, 33, 130]
TIED_KINDS = ["integers", "duplicates", "lattice", "parallel", "nonfinite", "normal"]

several_levels = pytest.mark.skipif(len(LEVELS) < 2, reason=f"only {LEVELS} on this CPU: nothing to compare")


# ---- helpers ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def simd_level(level):
    tokenset.set_simd_level(level)
    try:
        yield
    finally:
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])


@contextlib.contextmanager
def num_threads(n):
    old = tokenset.get_num_threads()
    tokenset.set_num_threads(n)
    try:
        yield
    finally:
        tokenset.set_num_threads(old)


def data(kind, rng, n, dim):
    """float64 tokens of one kind; most kinds are full of exact (or mathematically exact) distance ties."""
    if kind == "integers":  # exact dots and l2 in float32: ties are exact on any order
        return rng.integers(-2, 3, (n, dim)).astype(np.float64)
    if kind == "duplicates":  # copies of a few tokens (cosine: 1 - r^2 |x|^2 = 0 only up to rounding)
        pool = rng.standard_normal((max(1, n // 4), dim))
        return pool[rng.integers(0, len(pool), n)]
    if kind == "lattice":  # an inexact lattice: congruent pairs tie mathematically, rounding decides
        return rng.integers(0, 4, (n, dim)) * 0.3 + 0.1
    if kind == "parallel":  # positive multiples of three directions: cosine distances 0 or fixed, up to rounding
        dirs = rng.standard_normal((3, dim))
        return dirs[rng.integers(0, 3, n)] * rng.uniform(0.5, 2.0, (n, 1))
    x = rng.standard_normal((n, dim))
    if kind == "nonfinite" and n >= 7:  # NaN distances count as -inf; l2 to an infinity is +inf
        for value in (np.nan, np.inf, -np.inf):
            x[rng.integers(n), rng.integers(dim)] = value
    return x


def bits(a):
    return np.ascontiguousarray(np.asarray(a, np.float32)).view(np.uint32)


def run(x, k, metric, first):
    idx, dist = tokenset.kcenter(x, k, metric=metric, first=first, return_distances=True)
    return np.asarray(idx), np.asarray(dist)


def assert_identical(got, want, what):
    """Same picks and the same distance bits (padding included)."""
    (gi, gd), (wi, wd) = got, want
    assert gi.shape == wi.shape and gd.shape == wd.shape, f"{what}: shapes {gi.shape} vs {wi.shape}"
    wrong = np.argwhere(gi != wi)
    assert not wrong.size, (f"{what}: {len(wrong)} of {gi.size} picks differ; first at {tuple(wrong[0])}: "
                            f"{gi[tuple(wrong[0])]} vs {wi[tuple(wrong[0])]}")
    wrong = np.argwhere(bits(gd) != bits(wd))
    assert not wrong.size, (f"{what}: {len(wrong)} of {gd.size} distances differ in their bits; first at "
                            f"{tuple(wrong[0])}: {gd[tuple(wrong[0])]!r} vs {wd[tuple(wrong[0])]!r}")


# ---- the float32 model of the contract ------------------------------------------------------------------------------
def fma32(a, b, c):
    """Correctly rounded float32 fma(a, b, c), elementwise: a * b is exact in float64; the float64 sum is rounded to
    odd (TwoSum gives its error) and then rounded once to float32, which is the correct rounding of the exact value
    (53 >= 24 + 2 bits)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        even = (s.view(np.uint64) & 1) == 0
        fix = (err != 0) & even & np.isfinite(s)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return s.astype(np.float32)


def model_distances(x, rows, cols, metric):
    """Contract distances (l2 squared) of the pairs (rows[t], cols[t]) of float32 tokens x; NaN as -inf."""
    a, b = x[rows], x[cols]
    acc = np.zeros(len(rows), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(x.shape[1]):
            if metric == "l2":
                diff = (a[:, k] - b[:, k]).astype(np.float32)
                acc = fma32(diff, diff, acc)
            else:
                acc = fma32(a[:, k], b[:, k], acc)
        if metric == "ip":
            acc = -acc
        elif metric == "cosine":
            sq = np.zeros(len(x), np.float32)
            for k in range(x.shape[1]):
                sq = fma32(x[:, k], x[:, k], sq)
            with np.errstate(divide="ignore"):
                r = np.where(sq > 0, np.float32(1) / np.sqrt(sq), np.float32(0)).astype(np.float32)
            scale = (r[rows] * r[cols]).astype(np.float32)
            acc = (np.float32(1) - (acc * scale).astype(np.float32)).astype(np.float32)
    return np.where(np.isnan(acc), np.float32(-np.inf), acc).astype(np.float32)


def model_kcenter(x, k, metric, first=None):
    """Greedy farthest-first on the contract's float32 distances: (picks, distances) as the kernel returns one set."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    i, j = np.triu_indices(n, 1)
    matrix = np.zeros((n, n), np.float32)  # the diagonal is never read
    matrix[i, j] = matrix[j, i] = model_distances(x, i, j, metric)
    if first is None:
        nearest = np.where(np.eye(n, dtype=bool), np.float32(np.inf), matrix).min(axis=1)
        pick = int(np.argmax(nearest))
    else:
        pick = int(first)
    picks, dist = [pick], [np.float32(np.inf)]
    running = np.full(n, np.inf, np.float32)
    picked = np.zeros(n, bool)
    for _ in range(min(k, n) - 1):
        picked[pick] = True
        running = np.minimum(running, matrix[pick])
        candidates = np.where(picked, np.float32(-np.inf), running)
        best = candidates[~picked].max()
        pick = int(np.flatnonzero((candidates == best) & ~picked)[0])
        picks.append(pick)
        dist.append(best)
    dist = np.array(dist, np.float32)
    if metric == "l2":
        with np.errstate(invalid="ignore"):
            dist = np.where(dist >= 0, np.sqrt(np.maximum(dist, 0)), dist).astype(np.float32)
    out_i, out_d = np.full(k, -1, np.int64), np.full(k, np.nan, np.float32)
    out_i[:len(picks)], out_d[:len(picks)] = picks, dist
    return out_i, out_d


def test_fma_model_is_exact():
    """The emulated fma rounds once: a case where rounding the float64 sum to float32 would round twice."""
    a = np.array([1 + 2.0 ** -12], np.float32)  # a * a = 1 + 2^-11 + 2^-24: a float32 halfway point
    tiny = np.array([2.0 ** -60], np.float32)
    assert bits(fma32(a, a, tiny))[0] == bits(np.float32(1 + 2.0 ** -11 + 2.0 ** -23))
    assert bits(fma32(a, a, -tiny))[0] == bits(np.float32(1 + 2.0 ** -11))
    assert bits(fma32(a, a, np.zeros(1, np.float32)))[0] == bits(np.float32(1 + 2.0 ** -11))  # ties to even


# ---- 1. every SIMD level: the same picks and distance bits -----------------------------------------------------------
@several_levels
@pytest.mark.parametrize("kind", TIED_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_simd_levels_bit_identical(metric, dtype, kind):
    """Sets of 1..577 tokens in dimensions 1..130 (vector bodies and remainders), in one batch and one set per call,
    first = most isolated and first = 0: every level returns the scalar level's picks and distances bit for bit."""
    rng = np.random.default_rng(101)
    k = 64
    for dim in DIMS:
        sets = [as_dtype(data(kind, rng, n, dim), dtype) for n in LENGTHS]
        for first in ("isolated", 0):
            want = None
            for level in LEVELS:
                with simd_level(level):
                    got = run(sets, k, metric, first)
                    singles = [run(s, k, metric, first) for s in sets]
                if want is None:
                    want = got
                where = f"{level} vs {LEVELS[0]}, d={dim}, first={first}"
                assert_identical(got, want, f"batch, {where}")
                for i, single in enumerate(singles):
                    assert_identical(single, (want[0][i], want[1][i]), f"set {i} ({LENGTHS[i]} tokens) alone, {where}")


@several_levels
@pytest.mark.parametrize("metric", METRICS)
def test_second_pick_on_duplicated_tokens(metric):
    """The reported case in small: 200 sets of copies of a few tokens, k = 2. The most isolated token and the
    farthest from it tie between copies; every level must break the ties alike (today cosine differs in ~1/5 of
    the first and second picks between scalar and avx512)."""
    rng = np.random.default_rng(5)
    sets = [data("duplicates", rng, 50, 33).astype(np.float32) for _ in range(200)]
    out = {}
    for level in LEVELS:
        with simd_level(level):
            out[level] = run(sets, 2, metric, "isolated")
    base = LEVELS[0]
    for level in LEVELS[1:]:
        firsts = int((out[level][0][:, 0] != out[base][0][:, 0]).sum())
        seconds = int((out[level][0][:, 1] != out[base][0][:, 1]).sum())
        assert firsts == 0 and seconds == 0, (f"{level} vs {base}: first picks differ in {firsts}/200 sets, second "
                                              f"picks in {seconds}/200")
        assert_identical(out[level], out[base], f"{level} vs {base}")


# ---- the contract's own values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "duplicates", "lattice", "parallel", "nonfinite"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_every_level_computes_the_contract(metric, dtype, kind):
    """Picks and distance bits equal the numpy float32 model of the contract (k order, one fma per element, l2 by
    differences, cosine 1 - dot * (r_i * r_j) unfused), on every level: one fixed order, not merely a shared one."""
    rng = np.random.default_rng(202)
    k = 32
    for dim in DIMS:
        sets = [as_dtype(data(kind, rng, n, dim), dtype) for n in (1, 2, 7, 64, 150)]
        x32 = [np.asarray(s).astype(np.float32) for s in sets]  # the exact conversion the kernels make
        for first in (None, 0):
            want = [model_kcenter(x, k, metric, first) for x in x32]
            want = (np.stack([w[0] for w in want]), np.stack([w[1] for w in want]))
            for level in LEVELS:
                with simd_level(level):
                    got = run(sets, k, metric, "isolated" if first is None else first)
                assert_identical(got, want, f"{level} vs the float32 model, d={dim}, first={first}")


# ---- 2. thread counts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_thread_counts_bit_identical(metric):
    """One set of 3000 tokens (dim 8): with 1 thread its 36 MB distance matrix exceeds the 32 MiB per-worker budget
    (picks streamed), with 2 threads on one set the budget is 64 MiB (picks read from the matrix), and two copies of
    it with 2 threads are one set per worker (streamed again): all the same bits, on every level. Then a batch of
    many sets: 1 vs 2 threads vs one set per call."""
    rng = np.random.default_rng(303)
    k = 300
    for kind in ("integers", "normal"):
        base = data(kind, rng, 3000, 8)
        for dtype in DTYPES:
            x = as_dtype(base, dtype)
            for first in ("isolated", 0):
                want = None
                for level in LEVELS:
                    with simd_level(level):
                        with num_threads(1):
                            one = run(x, k, metric, first)
                        with num_threads(2):
                            two = run(x, k, metric, first)
                            pair = run([x, x], k, metric, first)
                    where = f"{kind} {dtype}, first={first}, {level}"
                    assert_identical(two, one, f"2 threads on one set vs 1 thread, {where}")
                    for i in range(2):
                        assert_identical((pair[0][i], pair[1][i]), one, f"copy {i} of two sets, 2 threads, {where}")
                    if want is None:
                        want = one
                    assert_identical(one, want, f"{where} vs {LEVELS[0]}")
    lengths = rng.integers(0, 400, 48)
    lengths[:3] = [0, 1, 2]
    sets = [data("integers" if i % 2 else "normal", rng, int(n), 33).astype(np.float32) for i, n in enumerate(lengths)]
    for first in ("isolated", 0):
        with num_threads(1):
            one = run(sets, 40, metric, first)
        with num_threads(2):
            two = run(sets, 40, metric, first)
            singles = [run(s, 40, metric, first) if len(s) else None for s in sets]
        assert_identical(two, one, f"batch of {len(sets)} sets, 2 threads vs 1, first={first}")
        for i, single in enumerate(singles):
            if single is not None:
                assert_identical(single, (one[0][i], one[1][i]), f"set {i} alone vs in the batch, first={first}")


@pytest.mark.parametrize("metric", METRICS)
def test_set_over_the_panel_budget(metric):
    """2700 tokens of dim 4096 (44 MB of float32 rows, first = 0): over one worker's 32 MiB (rows packed block by
    block for every pick) and within two workers' 64 MiB (packed once): the same bits on every level and thread
    count."""
    x = np.random.default_rng(808).standard_normal((2700, 4096), dtype=np.float32)
    want = None
    for level in LEVELS:
        with simd_level(level):
            with num_threads(1):
                one = run(x, 16, metric, 0)
            with num_threads(2):
                two = run(x, 16, metric, 0)
        assert_identical(two, one, f"2 threads vs 1, {level}")
        if want is None:
            want = one
        assert_identical(one, want, f"{level} vs {LEVELS[0]}")


# ---- 3. exact values -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_integer_tokens_match_the_reference_exactly(metric):
    """|x| <= 4, d <= 64: every dot and squared distance is an integer below 2^24, exact in float32, so the picks
    (ties to the lowest index) and the distances (l2: float32 sqrt of the exact squared distance) equal the float64
    reference bit for bit, for every dtype (the integers are exact in float16 / bfloat16) and level."""
    rng = np.random.default_rng(404)
    k = 40
    for dim in (1, 7, 16, 33, 64):
        sets = [rng.integers(-4, 5, (n, dim)).astype(np.float64) for n in (1, 2, 7, 64, 250)]
        sets.append(sets[-1][rng.integers(0, 250, 120)])  # duplicated tokens: exact ties everywhere
        for first in (None, 0):
            want_i = np.full((len(sets), k), -1, np.int64)
            want_d = np.full((len(sets), k), np.nan, np.float32)
            for i, s in enumerate(sets):
                idx, dist = ref.kcenter_set(s, k, metric, first)
                want_i[i, :len(idx)], want_d[i, :len(idx)] = idx, dist
            for dtype in DTYPES:
                xs = [as_dtype(s, dtype) for s in sets]
                for level in LEVELS:
                    with simd_level(level):
                        got = run(xs, k, metric, "isolated" if first is None else first)
                    assert_identical(got, (want_i, want_d), f"{dtype}, {level}, d={dim}, first={first}")


# ---- 4. a large common offset (L2 precision) -------------------------------------------------------------------------
def margins(x64, k, picks):
    """Relative gap between the best and the second-best candidate at every step of the float64 greedy along
    `picks` (the first step: nearest-other distances), squared l2."""
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    n = len(x64)
    out = []
    nearest = np.where(np.eye(n, dtype=bool), np.inf, d2).min(axis=1)
    top = np.sort(nearest)[::-1]
    out.append((top[0] - top[1]) / top[0])
    running = np.full(n, np.inf)
    picked = np.zeros(n, bool)
    for t in range(1, k):
        picked[picks[t - 1]] = True
        running = np.minimum(running, d2[picks[t - 1]])
        top = np.sort(running[~picked])[::-1]
        out.append((top[0] - top[1]) / top[0] if len(top) > 1 else np.inf)
    return np.array(out)


@pytest.mark.parametrize("noise", [1.0, 0.1])
@pytest.mark.parametrize("offset", [300.0, 100.0, -250.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_with_a_common_offset_matches_the_reference(dtype, offset, noise):
    """Embeddings sharing a large offset: x = offset + noise * N(0, 1), n = 100, d = 64, k = 10. |x|^2 ~ 64 offset^2
    dwarfs the squared distances (~128 noise^2): the expanded form |x|^2 + |y|^2 - 2<x, y> loses them in float32,
    the difference form does not. float32: picks equal the float64 reference (on the float32 values) in every set
    whose reference candidates are more than a relative 1e-4 apart (at most 1 of 20 skipped). float16 (spacing
    1/16..1/4 there) / bfloat16 (0.5..2; with noise 0.1 every token rounds to the offset: all ties): every
    difference, square and sum is exact in float32, so picks AND distances equal the reference on the rounded
    values exactly, ties included."""
    rng = np.random.default_rng(505)
    n, d, k = 100, 64, 10
    skipped, first_wrong, wrong = 0, [], []
    for trial in range(20):
        x = as_dtype(offset + noise * rng.standard_normal((n, d)), dtype)
        x64 = np.asarray(x).astype(np.float64)
        want, want_dist = ref.kcenter_set(x64, k, "l2")
        if dtype == "float32" and margins(x64, k, want).min() <= 1e-4:
            skipped += 1
            continue
        for level in LEVELS:
            with simd_level(level):
                got, dist = run(x, k, "l2", "isolated")
            if got[0] != want[0]:
                first_wrong.append((trial, level))
            if not np.array_equal(got, want):
                wrong.append((trial, level, got.tolist(), want.tolist()))
            elif dtype != "float32":
                assert (bits(dist) == bits(want_dist)).all(), f"set {trial}, {level}: {dist} vs {want_dist}"
    assert skipped <= 1, f"{skipped} of 20 sets were near ties: pick other data"
    assert not first_wrong, (f"the most isolated token differs from the float64 reference in "
                             f"{len({t for t, _ in first_wrong})}/{20 - skipped} sets ({first_wrong[:6]}...)")
    assert not wrong, f"{len(wrong)} (set, level) pairs pick otherwise; first: {wrong[0]}"


@pytest.mark.parametrize("first", ["isolated", 0])
def test_offset_does_not_change_exact_data(first):
    """Integer tokens shifted by 300 (still exact in float32): the difference form sees exactly the same differences,
    so picks and distances must not change at all with the offset."""
    rng = np.random.default_rng(606)
    sets = [rng.integers(-4, 5, (n, 64)).astype(np.float32) for n in (2, 7, 64, 300)]
    want = run(sets, 30, "l2", first)
    for offset in (300.0, -300.0, 4096.0):
        for level in LEVELS:
            with simd_level(level):
                got = run([s + np.float32(offset) for s in sets], 30, "l2", first)
            assert_identical(got, want, f"offset {offset}, {level}")


# ---- 5. merges of clusters sharing an offset -------------------------------------------------------------------------
MERGE_REFERENCES = {"kmeans": merge_ref.kmeans, "kmedoids": merge_ref.kmedoids, "dpc_knn": merge_ref.dpc_knn}


def clusters(seed, d=32, per=30, separation=10.0, noise=0.5):
    """Four shuffled clusters of `per` points, centres at separation / sqrt(2) along four random axes (pairwise
    `separation` apart), centres and noise N(0, noise) quantised to multiples of 2^-10 so that adding an offset below
    4096 is exact in float32. (float64 tokens, true labels)"""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per)
    centres = np.zeros((4, d))
    centres[np.arange(4), rng.choice(d, 4, replace=False)] = np.round(separation / np.sqrt(2) * 1024) / 1024
    x = centres[labels] + np.round(rng.normal(0, noise, (4 * per, d)) * 1024) / 1024
    order = rng.permutation(4 * per)
    return x[order], labels[order]


def check_groups(result, i, x64, labels, method, where):
    """Four groups of 30, each group one true cluster. Returns the groups as (label of representative, ...)."""
    n = int(result.lengths[i])
    idx = np.asarray(result.indices)[i, :n]
    sizes = np.asarray(result.sizes)[i, :n]
    assert n == 4 and sizes.tolist() == [30.0] * 4, f"{where}: group sizes {sizes.tolist()}"
    groups = labels[idx]
    assert sorted(groups.tolist()) == [0, 1, 2, 3], f"{where}: representatives {idx} from clusters {groups}"
    tokens = np.asarray(result.tokens[i], np.float64)
    if method == "kmedoids":  # the medoids themselves
        np.testing.assert_array_equal(tokens, x64[idx], err_msg=where)
    else:  # group averages: one misplaced point would move a mean by > 0.1
        means = np.stack([x64[labels == g].mean(axis=0) for g in groups])
        np.testing.assert_allclose(tokens, means, atol=0.05, rtol=0, err_msg=where)
    return tuple(groups)


@pytest.mark.parametrize("offset", [300.0, -300.0, 3000.0])
@pytest.mark.parametrize("method", ["kmeans", "kmedoids", "dpc_knn"])
def test_merge_groups_do_not_depend_on_an_offset(method, offset):
    """Four clusters 10 apart (noise 0.5, d = 32, 30 points each), shuffled, five data sets in one batch and each
    alone, at offset 0 and at `offset`: four groups of exactly 30, each one true cluster, as in the float64
    reference; the same representatives (result.indices) at both offsets; and the reference's representatives.
    Note: a k-means / k-medoids cost-tie tolerance relative to |x|^2 (1e-5 (|x|^2 + ...), the reference's today)
    grows with the offset: at 300 every member of a cluster counts as tied and the lowest index represents it, so
    the kernels and the reference both need a shift-invariant tie rule for all three checks to hold."""
    fn = MERGE_REFERENCES[method]
    data_sets = [clusters(seed) for seed in range(5)]
    reps, want_reps = {}, {}
    for off in (0.0, offset):
        xs = [(x + off).astype(np.float32) for x, _ in data_sets]
        assert all(np.array_equal(x.astype(np.float64) - off, x0) for x, (x0, _) in zip(xs, data_sets))
        batch = tokenset.merge(xs, 4, method=method)
        singles = [tokenset.merge(x, 4, method=method) for x in xs]
        for i, (x, (_, labels)) in enumerate(zip(xs, data_sets)):
            x64 = x.astype(np.float64)
            where = f"{method}, offset {off}, data set {i}"
            groups = check_groups(batch, i, x64, labels, method, where + " (batch)")
            assert check_groups(singles[i], 0, x64, labels, method, where + " (alone)") == groups
            np.testing.assert_array_equal(singles[i].indices[0], np.asarray(batch.indices)[i], err_msg=where)
            rep, _, sizes = fn(x64, 4)
            assert sizes.tolist() == [30.0] * 4 and sorted(labels[rep].tolist()) == [0, 1, 2, 3], (
                f"{where}: the reference's groups {sizes.tolist()} (pick other data)")
            reps[off, i] = np.asarray(batch.indices)[i, :4].tolist()
            want_reps[off, i] = rep.tolist()
    for i in range(len(data_sets)):
        assert reps[0.0, i] == reps[offset, i], (f"data set {i}: representatives {reps[0.0, i]} at offset 0, "
                                                 f"{reps[offset, i]} at offset {offset}")
    for (off, i), want in want_reps.items():
        assert reps[off, i] == want, (f"data set {i}, offset {off}: representatives {reps[off, i]}, the float64 "
                                      f"reference's {want}")


# ---- 6. layouts: non-contiguous, gapped, padded ----------------------------------------------------------------------
def gapped_quietly(sets, before=3, after=2):
    with np.errstate(over="ignore"):  # the 1e6 sentinel is inf in float16, as meant
        return gapped(sets, before, after)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_layouts_bit_identical(metric, dtype):
    """Strided rows, column views (row stride > d), Fortran order, a gapped Ragged (sentinel rows around the sets)
    and padded [B, N, d] with lengths give the contiguous list's picks and distance bits, on every level."""
    rng = np.random.default_rng(707)
    for kind in ("integers", "duplicates", "normal"):
        for dim in (7, 16, 33):
            sets = [np.ascontiguousarray(as_dtype(data(kind, rng, n, dim), dtype)) for n in (1, 7, 64, 200)]
            wide = [as_dtype(np.concatenate([np.asarray(s).astype(np.float64), rng.standard_normal((len(s), 5))], 1),
                             dtype) for s in sets]
            strided = []
            for s in sets:
                big = np.zeros((2 * len(s), dim), s.dtype)
                big[::2] = s
                strided.append(big[::2])
            padded = np.zeros((len(sets), 200, dim), sets[0].dtype)
            for i, s in enumerate(sets):
                padded[i, :len(s)] = s
            lengths = np.array([len(s) for s in sets])
            layouts = {
                "strided rows": lambda: strided,
                "column views": lambda: [w[:, :dim] for w in wide],
                "Fortran order": lambda: [np.asfortranarray(s) for s in sets],
                "gapped Ragged": lambda: gapped_quietly(sets),
                "gapped Ragged, no tail": lambda: gapped_quietly(sets, 5, 0),
            }
            for first in ("isolated", 0):
                for level in LEVELS:
                    with simd_level(level):
                        want = run(sets, 24, metric, first)
                        for name, make in layouts.items():
                            assert_identical(run(make(), 24, metric, first), want,
                                             f"{name}, {kind}, d={dim}, first={first}, {level}")
                        idx, dist = tokenset.kcenter(padded, 24, metric=metric, first=first, lengths=lengths,
                                                     return_distances=True)
                        assert_identical((np.asarray(idx), np.asarray(dist)), want,
                                         f"padded, {kind}, d={dim}, first={first}, {level}")
