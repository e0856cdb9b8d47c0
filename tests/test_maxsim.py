"""MaxSim against the numpy reference: random sweeps over shapes, dtypes and SIMD levels, and hand-made edge cases."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import tokenset
from tokenset.reference import maxsim as ref

from conftest import (BF16, EDGE_LENGTHS, SIMD_LEVELS, as_float64, exact_float64, maxsim_error_bound, on_device,
                      random_sets, requires_torch, to_numpy)


def cast(sets, dtype):
    """Inputs in a given dtype, plus their exact float64 values (what the kernel sees after conversion)."""
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        low = [s.astype(BF16) for s in sets]
    else:
        low = [s.astype(dtype) for s in sets]
    return low, [s.astype(np.float64) for s in low]


SHAPES = [  # (dim, query lengths, document lengths)
    (1, [1, 3], [0, 1, 2, 7]),
    (3, [5], [1, 12, 13, 25]),
    (16, [16, 17, 1], [11, 12, 24, 0, 5]),
    (17, [31, 32, 33], [1, 6, 7, 13]),
    (128, [32, 8], [40, 173, 300, 0, 1]),
    (384, [32, 70], [12, 57]),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("dim,q_lengths,d_lengths", SHAPES + [(100, [31, 32, 33], [1, 130, 7])])
def test_all_pairs_match_reference(device, simd, dtype, dim, q_lengths, d_lengths):
    """Every device, SIMD level and dtype within the float32 forward-error bound of the float64 reference on the
    converted inputs (tensor cores multiply float16/bfloat16 exactly and accumulate in float32: the same bound)."""
    rng = np.random.default_rng(dim * 1000 + len(q_lengths))
    queries = on_device(random_sets(rng, q_lengths, dim), device, dtype)
    documents = on_device(random_sets(rng, d_lengths, dim), device, dtype)
    q64, d64 = exact_float64(queries), exact_float64(documents)
    got = to_numpy(tokenset.maxsim(queries, documents))
    want = ref.maxsim(q64, d64)
    assert got.dtype == np.float32 and got.shape == (len(queries), len(documents))
    empty = np.isinf(want)
    assert np.array_equal(np.isneginf(got), empty)
    bound = maxsim_error_bound(q64, d64)
    np.testing.assert_array_less(np.abs(got[~empty] - want[~empty]), bound[~empty])


# Widths the CPU kernel compiles as constants (csrc/cpu/maxsim.cpp: float32 rows with stride == dim, or any
# float16/bfloat16 rows), next to one it does not.
COMPILED_WIDTHS = [64, 96, 128, 256, 384, 512, 768, 1024, 200]


@pytest.mark.parametrize("dim", COMPILED_WIDTHS)
def test_compiled_widths_match_reference_and_the_strided_path(simd, dim):
    rng = np.random.default_rng(dim)
    queries = random_sets(rng, [32, 5], dim)
    lengths = [12, 24, 25, 1, 0, 37]  # full 12-row tiles, partial tiles, one token, empty
    documents = random_sets(rng, lengths, dim)
    documents[2][7, dim // 2] = np.nan  # a NaN inside a full tile
    got = tokenset.maxsim(queries, documents)
    want = ref.maxsim(as_float64(queries), as_float64(documents))
    assert np.isnan(got[:, 2]).all() and np.isnan(want[:, 2]).all()
    finite = np.isfinite(want)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    assert np.all(np.abs(got[finite] - want[finite]) < maxsim_error_bound(queries, documents)[finite])
    # The same rows with a row stride of dim + 3 take the generic-width path: same arithmetic, same bits.
    offsets = np.r_[0, np.cumsum(lengths)]
    wide = np.zeros((offsets[-1], dim + 3), np.float32)
    wide[:, :dim] = np.concatenate(documents)
    strided = tokenset.maxsim(queries, tokenset.Ragged(wide[:, :dim], offsets))
    np.testing.assert_array_equal(strided, got)
    # float16 rows are converted into packed scratch, so they take the compiled width too.
    half_q = [q.astype(np.float16) for q in queries]
    half_d = [d.astype(np.float16) for d in documents]
    got16 = tokenset.maxsim(half_q, half_d)
    want16 = ref.maxsim(as_float64(half_q), as_float64(half_d))
    assert np.all(np.abs(got16[finite] - want16[finite]) < maxsim_error_bound(half_q, half_d)[finite])


def test_random_sweep_many_shapes(simd):
    rng = np.random.default_rng(7)
    for trial in range(25):
        dim = int(rng.integers(1, 200))
        queries = random_sets(rng, rng.integers(1, 80, size=rng.integers(1, 5)), dim)
        documents = random_sets(rng, rng.integers(0, 120, size=rng.integers(1, 9)), dim)
        got = tokenset.maxsim(queries, documents)
        want = ref.maxsim(as_float64(queries), as_float64(documents))
        finite = np.isfinite(want)
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), trial
        assert np.all(np.abs(got[finite] - want[finite]) < maxsim_error_bound(queries, documents)[finite]), trial


def test_simd_levels_agree_with_scalar():
    rng = np.random.default_rng(3)
    queries = random_sets(rng, [32, 7, 45], 96)
    documents = random_sets(rng, rng.integers(0, 150, 40), 96)
    results = {}
    for level in tokenset.build_info()["simd_compiled"]:
        try:
            tokenset.set_simd_level(level)
        except ValueError:
            continue
        results[level] = tokenset.maxsim(queries, documents)
    tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    bound = maxsim_error_bound(queries, documents)
    for level, got in results.items():
        finite = np.isfinite(results["scalar"])
        assert np.all(np.abs(got[finite] - results["scalar"][finite]) < 2 * bound[finite]), level


def test_empty_document_scores_minus_inf_and_all_negative_stays_negative(simd):
    q = np.ones((4, 8), np.float32)
    docs = [np.zeros((0, 8), np.float32), -np.ones((3, 8), np.float32), np.full((1, 8), -0.5, np.float32)]
    got = tokenset.maxsim(q, docs)
    assert got[0, 0] == -np.inf
    assert got[0, 1] == pytest.approx(-32.0)  # never clamped at 0 as ColBERT's CPU path / PyLate padding do
    assert got[0, 2] == pytest.approx(-16.0)


def test_padding_never_wins_a_max(simd):
    rng = np.random.default_rng(11)
    docs = -np.abs(rng.standard_normal((3, 10, 16))).astype(np.float32)  # all similarities negative for q >= 0
    lengths = np.array([10, 4, 1])
    q = np.abs(rng.standard_normal((5, 16))).astype(np.float32)
    got = tokenset.maxsim(q, tokenset.ragged(docs, lengths=lengths))
    want = ref.maxsim([q], [docs[i, :n] for i, n in enumerate(lengths)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got < 0)


def test_one_token_each(simd):
    q = np.array([[2.0, -1.0]], np.float32)
    d = [np.array([[3.0, 4.0]], np.float32)]
    assert tokenset.maxsim(q, d)[0, 0] == pytest.approx(2.0)


def test_argmax_ties_go_to_lowest_index(simd):
    q = np.ones((3, 4), np.float32)
    doc = np.zeros((30, 4), np.float32)
    doc[[5, 9, 29]] = 1.0  # three equal best tokens, spanning register tiles
    scores, argmax = tokenset.maxsim(q, [doc], return_argmax=True)
    assert scores[0, 0] == pytest.approx(12.0)
    assert argmax.shape == (1, 1, 3) and argmax.dtype == np.int32
    assert np.all(argmax[0, 0] == 5)


def test_argmax_matches_reference_and_pads(simd):
    rng = np.random.default_rng(5)
    queries = random_sets(rng, [3, 40], 24)
    documents = random_sets(rng, [17, 0, 33], 24)
    scores, argmax = tokenset.maxsim(queries, documents, return_argmax=True)
    assert argmax.shape == (2, 3, 40)
    for a, q in enumerate(queries):
        for b, d in enumerate(documents):
            want = ref.maxsim_argmax(q, d)
            np.testing.assert_array_equal(argmax[a, b, : len(q)], want)
            assert np.all(argmax[a, b, len(q):] == -1)
    plain = tokenset.maxsim(queries, documents)
    np.testing.assert_array_equal(plain, scores)


def test_all_similarities_minus_inf_argmax_first(simd):
    q = np.array([[1.0, 0.0]], np.float32)
    d = np.array([[-np.inf, 0.0], [-np.inf, 0.0]], np.float32)
    scores, argmax = tokenset.maxsim(q, [d], return_argmax=True)
    assert scores[0, 0] == -np.inf and argmax[0, 0, 0] == 0


def test_nan_propagates(simd):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    docs = random_sets(rng, [5, 5, 20], 8)
    docs[1][2, 3] = np.nan  # one NaN coordinate: every similarity with that token is NaN
    q2 = q.copy()
    q2[1, 0] = np.nan
    got = tokenset.maxsim([q, q2], docs)
    want = ref.maxsim(as_float64([q, q2]), as_float64(docs))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, 1]) and not np.isnan(got[0, 0]) and np.all(np.isnan(got[1]))


def test_infinities_match_reference(simd):
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    docs = [np.array([[np.inf, 0.0], [1.0, 1.0]], np.float32),      # +inf similarity wins
            np.array([[-np.inf, 1.0]], np.float32),                  # -inf max for token 0 -> score -inf
            np.array([[np.inf, 0.0], [0.0, -np.inf]], np.float32)]   # inf*0 = NaN
    got = tokenset.maxsim(q, docs)
    want = ref.maxsim(as_float64([q]), as_float64(docs))
    np.testing.assert_array_equal(got[0], want[0].astype(np.float32))


def test_non_contiguous_inputs(simd):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((200, 64)).astype(np.float32)
    strided_rows = base[::2]  # row stride 128 elements: read in place
    reversed_rows = base[::-1]  # negative row stride
    fortran = np.asfortranarray(base[:50])  # inner stride != 1: one documented copy
    q = rng.standard_normal((9, 64)).astype(np.float32)[:, :]
    for docs in (strided_rows, reversed_rows, fortran, base[:, :]):
        r = tokenset.Ragged(docs, [0, 10, 10, len(docs)])
        got = tokenset.maxsim(q[::-1], r)
        want = ref.maxsim([q[::-1].astype(np.float64)], [np.asarray(r[i], np.float64) for i in range(3)])
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-4)
        assert got[0, 1] == -np.inf


def test_input_forms_agree():
    rng = np.random.default_rng(4)
    padded = rng.standard_normal((4, 9, 16)).astype(np.float32)
    lengths = np.array([9, 3, 0, 5])
    mask = np.arange(9)[None, :] < lengths[:, None]
    q = rng.standard_normal((2, 6, 16)).astype(np.float32)
    as_list = [padded[i, :n] for i, n in enumerate(lengths)]
    want = ref.maxsim(as_float64(list(q)), as_float64(as_list))
    for docs in (as_list, tokenset.ragged(padded, lengths=lengths), tokenset.ragged(padded, mask=mask),
                 tokenset.Ragged(np.concatenate(as_list), np.r_[0, np.cumsum(lengths)])):
        got = tokenset.maxsim(q, docs)  # 3-D queries: all tokens valid
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a scattered mask (not a prefix) selects exactly the masked tokens
    scattered = rng.random((4, 9)) < 0.5
    got = tokenset.maxsim(q, tokenset.ragged(padded, mask=scattered))
    want = ref.maxsim(as_float64(list(q)), as_float64([padded[i][scattered[i]] for i in range(4)]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_d_input_is_one_set():
    q = np.ones((3, 4), np.float32)
    assert tokenset.maxsim(q, q).shape == (1, 1)


def test_mixed_dtypes_cpu(simd):
    """Queries are converted to the documents' dtype (the rule on every device): the same bits as converting them
    first, and within the float32 bound of the reference on the converted values."""
    rng = np.random.default_rng(12)
    q = rng.standard_normal((7, 32)).astype(np.float32)
    docs = random_sets(rng, [5, 19], 32, np.float16)
    got = tokenset.maxsim(q, docs)
    np.testing.assert_array_equal(got, tokenset.maxsim(q.astype(np.float16), docs))
    q16 = [q.astype(np.float16).astype(np.float64)]
    want = ref.maxsim(q16, as_float64(docs))
    np.testing.assert_array_less(np.abs(got - want), maxsim_error_bound(q16, as_float64(docs)))


def test_pairs_match_reference(simd):
    rng = np.random.default_rng(21)
    queries = random_sets(rng, [4, 33, 12], 40)
    documents = random_sets(rng, rng.integers(0, 60, 25), 40)
    cand = rng.integers(-1, 25, (3, 7))
    got = tokenset.maxsim_pairs(queries, documents, cand)
    want = ref.maxsim_pairs(as_float64(queries), as_float64(documents), cand)
    assert got.shape == (3, 7)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-4)
    full = tokenset.maxsim(queries, documents)
    valid = cand >= 0
    np.testing.assert_array_equal(got[valid], np.take_along_axis(full, np.where(valid, cand, 0), 1)[valid])


def test_pairs_zero_candidates():
    q = np.ones((2, 4), np.float32)
    assert tokenset.maxsim_pairs(q, [q], np.zeros((1, 0), np.int64)).shape == (1, 0)


@pytest.mark.parametrize("k", [1, 5, 30, 100])
def test_topk_matches_reference(simd, k):
    rng = np.random.default_rng(k)
    queries = random_sets(rng, [8, 32, 3], 48)
    documents = random_sets(rng, rng.integers(0, 90, 60), 48)
    scores, indices = tokenset.maxsim_topk(queries, documents, k)
    full = tokenset.maxsim(queries, documents)
    want_s, want_i = ref.maxsim_topk(None, None, k, scores=full.astype(np.float64))
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(scores, want_s.astype(np.float32))
    assert indices.dtype == np.int64 and scores.shape == (3, k)


def test_topk_ties_nan_and_short_rows(simd):
    q = np.ones((1, 2), np.float32)
    docs = [np.ones((1, 2), np.float32)] * 5 + [np.full((1, 2), np.nan, np.float32), np.zeros((0, 2), np.float32)]
    docs[3] = np.full((1, 2), 2.0, np.float32)
    scores, indices = tokenset.maxsim_topk(q, docs, k=9)
    # best first; equal scores by index; NaN ranks as -inf, tied with the empty doc, so by index; then padding
    np.testing.assert_array_equal(indices[0], [3, 0, 1, 2, 4, 5, 6, -1, -1])
    assert scores[0, 0] == 4.0 and np.isnan(scores[0, 5]) and scores[0, 6] == -np.inf and scores[0, 8] == -np.inf


def test_zero_queries_and_zero_documents():
    q = tokenset.Ragged(np.zeros((0, 4), np.float32), [0])
    d = [np.ones((2, 4), np.float32)]
    assert tokenset.maxsim(q, d).shape == (0, 1)
    no_docs = tokenset.Ragged(np.zeros((0, 4), np.float32), [0])
    assert tokenset.maxsim(np.ones((2, 4), np.float32), no_docs).shape == (1, 0)
    s, i = tokenset.maxsim_topk(np.ones((2, 4), np.float32), no_docs, 3)
    assert np.all(s == -np.inf) and np.all(i == -1)


def test_threads_give_identical_results():
    rng = np.random.default_rng(8)
    queries = random_sets(rng, [32, 32, 5], 64)
    documents = random_sets(rng, rng.integers(1, 200, 300), 64)
    before = tokenset.get_num_threads()
    try:
        tokenset.set_num_threads(1)
        one = tokenset.maxsim(queries, documents)
        one_topk = tokenset.maxsim_topk(queries, documents, 10)
        tokenset.set_num_threads(3)
        many = tokenset.maxsim(queries, documents)
        many_topk = tokenset.maxsim_topk(queries, documents, 10)
    finally:
        tokenset.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one_topk[1], many_topk[1])


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(10)
    queries = random_sets(rng, [32] * 3, 64)
    documents = tokenset.ragged(random_sets(rng, rng.integers(1, 200, 200), 64))
    want = tokenset.maxsim(queries, documents)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(tokenset.maxsim(queries, documents))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_array_equal(r, want)


@requires_torch
def test_torch_inputs_return_torch():
    import torch

    rng = np.random.default_rng(13)
    q = torch.from_numpy(rng.standard_normal((2, 6, 32)).astype(np.float32))
    docs = [torch.from_numpy(d) for d in random_sets(rng, [4, 0, 9], 32)]
    got = tokenset.maxsim(q, docs)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    want = ref.maxsim([x.numpy().astype(np.float64) for x in q], [d.numpy().astype(np.float64) for d in docs])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    s, i = tokenset.maxsim_topk(q, docs, 2)
    assert isinstance(i, torch.Tensor) and i.dtype == torch.int64


@requires_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision(simd, dtype):
    import torch

    rng = np.random.default_rng(14)
    tdtype = getattr(torch, dtype)
    q = torch.from_numpy(rng.standard_normal((20, 48)).astype(np.float32)).to(tdtype)
    docs = torch.from_numpy(rng.standard_normal((3, 30, 48)).astype(np.float32)).to(tdtype)
    got = tokenset.maxsim(q, tokenset.ragged(docs, lengths=torch.tensor([30, 1, 17])))
    q64 = q.double().numpy()
    d64 = [docs[0].double().numpy(), docs[1, :1].double().numpy(), docs[2, :17].double().numpy()]
    want = ref.maxsim([q64], d64)
    np.testing.assert_array_less(np.abs(got.numpy() - want), maxsim_error_bound([q64], d64))


@requires_torch
def test_torch_non_contiguous():
    import torch

    x = torch.randn(64, 40)
    q = torch.randn(5, 20)
    got = tokenset.maxsim(q, x[:, ::2])  # inner stride 2: copied once
    want = ref.maxsim([q.double().numpy()], [x[:, ::2].double().numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)
    got_t = tokenset.maxsim(q, x.t()[:20].t().contiguous().t().t())  # a transposed view
    assert got_t.shape == (1, 1)


# ---- bfloat16 dot-product levels: AVX-512 BF16 (vdpbf16ps, any dim) and AMX-BF16 tiles (dim a multiple of 32) ----------
# Neither rounds as an FMA chain does: their scores are tested within the float kernel's error bound, not bit for bit.
BF16_LEVELS = [pytest.param(level, marks=pytest.mark.skipif(level not in SIMD_LEVELS,
                                                             reason=f"this CPU, OS or build has no {level} level"))
               for level in ("avx512bf16", "amx")]


def level_then_avx512(level, fn):
    """fn() at `level` and at 'avx512', which runs the same bfloat16 inputs through FMAs."""
    try:
        tokenset.set_simd_level(level)
        on_dots = fn()
        tokenset.set_simd_level("avx512")
        on_vectors = fn()
    finally:
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    return on_dots, on_vectors


@pytest.mark.parametrize("level", BF16_LEVELS)
@pytest.mark.parametrize("dim", [32, 64, 96, 128, 384, 1024, 1, 33, 130])
def test_bf16_levels_match_reference_and_vector_kernel(level, dim):
    if level == "amx" and dim % 32:
        pytest.skip("AMX tiles take dims that are multiples of 32 (others run the vector kernel)")
    rng = np.random.default_rng(100 + dim)
    queries, q64 = cast(random_sets(rng, [1, 16, 17, 32, 33, 70], dim), "bfloat16")
    # 32-token steps: partial first and last steps, exact multiples, empty, long
    documents, d64 = cast(random_sets(rng, [1, 15, 16, 17, 31, 32, 33, 0, 64, 300], dim), "bfloat16")
    got, vectors = level_then_avx512(level, lambda: tokenset.maxsim(queries, documents))
    want = ref.maxsim(q64, d64)
    bound = maxsim_error_bound(q64, d64)
    empty = np.isneginf(want)
    assert np.array_equal(np.isneginf(got), empty)
    np.testing.assert_array_less(np.abs(got[~empty] - want[~empty]), bound[~empty])
    np.testing.assert_array_less(np.abs(got[~empty] - vectors[~empty]), 2 * bound[~empty])


@pytest.mark.parametrize("level", BF16_LEVELS)
def test_bf16_levels_strided_rows_nan_inf_and_all_negative(level):
    rng = np.random.default_rng(17)
    dim, lengths = 64, [40, 33, 7, 32]
    offsets = np.r_[0, np.cumsum(lengths)]
    wide = np.zeros((offsets[-1], dim + 32), BF16)  # row stride 96 elements: tiles load with the row stride
    rows = rng.standard_normal((offsets[-1], dim)).astype(BF16)
    rows[offsets[1] + 32, 5] = np.nan    # doc 1: NaN in the last, partial step
    rows[offsets[2] + 3, 0] = np.inf     # doc 2: +inf with a positive query coordinate -> +inf
    rows[offsets[3]:offsets[4]] = -np.abs(rows[offsets[3]:offsets[4]])  # doc 3: all similarities negative
    wide[:, :dim] = rows
    docs = tokenset.Ragged(wide[:, :dim], offsets)
    q = np.abs(rng.standard_normal((20, dim))).astype(BF16)
    got, vectors = level_then_avx512(level, lambda: tokenset.maxsim(q, docs))
    want = ref.maxsim([q.astype(np.float64)], [rows[a:b].astype(np.float64) for a, b in zip(offsets, offsets[1:])])
    assert np.isnan(got[0, 1]) and np.isnan(vectors[0, 1])
    assert got[0, 2] == np.inf and vectors[0, 2] == np.inf
    assert got[0, 3] < 0
    for col in (0, 3):
        assert abs(got[0, col] - want[0, col]) < maxsim_error_bound([q], [rows[offsets[col]:offsets[col + 1]]])[0, 0]


@pytest.mark.skipif("avx512bf16" not in SIMD_LEVELS, reason="this CPU or build has no avx512bf16 level")
def test_avx512bf16_scores_pairs_with_denormals_as_the_vector_kernel():
    """vdpbf16ps reads denormals as zero (a denormal times inf would be NaN, 1e38 times 1e-38 would vanish): a pair
    with a denormal on either side is scored with the float kernel's FMA chains, the avx512 level's bits."""
    tiny = np.float32(1e-39)  # a bfloat16 denormal
    q = np.array([[tiny, 1.0], [1e38, 1.0]], np.float32).astype(BF16)
    docs = [np.array([[np.inf, 1.0]], np.float32).astype(BF16), np.array([[1e-38, 0.0]], np.float32).astype(BF16),
            np.array([[2.0, 1.0], [-1e-38, 0.25]], np.float32).astype(BF16)]
    plain_q = np.array([[0.5, 1.0]], np.float32).astype(BF16)
    got, vectors = level_then_avx512("avx512bf16", lambda: (tokenset.maxsim([q[:1], q[1:], plain_q], docs),
                                                            tokenset.maxsim_topk([q[:1]], docs, 3)))
    np.testing.assert_array_equal(got[0], vectors[0])
    assert got[0][0, 0] == np.inf  # tiny * inf + 1: not NaN
    assert got[0][1, 1] > 0.9  # 1e38 * 1e-38 kept
    np.testing.assert_array_equal(got[1][1], vectors[1][1])


@pytest.mark.parametrize("level", BF16_LEVELS)
def test_bf16_levels_pairs_topk_threads_and_argmax_fallback(level):
    rng = np.random.default_rng(23)
    queries, _ = cast(random_sets(rng, [32, 9], 128), "bfloat16")
    documents, _ = cast(random_sets(rng, rng.integers(0, 120, 50), 128), "bfloat16")
    candidates = np.array([[3, -1, 49, 0], [7, 7, 1, -1]])

    threads = tokenset.get_num_threads()

    def run():
        tokenset.set_num_threads(3)
        try:
            full = tokenset.maxsim(queries, documents)
            pairs = tokenset.maxsim_pairs(queries, documents, candidates)
            top = tokenset.maxsim_topk(queries, documents, 5)
            scores, argmax = tokenset.maxsim(queries, documents, return_argmax=True)  # argmax: vector kernel
        finally:
            tokenset.set_num_threads(threads)
        return full, pairs, top, scores, argmax

    (full, pairs, (top_s, top_i), scores, argmax), vec = level_then_avx512(level, run)
    again = level_then_avx512(level, run)[0]  # the same bits on every run and thread count
    np.testing.assert_array_equal(again[0], full)
    want_pairs = np.where(candidates >= 0, np.take_along_axis(full, np.maximum(candidates, 0), 1), -np.inf)
    np.testing.assert_array_equal(pairs, want_pairs)
    order = np.lexsort((np.arange(full.shape[1])[None].repeat(2, 0), -np.nan_to_num(full, neginf=-3e38)), axis=1)
    np.testing.assert_array_equal(top_i, order[:, :5])
    np.testing.assert_array_equal(scores, vec[3])  # return_argmax runs the AVX-512 kernel at these levels too
    np.testing.assert_array_equal(argmax, vec[4])


# ---- the shared edge-case table, every device ------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(EDGE_LENGTHS))
def test_edge_lengths_every_device(device, case):
    rng = np.random.default_rng(len(case))
    lengths = EDGE_LENGTHS[case]
    documents = on_device(random_sets(rng, lengths, 24), device)
    queries = on_device(random_sets(rng, [n for n in lengths if n] or [1], 24), device)
    got = to_numpy(tokenset.maxsim(queries, documents))
    want = ref.maxsim(exact_float64(queries), exact_float64(documents))
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    assert np.all(np.abs(got[fin] - want[fin]) < maxsim_error_bound(exact_float64(queries), exact_float64(documents))[fin])
    s, i = tokenset.maxsim_topk(queries, documents, 3)
    cs, ci = tokenset.maxsim_topk([to_numpy(q) for q in queries], [to_numpy(d) for d in documents], 3)
    np.testing.assert_array_equal(to_numpy(i), ci)


# ---- lists are read in place ------------------------------------------------------------------------------------------
def test_lists_are_read_in_place_and_match_a_ragged(simd):
    """A list of sets is passed as a per-set pointer table (no concatenation): bit-identical to the same sets as one
    Ragged, with strided rows, negative strides, one-token and empty sets in the list."""
    rng = np.random.default_rng(5)
    wide = rng.standard_normal((400, 70)).astype(np.float32)
    documents = [wide[:50, :64], wide[100:160:2, 3:67], wide[300:250:-1, :64], wide[7:8, :64], wide[:0, :64],
                 rng.standard_normal((33, 64)).astype(np.float32)]
    queries = [rng.standard_normal((n, 64)).astype(np.float32) for n in (5, 32)]
    batch = tokenset.ragged(documents)
    assert batch.sets is not None and batch._values is None  # not concatenated
    got = tokenset.maxsim(queries, documents)
    assert batch._values is None
    flat = tokenset.Ragged(np.concatenate([np.ascontiguousarray(d) for d in documents]), batch.offsets)
    np.testing.assert_array_equal(got, tokenset.maxsim(queries, flat))
    s, a = tokenset.maxsim(queries, documents, return_argmax=True)
    np.testing.assert_array_equal(a, tokenset.maxsim(queries, flat, return_argmax=True)[1])
    np.testing.assert_array_equal(tokenset.maxsim_topk(queries, documents, 4)[1], tokenset.maxsim_topk(queries, flat, 4)[1])


def test_ragged_owns_its_offsets():
    """The kernels read the offsets Ragged validated: a private read-only copy; the caller's array stays writable."""
    offsets = np.array([0, 2, 5], np.int64)
    r = tokenset.Ragged(np.ones((5, 4), np.float32), offsets)
    assert offsets.flags.writeable and not r.offsets.flags.writeable
    offsets[1] = 99  # changing the caller's array changes nothing
    assert r.lengths.tolist() == [2, 3]


def test_float32_is_bit_identical_across_simd_levels():
    """Float32 dots are FMAs in k order and maxima are summed in token order at every level (and on the GPU), so
    scores, argmax and top-k agree exactly."""
    rng = np.random.default_rng(8)
    queries = random_sets(rng, [3, 33, 70], 100)
    documents = random_sets(rng, rng.integers(0, 90, 40), 100)
    results = []
    for level in SIMD_LEVELS:
        tokenset.set_simd_level(level)
        results.append((tokenset.maxsim(queries, documents, return_argmax=True),
                        tokenset.maxsim_topk(queries, documents, 7)))
    tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    for (scores, argmax), (ts, ti) in results[1:]:
        np.testing.assert_array_equal(scores, results[0][0][0])
        np.testing.assert_array_equal(argmax, results[0][0][1])
        np.testing.assert_array_equal(ts, results[0][1][0])
        np.testing.assert_array_equal(ti, results[0][1][1])


# ---- CUDA: the GPU against the CPU on the same inputs (skipped without a GPU, failing on a broken build) ------------
def _cuda_sets(sets, dtype="float32"):
    import torch

    return [torch.from_numpy(np.asarray(s, np.float32)).to("cuda", getattr(torch, dtype)) for s in sets]


def test_cuda_float32_scores_argmax_and_topk_equal_the_cpu(cuda):
    """Float32: the same bits on both devices; argmax and top-k indices identical (asserted equal)."""
    rng = np.random.default_rng(1)
    queries = random_sets(rng, [32, 5, 40, 1], 64)
    documents = random_sets(rng, rng.integers(0, 200, 300), 64)
    gq, gd = _cuda_sets(queries), _cuda_sets(documents)
    g_scores, g_arg = tokenset.maxsim(gq, gd, return_argmax=True)
    c_scores, c_arg = tokenset.maxsim(queries, documents, return_argmax=True)
    np.testing.assert_array_equal(to_numpy(g_scores), c_scores)
    np.testing.assert_array_equal(to_numpy(g_arg), c_arg)
    for k in (1, 10, 300, 301, 5000):
        gs, gi = tokenset.maxsim_topk(gq, gd, k)
        cs, ci = tokenset.maxsim_topk(queries, documents, k)
        np.testing.assert_array_equal(to_numpy(gi), ci)
        np.testing.assert_array_equal(to_numpy(gs), cs)


def test_cuda_topk_many_chunks_ties_nan_and_empty(cuda):
    """More documents than one top-k chunk (2,048), ties (lowest index first), NaN ranked as -inf, empty documents."""
    import torch

    rng = np.random.default_rng(4)
    documents = random_sets(rng, rng.integers(0, 6, 5000), 16)
    documents[17] = np.ones((2, 16), np.float32)
    documents[4000] = np.ones((3, 16), np.float32)  # ties with 17
    documents[9][0, 0] = np.nan
    queries = [np.ones((2, 16), np.float32), rng.standard_normal((4, 16)).astype(np.float32)]
    gs, gi = tokenset.maxsim_topk(_cuda_sets(queries), _cuda_sets(documents), 2500)
    cs, ci = tokenset.maxsim_topk(queries, documents, 2500)
    np.testing.assert_array_equal(to_numpy(gi), ci)
    np.testing.assert_array_equal(to_numpy(gs), cs)
    assert ci[0, 0] == 17 and ci[0, 1] == 4000
    s, i = tokenset.maxsim_topk(_cuda_sets(queries), _cuda_sets(documents[:3]), 5)
    assert to_numpy(i)[:, 3:].tolist() == [[-1, -1]] * 2 and np.isneginf(to_numpy(s)[:, 3:]).all()
    assert isinstance(gi, torch.Tensor) and gi.is_cuda


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_low_precision_agrees_with_cpu_within_the_bound(cuda, dtype):
    """Tensor cores sum in another order: scores within twice the float32 bound of the CPU's, and an argmax or top-k
    index may differ only where the two candidates' CPU scores are within that bound of each other."""
    rng = np.random.default_rng(2)
    queries = random_sets(rng, [32, 5, 40], 64)
    documents = random_sets(rng, rng.integers(0, 200, 120), 64)
    gq, gd = _cuda_sets(queries, dtype), _cuda_sets(documents, dtype)
    cq, cd = [q.cpu() for q in gq], [d.cpu() for d in gd]
    g = to_numpy(tokenset.maxsim(gq, gd))
    c = to_numpy(tokenset.maxsim(cq, cd))
    bound = maxsim_error_bound(exact_float64(cq), exact_float64(cd))
    fin = np.isfinite(c)
    assert np.all(np.abs(g[fin] - c[fin]) < 2 * bound[fin])
    gi = to_numpy(tokenset.maxsim_topk(gq, gd, 10)[1])
    ci = to_numpy(tokenset.maxsim_topk(cq, cd, 10)[1])
    for q, j in zip(*np.nonzero(gi != ci)):
        assert abs(c[q, gi[q, j]] - c[q, ci[q, j]]) < 4 * bound[q].max()


def test_cuda_bad_candidates_give_the_cpu_error(cuda):
    import torch

    q, docs = np.ones((2, 8), np.float32), [np.ones((3, 8), np.float32)] * 2
    for cand in (np.array([[0, 2]]), np.array([[-2, 0]])):
        with pytest.raises(ValueError) as on_cpu:
            tokenset.maxsim_pairs(q, docs, cand)
        with pytest.raises(ValueError) as on_gpu:
            tokenset.maxsim_pairs(_cuda_sets([q])[0], _cuda_sets(docs), torch.from_numpy(cand).cuda())
        assert str(on_cpu.value) == str(on_gpu.value)


def test_cuda_pairs_strided_views_and_mixed_dtypes(cuda):
    import torch

    rng = np.random.default_rng(3)
    x = torch.randn(300, 130, device="cuda", dtype=torch.float16)
    docs = tokenset.Ragged(x[::3, 1:129], [0, 40, 40, 100])  # strided rows, unaligned start
    q = torch.randn(9, 128, device="cuda")  # float32 queries: converted to the documents' float16
    got = to_numpy(tokenset.maxsim(q, docs))
    want = to_numpy(tokenset.maxsim(q.half().cpu(), tokenset.Ragged(x[::3, 1:129].cpu(), [0, 40, 40, 100])))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-3, atol=1e-2)
    cand = rng.integers(-1, 3, (1, 6))
    np.testing.assert_array_equal(np.isneginf(to_numpy(tokenset.maxsim_pairs(q, docs, cand))),
                                  np.isneginf(tokenset.maxsim_pairs(q.cpu(), tokenset.Ragged(x[::3, 1:129].cpu(),
                                                                                             [0, 40, 40, 100]), cand)))


def test_cuda_runs_on_the_callers_stream(cuda):
    """Decisive: the documents are written on a side stream behind a long sleep; a kernel launched on any other
    stream would read them before the copy and score zeros."""
    import torch

    q = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    src = torch.randn(5000, 128, device="cuda", dtype=torch.float16)
    offsets = np.arange(0, 5001, 50)
    want = to_numpy(tokenset.maxsim(q, tokenset.Ragged(src, offsets)))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        d = torch.zeros_like(src)
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles on the side stream
        d.copy_(src)
        got = tokenset.maxsim(q, tokenset.Ragged(d, offsets))
        top = tokenset.maxsim_topk(q, tokenset.Ragged(d, offsets), 5)[1]
    side.synchronize()
    np.testing.assert_array_equal(to_numpy(got), want)
    np.testing.assert_array_equal(to_numpy(top), to_numpy(tokenset.maxsim_topk(q, tokenset.Ragged(src, offsets), 5)[1]))


def test_cuda_cached_device_offsets_are_per_stream(cuda):
    import torch

    batch = tokenset.ragged(torch.randn(4, 10, 16, device="cuda"))
    q = torch.randn(3, 16, device="cuda")
    a = tokenset.maxsim(q, batch)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        b = tokenset.maxsim(q, batch)
    side.synchronize()
    assert len(batch._device_offsets) == 2  # one copy per stream
    torch.testing.assert_close(a, b)


def test_cuda_autograd_matches_cpu(cuda):
    import torch

    rng = np.random.default_rng(6)
    qs = [torch.from_numpy(x) for x in random_sets(rng, [4, 7], 16)]
    ds = [torch.from_numpy(x) for x in random_sets(rng, [5, 0, 9], 16)]
    grads = []
    for dev in ("cpu", "cuda"):
        q = [x.to(dev).requires_grad_() for x in qs]
        d = [x.to(dev).requires_grad_() for x in ds]
        tokenset.maxsim(q, d).sum().backward()
        grads.append([x.grad.cpu() for x in q + d])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_cupy_inputs_on_a_non_default_stream(cuda):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(3)
    queries = random_sets(rng, [6], 32)
    documents = random_sets(rng, [4, 0, 9], 32)
    with cupy.cuda.Stream(non_blocking=True):
        got = tokenset.maxsim([cupy.asarray(q) for q in queries], [cupy.asarray(d) for d in documents])
        top = tokenset.maxsim_topk([cupy.asarray(q) for q in queries], [cupy.asarray(d) for d in documents], 2)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(got.get(), tokenset.maxsim(queries, documents))
    np.testing.assert_array_equal(top[1].get(), tokenset.maxsim_topk(queries, documents, 2)[1])


def test_cuda_mixed_devices_error(cuda):
    import torch

    with pytest.raises(ValueError, match="different devices"):
        tokenset.maxsim(torch.ones(3, 8, device="cuda"), torch.ones(2, 8))
