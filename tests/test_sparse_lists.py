"""The list builders against their loop references (float64 scores; the inputs are random normals, so no score is
within float32 rounding of a tie), and end to end through sparse_attention."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import sparse_lists as ref
from tokenset.reference.sparse_attention import sparse_attention as dense_reference

from conftest import HAVE_TORCH

if HAVE_TORCH:
    import torch


def qk(seed, batch=2, heads=4, kv_heads=2, n=300, m=300, dim=16):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, heads, n, dim)).astype(np.float32),
            rng.standard_normal((batch, kv_heads, m, dim)).astype(np.float32))


def test_block_mask_lists_and_broadcasting():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 3, 4, 5)) < 0.4
    lists = tokenset.lists_from_block_mask(mask, block_size=32, key_block_size=16)
    offsets, index = ref.lists_from_block_mask(mask)
    assert np.array_equal(lists.key_offsets, offsets) and np.array_equal(lists.key_index, index)
    assert (lists.block_size, lists.key_block_size) == (32, 16)
    shared = tokenset.lists_from_block_mask(mask[:1, :1], batch=2, heads=3)
    offsets, index = ref.lists_from_block_mask(np.broadcast_to(mask[:1, :1], mask.shape))
    assert np.array_equal(shared.key_offsets, offsets) and np.array_equal(shared.key_index, index)
    with pytest.raises(TypeError, match="boolean"):
        tokenset.lists_from_block_mask(mask.astype(np.int8))
    with pytest.raises(ValueError, match="broadcast"):
        tokenset.lists_from_block_mask(mask, heads=5)


@pytest.mark.parametrize("kwargs", [dict(topk=3), dict(density=0.3, causal=True, sink_blocks=1, local_blocks=1),
                                    dict(topk=2, key_block_size=16, block_size=32, causal=True),
                                    dict(density=1.0, block_size=50, key_block_size=7), dict(topk=0, local_blocks=2)])
def test_topk_block_lists_match_the_reference(kwargs):
    q, k = qk(1)
    lists = tokenset.topk_block_lists(q, k, **kwargs)
    full = dict(topk=None, density=None, block_size=64, key_block_size=None, causal=False, sink_blocks=0,
                local_blocks=0, scale=0.25)
    full.update(kwargs)
    full["key_block_size"] = full["key_block_size"] or full["block_size"]
    offsets, index = ref.topk_block_lists(q, k, **full)
    assert np.array_equal(lists.key_offsets, offsets) and np.array_equal(lists.key_index, index)


def test_topk_lists_with_fewer_queries_than_keys_and_errors():
    q, k = qk(2, n=70, m=300)
    lists = tokenset.topk_block_lists(q, k, topk=2, causal=True, block_size=32)
    offsets, index = ref.topk_block_lists(q, k, 2, None, 32, 32, True, 0, 0, 0.25)
    assert np.array_equal(lists.key_index, index)
    with pytest.raises(ValueError, match="exactly one"):
        tokenset.topk_block_lists(q, k)
    with pytest.raises(ValueError, match="density"):
        tokenset.topk_block_lists(q, k, density=1.5)
    with pytest.raises(ValueError, match="4-D"):
        tokenset.topk_block_lists(q[0], k[0], topk=1)


@pytest.mark.parametrize("n,block,step,initial,local,theta", [(300, 8, 4, 40, 1, 1.0), (300, 8, 4, 40, 2, 0.5),
                                                              (257, 16, 2, 0, 1, 2.0), (64, 8, 16, 20, 1, 1.0),
                                                              (100, 4, 4, 100, 3, 0.0)])
def test_anchor_stripe_lists_match_the_reference(n, block, step, initial, local, theta):
    q, k = qk(3, n=n, m=n)
    lists = tokenset.anchor_stripe_lists(q, k, block, step, initial, local, theta)
    offsets, index = ref.anchor_stripe_lists(q, k, block, step, initial, local, theta, 0.25)
    assert np.array_equal(lists.key_offsets, offsets) and np.array_equal(lists.key_index, index)
    assert (lists.block_size, lists.key_block_size) == (block * step, 1)
    out = tokenset.sparse_attention(q, k, k, *lists, causal=True)
    want, _ = dense_reference(q, k, k, lists.key_offsets, lists.key_index, block * step, 1, True)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=0)


def test_list_density():
    mask = np.zeros((1, 2, 4, 4), bool)
    mask[0, 0, :, 0] = True  # one key block of four for every query block of head 0
    lists = tokenset.lists_from_block_mask(mask, block_size=16)
    assert tokenset.list_density(lists, 64, 64) == pytest.approx(0.125)


def test_builders_take_torch_tensors():
    if not HAVE_TORCH:
        pytest.skip("torch not installed")
    q, k = qk(4)
    a = tokenset.topk_block_lists(torch.from_numpy(q).bfloat16(), torch.from_numpy(k).bfloat16(), topk=2)
    assert a.key_offsets[-1] == 2 * 4 * 5 * 2
    b = tokenset.anchor_stripe_lists(torch.from_numpy(q).requires_grad_(), torch.from_numpy(k), 8, 4, 40)
    assert np.array_equal(b.key_index, tokenset.anchor_stripe_lists(q, k, 8, 4, 40).key_index)


def test_builder_edge_cases():
    """density x blocks that is an integer up to rounding (0.07 x 100) keeps that many; a mask without key blocks
    gives empty lists; block sizes below 1 are errors."""
    q, k = qk(5, batch=1, heads=1, kv_heads=1, n=64, m=6400, dim=8)
    lists = tokenset.topk_block_lists(q, k, density=0.07, block_size=64)
    assert np.all(np.diff(lists.key_offsets) == 7)
    empty = tokenset.lists_from_block_mask(np.zeros((1, 2, 3, 0), bool))
    assert np.array_equal(empty.key_offsets, np.zeros(7, np.int64)) and len(empty.key_index) == 0
    with pytest.raises(ValueError, match=">= 1"):
        tokenset.lists_from_block_mask(np.ones((1, 1, 1, 1), bool), block_size=0)
