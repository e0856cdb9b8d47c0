"""prune(): what reaches the methods is the sets' own tokens and per-token values, whatever the input's layout.

Regressions of the reliability issue: a valid Ragged whose values start past row 0 or end after its last set (prune
returned the right indices with the wrong tokens); per-token ``scores`` of padded input with a non-prefix ``mask``
(gathered as prefixes: wrong tokens picked silently) and per-set lists checked only for their total; a huge ``keep``
on small sets (a [B, keep] array allocated before anything looked at the sets). The methods themselves are tested
against their references in tests/test_merge.py, tests/test_kcenter.py and tests/test_coverage.py.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import tokenset

from conftest import GAP_FILL, gapped, random_sets, to_numpy

METHODS = ["divprune", "kcenter", "mmtok", "scores"]


def options_for(method, sets, rng):
    text = rng.standard_normal((5, sets[0].shape[1])).astype(np.float32)
    scores = [rng.standard_normal(len(s)) for s in sets]
    return {"kcenter": {"metric": "l2", "first": "random", "seed": 1}, "mmtok": {"text": text},
            "scores": {"scores": scores}}.get(method, {})


def assert_same_result(got, want, sets):
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))
    np.testing.assert_array_equal(to_numpy(got.sizes), to_numpy(want.sizes))
    for i, s in enumerate(sets):
        n = got.lengths[i]
        np.testing.assert_array_equal(to_numpy(got.tokens[i]), s[to_numpy(got.indices)[i, :n]], err_msg=f"set {i}")
    assert not (np.abs(to_numpy(got.tokens.values).astype(np.float64)) >= GAP_FILL / 2).any()  # no gap row


@pytest.mark.parametrize("before,after", [(3, 2), (0, 4), (5, 0)])
@pytest.mark.parametrize("method", METHODS)
def test_gapped_ragged_gives_the_sets_tokens(method, before, after):
    """Ragged(values, [3, 7, 12]) is valid; prune gathered its kept tokens from row 0 (sentinel rows here)."""
    rng = np.random.default_rng(2)
    sets = random_sets(rng, [0, 3, 50, 17], 16)
    options = options_for(method, sets, rng)
    want = tokenset.prune(sets, 0.3, method=method, **options)
    got = tokenset.prune(gapped(sets, before, after), 0.3, method=method, **options)
    assert_same_result(got, want, sets)
    padded = tokenset.prune(gapped(sets, before, after), 0.3, method=method, padded=True, **options)
    np.testing.assert_array_equal(padded.tokens, want.tokens.to_padded()[0])


def test_scores_follow_a_non_prefix_mask():
    """[B, N] scores with a mask whose valid tokens are not a prefix: the scores at the mask's positions count; the
    padding positions hold the largest scores, which the prefix gather picked."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 10, 8)).astype(np.float32)
    mask = rng.random((3, 10)) < 0.6
    mask[:, 0] = False  # never a prefix
    mask[2] = False  # an empty set
    scores = np.where(mask, rng.standard_normal((3, 10)), 1e9)
    sets = [x[i][mask[i]] for i in range(3)]
    want = tokenset.prune(sets, 3, method="scores", scores=[scores[i][mask[i]] for i in range(3)])
    got = tokenset.prune(x, 3, method="scores", scores=scores, mask=mask)
    assert_same_result(got, want, sets)
    for i in range(2):
        valid = scores[i][mask[i]]
        top = np.sort(np.lexsort((np.arange(len(valid)), -valid))[:3])
        np.testing.assert_array_equal(got.indices[i, :len(top)], top)
    with pytest.raises(ValueError, match=r"scores \[B, N\] must have the mask's shape \(3, 10\)"):
        tokenset.prune(x, 3, method="scores", scores=scores[:, :9], mask=mask)
    # With lengths the valid tokens are a prefix: [B, N'] scores (N' >= the longest set) keep working.
    lengths = np.array([4, 10, 0])
    got = tokenset.prune(x, 2, method="scores", scores=scores, lengths=lengths)
    want = tokenset.prune([x[i, :n] for i, n in enumerate(lengths)], 2, method="scores",
                          scores=[scores[i, :n] for i, n in enumerate(lengths)])
    np.testing.assert_array_equal(got.indices, want.indices)


def test_per_set_scores_are_checked_set_by_set():
    """Lists of per-set scores were checked only for their total: [5, 3] scores for sets of [3, 5] tokens passed and
    scored set 0's tokens with set 0's first 3 and set 1's with the rest."""
    rng = np.random.default_rng(0)
    sets = random_sets(rng, [3, 5], 4)
    with pytest.raises(ValueError, match=r"scores\[0\] has 5 entries but set 0 has 3 tokens"):
        tokenset.prune(sets, 2, method="scores", scores=[np.ones(5), np.ones(3)])
    with pytest.raises(ValueError, match=r"a list needs one array per set \(2 sets\), got 3"):
        tokenset.prune(sets, 2, method="scores", scores=[np.ones(3), np.ones(5), np.ones(0)])
    flat = rng.standard_normal(8)
    np.testing.assert_array_equal(tokenset.prune(sets, 2, method="scores", scores=flat).indices,
                                  tokenset.prune(sets, 2, method="scores", scores=[flat[:3], flat[3:]]).indices)


@pytest.mark.parametrize("method", METHODS)
def test_huge_keep_is_clamped_to_the_sets_before_allocating(method):
    """keep=20,000,000 on 12 sets of 3 tokens allocated [12, keep] (1.9 GiB) before anything looked at the sets;
    2**40 could not be allocated at all."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 3, 8)).astype(np.float32)
    sets = list(x)
    options = options_for(method, sets, rng)
    want = tokenset.prune(x, 3, method=method, **options)
    for keep in (2**40, np.full(12, 2**62, np.int64), 1_000_000):
        got = tokenset.prune(x, keep, method=method, **options)
        assert_same_result(got, want, sets)
    tracemalloc.start()
    try:
        tokenset.prune(x, 1_000_000, method=method, **options)  # [12, 10**6] int64 is 92 MiB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
