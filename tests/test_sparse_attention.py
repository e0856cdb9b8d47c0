"""Sparse attention over index lists, forward and backward, against the dense masked numpy reference (float64), torch
SDPA with the expanded boolean mask, FlexAttention (eager) on the same block mask, and torch autograd.

Tolerances (outputs and gradients are O(1) here): float32 2e-5 absolute; float16 and bfloat16 are compared with the
reference computed on the same rounded inputs, and their error is bounded by the output's own rounding (half an ulp
of the dtype at the value) plus the float32 error: 2e-3 (float16) and 1.6e-2 (bfloat16) absolute, and never more than
twice a naive torch implementation in that dtype where one is measured.
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import sparse_attention as ref

from conftest import BF16, HAVE_TORCH, SIMD_LEVELS, as_dtype, requires_torch, to_numpy

if HAVE_TORCH:
    import torch

TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def random_lists(rng, lists: int, key_blocks: int, density: float, empty_every: int = 0):
    """CSR lists of random key blocks (sorted, distinct); every `empty_every`-th list empty."""
    offsets, index = [0], []
    for i in range(lists):
        chosen = np.flatnonzero(rng.random(key_blocks) < density)
        if empty_every and i % empty_every == 0:
            chosen = chosen[:0]
        index.extend(chosen.tolist())
        offsets.append(len(index))
    return np.array(offsets, np.int64), np.array(index, np.int64)


def qkv(rng, batch, heads, kv_heads, n, m, dim, dtype="float32"):
    q = rng.standard_normal((batch, heads, n, dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv_heads, m, dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv_heads, m, dim)).astype(np.float32)
    return tuple(as_dtype(x, dtype) for x in (q, k, v))


def f64(x):
    return np.asarray(to_numpy(x), np.float64) if not (BF16 is not None and np.asarray(x).dtype == BF16) else \
        np.asarray(x).astype(np.float64)


CASES = [
    # batch, heads, kv_heads, n, m, dim, block, key_block, causal, density
    (2, 4, 2, 100, 130, 40, 16, 16, False, 0.4),
    (1, 2, 1, 200, 200, 64, 64, 1, True, 0.3),
    (2, 2, 2, 77, 77, 8, 32, 64, True, 0.6),
    (1, 3, 3, 5, 3, 3, 4, 1, False, 0.7),
    (1, 2, 2, 129, 70, 130, 128, 7, True, 0.5),
    (3, 1, 1, 1, 1, 1, 1, 1, False, 1.0),
    (1, 8, 2, 300, 300, 32, 48, 20, True, 0.25),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_backward_match_the_dense_masked_reference(case, dtype):
    batch, heads, kv_heads, n, m, dim, bs, kbs, causal, density = case
    rng = np.random.default_rng(hash(case) % 2**32)
    q, k, v = qkv(rng, batch, heads, kv_heads, n, m, dim, dtype)
    offsets, index = random_lists(rng, batch * heads * -(-n // bs), -(-m // kbs), density, empty_every=5)
    out, lse = tokenset.sparse_attention(q, k, v, offsets, index, bs, kbs, causal, return_lse=True)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == np.float32
    want, want_lse = ref.sparse_attention(f64(q), f64(k), f64(v), offsets, index, bs, kbs, causal)
    np.testing.assert_allclose(f64(out), want, atol=TOL[dtype], rtol=0)
    assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[finite], want_lse[finite], atol=2e-5 * max(1.0, np.abs(want_lse[finite]).max(
        initial=1.0)), rtol=0)
    # A row that sees nothing (empty list or all keys in the causal future) gives zeros.
    assert np.all(f64(out)[np.isneginf(want_lse)] == 0)
    if not HAVE_TORCH:
        return
    grad_out = as_dtype(rng.standard_normal(q.shape).astype(np.float32), dtype)
    tq, tk, tv = (torch.from_numpy(np.asarray(x, np.float32)).to(getattr(torch, dtype)).requires_grad_()
                  for x in (f64(q), f64(k), f64(v)))
    o = tokenset.sparse_attention(tq, tk, tv, offsets, index, bs, kbs, causal)
    o.backward(torch.from_numpy(f64(grad_out).astype(np.float32)).to(o.dtype))
    want_grads = ref.sparse_attention_backward(f64(q), f64(k), f64(v), f64(grad_out), offsets, index, bs, kbs, causal)
    for got, expected, name in zip((tq.grad, tk.grad, tv.grad), want_grads, "qkv"):
        assert got.dtype == tq.dtype
        scale = max(1.0, np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(got.double().numpy(), expected, atol=TOL[dtype] * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_every_simd_level_matches_the_reference(level):
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, 1, 2, 1, 150, 150, 72, "float32")
    offsets, index = random_lists(rng, 2 * 3, 150, 0.3)
    tokenset.set_simd_level(level)
    try:
        out = tokenset.sparse_attention(q, k, v, offsets, index, 64, 1, True)
        if HAVE_TORCH:
            tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
            tokenset.sparse_attention(tq, tk, tv, offsets, index, 64, 1, True).sum().backward()
    finally:
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    want, _ = ref.sparse_attention(q, k, v, offsets, index, 64, 1, True)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=0)
    if HAVE_TORCH:
        grads = ref.sparse_attention_backward(q, k, v, np.ones_like(q), offsets, index, 64, 1, True)
        for got, expected in zip((tq.grad, tk.grad, tv.grad), grads):
            np.testing.assert_allclose(got.numpy(), expected, atol=2e-5, rtol=0)


def test_results_do_not_depend_on_the_thread_count():
    """Every output and gradient row is written by one work item in a fixed order: the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, 2, 4, 2, 257, 257, 64)
    offsets, index = random_lists(rng, 2 * 4 * 5, 257, 0.2)
    grad_out = rng.standard_normal(q.shape).astype(np.float32)
    from tokenset.ops import sparse_attention as ops
    from tokenset.sparse_attention import make_plan

    plan = make_plan(q, offsets, index, 64, 1, True, None, None, None)
    results = []
    for threads in (1, 2):
        before = tokenset.get_num_threads()
        tokenset.set_num_threads(threads)
        try:
            out, lse = ops.forward(q, k, v, plan)
            results.append((out, lse, *ops.backward(q, k, v, out, lse, grad_out, plan)))
        finally:
            tokenset.set_num_threads(before)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_variable_length_matches_the_padded_form_and_the_reference():
    rng = np.random.default_rng(11)
    lengths, key_lengths = [37, 0, 100, 5], [50, 3, 100, 0]
    heads, kv_heads, dim, bs, kbs = 4, 2, 16, 16, 8
    cu_q = np.array([3] + list(3 + np.cumsum(lengths)))  # gapped: rows 0..2 and the tail belong to no sequence
    cu_k = np.array([0] + list(np.cumsum(key_lengths)))
    q = rng.standard_normal((cu_q[-1] + 2, heads, dim)).astype(np.float32)
    k = rng.standard_normal((cu_k[-1], kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((cu_k[-1], kv_heads, dim)).astype(np.float32)
    lists = sum(heads * -(-n // bs) for n in lengths)
    offsets, index = [0], []
    for b, n in enumerate(lengths):
        for _ in range(heads * -(-n // bs)):
            chosen = np.flatnonzero(rng.random(-(-key_lengths[b] // kbs)) < 0.5)
            index.extend(chosen.tolist())
            offsets.append(len(index))
    assert len(offsets) == lists + 1
    out, lse = tokenset.sparse_attention(q, k, v, offsets, index, bs, kbs, True, return_lse=True, cu_seqlens=cu_q,
                                         cu_seqlens_k=cu_k)
    assert lse.shape == (heads, q.shape[0])
    want, want_lse = ref.sparse_attention(q, k, v, offsets, index, bs, kbs, True, cu_seqlens_q=cu_q,
                                          cu_seqlens_k=cu_k)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=0)
    assert np.all(out[:3] == 0) and np.all(out[cu_q[-1]:] == 0)  # rows outside every sequence: zeros
    # The same lists on each sequence alone, 4-D.
    at = 0
    for b, n in enumerate(lengths):
        count = heads * -(-n // bs)
        if n and key_lengths[b]:
            sub_offsets = np.array(offsets[at:at + count + 1]) - offsets[at]
            sub_index = np.array(index[offsets[at]:offsets[at + count]], np.int64)
            qb = q[cu_q[b]:cu_q[b + 1]].transpose(1, 0, 2)[None]
            kb = k[cu_k[b]:cu_k[b + 1]].transpose(1, 0, 2)[None]
            vb = v[cu_k[b]:cu_k[b + 1]].transpose(1, 0, 2)[None]
            alone = tokenset.sparse_attention(qb, kb, vb, sub_offsets, sub_index, bs, kbs, True)
            np.testing.assert_array_equal(alone[0].transpose(1, 0, 2), out[cu_q[b]:cu_q[b + 1]])
        at += count
    if HAVE_TORCH:
        grad_out = rng.standard_normal(q.shape).astype(np.float32)
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        o = tokenset.sparse_attention(tq, tk, tv, offsets, index, bs, kbs, True, cu_seqlens=cu_q, cu_seqlens_k=cu_k)
        o.backward(torch.from_numpy(grad_out))
        grads = ref.sparse_attention_backward(q, k, v, grad_out, offsets, index, bs, kbs, True, cu_seqlens_q=cu_q,
                                              cu_seqlens_k=cu_k)
        for got, expected in zip((tq.grad, tk.grad, tv.grad), grads):
            np.testing.assert_allclose(got.numpy(), expected, atol=2e-5, rtol=0)


def test_strided_views_gapped_offsets_and_int32_lists():
    """q as a transposed [B, N, H, d] view (the usual projection layout), k / v slices, lists given as int32 with
    key_offsets not starting at 0: read in place, same result as contiguous copies."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 90, 4, 32)).astype(np.float32)
    q = base.transpose(0, 2, 1, 3)  # [2, 4, 90, 32], rows H * d apart
    kv = rng.standard_normal((2, 2, 120, 64)).astype(np.float32)
    k, v = kv[..., :32], kv[..., 32:]
    offsets, index = random_lists(rng, 2 * 4 * 3, 4, 0.6)
    gapped_index = np.concatenate([[3, 1, 2], index]).astype(np.int32)
    out = tokenset.sparse_attention(q, k, v, (offsets + 3).astype(np.int32), gapped_index, 32, 30)
    want = tokenset.sparse_attention(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                                     offsets, index, 32, 30)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, ref.sparse_attention(q, k, v, offsets, index, 32, 30)[0], atol=2e-5, rtol=0)


def test_nan_and_inf_stay_in_their_rows():
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, 1, 1, 1, 64, 64, 16)
    q[0, 0, 5, 3] = np.nan
    v[0, 0, 40, 0] = np.inf
    offsets = np.array([0, 1, 2, 3, 4])
    index = np.array([0, 0, 1, 2])  # block size 16: rows 0..31 see keys 0..15, rows 48..63 see keys 32..47
    out = tokenset.sparse_attention(q, k, v, offsets, index, 16)
    assert np.isnan(out[0, 0, 5]).all()
    assert np.isfinite(out[0, 0, :5]).all() and np.isfinite(out[0, 0, 6:48]).all()
    assert not np.isfinite(out[0, 0, 48:, 0]).any() and np.isfinite(out[0, 0, 48:, 1:]).all()


def test_empty_inputs():
    q = np.zeros((2, 2, 0, 8), np.float32)
    out, lse = tokenset.sparse_attention(q, q, q, [0], [], return_lse=True)
    assert out.shape == q.shape and lse.shape == (2, 2, 0)
    q1 = np.ones((1, 1, 3, 8), np.float32)
    out = tokenset.sparse_attention(q1, q1[:, :, :0], q1[:, :, :0], [0, 0], [])
    assert np.all(out == 0)


@requires_torch
def test_matches_sdpa_with_the_expanded_boolean_mask():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch, heads, kv_heads, n, dim, bs, kbs = 2, 4, 2, 192, 32, 64, 16
    q = torch.randn(batch, heads, n, dim)
    k = torch.randn(batch, kv_heads, n, dim)
    v = torch.randn(batch, kv_heads, n, dim)
    offsets, index = random_lists(rng, batch * heads * 3, 12, 0.3, empty_every=4)
    out = tokenset.sparse_attention(q, k, v, offsets, index, bs, kbs, causal=True)
    assert isinstance(out, torch.Tensor)
    masks = ref.block_mask(offsets, index, heads, [n] * batch, [n] * batch, bs, kbs, causal=True)
    mask = torch.from_numpy(np.stack(masks))
    want = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=mask)
    want = torch.nan_to_num(want, nan=0.0)  # a fully masked row: SDPA returns 0 (or NaN in some builds)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=0)


@requires_torch
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_matches_flex_attention_on_the_same_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(4)
    batch, heads, n, dim, bs = 1, 2, 256, 32, 128  # FlexAttention's blocks are 128 tokens
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, batch, heads, heads, n, n, dim))
    block = torch.from_numpy(rng.random((batch, heads, 2, 2)) < 0.6)
    block[..., 0] = True  # flex returns garbage (not zeros) for rows that see no key; keep every row's list non-empty

    def mask_mod(b, h, q_idx, kv_idx):
        return block[b, h, q_idx // bs, kv_idx // bs]

    mask = flex.create_block_mask(mask_mod, batch, heads, n, n, device="cpu", BLOCK_SIZE=bs)
    want = flex.flex_attention(q, k, v, block_mask=mask)
    lists = tokenset.lists_from_block_mask(block, block_size=bs)
    out = tokenset.sparse_attention(q, k, v, *lists)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=0)


@requires_torch
def test_bfloat16_error_is_bounded_by_a_naive_bfloat16_implementation():
    rng = np.random.default_rng(9)
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, 1, 2, 2, 256, 256, 64))
    offsets, index = random_lists(rng, 2 * 4, 4, 0.5)
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    exact, _ = ref.sparse_attention(qb.double().numpy(), kb.double().numpy(), vb.double().numpy(), offsets, index, 64)
    ours = tokenset.sparse_attention(qb, kb, vb, offsets, index, 64).double().numpy()
    mask = torch.from_numpy(np.stack(ref.block_mask(offsets, index, 2, [256], [256], 64, 64)))
    naive = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask).double().numpy()
    naive = np.nan_to_num(naive)
    assert np.abs(ours - exact).max() <= max(2 * np.abs(naive - exact).max(), 4e-3)


@requires_torch
def test_gradients_match_torch_autograd_through_dense_masked_attention():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    batch, heads, kv_heads, n, m, dim, bs, kbs = 2, 4, 1, 96, 80, 24, 32, 1
    q = torch.randn(batch, heads, n, dim, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, m, dim, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, m, dim, dtype=torch.float64)
    offsets, index = random_lists(rng, batch * heads * 3, m, 0.2)
    masks = torch.from_numpy(np.stack(ref.block_mask(offsets, index, heads, [n] * batch, [m] * batch, bs, kbs,
                                                     causal=True)))
    grad_out = torch.randn(batch, heads, n, dim, dtype=torch.float64)

    def dense(q, k, v):
        s = (q @ k.repeat_interleave(heads // kv_heads, 1).transpose(-1, -2)) * dim ** -0.5
        p = torch.softmax(s.masked_fill(~masks, -torch.inf), -1).nan_to_num(0.0)
        return p @ v.repeat_interleave(heads // kv_heads, 1)

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    dense(*leaves).backward(grad_out)
    ours = [x.float().requires_grad_() for x in (q, k, v)]
    tokenset.sparse_attention(*ours, offsets, index, bs, kbs, causal=True).backward(grad_out.float())
    for a, b in zip(ours, leaves):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=2e-5, rtol=0)


@requires_torch
def test_autograd_details():
    rng = np.random.default_rng(6)
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, 1, 2, 2, 64, 64, 16))
    offsets, index = random_lists(rng, 2, 1, 1.0)
    # Only v requires grad; lse comes back without a gradient; a numpy k beside torch works.
    vv = v.clone().requires_grad_()
    out, lse = tokenset.sparse_attention(q, k.numpy(), vv, offsets, index, return_lse=True)
    assert not lse.requires_grad
    out.sum().backward()
    assert vv.grad is not None and q.grad is None
    # Under no_grad nothing is recorded.
    with torch.no_grad():
        assert not tokenset.sparse_attention(q.requires_grad_(), k, v, offsets, index).requires_grad


BAD_LISTS = [
    ("unsorted", [0, 2], [1, 0], "strictly increasing"),
    ("duplicate", [0, 2], [1, 1], "strictly increasing"),
    ("out of range", [0, 1], [4], "out of range"),
    ("negative", [0, 1], [-1], "out of range"),
    ("too few offsets", [0], [], "entries"),
    ("decreasing offsets", [0, 1, 0, 1], [0], "non-decreasing"),
    ("offsets past index", [0, 5], [0], "exceeds"),
    ("negative first offset", [-1, 0], [0], "negative"),
]


@pytest.mark.parametrize("name,offsets,index,message", BAD_LISTS, ids=[b[0] for b in BAD_LISTS])
def test_bad_lists_are_clear_errors(name, offsets, index, message):
    q = np.ones((1, 1, 64, 8), np.float32)
    if name == "decreasing offsets":
        q = np.ones((1, 1, 192, 8), np.float32)
    with pytest.raises(ValueError, match=message):
        tokenset.sparse_attention(q, q, q, offsets, index, 64, 16)


def test_bad_arguments_are_clear_errors():
    q = np.ones((1, 2, 8, 4), np.float32)
    k = np.ones((1, 3, 8, 4), np.float32)
    with pytest.raises(ValueError, match="multiple of the key heads"):
        tokenset.sparse_attention(q, k, k, [0, 0, 0], [], 8)
    with pytest.raises(TypeError, match="one dtype"):
        tokenset.sparse_attention(q, q.astype(np.float16), q, [0, 0, 0], [], 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        tokenset.sparse_attention(q[0], q[0], q[0], [0, 0, 0], [], 8)
    with pytest.raises(ValueError, match="block_size"):
        tokenset.sparse_attention(q, q, q, [0, 0, 0], [], 0)
    with pytest.raises(ValueError, match="scale"):
        tokenset.sparse_attention(q, q, q, [0, 0, 0], [], 8, scale=float("nan"))
    with pytest.raises(TypeError, match="integers"):
        tokenset.sparse_attention(q, q, q, [0.0, 0.0, 0.0], [], 8)
    with pytest.raises(ValueError, match="head dimension"):
        tokenset.sparse_attention(q, q[..., :3], q[..., :3], [0, 0, 0], [], 8)
    with pytest.raises(ValueError, match="4-D"):
        tokenset.sparse_attention(q[0, 0], q[0, 0], q[0, 0], [0, 0], [], 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        tokenset.sparse_attention(q[0], q[0], q[0], [0, 0, 0], [], 8, cu_seqlens=[0, 9])
    with pytest.raises(TypeError, match="integer"):
        tokenset.sparse_attention(q, q, q, [0, 0, 0], [], 8.0)


def test_random_garbage_lists_never_crash():
    rng = np.random.default_rng(12)
    q = rng.standard_normal((1, 2, 40, 8)).astype(np.float32)
    for _ in range(300):
        lists = int(rng.integers(0, 12))
        offsets = np.sort(rng.integers(-2, 8, lists)) if rng.random() < 0.5 else rng.integers(-3, 12, lists)
        index = rng.integers(-3, 8, int(rng.integers(0, 10)))
        try:
            out = tokenset.sparse_attention(q, q, q, offsets, index, int(rng.integers(1, 50)),
                                            int(rng.integers(1, 20)), bool(rng.random() < 0.5))
        except (ValueError, TypeError):
            continue
        assert np.isfinite(out).all()


def test_peak_memory_is_bounded_by_tiles_at_65536_tokens():
    """N = 65,536 (one head, d 64, 1% block density): the call adds per-worker tiles and, for the backward, one float
    per row plus the turned-around lists, never N x N (16 GiB) or a gathered K / V."""
    from test_limits import MiB, peak_added

    added = peak_added("""
import torch
rng = np.random.default_rng(0)
n, blocks = 65536, 1024
q = torch.randn(1, 1, n, 64, requires_grad=True)
k = torch.randn(1, 1, n, 64, requires_grad=True)
v = torch.randn(1, 1, n, 64, requires_grad=True)
index = np.concatenate([np.sort(rng.choice(blocks, 10, replace=False)) for _ in range(blocks)])
offsets = np.arange(blocks + 1) * 10
grad = torch.randn(1, 1, n, 64)
out = tokenset.sparse_attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], [0, 1], [0])
""", "out = tokenset.sparse_attention(q, k, v, offsets, index); out.backward(grad)", threads=2)
    outputs = 4 * 65536 * 64 * 4  # out and the three gradients, 16 MiB each
    # Measured: the kernels add 48.7 MiB in the backward (its gradients); torch's autograd adds ~36 MiB of its own.
    assert added < outputs + 48 * MiB, added / MiB


@requires_torch
def test_cuda_matches_the_cpu(cuda):
    """GPU forward and backward against the CPU kernels on the same inputs (the GPU sums in another order and adds
    dK / dV with atomics: float32 within 2e-5, low precision within the dtype's tolerance)."""
    rng = np.random.default_rng(21)
    for dtype in ("float32", "bfloat16"):
        q, k, v = (torch.from_numpy(x).to(getattr(torch, dtype)) for x in qkv(rng, 2, 4, 2, 150, 170, 64))
        offsets, index = random_lists(rng, 2 * 4 * 3, 170, 0.2, empty_every=4)
        leaves_cpu = [x.clone().requires_grad_() for x in (q, k, v)]
        leaves_gpu = [x.cuda().requires_grad_() for x in (q, k, v)]
        grad = torch.randn(q.shape).to(q.dtype)
        out_cpu = tokenset.sparse_attention(*leaves_cpu, offsets, index, 64, 1, True)
        out_gpu = tokenset.sparse_attention(*leaves_gpu, offsets, index, 64, 1, True)
        assert out_gpu.is_cuda
        out_cpu.backward(grad)
        out_gpu.backward(grad.cuda())
        tol = TOL[dtype] * 2
        torch.testing.assert_close(out_gpu.cpu().float(), out_cpu.float(), atol=tol, rtol=0)
        for a, b in zip(leaves_gpu, leaves_cpu):
            torch.testing.assert_close(a.grad.cpu().float(), b.grad.float(), atol=tol * 4, rtol=0)
    x = torch.randn(1, 4, 14 * 14, 16)
    torch.testing.assert_close(tokenset.routing_attention(x.cuda(), x.cuda(), x.cuda(), (14, 14), 7, 4).cpu(),
                               tokenset.routing_attention(x, x, x, (14, 14), 7, 4), atol=2e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_and_kernel_agree_on_nan_and_inf(causal):
    """A NaN score makes its row NaN (not a row that saw nothing); inf in v, k or q reaches only the rows (and keys)
    whose pairs are listed and visible: causally hidden pairs and other heads' lists stay finite."""
    rng = np.random.default_rng(13)
    q, k, v = qkv(rng, 1, 2, 1, 32, 48, 8)
    q[0, 1, 3, 0] = np.nan
    v[0, 0, 40, 2] = np.inf  # key block 2 (keys 32..47) is listed by head 0's second block only
    k[0, 0, 30, 1] = np.inf  # key 30: causally visible to rows >= 14 only (shift 16)
    offsets, index = np.array([0, 2, 3, 4, 5]), np.array([0, 1, 2, 0, 1])
    out, lse = tokenset.sparse_attention(q, k, v, offsets, index, 16, 16, causal, return_lse=True)
    want, want_lse = ref.sparse_attention(q, k, v, offsets, index, 16, 16, causal)
    assert np.array_equal(np.isnan(out), np.isnan(want)) and np.array_equal(np.isinf(out), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], atol=2e-5, rtol=0)
    assert np.isnan(out[0, 1, 3]).all() and np.isnan(lse[0, 1, 3]) and np.isnan(want_lse[0, 1, 3])
    if causal:
        assert np.isfinite(out[0, 0, :14]).all()  # rows that cannot see key 30 yet
    if HAVE_TORCH:
        grad_out = np.ones_like(q)
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tokenset.sparse_attention(tq, tk, tv, offsets, index, 16, 16, causal).backward(torch.from_numpy(grad_out))
        for got, expected in zip((tq.grad, tk.grad, tv.grad),
                                 ref.sparse_attention_backward(q, k, v, grad_out, offsets, index, 16, 16, causal)):
            got = got.numpy()
            assert np.array_equal(np.isnan(got), np.isnan(expected))
            ok = np.isfinite(expected)
            np.testing.assert_allclose(got[ok], expected[ok], atol=2e-5, rtol=0)


@requires_torch
def test_double_backward_is_refused_not_wrong():
    q = torch.randn(1, 1, 16, 4, requires_grad=True)
    out = tokenset.sparse_attention(q, q.detach(), q.detach(), [0, 1], [0], 16)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)


def test_scale_outside_float32_and_numpy_beside_torch():
    q = np.ones((1, 1, 8, 4), np.float32)
    for bad in (1e300, 1e-50):
        with pytest.raises(ValueError, match="float32"):
            tokenset.sparse_attention(q, q, q, [0, 1], [0], 8, scale=bad)
    if HAVE_TORCH:
        flipped = np.random.default_rng(0).standard_normal((1, 1, 8, 4)).astype(np.float32)[:, :, ::-1]
        out = tokenset.sparse_attention(torch.from_numpy(q), flipped, flipped, [0, 1], [0], 8)
        np.testing.assert_allclose(out.numpy(), tokenset.sparse_attention(q, flipped, flipped, [0, 1], [0], 8))


def test_native_layer_checks_cu_seqlens_before_reading_them():
    """4-D q with a 3-D k and a short cu_seqlens_k, straight into the binding: an error, never a read past it."""
    from tokenset import _core

    q = np.ones((50, 1, 8, 4), np.float32)
    k = np.ones((8, 1, 4), np.float32)
    out = np.empty_like(q)
    cu = np.array([0, 0], np.int64)
    offsets = np.zeros(51, np.int64)
    with pytest.raises(ValueError, match="cu_seqlens|3-D|4-D"):
        _core.sparse_attention(q, k, k, out, None, None, None, cu, None, offsets, None, np.zeros(0, np.int64), None,
                               None, None, 8, 8, False, 0.5)
    q3 = np.ones((8, 1, 4), np.float32)
    with pytest.raises(ValueError, match="entries"):
        _core.sparse_attention(q3, k, k, np.empty_like(q3), None, cu, None, np.array([0, 4, 8], np.int64), None,
                               np.zeros(2, np.int64), None, np.zeros(0, np.int64), None, None, None, 8, 8, False, 0.5)


@requires_torch
def test_real_minus_inf_scores_are_not_masked_pairs_and_unmapped_rows_give_nothing():
    """A listed pair whose score is -inf (an inf in q or k) still belongs to its row: in a row made NaN by a +inf score,
    its key's gradients are NaN like every key the row lists. Grid padding of routing attention (rows without a token)
    never sends gradient, even against a key holding inf."""
    q = np.zeros((1, 1, 2, 8), np.float32)
    q[0, 0, 0, 0] = -np.inf
    k = np.ones((1, 1, 2, 8), np.float32)
    k[0, 0, 0, 0] = -1.0  # row 0: +inf with key 0, -inf with key 1
    v = np.ones((1, 1, 2, 8), np.float32)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tokenset.sparse_attention(tq, tk, tv, [0, 1, 2], [0, 0], 1, 2).backward(torch.ones(1, 1, 2, 8))
    grads = ref.sparse_attention_backward(q, k, v, np.ones_like(q), [0, 1, 2], [0, 0], 1, 2)
    for got, expected in zip((tq.grad, tk.grad, tv.grad), grads):
        assert np.array_equal(np.isnan(got.numpy()), np.isnan(expected))
    rng = np.random.default_rng(8)
    q = -np.abs(rng.standard_normal((1, 2, 25, 8))).astype(np.float32)
    k = rng.standard_normal((1, 2, 25, 8)).astype(np.float32)
    k[:, :, 7, 0] = np.inf  # every real score against key 7 is -inf
    v = rng.standard_normal((1, 2, 25, 8)).astype(np.float32)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tokenset.routing_attention(tq, tk, tv, (5, 5), 2, 4).sum().backward()
    assert torch.isfinite(tk.grad[:, :, 7]).all() and torch.isfinite(tv.grad[:, :, 7]).all()
