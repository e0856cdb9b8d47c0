"""Attention rows and the column mean without the attention matrix, against the dense float64 reference (the full
softmax matrix of every head) and torch's eager attention weights.

Tolerances: probabilities are in [0, 1]; float32 inputs within 2e-6 absolute plus 2e-5 relative of the float64
reference on the same inputs (exp2 polynomial ~2e-7 relative, float32 dot products of d <= 130 terms with |s| < ~40).
float16 / bfloat16 inputs are compared with the reference on the same rounded values (the kernel accumulates in
float32), so the same tolerance holds.
"""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import attention_scores as ref

from conftest import BF16, HAVE_TORCH, SIMD_LEVELS, as_dtype, requires_torch, to_numpy

if HAVE_TORCH:
    import torch

ATOL, RTOL = 2e-6, 2e-5


def f64(x):
    arr = np.asarray(to_numpy(x))
    return arr.astype(np.float64)


def reference(q, k, rows, reduce, causal, scale=None, q_len=None, k_len=None):
    """The reference over 4-D (optionally right-padded) inputs; rows a [B, R] table or None; padded to k's width."""
    q, k = f64(q), f64(k)
    batch, width = q.shape[0], k.shape[2]
    q_len = [q.shape[2]] * batch if q_len is None else q_len
    k_len = [k.shape[2]] * batch if k_len is None else k_len
    got = ref.attention_scores([q[b, :, :q_len[b]] for b in range(batch)], [k[b, :, :k_len[b]] for b in range(batch)],
                               None if rows is None else list(rows), reduce=reduce, causal=causal, scale=scale)
    out = []
    for b, g in enumerate(got):
        pad = [(0, 0)] * (g.ndim - 1) + [(0, width - g.shape[-1])]
        out.append(np.pad(g, pad))
    return np.stack(out)


def close(got, want):
    got = f64(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


CASES = [
    # batch, heads, kv_heads, n, m, dim
    (2, 4, 2, 100, 130, 40),
    (1, 8, 8, 577, 577, 64),
    (3, 2, 1, 1, 1, 1),
    (1, 3, 3, 70, 5, 130),
    (2, 6, 2, 300, 260, 16),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_rows_and_column_mean_match_the_dense_reference(case, dtype, causal):
    batch, heads, kv_heads, n, m, dim = case
    rng = np.random.default_rng(hash((case, dtype, causal)) % 2**32)
    q = as_dtype(rng.standard_normal((batch, heads, n, dim)).astype(np.float32), dtype)
    k = as_dtype(rng.standard_normal((batch, kv_heads, m, dim)).astype(np.float32), dtype)
    some = np.array([0, n - 1, n // 2, 0])  # a repeated row too
    for rows, table in ((0, np.zeros((batch, 1), np.int64)), (-1, np.full((batch, 1), n - 1)),
                        (some, np.tile(some, (batch, 1))), ("mean", None)):
        for reduce in ("mean", "sum", "none"):
            got = tokenset.attention_scores(q, k, rows=rows, reduce=reduce, causal=causal)
            want = reference(q, k, table, reduce, causal)
            if isinstance(rows, (int, str)) and rows != "mean":
                want = want[:, :, 0] if reduce == "none" else want[:, 0]
            close(got, want)


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_every_simd_level_matches_the_reference(level):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 200, 48)).astype(np.float32)
    k = rng.standard_normal((2, 2, 333, 48)).astype(np.float32)
    tokenset.set_simd_level(level)
    try:
        for rows in ([5, 199, 0], "mean"):
            for causal in (False, True):
                got = tokenset.attention_scores(q, k, rows=rows, reduce="none", causal=causal)
                table = None if rows == "mean" else np.tile(rows, (2, 1))
                close(got, reference(q, k, table, "none", causal))
    finally:
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 8, 700, 64)).astype(np.float32)
    k = rng.standard_normal((2, 4, 700, 64)).astype(np.float32)
    initial = tokenset.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 5):
            tokenset.set_num_threads(threads)
            results.append([tokenset.attention_scores(q, k, rows=r, reduce=red, causal=True)
                            for r in ([3, 699], "mean") for red in ("mean", "none")])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b)
    finally:
        tokenset.set_num_threads(initial)


@pytest.mark.parametrize("causal", [False, True])
def test_one_pass_and_two_pass_column_means_give_the_same_bits(causal):
    """8 or more (batch, head) pairs take the one-pass column mean (a tile's scores of every key kept); fewer take
    the two-pass form. Both sum in one order: head by head they agree exactly, and so do the reduced means."""
    rng = np.random.default_rng(9)
    q = rng.standard_normal((1, 8, 700, 64)).astype(np.float32)
    k = rng.standard_normal((1, 4, 650, 64)).astype(np.float32)
    one_pass = tokenset.attention_scores(q, k, rows="mean", reduce="none", causal=causal)
    per_head = [tokenset.attention_scores(q[:, h:h + 1], k[:, h // 2:h // 2 + 1], rows="mean", reduce="none",
                                          causal=causal) for h in range(8)]
    np.testing.assert_array_equal(one_pass, np.concatenate(per_head, axis=1))
    close(one_pass, reference(q, k, None, "none", causal))
    for reduce in ("sum", "mean"):  # 4 pairs: two passes; the same 4 heads twice in a batch: one pass
        two = tokenset.attention_scores(q[:, :4], k[:, :2], rows="mean", reduce=reduce, causal=causal)
        one = tokenset.attention_scores(np.concatenate([q[:, :4]] * 2), np.concatenate([k[:, :2]] * 2), rows="mean",
                                        reduce=reduce, causal=causal)
        np.testing.assert_array_equal(one, np.concatenate([two, two]))


def test_padded_lengths_and_variable_length_agree_with_the_reference():
    rng = np.random.default_rng(5)
    lengths = np.array([50, 1, 77, 0 + 12])
    q = rng.standard_normal((4, 4, 77, 32)).astype(np.float32)
    k = rng.standard_normal((4, 2, 77, 32)).astype(np.float32)
    for b, n in enumerate(lengths):  # padding holds garbage: never read
        q[b, :, n:] = k[b, :, n:] = np.nan
    for causal in (False, True):
        last = tokenset.attention_scores(q, k, rows="last", lengths=lengths, causal=causal, reduce="none")
        table = (lengths - 1)[:, None]
        want = reference(q, k, table, "none", causal, q_len=lengths, k_len=lengths)[:, :, 0]
        assert np.isfinite(to_numpy(last)).all()
        close(last, want)
        col = tokenset.attention_scores(q, k, rows="mean", lengths=lengths, causal=causal)
        close(col, reference(q, k, None, "mean", causal, q_len=lengths, k_len=lengths))
        # The same sequences packed as [total, H, d] with cu_seqlens.
        cu = np.concatenate([[0], np.cumsum(lengths)])
        packed_q = np.concatenate([q[b, :, :lengths[b]].transpose(1, 0, 2) for b in range(4)])
        packed_k = np.concatenate([k[b, :, :lengths[b]].transpose(1, 0, 2) for b in range(4)])
        var = tokenset.attention_scores(packed_q, packed_k, rows="mean", cu_seqlens=cu, causal=causal)
        np.testing.assert_array_equal(var, col)
        var_last = tokenset.attention_scores(packed_q, packed_k, rows=-1, cu_seqlens=cu, causal=causal, reduce="none")
        np.testing.assert_array_equal(var_last, last)


def test_per_sequence_rows_gapped_cu_seqlens_and_strided_inputs():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((2, 90, 8, 80)).astype(np.float32)
    q = base[:, :, :, :40].transpose(0, 2, 1, 3)   # [2, 8, 90, 40], strided (not contiguous along rows)
    k = base[:, ::-1, :4, 40:].transpose(0, 2, 1, 3)  # negative row stride, 4 key heads
    table = np.array([[1, 89, 7], [0, 44, -1]])
    got = tokenset.attention_scores(q, k, rows=table, reduce="sum")
    close(got, reference(q, k, np.where(table < 0, table + 90, table), "sum", False))
    # Gapped cu_seqlens: sequences at rows 3..40 and 40..100 of a larger array; rows outside are never read.
    flat = rng.standard_normal((120, 2, 16)).astype(np.float32)
    flat[:3] = flat[100:] = np.inf
    cu = np.array([3, 40, 100])
    got = tokenset.attention_scores(flat, flat, rows="mean", cu_seqlens=cu, reduce="none")
    want = ref.attention_scores([flat[3:40].transpose(1, 0, 2), flat[40:100].transpose(1, 0, 2)],
                                [flat[3:40].transpose(1, 0, 2), flat[40:100].transpose(1, 0, 2)], None, "none")
    assert got.shape == (2, 2, 60)
    close(got[0, :, :37], want[0])
    close(got[1], want[1])
    assert np.all(got[0, :, 37:] == 0)


def test_nan_inf_ties_and_all_negative_scores():
    q = np.zeros((1, 1, 4, 2), np.float32)
    k = np.zeros((1, 1, 5, 2), np.float32)
    got = tokenset.attention_scores(q, k, rows=[0, 3])  # all ties: uniform
    np.testing.assert_allclose(got, np.full((1, 2, 5), 0.2), atol=1e-7)
    q[0, 0, 1] = [np.nan, 0]
    q[0, 0, 2] = [np.inf, 0]
    k[0, 0, :, 0] = -1.0  # every score of row 3 is negative; row 2's are -inf
    k[0, 0, 4, 0] = -2.0
    q[0, 0, 3] = [5, 0]
    got = tokenset.attention_scores(q, k, rows=[1, 2, 3, 0], reduce="none", causal=False, scale=1.0)
    want = reference(q, k, np.array([[1, 2, 3, 0]]), "none", False, scale=1.0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    close(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1))
    assert np.isnan(got[0, 0, 0]).all() and np.all(got[0, 0, 1] == 0)  # NaN row; row of only -inf scores: 0
    # causal: the NaN row is NaN only over the keys it sees; the column mean carries it into those columns only
    got = tokenset.attention_scores(q, k[:, :, :4], rows="mean", reduce="none", causal=True, scale=1.0)
    want = reference(q, k[:, :, :4], None, "none", True, scale=1.0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert not np.isnan(got[0, 0, 2:]).any()


def test_empty_inputs():
    q = np.zeros((2, 4, 0, 8), np.float32)
    assert tokenset.attention_scores(q, q, rows="mean").shape == (2, 0)
    assert tokenset.attention_scores(q, q, rows=[], reduce="none").shape == (2, 4, 0, 0)
    with pytest.raises(ValueError, match="out of range"):
        tokenset.attention_scores(q, q, rows=0)
    none = np.zeros((0, 4, 10, 8), np.float32)
    assert tokenset.attention_scores(none, none, rows="cls").shape == (0, 10)
    lengths = np.array([0, 3])
    x = np.ones((2, 1, 3, 8), np.float32)
    col = tokenset.attention_scores(x, x, rows="mean", lengths=lengths)
    np.testing.assert_allclose(col, [[0, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-7)


@requires_torch
def test_matches_torch_eager_attention_weights_and_takes_torch_tensors():
    """What the methods compute today: the eager attention matrix (softmax(q k^T * scale)) and its rows."""
    rng = np.random.default_rng(7)
    q = torch.from_numpy(rng.standard_normal((2, 8, 257, 64)).astype(np.float32))
    k = torch.from_numpy(rng.standard_normal((2, 2, 257, 64)).astype(np.float32))
    weights = torch.softmax(q @ k.repeat_interleave(4, dim=1).transpose(-1, -2) * 64 ** -0.5, dim=-1)
    cls = tokenset.attention_scores(q, k, rows="cls")
    assert isinstance(cls, torch.Tensor) and cls.dtype == torch.float32
    torch.testing.assert_close(cls, weights[:, :, 0].mean(1), atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(tokenset.attention_scores(q, k, rows="mean", reduce="none"), weights.mean(-2),
                               atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(tokenset.attention_scores(q, k, rows=[-1, 3], reduce="sum"),
                               weights[:, :, [-1, 3]].sum(1), atol=4e-6, rtol=2e-5)
    leaf = q.clone().requires_grad_()
    assert tokenset.attention_scores(leaf, k, rows=0).shape == (2, 257)  # grad-requiring input: read, not traced
    half = tokenset.attention_scores(q.half(), k.half(), rows="last", causal=True)
    want = torch.softmax((q.half().double() @ k.half().double().repeat_interleave(4, 1).transpose(-1, -2))[:, :, -1]
                         * 64 ** -0.5, -1).mean(1)
    torch.testing.assert_close(half.double(), want, atol=2e-6, rtol=2e-5)


BAD = [
    (dict(rows=300), ValueError, "row 300 is out of range for sequence 0"),
    (dict(rows=-301), ValueError, "out of range"),
    (dict(rows="middle"), ValueError, "pass 'cls'"),
    (dict(rows=np.zeros((3, 2), np.int64)), ValueError, r"\[batch=2, R\]"),
    (dict(rows=np.zeros(2)), TypeError, "must hold integers"),
    (dict(reduce="max"), ValueError, "choose one of"),
    (dict(lengths=[1, 2, 3]), ValueError, "one entry per sequence"),
    (dict(lengths=[1, 400]), ValueError, "outside 0..300"),
    (dict(scale=float("nan")), ValueError, "scale must be finite"),
    (dict(scale=1e300), ValueError, "within float32's range"),
    (dict(causal="no"), TypeError, "causal must be True or False"),
    (dict(cu_seqlens=[0, 300]), ValueError, "cu_seqlens go with 3-D"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_arguments_are_clear_errors(kwargs, error, message):
    q = np.zeros((2, 4, 300, 16), np.float32)
    with pytest.raises(error, match=message):
        tokenset.attention_scores(q, q[:, :2], **kwargs)


def test_bad_shapes_and_dtypes_are_clear_errors():
    q = np.zeros((2, 4, 30, 16), np.float32)
    with pytest.raises(ValueError, match="multiple of the key heads"):
        tokenset.attention_scores(q, q[:, :3])
    with pytest.raises(ValueError, match="head dimension"):
        tokenset.attention_scores(q, q[..., :8])
    with pytest.raises(TypeError, match="share one dtype"):
        tokenset.attention_scores(q, q.astype(np.float16))
    with pytest.raises(TypeError, match="not supported"):
        tokenset.attention_scores(q.astype(np.int32), q.astype(np.int32))
    with pytest.raises(ValueError, match="4-D"):
        tokenset.attention_scores(q[0, 0], q[0, 0])
    with pytest.raises(ValueError, match="need cu_seqlens"):
        tokenset.attention_scores(q[0], q[0])
    with pytest.raises(ValueError, match="non-decreasing"):
        tokenset.attention_scores(q[0], q[0], cu_seqlens=[0, 20, 10])
    with pytest.raises(ValueError, match="different padded lengths"):
        tokenset.attention_scores(q, q[:, :, :10], lengths=[3, 4])
    with pytest.raises(TypeError, match="must be an array"):
        tokenset.attention_scores([[1.0]], q)


def test_zero_dimensional_rows_are_row_numbers():
    q = np.random.default_rng(0).standard_normal((2, 2, 10, 8)).astype(np.float32)
    np.testing.assert_array_equal(tokenset.attention_scores(q, q, rows=np.array(3)),
                                  tokenset.attention_scores(q, q, rows=3))


def test_native_layer_checks_rows_and_lengths_itself():
    """The kernel entry validates what Python already checked (a direct call with a bad row must not read memory)."""
    from tokenset import _core

    q = np.zeros((1, 2, 10, 8), np.float32)
    out = np.zeros((1, 1, 1, 10), np.float32)
    with pytest.raises(ValueError, match="row 10 is out of range"):
        _core.attention_scores(q, q, out, None, None, None, None, None, None, None, None,
                               np.array([10], np.int64), None, 1, 2, False, 1.0)
    with pytest.raises(ValueError, match="outside 0..10"):
        _core.attention_scores(q, q, out, None, None, None, None, np.array([11], np.int64), None, None, None,
                               np.array([0], np.int64), None, 1, 2, False, 1.0)
    huge = 2**62 + 1  # 4 x huge wraps to 4 in int64: the count check must not overflow into reading past rows
    with pytest.raises(ValueError, match="wrong shape|rows must hold 4 x"):
        _core.attention_scores(np.zeros((4, 1, 1, 8), np.float32), np.zeros((4, 1, 1, 8), np.float32),
                               np.zeros((4, 1, 0, 1), np.float32), None, None, None, None, None, None, None, None,
                               np.zeros(4, np.int64), None, huge, 2, False, 1.0)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.attention_scores(q, q, out[..., :5], None, None, None, None, None, None, None, None,
                               np.array([0], np.int64), None, 1, 2, False, 1.0)


def test_peak_memory_does_not_grow_with_n_squared():
    """N = 16,384 (8 heads, d 64): the column mean adds per-worker tiles and one float per (head, row), never the
    N x N matrix (1 GiB per head)."""
    from test_limits import MiB, peak_added

    added = peak_added("""
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 8, 16384, 64)).astype(np.float32)
tokenset.attention_scores(q[:, :, :300], q[:, :, :300], rows="mean")
""", "out = tokenset.attention_scores(q, q, rows='mean', reduce='none')", threads=2)
    output = 8 * 16384 * 4
    assert added < output + 8 * MiB, added / MiB


@requires_torch
def test_cuda_matches_the_cpu(cuda):
    rng = np.random.default_rng(8)
    for dtype in ("float32", "bfloat16"):
        q = torch.from_numpy(rng.standard_normal((2, 8, 300, 64)).astype(np.float32)).to(getattr(torch, dtype))
        k = torch.from_numpy(rng.standard_normal((2, 2, 320, 64)).astype(np.float32)).to(getattr(torch, dtype))
        for rows in ("cls", [4, -1], "mean"):
            for reduce in ("mean", "none"):
                for causal in (False, True):
                    cpu = tokenset.attention_scores(q, k, rows=rows, reduce=reduce, causal=causal)
                    gpu = tokenset.attention_scores(q.cuda(), k.cuda(), rows=rows, reduce=reduce, causal=causal)
                    assert gpu.is_cuda
                    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-6, rtol=2e-5)
