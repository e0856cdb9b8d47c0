"""int8 tokens: tokenset.quantize against its numpy reference, and MaxSim on Quantized documents (float queries:
bit-identical to float32 MaxSim on the dequantised documents; quantised queries: bit-identical to the integer
reference at every SIMD level, and within the rounding bound of float32 MaxSim on the original tokens)."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import maxsim as ref_maxsim
from tokenset.reference import quantize as ref

from conftest import BF16, EDGE_LENGTHS, random_sets, requires_torch


def quantized(sets):
    """A Quantized batch built from the reference's codes and scales (so kernels are tested on exactly those)."""
    pairs = ref.quantize(sets)
    dim = sets[0].shape[1]
    values = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros((0, dim), np.int8)
    scales = np.concatenate([s for _, s in pairs]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c, _ in pairs])])
    return tokenset.Quantized(values.reshape(-1, dim), scales, offsets), pairs


def gapped_quantized(batch: tokenset.Quantized, before=2, after=3):
    """The same sets behind and ahead of rows that hold 127 with a huge scale: any read outside the offsets shows."""
    dim = batch.dim
    values = np.concatenate([np.full((before, dim), 127, np.int8), batch.values, np.full((after, dim), 127, np.int8)])
    scales = np.concatenate([np.full(before, 1e30, np.float32), batch.scales, np.full(after, 1e30, np.float32)])
    return tokenset.Quantized(values, scales, batch.offsets + before)


# ---- quantize -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("dim", [1, 3, 64, 130])
def test_quantize_matches_reference_bit_for_bit(dtype, dim):
    rng = np.random.default_rng(dim)
    sets = random_sets(rng, [0, 1, 7, 40], dim)
    sets[2][3] = 0.0  # a zero token: scale 0, codes 0
    sets[3][5] = np.float32(2.5) * (np.arange(dim) % 3 - 1)  # exact halves after division: ties to even
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        sets = [s.astype(BF16) for s in sets]
    else:
        sets = [s.astype(dtype) for s in sets]
    got = tokenset.quantize(sets)
    want = ref.quantize([s.astype(np.float32) for s in sets])
    assert got.values.dtype == np.int8 and got.scales.dtype == np.float32
    assert got.offsets.tolist() == [0, 0, 1, 8, 48]
    np.testing.assert_array_equal(got.values, np.concatenate([c for c, _ in want]))
    np.testing.assert_array_equal(got.scales, np.concatenate([s for _, s in want]))
    assert np.abs(got.values).max() <= 127
    # every element within half a step of its token's scale
    x = np.concatenate(sets).astype(np.float32)
    err = np.abs(got.dequantize().values - x)
    assert (err <= got.scales[:, None] * 0.5 * (1 + 1e-5) + 1e-30).all()


def test_quantize_chunks_and_gapped_input(monkeypatch):
    """Chunks of rows give the same codes as one pass; a gapped Ragged quantises its sets' rows only."""
    import sys

    module = sys.modules["tokenset.quantize"]  # (tokenset.quantize is the function)

    rng = np.random.default_rng(3)
    sets = random_sets(rng, [5, 9, 2], 16)
    whole = tokenset.quantize(sets)
    monkeypatch.setattr(module, "_CHUNK_BYTES", 4 * 16 * 4)  # 4 rows of 16 float32
    chunked = tokenset.quantize(sets)
    np.testing.assert_array_equal(whole.values, chunked.values)
    np.testing.assert_array_equal(whole.scales, chunked.scales)
    values = np.concatenate([np.full((3, 16), 1e6, np.float32), *sets, np.full((2, 16), np.nan, np.float32)])
    g = tokenset.quantize(tokenset.Ragged(values, np.array([3, 8, 17, 19])))
    np.testing.assert_array_equal(g.values, whole.values)
    assert g.offsets.tolist() == [0, 5, 14, 16]


@requires_torch
def test_quantize_torch_matches_numpy():
    import torch

    rng = np.random.default_rng(4)
    sets = random_sets(rng, [3, 11], 24)
    got = tokenset.quantize([torch.from_numpy(s) for s in sets])
    want = tokenset.quantize(sets)
    assert got.values.dtype == torch.int8 and got.scales.dtype == torch.float32
    np.testing.assert_array_equal(got.values.numpy(), want.values)
    np.testing.assert_array_equal(got.scales.numpy(), want.scales)
    q = [torch.from_numpy(s) for s in random_sets(rng, [4], 24)]
    np.testing.assert_array_equal(tokenset.maxsim(q, got).numpy(), tokenset.maxsim([t.numpy() for t in q], want))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_refuses_non_finite(bad):
    x = np.ones((4, 8), np.float32)
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"set 1, token 0 holds NaN or infinity"):
        tokenset.quantize([np.ones((2, 8), np.float32), x[2:]])


def test_quantized_checks_what_it_is_given():
    v, s, o = np.zeros((3, 4), np.int8), np.ones(3, np.float32), [0, 3]
    with pytest.raises(TypeError, match="int8"):
        tokenset.Quantized(v.astype(np.int16), s, o)
    with pytest.raises(ValueError, match=r"float32 \[3\]"):
        tokenset.Quantized(v, s[:2], o)
    with pytest.raises(ValueError, match=r"float32 \[3\]"):
        tokenset.Quantized(v, s.astype(np.float64), o)
    for bad in (np.nan, np.inf, -1.0):
        t = s.copy()
        t[1] = bad
        with pytest.raises(ValueError, match=r"scales\[1\]"):
            tokenset.Quantized(v, t, o)
    with pytest.raises(ValueError, match="past the end"):
        tokenset.Quantized(v, s, [0, 4])
    with pytest.raises(ValueError, match="non-decreasing"):
        tokenset.Quantized(v, s, [0, 2, 1])


def test_other_ops_refuse_quantized_tokens():
    docs = tokenset.quantize(np.ones((4, 8), np.float32))
    with pytest.raises(TypeError, match=r"dequantize\(\)"):
        tokenset.kcenter(docs, 2)
    with pytest.raises(TypeError, match=r"dequantize\(\)"):
        tokenset.FDE(8).encode_documents(docs)
    with pytest.raises(TypeError, match="quantize the documents too"):
        tokenset.maxsim(docs, np.ones((4, 8), np.float32))


# ---- MaxSim, float queries: the dequantised documents, bit for bit ---------------------------------------------------

SHAPES = [(1, [1, 3], [0, 1, 2, 7]), (3, [5], [1, 12, 13, 25]), (17, [31, 32, 33], [1, 6, 7, 13]),
          (128, [32, 8], [40, 173, 300, 0, 1]), (130, [33], [5, 12])]


@pytest.mark.parametrize("dim,q_lengths,d_lengths", SHAPES)
def test_float_queries_score_the_dequantised_documents(simd, dim, q_lengths, d_lengths):
    rng = np.random.default_rng(dim)
    queries = random_sets(rng, q_lengths, dim)
    docs, _ = quantized(random_sets(rng, d_lengths, dim))
    plain = docs.dequantize()
    np.testing.assert_array_equal(tokenset.maxsim(queries, docs), tokenset.maxsim(queries, plain))
    cands = rng.integers(-1, len(d_lengths), (len(q_lengths), 4))
    np.testing.assert_array_equal(tokenset.maxsim_pairs(queries, docs, cands),
                                  tokenset.maxsim_pairs(queries, plain, cands))
    for got, want in zip(tokenset.maxsim_topk(queries, docs, 3), tokenset.maxsim_topk(queries, plain, 3)):
        np.testing.assert_array_equal(got, want)
    g_scores, g_arg = tokenset.maxsim(queries, gapped_quantized(docs), return_argmax=True)
    w_scores, w_arg = tokenset.maxsim(queries, plain, return_argmax=True)
    np.testing.assert_array_equal(g_scores, w_scores)
    np.testing.assert_array_equal(g_arg, w_arg)


def test_float16_queries_are_converted_to_float32():
    rng = np.random.default_rng(9)
    q = random_sets(rng, [4], 32)
    docs, _ = quantized(random_sets(rng, [3, 5], 32))
    np.testing.assert_array_equal(tokenset.maxsim([q[0].astype(np.float16)], docs),
                                  tokenset.maxsim([q[0].astype(np.float16).astype(np.float32)], docs))


# ---- MaxSim, quantised queries: exact integer dot products ---------------------------------------------------------

@pytest.mark.parametrize("dim,q_lengths,d_lengths", SHAPES + [(64, [1, 64, 65], [100, 3])])
def test_int8_queries_match_the_integer_reference_bit_for_bit(simd, dim, q_lengths, d_lengths):
    rng = np.random.default_rng(dim + 7)
    q_sets, d_sets = random_sets(rng, q_lengths, dim), random_sets(rng, d_lengths, dim)
    queries, q_pairs = quantized(q_sets)
    docs, d_pairs = quantized(d_sets)
    want = ref.maxsim_int8(q_pairs, d_pairs)
    got, arg = tokenset.maxsim(queries, gapped_quantized(docs), return_argmax=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(tokenset.maxsim(gapped_quantized(queries), docs), want)
    for a, q in enumerate(q_pairs):
        for b, d in enumerate(d_pairs):
            _, want_arg = ref.maxsim_int8_one(q, d, return_argmax=True)
            np.testing.assert_array_equal(arg[a, b, :len(q[0])], want_arg)
            assert (arg[a, b, len(q[0]):] == -1).all()
    cands = rng.integers(-1, len(d_lengths), (len(q_lengths), 5))
    want_pairs = np.where(cands < 0, -np.inf, want[np.arange(len(q_lengths))[:, None], np.maximum(cands, 0)])
    np.testing.assert_array_equal(tokenset.maxsim_pairs(queries, docs, cands), want_pairs.astype(np.float32))
    top_scores, top_index = tokenset.maxsim_topk(queries, docs, 2)
    want_scores, want_index = ref_maxsim.maxsim_topk(None, None, 2, scores=want.astype(np.float64))
    np.testing.assert_array_equal(top_index, want_index)
    np.testing.assert_array_equal(top_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("dim", [5, 4096])
def test_int8_extremes_and_minus_128(simd, dim):
    """Hand-made codes: -128 (which tokenset.quantize never writes but a caller may) on both sides, all-extreme
    tokens (the largest exact dot products), all-negative similarities, ties (the lowest document token wins)."""
    rng = np.random.default_rng(dim)
    q = rng.choice(np.array([-128, -127, 127, 0, 1], np.int8), (6, dim))
    q[0] = -128
    q[1] = 127
    d = rng.choice(np.array([-128, 127, -1], np.int8), (9, dim))
    d[0] = -128
    d[4] = d[2]  # a tie with an earlier token
    d[5] = 127
    t = rng.uniform(0.001, 0.02, 6).astype(np.float32)
    s = rng.uniform(0.001, 0.02, 9).astype(np.float32)
    queries = tokenset.Quantized(q, t, [0, 6])
    docs = tokenset.Quantized(d, s, [0, 4, 9])
    want = ref.maxsim_int8([(q, t)], [(d[:4], s[:4]), (d[4:], s[4:])])
    got, arg = tokenset.maxsim(queries, docs, return_argmax=True)
    np.testing.assert_array_equal(got, want)
    for b, (lo, hi) in enumerate([(0, 4), (4, 9)]):
        np.testing.assert_array_equal(arg[0, b], ref.maxsim_int8_one((q, t), (d[lo:hi], s[lo:hi]), True)[1])
    neg = tokenset.Quantized(np.full((2, dim), -3, np.int8), np.ones(2, np.float32), [0, 2])
    pos = tokenset.Quantized(np.full((3, dim), 5, np.int8), np.ones(3, np.float32), [0, 3])
    score, arg = tokenset.maxsim(neg, pos, return_argmax=True)
    assert score[0, 0] == np.float32(-15 * dim) * 2 and (arg[0, 0] == 0).all()


def test_zero_scales_and_zero_tokens():
    docs = tokenset.Quantized(np.array([[0, 0], [3, -4]], np.int8), np.array([0.0, 0.5], np.float32), [0, 2])
    queries = tokenset.quantize(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32))
    want = ref.maxsim_int8([(queries.values, queries.scales)], [(docs.values, docs.scales)])
    np.testing.assert_array_equal(tokenset.maxsim(queries, docs), want)
    assert np.isfinite(want).all()


def test_int8_error_bound_against_float32_maxsim():
    """Quantised queries and documents against float32 MaxSim of the original tokens: within the rounding bound
    (each element off by at most half its token's scale), with float32 slack."""
    rng = np.random.default_rng(11)
    q_sets, d_sets = random_sets(rng, [32, 7], 128), random_sets(rng, [0, 1, 60, 300], 128)
    queries, q_pairs = quantized(q_sets)
    docs, d_pairs = quantized(d_sets)
    exact = ref_maxsim.maxsim([s.astype(np.float64) for s in q_sets], [s.astype(np.float64) for s in d_sets])
    got = tokenset.maxsim(queries, docs).astype(np.float64)
    exact[~np.isfinite(exact)] = got[~np.isfinite(exact)] = 0.0  # empty documents (both -inf, checked below)
    bound = ref.error_bound(q_sets, q_pairs, d_sets, d_pairs)
    finite = np.array([len(d) > 0 for d in d_sets])[None, :].repeat(len(q_sets), 0)
    assert np.array_equal(np.isneginf(tokenset.maxsim(queries, docs)), ~finite)
    err = np.abs(got - exact)[finite]
    assert (err <= bound[finite] * 1.001 + 1e-4 * np.abs(exact[finite])).all()
    assert err.max() > 0  # the bound is tested on a real rounding error, not on identical values
    # float queries against int8 documents: only the documents' rounding
    got_float = tokenset.maxsim(q_sets, docs).astype(np.float64)
    got_float[~finite] = 0.0
    d_bound = np.array([[sum(max((np.abs(q) * s[j] / 2).sum() for j in range(len(s))) for q in qs) if len(s) else 0
                         for (_, s) in d_pairs] for qs in q_sets])
    assert (np.abs(got_float - exact)[finite] <= d_bound[finite] * 1.001 + 1e-4 * np.abs(exact[finite])).all()


@pytest.mark.parametrize("name,lengths", list(EDGE_LENGTHS.items()))
def test_int8_edge_lengths_and_threads(name, lengths):
    rng = np.random.default_rng(len(lengths))
    queries, q_pairs = quantized(random_sets(rng, [1, 33], 40))
    docs, d_pairs = quantized(random_sets(rng, lengths, 40))
    want = ref.maxsim_int8(q_pairs, d_pairs)
    threads = tokenset.get_num_threads()
    try:
        for n in (1, 2, 3):
            tokenset.set_num_threads(n)
            np.testing.assert_array_equal(tokenset.maxsim(queries, docs), want)
    finally:
        tokenset.set_num_threads(threads)


def test_native_refuses_bad_int8_batches():
    """The native layer checks what it is given, whoever built the batch."""
    from tokenset import _core
    from tokenset.ops._dispatch import KernelBatch

    v = np.ones((4, 8), np.int8)
    scores = np.empty((1, 1), np.float32)
    q = KernelBatch(np.ones((2, 8), np.float32), None, np.array([0, 2]), None)
    with pytest.raises(ValueError, match="scales"):
        _core.maxsim(q, KernelBatch(v, None, np.array([0, 4]), None, np.ones(3, np.float32)), scores)
    with pytest.raises(TypeError, match="scales"):
        _core.maxsim(q, KernelBatch(v, None, np.array([0, 4]), None, np.ones(4, np.float64)), scores)
    bad = np.ones(4, np.float32)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="not a finite number"):
        _core.maxsim(q, KernelBatch(v, None, np.array([0, 4]), None, bad), scores)
    with pytest.raises(TypeError, match="dequantize"):
        int8 = KernelBatch(v, None, np.array([0, 4]), None, np.ones(4, np.float32))
        _core.nearest(int8, int8, 0, np.empty(4, np.int64))


# ---- found by review: each reproduced, then fixed -----------------------------------------------------------------

def test_scales_in_another_byte_order_are_refused():
    """Big-endian float32 scales were read as other numbers (scores of 1e-39 instead of 34.5)."""
    v = np.ones((3, 4), np.int8)
    with pytest.raises(ValueError, match=">f4"):
        tokenset.Quantized(v, np.ones(3, ">f4"), [0, 3])
    with pytest.raises(TypeError, match="byte order"):
        tokenset.inner_product_topk(np.ones((1, 4), np.float32), v, 2, scales=np.ones(3, ">f4"))


def test_uint8_codes_are_refused_natively():
    from tokenset import _core
    from tokenset.ops._dispatch import KernelBatch

    q = KernelBatch(np.ones((1, 4), np.float32), None, np.array([0, 1]), None)
    with pytest.raises(TypeError, match="uint8 values are not int8 codes"):
        _core.maxsim(q, KernelBatch(np.full((2, 4), 200, np.uint8), None, np.array([0, 2]), None,
                                    np.ones(2, np.float32)), np.empty((1, 1), np.float32))
    with pytest.raises(TypeError, match="uint8 values are not int8 codes"):
        _core.inner_product_topk(np.ones((1, 4), np.float32), np.full((2, 4), 200, np.uint8), 1,
                                 np.empty((1, 1), np.float32), np.empty((1, 1), np.int64), None,
                                 np.ones(2, np.float32))


@requires_torch
def test_gradients_through_int8_documents_are_refused_not_dropped():
    import torch

    docs = tokenset.quantize(np.ones((3, 4), np.float32))
    q = torch.ones(2, 4, requires_grad=True)
    with pytest.raises(TypeError, match="not differentiable"):
        tokenset.maxsim(q, docs)
    with torch.no_grad():
        assert tokenset.maxsim(q, docs).shape == (1, 1)
    float_docs = torch.ones(3, 4, requires_grad=True)  # int8 queries against float documents: the reason, not grad's
    with pytest.raises(TypeError, match="quantize the documents too"):
        tokenset.maxsim(tokenset.quantize(torch.ones(2, 4)), float_docs)
    assert tokenset.maxsim(q.detach(), docs).shape == (1, 1)


def test_pairs_check_the_scales_of_their_candidates_only():
    """A call scoring 3 candidates read every document's scales (O(corpus) per call); bad scales of a candidate are
    still refused."""
    values = np.ones((4, 8), np.int8)
    scales = np.array([1, 1, 1, 1], np.float32)
    docs = tokenset.Quantized(values, scales, [0, 1, 2, 3, 4])
    scales[2] = np.nan  # after the constructor's check, as another writer could
    q = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(tokenset.maxsim_pairs(q, docs, np.array([[0, 3, -1]])), [[8, 8, -np.inf]])
    with pytest.raises(ValueError, match="documents set 2, token 0: scale nan"):
        tokenset.maxsim_pairs(q, docs, np.array([[0, 2]]))
    with pytest.raises(ValueError, match="documents set 2"):
        tokenset.maxsim(q, docs)


def test_uint8_rows_with_scales_get_the_reason():
    with pytest.raises(TypeError, match="uint8 values are not int8 codes"):
        tokenset.inner_product_topk(np.ones((1, 4), np.float32), np.ones((3, 4), np.uint8), 2,
                                    scales=np.ones(3, np.float32))


def test_inner_product_refuses_bad_scales():
    codes = np.ones((3, 4), np.int8)
    for bad in (np.nan, np.inf, -1.0):
        scales = np.ones(3, np.float32)
        scales[1] = bad
        with pytest.raises(ValueError, match=r"scales\[1\]"):
            tokenset.inner_product_topk(np.ones((1, 4), np.float32), codes, 2, scales=scales)


def test_dequantize_gives_float_tokens_only():
    q = tokenset.quantize(np.ones((2, 4), np.float32))
    for dtype in ("float64", "int8"):
        with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
            q.dequantize(dtype)
    assert q.dequantize("float16").values.dtype == np.float16
    for dtype in (np.float16, "f2", np.dtype("float16")):  # numpy's spellings too
        assert q.dequantize(dtype).values.dtype == np.float16


def test_cuda_refuses_int8_with_the_fix(cuda):
    """int8 kernels are CPU kernels: a Quantized batch or int8 rows on a GPU get the reason and the fix, natively too."""
    import torch

    docs = tokenset.quantize(torch.ones(3, 8, device="cuda"))
    assert docs.values.device.type == "cuda" and docs.values.dtype == torch.int8
    q = torch.ones(2, 8, device="cuda")
    with pytest.raises(ValueError, match="scored on the CPU"):
        tokenset.maxsim(q, docs)
    with pytest.raises(ValueError, match="scanned on the CPU"):
        tokenset.inner_product_topk(q, docs.values, 1, scales=docs.scales)
    np.testing.assert_array_equal(tokenset.maxsim(q.cpu(), tokenset.Quantized(docs.values.cpu(), docs.scales.cpu(),
                                                                              docs.offsets)).numpy(), [[16.0]])
