"""prune() and merge(): every method against its numpy reference (tokenset/reference/merge.py, kcenter.py,
coverage.py), PruneResult's layout, options and errors.

Tolerances: kept indices and sizes exactly; merged tokens within 1e-5 absolute of the float64 reference (float32
weighted averages of O(1) values). Random data keeps near-ties of float32 distances away; exact ties are ruled by
index on both sides (k-means / k-medoids costs within a relative 1e-5 count as ties).
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import coverage as coverage_ref
from tokenset.reference import kcenter as kcenter_ref
from tokenset.reference import merge as ref

from conftest import random_sets, requires_torch, to_numpy

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
    with pytest.raises(ValueError, match="unknown method 'fastv'"):
        tokenset.prune(x, 2, method="fastv")
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
    """>= 64 small sets: nearest neighbours come from one native MaxSim argmax call instead of a GEMM per set."""
    rng = np.random.default_rng(30)
    sets = random_sets(rng, rng.integers(0, 40, 80), 20)
    check_against(tokenset.merge(sets, 0.5, method=method), sets, fn_with_ratio(fn, 0.5, sets), None)


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
