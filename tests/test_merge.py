"""prune() and merge(): every method against its numpy reference (tokenset/reference/merge.py, kcenter.py,
coverage.py), PruneResult's layout, options and errors.

Tolerances: kept indices and sizes exactly; merged tokens within 1e-5 absolute of the float64 reference (float32
weighted averages of O(1) values). Random data keeps near-ties of float32 distances away; exact ties are ruled by
index on both sides (k-means / k-medoids costs within a relative 1e-5 count as ties).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tokenset
from tokenset.reference import coverage as coverage_ref
from tokenset.reference import kcenter as kcenter_ref
from tokenset.reference import merge as ref

from conftest import GAP_FILL, PEAK_OF_THIS_PROCESS, gapped, random_sets, requires_torch, subprocess_env, to_numpy

LENGTHS = [0, 1, 2, 5, 40, 101]
CASES = [
    ("tome", ref.tome, {}),
    ("tome", ref.tome, {"protected": 1}),
    ("tome", ref.tome, {"protected": 2}),
    ("dpc_knn", ref.dpc_knn, {}),
    ("dpc_knn", ref.dpc_knn, {"knn": 2}),
    ("kmeans", ref.kmeans, {}),
    ("kmeans", ref.kmeans, {"iters": 2, "metric": "cosine"}),
    ("kmedoids", ref.kmedoids, {}),
    ("kmedoids", ref.kmedoids, {"metric": "cosine"}),
]


def check_against(result, sets, fn, keep, **options):
    for i, s in enumerate(sets):
        rep, tokens, sizes = fn(s, keep, **options)
        n = result.lengths[i]
        assert n == len(rep), f"set {i}: {n} groups, reference {len(rep)}"
        np.testing.assert_array_equal(to_numpy(result.indices)[i, :n], rep, err_msg=f"set {i}")
        np.testing.assert_array_equal(to_numpy(result.sizes)[i, :n], sizes, err_msg=f"set {i}")
        np.testing.assert_allclose(to_numpy(result.tokens[i]), tokens, atol=1e-5, err_msg=f"set {i}")
        assert (to_numpy(result.indices)[i, n:] == -1).all() and (to_numpy(result.sizes)[i, n:] == 0).all()


@pytest.mark.parametrize("method,fn,options", CASES, ids=[f"{m}-{o}" for m, _, o in CASES])
def test_merge_reference_sweep(method, fn, options):
    rng = np.random.default_rng(21)
    for keep in (1, 7, 200):
        sets = random_sets(rng, LENGTHS, 24)
        result = tokenset.merge(sets, keep, method=method, **options)
        check_against(result, sets, fn, keep, **options)
        np.testing.assert_allclose(to_numpy(result.sizes).sum(axis=1), LENGTHS)  # every token is in one group


def test_tome_repeated_merges_compose():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 30, 16)).astype(np.float32)
    first = tokenset.merge(x, 22, method="tome")
    second = tokenset.merge(first.tokens, 15, method="tome", sizes=to_numpy(first.sizes)[:, :22])
    for i in range(2):
        rep1, tok1, size1 = ref.tome(x[i], 22)
        rep2, tok2, size2 = ref.tome(tok1, 15, sizes=size1)
        np.testing.assert_array_equal(second.indices[i], rep2)  # positions in the first call's output
        np.testing.assert_array_equal(first.indices[i][second.indices[i]], rep1[rep2])  # and back to the input
        np.testing.assert_array_equal(to_numpy(second.sizes)[i], size2)
        np.testing.assert_allclose(second.tokens[i], tok2, atol=1e-5)
    assert np.allclose(to_numpy(second.sizes).sum(axis=1), 30)


def test_tome_metric_and_protected_tokens():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 17, 12)).astype(np.float32)
    keys = rng.standard_normal((3, 17, 6)).astype(np.float32)
    result = tokenset.merge(x, 5, method="tome", metric=keys, protected=1)
    for i in range(3):
        rep, tokens, sizes = ref.tome(x[i], 5, metric=keys[i], protected=1)
        np.testing.assert_array_equal(result.indices[i], rep)
        np.testing.assert_allclose(result.tokens[i], tokens, atol=1e-5)
        assert result.indices[i, 0] == 0 and result.sizes[i, 0] == 1  # [CLS] kept alone
        np.testing.assert_allclose(result.tokens[i][0], x[i, 0])


@pytest.mark.parametrize("method", ["divprune", "kcenter", "mmtok", "scores"])
def test_prune_methods(method):
    rng = np.random.default_rng(3)
    sets = random_sets(rng, [0, 3, 50, 120], 32)
    text = rng.standard_normal((5, 32)).astype(np.float32)
    scores = [rng.standard_normal(len(s)) for s in sets]
    options = {"kcenter": {"metric": "l2", "first": "random", "seed": 1}, "mmtok": {"text": text},
               "scores": {"scores": scores}}.get(method, {})
    result = tokenset.prune(sets, keep=0.2, method=method, **options)
    keep = [1, 1, 10, 24]
    firsts = np.floor(np.random.default_rng(1).random(4) * np.array([0, 3, 50, 120])).astype(int)
    for i, s in enumerate(sets):
        if method == "divprune":
            want = kcenter_ref.divprune_published(s, keep[i]) if len(s) else np.zeros(0, int)
        elif method == "kcenter":
            want = kcenter_ref.kcenter_set(s, keep[i], "l2", first=firsts[i])[0]
        elif method == "mmtok":
            want = coverage_ref.coverage_set(coverage_ref.mmtok_matrix(s, text), keep[i])[0] if len(s) else []
        else:
            want = np.lexsort((np.arange(len(s)), -scores[i]))[:keep[i]]
        want = np.sort(np.asarray(want, np.int64))
        n = result.lengths[i]
        np.testing.assert_array_equal(result.indices[i, :n], want)  # original order
        np.testing.assert_array_equal(result.tokens[i], s[want])
        assert (result.sizes[i, :n] == 1).all()


def test_prune_keep_counts_padded_output_and_masks():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 10, 4)).astype(np.float32)
    mask = np.ones((3, 10), bool)
    mask[1, 3:] = False
    mask[2, ::2] = False
    result = tokenset.prune(x, keep=[2, 20, 3], mask=mask, padded=True)
    assert result.lengths.tolist() == [2, 3, 3]
    assert result.tokens.shape == (3, 3, 4) and result.indices.shape == (3, 3)
    assert (result.tokens[0, 2] == 0).all() and result.indices[0, 2] == -1
    valid2 = x[2][mask[2]]
    np.testing.assert_array_equal(result.tokens[2], valid2[result.indices[2]])  # indices count valid tokens only
    assert tokenset.prune(x, keep=1.0).lengths.tolist() == [10, 10, 10]
    assert tokenset.prune(x, keep=0.01).lengths.tolist() == [1, 1, 1]  # at least one token of a non-empty set


def test_merge_then_maxsim_keeps_ranking_quality():
    """CRISP-style reduction: k-means on documents' vectors keeps most of the exact MaxSim ranking."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    docs = [centres[rng.integers(0, 40, rng.integers(30, 80))] + 0.1 * rng.standard_normal((1, 32)).astype(
        np.float32) for _ in range(60)]
    docs = [d + 0.05 * rng.standard_normal(d.shape).astype(np.float32) for d in docs]
    queries = [centres[rng.integers(0, 40, 8)] for _ in range(10)]
    exact = np.argsort(-tokenset.maxsim(queries, docs), axis=1)[:, :10]
    reduced = tokenset.merge(docs, keep=0.5, method="kmeans")
    approx = np.argsort(-tokenset.maxsim(queries, reduced.tokens), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert overlap >= 0.8


@requires_torch
def test_torch_in_torch_out():
    import torch

    x = torch.randn(2, 20, 8)
    for method in ("tome", "dpc_knn", "kmeans", "kmedoids"):
        r = tokenset.merge(x, 5, method=method)
        assert isinstance(r.indices, torch.Tensor) and isinstance(r.tokens.values, torch.Tensor)
        assert isinstance(r.sizes, torch.Tensor)
        expected = tokenset.merge(x.numpy(), 5, method=method)
        np.testing.assert_array_equal(r.indices.numpy(), expected.indices)
        np.testing.assert_allclose(r.tokens.values.numpy(), expected.tokens.values, atol=1e-6)
    r = tokenset.prune(x, 5)
    assert isinstance(r.indices, torch.Tensor) and isinstance(r.tokens.values, torch.Tensor)


def test_bad_input():
    x = np.ones((2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="unknown method 'random'"):
        tokenset.prune(x, 2, method="random")
    with pytest.raises(ValueError, match="unknown method 'tome'"):
        tokenset.prune(x, 2, method="tome")
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        tokenset.prune(x, 1.5)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        tokenset.merge(x, 0.0)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        tokenset.merge(x, 0)
    with pytest.raises(ValueError, match=r"keep must be an integer or have one entry per set"):
        tokenset.merge(x, [1, 2, 3])
    with pytest.raises(TypeError, match="takes no option"):
        tokenset.merge(x, 2, method="kmeans", knn=3)
    with pytest.raises(TypeError, match="takes no option"):
        tokenset.prune(x, 2, text=np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="needs scores"):
        tokenset.prune(x, 2, method="scores")
    with pytest.raises(ValueError, match="one entry per token"):
        tokenset.prune(x, 2, method="scores", scores=np.ones(5))
    with pytest.raises(ValueError, match="sizes must have one entry per token"):
        tokenset.merge(x, 2, sizes=np.ones(3))
    with pytest.raises(ValueError, match="sizes must be positive"):
        tokenset.merge(x, 2, sizes=np.zeros((2, 6)))
    with pytest.raises(ValueError, match="sizes must be positive and finite"):
        tokenset.merge(x, 2, sizes=np.full((2, 6), np.inf))
    with pytest.raises(ValueError, match="protected must be an integer"):
        tokenset.merge(x, 2, protected=-1)
    with pytest.raises(ValueError, match="metric must have one key per token"):
        tokenset.merge(x, 2, metric=np.ones((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="knn must be an integer >= 1"):
        tokenset.merge(x, 2, method="dpc_knn", knn=0)
    with pytest.raises(ValueError, match="iters must be an integer >= 0"):
        tokenset.merge(x, 2, method="kmeans", iters=-1)
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine'"):
        tokenset.merge(x, 2, method="kmedoids", metric="ip")


def test_nan_tokens_never_crash():
    x = np.random.default_rng(0).standard_normal((2, 12, 4)).astype(np.float32)
    x[0, 3] = np.nan
    for method in ("tome", "dpc_knn", "kmeans", "kmedoids"):
        r = tokenset.merge(x, 4, method=method)
        assert r.lengths.tolist()[1] == 4 and np.isfinite(r.tokens[1]).all()
    for method in ("divprune", "kcenter", "mmtok"):
        r = tokenset.prune(x, 4, method=method)
        assert r.lengths.tolist() == [4, 4]


@pytest.mark.parametrize("method,fn", [("tome", ref.tome), ("kmeans", ref.kmeans), ("kmedoids", ref.kmedoids)])
def test_many_small_sets_take_the_native_nearest_path(method, fn):
    """>= 64 small sets in one batch (one native nearest call) against the reference."""
    rng = np.random.default_rng(30)
    sets = random_sets(rng, rng.integers(0, 40, 80), 20)
    check_against(tokenset.merge(sets, 0.5, method=method), sets, fn_with_ratio(fn, 0.5, sets), None)


def nonfinite_sets(seed=5, count=80, dim=4):
    """Small sets (the native nearest path's batches), every fifth holding one NaN, +inf or -inf coordinate."""
    rng = np.random.default_rng(seed)
    sets = random_sets(rng, rng.integers(1, 10, count), dim)
    for i in range(0, count, 5):
        sets[i][rng.integers(0, len(sets[i])), rng.integers(0, dim)] = [np.nan, np.inf, -np.inf][(i // 5) % 3]
    return sets


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the references compute on NaN and inf
@pytest.mark.parametrize("method,fn", [("tome", ref.tome), ("kmeans", ref.kmeans), ("kmedoids", ref.kmedoids),
                                       ("dpc_knn", ref.dpc_knn)])
def test_nan_and_inf_sets_merge_the_same_alone_and_in_a_batch(simd, method, fn):
    """A set holding NaN or +-inf was merged differently alone (a numpy GEMM per set, whose argmax picked a NaN
    score) and inside a batch of >= 64 small sets (MaxSim's native argmax, which ranks NaN as -inf): 8 to 10 of 80
    sets differed, on every SIMD level. One rule now (a NaN similarity ranks as -inf, a NaN distance as +inf, ties to
    the lower index), one native nearest-target op for every batch shape, and the reference follows it too."""
    sets = nonfinite_sets()
    batch = tokenset.merge(sets, 3, method=method)
    for i, s in enumerate(sets):
        alone = tokenset.merge(s, 3, method=method)
        n = batch.lengths[i]
        assert alone.lengths[0] == n, f"set {i}"
        np.testing.assert_array_equal(batch.indices[i, :n], alone.indices[0], err_msg=f"set {i}")
        np.testing.assert_array_equal(batch.sizes[i, :n], alone.sizes[0], err_msg=f"set {i}")
    check_against(batch, sets, fn, 3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the references compute on NaN and inf
@pytest.mark.parametrize("method,fn", [("tome", ref.tome), ("kmeans", ref.kmeans), ("kmedoids", ref.kmedoids)])
def test_nan_scores_rank_as_minus_inf_with_torch_too(method, fn):
    """torch's max(dim) propagates NaN like numpy's argmax did: the torch GEMM path follows the same rule."""
    torch = pytest.importorskip("torch")
    sets = nonfinite_sets(seed=6, count=20)
    result = tokenset.merge([torch.from_numpy(s) for s in sets], 3, method=method)
    check_against(result, sets, fn, 3)


def infinite_coordinate_set():
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    x[5, 1] = np.inf
    return x


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the references compute on NaN and inf
@pytest.mark.parametrize("method,fn", [("kmeans", ref.kmeans), ("kmedoids", ref.kmedoids), ("dpc_knn", ref.dpc_knn),
                                       ("tome", ref.tome)])
def test_one_infinite_coordinate_is_far_from_everything(simd, method, fn):
    """One +inf coordinate: expanded-form distances against an infinite centre are NaN (inf - inf) and the
    expanded score of an infinite token against a finite centre is +inf, where the direct sum_k (x_k - c_k)^2 is +inf
    (or NaN, counted as +inf) for every pair that involves it. k-means collapsed to one cluster of 12 (reference: 4
    clusters, sizes 9, 1, 1, 1), k-medoids and DPC-KNN assigned tokens to the wrong centres."""
    x = infinite_coordinate_set()
    for keep in (2, 4, 7):
        check_against(tokenset.merge(x, keep, method=method), [x], fn, keep)
        check_against(tokenset.merge([x] * 64, keep, method=method), [x] * 64, fn, keep)
    if method in ("kmeans", "kmedoids"):
        np.testing.assert_array_equal(tokenset.merge(x, 4, method=method).sizes, [[9, 1, 1, 1]])
    for value in (np.nan, -np.inf):  # NaN and -inf, and a centre of the infinite token's own infinity
        y = np.concatenate([x, x[5:6]])
        y[3, 2] = value
        check_against(tokenset.merge(y, 4, method=method), [y], fn, 4)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the references compute on NaN and inf
def test_kmedoids_nan_token_follows_the_nan_rule():
    """The reference's KKZ start took np.argmax of the norms, which picks a NaN norm first; the implementation (and the
    rule everywhere else) ranks NaN as -inf: the largest finite norm starts. Both now agree."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    x[3, 0] = np.nan
    norms = (x.astype(np.float64) ** 2).sum(axis=1)
    assert ref._kkz(x.astype(np.float64), 3, x.astype(np.float64))[0] == int(np.nanargmax(norms)) == 1
    for method, fn in (("kmedoids", ref.kmedoids), ("kmeans", ref.kmeans)):
        check_against(tokenset.merge(x, 3, method=method), [x], fn, 3)
        check_against(tokenset.merge([x] * 64, 3, method=method), [x] * 64, fn, 3)
    everything_nan = np.full((3, 2), np.nan)
    assert ref._kkz(everything_nan, 2, everything_nan)[0] == 0  # ties (all NaN) to the lower index


def fn_with_ratio(fn, ratio, sets):
    keeps = {id(s): max(1, int(np.rint(ratio * len(s)))) for s in sets}
    return lambda s, _keep, **kw: fn(s, keeps[id(s)], **kw)


def test_gpu_matches_cpu(cuda):
    """prune / merge on CUDA tensors: kcenter, coverage and segment_sum kernels, GEMMs of torch on the device."""
    import torch

    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 300, 64)).astype(np.float32)
    text = rng.standard_normal((4, 12, 64)).astype(np.float32)
    xg = torch.from_numpy(x).cuda()
    for method, options in [("divprune", {}), ("kcenter", {"metric": "l2", "first": 0}),
                            ("mmtok", {"text": list(text)})]:
        gpu_options = {"text": [torch.from_numpy(t).cuda() for t in text]} if method == "mmtok" else options
        cpu = tokenset.prune(x, 30, method=method, **options)
        gpu = tokenset.prune(xg, 30, method=method, **gpu_options)
        assert gpu.indices.is_cuda and gpu.tokens.values.is_cuda
        agree = (to_numpy(gpu.indices) == cpu.indices).mean()
        assert agree == 1.0 if method != "mmtok" else agree > 0.9  # MMTok matrices: different GEMMs
    for method in ("tome", "dpc_knn", "kmeans", "kmedoids"):
        cpu = tokenset.merge(x, 30, method=method)
        gpu = tokenset.merge(xg, 30, method=method)
        assert gpu.tokens.values.is_cuda
        np.testing.assert_array_equal(to_numpy(gpu.indices), cpu.indices)
        np.testing.assert_array_equal(to_numpy(gpu.sizes), cpu.sizes)
        np.testing.assert_allclose(to_numpy(gpu.tokens.values), cpu.tokens.values, atol=1e-4)


def test_tome_zero_keys_have_similarity_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 20, 6)).astype(np.float32)
    x[0, 3] = 0  # an A token
    x[0, 6] = 0  # ... and another one
    x[0, 9] = 0  # a B token
    result = tokenset.merge(x, 12, method="tome")
    rep, tokens, sizes = ref.tome(x[0], 12)
    np.testing.assert_array_equal(result.indices[0], rep)
    np.testing.assert_array_equal(result.sizes[0], sizes)
    np.testing.assert_allclose(result.tokens[0], tokens, atol=1e-5)


# ---- regressions of the reliability issue: layouts, per-token values, memory, CUDA index arrays ----------------------
def assert_same_merge(got, want):
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))
    np.testing.assert_array_equal(to_numpy(got.sizes), to_numpy(want.sizes))
    np.testing.assert_allclose(to_numpy(got.tokens.values), to_numpy(want.tokens.values), rtol=1e-6, atol=1e-6)
    assert not (np.abs(to_numpy(got.tokens.values)) >= GAP_FILL / 2).any()  # no gap row was merged in


@pytest.mark.parametrize("lengths", [[0, 1, 2, 5, 40, 101], list(np.random.default_rng(3).integers(0, 30, 80))],
                         ids=["gemm", "native"])
@pytest.mark.parametrize("method,fn,options", CASES, ids=[f"{m}-{o}" for m, _, o in CASES])
def test_gapped_ragged_merges_its_own_tokens(method, fn, options, lengths):
    """A valid Ragged whose values start past row 0 and end after its last set: DPC-KNN merged gap rows into group
    0, ToMe / k-means / k-medoids crashed with numpy broadcast errors. On both nearest-neighbour paths."""
    rng = np.random.default_rng(17)
    sets = random_sets(rng, lengths, 12)
    want = tokenset.merge(sets, 0.4, method=method, **options)
    check_against(want, sets, fn_with_ratio(fn, 0.4, sets), None, **options)
    for before, after in [(3, 2), (0, 3), (4, 0)]:
        assert_same_merge(tokenset.merge(gapped(sets, before, after), 0.4, method=method, **options), want)


@pytest.mark.parametrize("method", ["tome", "dpc_knn"])
def test_sizes_follow_a_non_prefix_mask(method):
    """[B, N] sizes of padded tokens with a non-prefix mask were read as prefixes (wrong weights, silently)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 16, 8)).astype(np.float32)
    mask = rng.random((3, 16)) < 0.7
    mask[:, :2] = [False, True]
    sizes = np.where(mask, rng.random((3, 16)) + 0.5, 1e6)  # padding positions: sizes that would show
    sets = [x[i][mask[i]] for i in range(3)]
    want = tokenset.merge(sets, 4, method=method, sizes=[sizes[i][mask[i]] for i in range(3)])
    got = tokenset.merge(x, 4, method=method, sizes=sizes, mask=mask)
    assert_same_merge(got, want)
    np.testing.assert_allclose(to_numpy(got.sizes).sum(axis=1), [sizes[i][mask[i]].sum() for i in range(3)],
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"sizes \[B, N\] must have the mask's shape \(3, 16\)"):
        tokenset.merge(x, 4, method=method, sizes=sizes[:, :15], mask=mask)
    if method == "tome":  # keys padded like the tokens are gathered like them
        keys = rng.standard_normal((3, 16, 5)).astype(np.float32)
        want = tokenset.merge(sets, 4, metric=[keys[i][mask[i]] for i in range(3)])
        assert_same_merge(tokenset.merge(x, 4, metric=keys, mask=mask), want)


def test_per_set_sizes_are_checked_set_by_set():
    rng = np.random.default_rng(0)
    sets = random_sets(rng, [3, 5], 4)
    for method in ("tome", "dpc_knn"):
        with pytest.raises(ValueError, match=r"sizes\[0\] has 5 entries but set 0 has 3 tokens"):
            tokenset.merge(sets, 2, method=method, sizes=[np.ones(5), np.ones(3)])


@pytest.mark.parametrize("method", ["tome", "dpc_knn", "kmeans", "kmedoids"])
def test_huge_keep_is_clamped_to_the_sets(method):
    """keep=2**40 on small sets: k-means / k-medoids asked k-center for [B, 2**40] picks (MemoryError)."""
    x = np.random.default_rng(2).standard_normal((6, 5, 4)).astype(np.float32)
    want = tokenset.merge(x, 5, method=method)
    for keep in (2**40, np.full(6, 2**62, np.uint64)):
        assert_same_merge(tokenset.merge(x, keep, method=method), want)


def test_many_small_sets_memory_is_bounded_by_the_tokens():
    """20,000 sets of 2 tokens and one of 5,000 (2.7 MiB of tokens) on the native nearest-neighbour path: the MaxSim
    argmax output was [sets, 1, longest set] int32, +251 MiB (ToMe) / +492 MiB (k-means) at its peak. Sets now go to
    MaxSim by length class; what remains is MaxSim's own query-panel budget (64 MiB)."""
    code = PEAK_OF_THIS_PROCESS + textwrap.dedent("""
        import sys, numpy as np, tokenset
        rng = np.random.default_rng(0)
        sets = [rng.standard_normal((2, 16)).astype(np.float32) for _ in range(20_000)]
        sets.append(rng.standard_normal((5_000, 16)).astype(np.float32))
        tokenset.merge(sets[:100], 1, method="tome")  # warm-up
        for method in ("tome", "kmeans", "kmedoids"):
            before = peak()
            r = tokenset.merge(sets, 1, method=method)
            assert np.allclose(r.sizes.sum(axis=1), [len(s) for s in sets])
            print(method, peak() - before)
        """)
    env = subprocess_env(TOKENSET_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.split("\n"):
        if line.strip():
            method, added = line.split()
            assert int(added) < (64 + 48) << 20, f"{method}: +{int(added) >> 20} MiB"




def dpc_knn_scratch_bound(n: int) -> int:
    """The README's bound on DPC-KNN's scratch for one set of n tokens (float32 input, one array: no copy of the
    tokens): row chunks of r = max(1, 2^26 // (13 n)) distance rows, 13 bytes per distance (float64 distances and a
    1-byte mask reused by every chunk, the chunk's float32 GEMM block), plus 128 bytes per token."""
    rows = max(1, (64 << 20) // (13 * n))
    return 13 * rows * n + 128 * n


@pytest.mark.parametrize("n", [5_000, 20_000])
def test_dpc_knn_memory_is_bounded_by_a_chunk_of_distance_rows(n):
    """One set of 5,000 tokens (dim 64, float32): DPC-KNN added +237 MiB at its peak (20,000 tokens: +216 MiB), while
    the README promised 64 MiB of scores per chunk: a 64 MiB float64 block of distance rows beside its float32 GEMM
    block, a partitioned copy of it, a masked copy and [rows, n] boolean temporaries for the delta pass. Every
    temporary of a chunk now fits the 64 MiB together (measured +64 / +64 MiB). The bound itself is the README's
    formula (dpc_knn_scratch_bound): the arrays' peak (tracemalloc, exact) within 4 MiB of it, the process's RSS
    within 40 MiB (glibc's heap keeps freed blocks depending on what ran before: +65 to +85 MiB seen for one call)."""
    code = PEAK_OF_THIS_PROCESS + textwrap.dedent(f"""
        import tracemalloc, numpy as np, tokenset
        x = np.random.default_rng(0).standard_normal(({n}, 64), dtype=np.float32)
        tokenset.merge(x[:50], 5, method="dpc_knn")  # warm-up
        before = peak()
        tracemalloc.start()
        r = tokenset.merge(x, {n // 10}, method="dpc_knn")
        traced = tracemalloc.get_traced_memory()[1]
        added = peak() - before
        assert r.lengths.tolist() == [{n // 10}] and r.sizes.sum() == {n}
        print(traced, added)
        """)
    env = subprocess_env(TOKENSET_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traced, added = (int(v) for v in proc.stdout.split()[-2:])
    assert traced < dpc_knn_scratch_bound(n) + (4 << 20), f"n={n}: arrays +{traced / 2**20:.0f} MiB"
    assert added < dpc_knn_scratch_bound(n) + (40 << 20), f"n={n}: RSS +{added / 2**20:.0f} MiB"


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_tome_memory_is_one_chunk_of_scores(library):
    """ToMe on one set of 20,000 tokens (dim 64): the chunk's A x B scores were scaled by the norms into two more
    full-size copies (+129 MiB numpy, +130 MiB torch, against the README's 64 MiB of scores per chunk); they are now
    scaled in place (measured +61 / +76 MiB). Bound: the 64 MiB chunk + the tokens' float32 unit keys and plan
    (< 128 bytes per token) + 16 MiB for the allocator (torch keeps a cache)."""
    if library == "torch":
        pytest.importorskip("torch")
    code = PEAK_OF_THIS_PROCESS + textwrap.dedent(f"""
        import numpy as np, tokenset
        x = np.random.default_rng(0).standard_normal((20_000, 64), dtype=np.float32)
        if {library!r} == "torch":
            import torch
            x = torch.from_numpy(x)
        tokenset.merge([x[:100]], 10, method="tome")  # warm-up
        before = peak()
        r = tokenset.merge([x], 10_000, method="tome")
        print(peak() - before)
        """)
    env = subprocess_env(TOKENSET_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = int(proc.stdout.split()[-1])
    assert added < (64 << 20) + 128 * 20_000 + (16 << 20), f"{library}: +{added / 2**20:.0f} MiB"


def test_gpu_many_small_sets_match_cpu(cuda):
    """64+ CUDA sets take the native nearest-neighbour path: host candidate lists beside CUDA tokens made MaxSim's
    device check refuse the call ("inputs are on different devices"). Also a gapped CUDA Ragged and a mask."""
    import torch

    rng = np.random.default_rng(12)
    sets = random_sets(rng, rng.integers(0, 30, 90), 16)
    cpu_ragged = gapped(sets)
    gpu_ragged = tokenset.Ragged(torch.from_numpy(np.asarray(cpu_ragged.values)).cuda(), cpu_ragged.offsets)
    for method in ("tome", "dpc_knn", "kmeans", "kmedoids"):
        cpu = tokenset.merge(sets, 0.5, method=method)
        for given in ([torch.from_numpy(s).cuda() for s in sets], gpu_ragged):
            gpu = tokenset.merge(given, 0.5, method=method)
            assert gpu.tokens.values.is_cuda and gpu.indices.is_cuda
            np.testing.assert_array_equal(to_numpy(gpu.indices), cpu.indices)
            np.testing.assert_array_equal(to_numpy(gpu.sizes), cpu.sizes)
            np.testing.assert_allclose(to_numpy(gpu.tokens.values), cpu.tokens.values, atol=1e-4)
    x = rng.standard_normal((70, 12, 16)).astype(np.float32)
    mask = rng.random((70, 12)) < 0.5
    sizes = rng.random((70, 12)).astype(np.float32) + 0.5
    cpu = tokenset.merge(x, 3, sizes=sizes, mask=mask)
    gpu = tokenset.merge(torch.from_numpy(x).cuda(), 3, sizes=torch.from_numpy(sizes).cuda(),
                         mask=torch.from_numpy(mask).cuda())
    np.testing.assert_array_equal(to_numpy(gpu.indices), cpu.indices)
    np.testing.assert_allclose(to_numpy(gpu.sizes), cpu.sizes, rtol=1e-6)


@requires_torch
@pytest.mark.parametrize("method", ["kmeans", "kmedoids", "dpc_knn"])
def test_torch_batches_of_empty_sets(method):
    """Every set empty, as torch tensors: no groups (the exact shift's per-set extremes once crashed on no sets)."""
    import torch

    empty = torch.zeros(0, 4)
    assert tokenset.merge([empty, empty], keep=1, method=method).lengths.tolist() == [0, 0]
    padded = tokenset.merge(torch.ones(2, 3, 4), keep=1, method=method, lengths=np.array([0, 0]))
    assert padded.lengths.tolist() == [0, 0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference computes on NaN
def test_tome_never_merges_protected_tokens_beside_nan_keys():
    """A free A token whose similarities are all NaN ranks below every number but above the protected tokens (the
    reference once merged [CLS] away there)."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    x[4, 0] = np.nan
    got = tokenset.merge(x, 1, method="tome", protected=2)
    want = ref.tome(x, 1, protected=2)
    np.testing.assert_array_equal(got.indices[0, :got.lengths[0]], want[0])
    assert {0, 1} <= set(got.indices[0].tolist())
