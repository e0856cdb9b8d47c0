"""inner_product_topk against the float64 reference: every SIMD level and stored dtype, masks, k > n, ties, NaN/inf,
strided rows, torch input, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference.inner_product import inner_product_topk as reference

from conftest import BF16, DTYPES, as_dtype, requires_torch, to_numpy

U32 = 2.0 ** -24


def check(queries, vectors, k, mask=None):
    scores, indices = tokenset.inner_product_topk(queries, vectors, k, mask=mask)
    return assert_topk(scores, indices, queries, vectors, k, mask)


def assert_topk(scores, indices, queries, vectors, k, mask=None):
    """A best set within the float32 bound of the reference, (-inf, -1) padding, masked rows never returned."""
    q64, v64 = np.asarray(queries, np.float64), np.asarray(vectors, np.float64)
    want_s, want_i = reference(np.asarray(queries, np.float32), vectors, k, mask)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and scores.shape == (len(queries), k)
    # Indices may differ from the reference only between scores closer than the float32 bound.
    bound = 2 * U32 * (v64.shape[1] + 2) * (np.abs(np.asarray(queries, np.float32)) @ np.abs(v64).T) + 1e-30
    for a in range(len(queries)):
        valid = want_i[a] >= 0
        assert np.array_equal(indices[a] >= 0, valid)
        got_exact = q64[a] @ v64[np.maximum(indices[a], 0)].T if len(v64) else np.zeros(k)
        assert np.all(np.abs(scores[a][valid] - got_exact[valid]) <= bound[a, indices[a][valid]])
        # the returned set is a best set: its exact scores are within the bound of the reference's
        assert np.all(np.abs(np.sort(got_exact[valid]) - np.sort(want_s[a][valid])) <= 2 * bound[a].max())
        if mask is not None:
            assert np.asarray(mask)[indices[a][valid]].all()
    return scores, indices


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 16, 33, 384])
def test_matches_reference(simd, dtype, dim):
    rng = np.random.default_rng(dim)
    vectors = as_dtype(rng.standard_normal((300, dim)), dtype)
    queries = rng.standard_normal((11, dim)).astype(np.float32)  # tiles of 4 queries, and a remainder of 3
    for k in (1, 10, 299, 300, 305):
        check(queries, vectors, k)
    check(queries, vectors, 20, mask=rng.random(300) < 0.3)
    check(queries, vectors, 5, mask=np.zeros(300, bool))


def test_ties_nan_and_empty():
    vectors = np.array([[1, 0], [1, 0], [0, 1], [np.nan, 0], [1, 0]], np.float32)
    scores, indices = tokenset.inner_product_topk(np.array([[1, 0]], np.float32), vectors, 5)
    assert indices.tolist() == [[0, 1, 4, 2, 3]]  # ties to the lower index, NaN last
    assert np.isnan(scores[0, 4])
    s, i = tokenset.inner_product_topk(np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), 2)
    assert (i == -1).all() and (s == -np.inf).all()
    s, i = tokenset.inner_product_topk(np.zeros((0, 3), np.float32), np.ones((4, 3), np.float32), 2)
    assert s.shape == (0, 2)


def test_strided_rows_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((200, 40)).astype(np.float16)
    check(rng.standard_normal((3, 32)), wide[:, 4:36], 7)  # rows strided, elements contiguous
    np.save(tmp_path / "v.npy", wide)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    check(rng.standard_normal((2, 40)), mapped, 9)


@requires_torch
def test_torch_in_torch_out():
    import torch

    v = torch.randn(50, 16, dtype=torch.bfloat16)
    q = torch.randn(3, 16, dtype=torch.float64)
    s, i = tokenset.inner_product_topk(q, v, 4)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and i.dtype == torch.int64
    want_s, want_i = tokenset.inner_product_topk(q.float().numpy(), v.float().numpy().astype(BF16) if BF16 else
                                                 v.float().numpy(), 4)
    assert np.array_equal(i.numpy(), want_i)


def test_bad_input():
    v = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        tokenset.inner_product_topk(v, v, 0)
    with pytest.raises(ValueError, match="3 dimensions but vectors have 2"):
        tokenset.inner_product_topk(v, np.ones((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        tokenset.inner_product_topk(v[0], v, 1)
    with pytest.raises(TypeError, match="not supported"):
        tokenset.inner_product_topk(v, v.astype(np.float64), 1)
    with pytest.raises(TypeError, match="boolean"):
        tokenset.inner_product_topk(v, v, 1, mask=np.ones(4))
    with pytest.raises(ValueError, match="mask must have shape"):
        tokenset.inner_product_topk(v, v, 1, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="contiguous"):
        tokenset._core.inner_product_topk(v, np.ones((4, 6), np.float32)[:, ::2], 1, np.empty((4, 1), np.float32),
                                          np.empty((4, 1), np.int64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_reference_and_cpu(cuda, dtype):
    """The CUDA kernel (chunks of 2,048 vectors, warp dot products, the shared block top-k merge) against the
    reference, with masks, k across the chunk size, and bit-exact agreement of the CPU's indices where scores are
    separated by more than the rounding bound."""
    import torch

    rng = np.random.default_rng(3)
    vectors = as_dtype(rng.standard_normal((5000, 96)), dtype)  # three chunks
    queries = rng.standard_normal((9, 96)).astype(np.float32)
    mask = rng.random(5000) < 0.6
    v_gpu = torch.from_numpy(np.asarray(vectors, np.float32)).to("cuda", getattr(torch, dtype))
    q_gpu = torch.from_numpy(queries).cuda()
    for k, m in ((1, None), (10, None), (2100, None), (50, mask), (5001, mask)):
        m_gpu = None if m is None else torch.from_numpy(m).cuda()
        s, i = tokenset.inner_product_topk(q_gpu, v_gpu, k, mask=m_gpu)
        assert s.is_cuda and i.is_cuda
        assert_topk(to_numpy(s), to_numpy(i), queries, vectors, k, m)
        cpu_s, cpu_i = tokenset.inner_product_topk(queries, vectors, k, mask=m)
        assert (to_numpy(i)[:, 0] == cpu_i[:, 0]).mean() >= 0.9


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_query_scores_the_same_bits_alone_or_in_a_group(simd, dtype):
    """Register tiles of rows x queries differ with the group's size (16 rows x 1 query ... 4 x 4), and every tile
    sums each (row, query) in one order, so a query scores the same bits alone or in a larger group."""
    rng = np.random.default_rng(11)
    dim = 1000 + 3  # a tail past the last full vector
    vectors = as_dtype(rng.standard_normal((257, dim)).astype(np.float32), dtype)
    queries = rng.standard_normal((8, dim)).astype(np.float32)
    mask = rng.random(257) < 0.9
    for take in (1, 2, 3, 4):
        alone = tokenset.inner_product_topk(queries[:take], vectors, 257, mask=mask)
        grouped = tokenset.inner_product_topk(queries, vectors, 257, mask=mask)
        np.testing.assert_array_equal(alone[0], grouped[0][:take])
        np.testing.assert_array_equal(alone[1], grouped[1][:take])


# ---- int8 vectors with a scale per row ----------------------------------------------------------------------------

def _all_scores(scores, indices, n):
    """[nq, n] scores by vector index from a top-k over every vector."""
    out = np.full((scores.shape[0], n), np.nan, np.float32)
    np.put_along_axis(out, indices, scores, axis=1)
    return out


@pytest.mark.parametrize("dim", [1, 7, 64, 100, 10240])
def test_int8_vectors_are_their_codes_times_the_scale(simd, dim):
    """score = float32(<q, codes>) * scale, bit for bit: the codes scanned as float32 vectors, then scaled."""
    rng = np.random.default_rng(dim)
    n = 37
    quantized = tokenset.quantize(rng.standard_normal((n, dim)).astype(np.float32))
    codes, scales = quantized.values, quantized.scales
    queries = rng.standard_normal((6, dim)).astype(np.float32)
    got = _all_scores(*tokenset.inner_product_topk(queries, codes, n, scales=scales), n)
    plain = _all_scores(*tokenset.inner_product_topk(queries, codes.astype(np.float32), n), n)
    np.testing.assert_array_equal(got, plain * scales[None, :])
    top, index = tokenset.inner_product_topk(queries, codes, 5, scales=scales)
    ref_scores, ref_index = reference(queries.astype(np.float64), codes.astype(np.float64) * scales[:, None], 5)
    np.testing.assert_allclose(top, ref_scores, rtol=1e-5, atol=1e-5 * dim)
    mask = rng.random(n) < 0.5
    _, masked = tokenset.inner_product_topk(queries, codes, n, scales=scales, mask=mask)
    assert set(masked[0][masked[0] >= 0].tolist()) == set(np.flatnonzero(mask).tolist())


def test_int8_vectors_need_their_scales():
    codes = np.ones((4, 8), np.int8)
    q = np.ones((1, 8), np.float32)
    with pytest.raises(ValueError, match="need scales"):
        tokenset.inner_product_topk(q, codes, 2)
    with pytest.raises(ValueError, match="int8 vectors only"):
        tokenset.inner_product_topk(q, codes.astype(np.float32), 2, scales=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="scales"):
        tokenset.inner_product_topk(q, codes, 2, scales=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="float32"):
        tokenset.inner_product_topk(q, codes, 2, scales=np.ones(4, np.float64))
    with pytest.raises(ValueError, match="need scales"):  # the native check, whoever calls it
        tokenset._core.inner_product_topk(q, codes, 1, np.empty((1, 1), np.float32), np.empty((1, 1), np.int64))
