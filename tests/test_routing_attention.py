"""Bi-level routing attention against a numpy transcription of BiFormer's published algorithm (divisible grids) and
the reference of tokenset's semantics (any grid, padding masked), gradients against torch autograd through BiFormer's
gather implementation. Tolerance: float32 2e-5 absolute (outputs and gradients are O(1))."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import routing_attention as ref

from conftest import HAVE_TORCH, requires_torch

if HAVE_TORCH:
    import torch


def grid_qkv(rng, batch, heads, kv_heads, grid, dim):
    n = grid[0] * grid[1]
    return (rng.standard_normal((batch, heads, n, dim)).astype(np.float32),
            rng.standard_normal((batch, kv_heads, n, dim)).astype(np.float32),
            rng.standard_normal((batch, kv_heads, n, dim)).astype(np.float32))


@pytest.mark.parametrize("grid,regions,topk", [((8, 8), 2, 2), ((14, 14), 7, 4), ((28, 21), 7, 3), ((6, 6), 1, 1),
                                               ((12, 12), 3, 9)])
def test_matches_biformer_on_divisible_grids(grid, regions, topk):
    rng = np.random.default_rng(grid[0] * 100 + topk)
    q, k, v = grid_qkv(rng, 2, 4, 4, grid, 16)
    scale = (4 * 16) ** -0.5
    out, routes = tokenset.routing_attention(q, k, v, grid, regions, topk, return_routes=True)
    np.testing.assert_allclose(out, ref.biformer(q, k, v, grid, regions, topk, scale), atol=2e-5, rtol=0)
    assert routes.shape == (2, regions * regions, topk)
    assert np.array_equal(routes, ref.routes(q, k, grid, regions, topk))


@pytest.mark.parametrize("grid,regions,topk,heads,kv_heads", [((9, 11), 3, 2, 2, 1), ((5, 5), 7, 3, 2, 2),
                                                              ((8, 8), 7, 4, 4, 2), ((1, 13), 4, 2, 1, 1),
                                                              ((7, 7), 7, 60, 1, 1)])
def test_any_grid_matches_the_reference_with_padding_masked(grid, regions, topk, heads, kv_heads):
    rng = np.random.default_rng(sum(grid) + topk)
    q, k, v = grid_qkv(rng, 2, heads, kv_heads, grid, 8)
    out, routes = tokenset.routing_attention(q, k, v, grid, regions, topk, scale=0.3, return_routes=True)
    np.testing.assert_allclose(out, ref.routing_attention(q, k, v, grid, regions, topk, 0.3), atol=2e-5, rtol=0)
    windows = ref.windows(grid, regions)
    occupied = set(np.unique(windows).tolist())
    assert set(np.unique(routes).tolist()) <= occupied  # a window without tokens is never routed to
    assert routes.shape[-1] == min(topk, len(occupied))


@requires_torch
def test_gradients_match_autograd_through_the_gather_implementation():
    torch.manual_seed(0)
    batch, heads, grid, regions, topk, dim = 2, 2, (8, 8), 4, 3, 8
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(batch, heads, n, dim, dtype=torch.float64) for _ in range(3))
    scale = (heads * dim) ** -0.5
    routes = torch.from_numpy(ref.routes(q.numpy(), k.numpy(), grid, regions, topk))
    side = grid[0] // regions

    def to_regions(x):  # [B, H, N, d] -> [B, H, R, side * side, d]
        x = x.reshape(batch, heads, regions, side, regions, side, dim).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(batch, heads, regions * regions, side * side, dim)

    def gather_attention(q, k, v):
        qs, ks, vs = to_regions(q), to_regions(k), to_regions(v)
        index = routes[:, None, :, :, None, None].expand(-1, heads, -1, -1, side * side, dim)
        k_g = torch.gather(ks[:, :, None].expand(-1, -1, regions * regions, -1, -1, -1), 3, index)
        v_g = torch.gather(vs[:, :, None].expand(-1, -1, regions * regions, -1, -1, -1), 3, index)
        p = torch.softmax((qs * scale) @ k_g.flatten(3, 4).transpose(-1, -2), -1)
        out = p @ v_g.flatten(3, 4)
        out = out.reshape(batch, heads, regions, regions, side, side, dim).permute(0, 1, 2, 4, 3, 5, 6)
        return out.reshape(batch, heads, n, dim)

    grad = torch.randn(batch, heads, n, dim, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    gather_attention(*leaves).backward(grad)
    ours = [x.float().requires_grad_() for x in (q, k, v)]
    out = tokenset.routing_attention(*ours, grid, regions, topk)
    out.backward(grad.float())
    for a, b in zip(ours, leaves):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=2e-5, rtol=0)


@requires_torch
def test_torch_low_precision_and_no_copies_of_k_and_v():
    rng = np.random.default_rng(3)
    q, k, v = (torch.from_numpy(x) for x in grid_qkv(rng, 1, 2, 2, (14, 14), 32))
    want = ref.routing_attention(q.bfloat16().double().numpy(), k.bfloat16().double().numpy(),
                                 v.bfloat16().double().numpy(), (14, 14), 7, 4, 64 ** -0.5)
    out = tokenset.routing_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), (14, 14), 7, 4)
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.double().numpy(), want, atol=1.6e-2, rtol=0)


def test_bad_arguments():
    q = np.ones((1, 2, 16, 4), np.float32)
    with pytest.raises(ValueError, match="grid"):
        tokenset.routing_attention(q, q, q, (4, 5))
    with pytest.raises(ValueError, match=">= 1"):
        tokenset.routing_attention(q, q, q, (4, 4), regions=0)
    with pytest.raises(ValueError, match="4-D"):
        tokenset.routing_attention(q[0], q[0], q[0], (4, 4))
    with pytest.raises(ValueError, match="grid must be"):
        tokenset.routing_attention(q, q, q, (16,))
