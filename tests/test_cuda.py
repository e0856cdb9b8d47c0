"""CUDA MaxSim: results checked against the CPU kernel and the float64 reference. Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import maxsim as ref

from conftest import as_float64, maxsim_error_bound, random_sets

torch = pytest.importorskip("torch")
HAVE_GPU = tokenset.build_info()["cuda"] and tokenset.build_info()["cuda_devices"] > 0 and torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA build or no GPU here")

TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def to_cuda(sets, dtype):
    return [torch.from_numpy(s).to("cuda", getattr(torch, dtype)) for s in sets]


def low_precision_bound(q64, d64, dtype):
    """Tensor cores multiply float16/bfloat16 exactly and accumulate in float32, as the CPU path: the same bound."""
    return maxsim_error_bound(q64, d64)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("dim,q_lengths,d_lengths", [
    (1, [1, 3], [0, 1, 2, 70]),
    (16, [16, 17, 1], [63, 64, 65, 0, 5]),
    (100, [31, 32, 33], [1, 130, 7]),   # dim not a multiple of 8: scalar staging path
    (128, [32, 8], [40, 173, 300, 0]),
    (384, [32, 70], [12, 257]),
])
def test_cuda_matches_reference(dtype, dim, q_lengths, d_lengths):
    rng = np.random.default_rng(dim)
    queries = to_cuda(random_sets(rng, q_lengths, dim), dtype)
    documents = to_cuda(random_sets(rng, d_lengths, dim), dtype)
    got = tokenset.maxsim(queries, documents)
    assert got.is_cuda and got.dtype == torch.float32
    q64 = [q.double().cpu().numpy() for q in queries]
    d64 = [d.double().cpu().numpy() for d in documents]
    want = ref.maxsim(q64, d64)
    got = got.cpu().numpy()
    empty = np.isinf(want)
    assert np.array_equal(np.isneginf(got), empty)
    np.testing.assert_array_less(np.abs(got[~empty] - want[~empty]), low_precision_bound(q64, d64, dtype)[~empty])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_agrees_with_cpu_including_argmax(dtype):
    rng = np.random.default_rng(1)
    queries = random_sets(rng, [32, 5, 40], 64)
    documents = random_sets(rng, rng.integers(0, 200, 50), 64)
    gq, gd = to_cuda(queries, dtype), to_cuda(documents, dtype)
    cq, cd = [q.cpu() for q in gq], [d.cpu() for d in gd]
    g_scores, g_arg = tokenset.maxsim(gq, gd, return_argmax=True)
    c_scores, c_arg = tokenset.maxsim(cq, cd, return_argmax=True)
    bound = maxsim_error_bound([q.double().numpy() for q in cq], [d.double().numpy() for d in cd])
    fin = torch.isfinite(c_scores).numpy()
    assert np.all(np.abs(g_scores.cpu().numpy()[fin] - c_scores.numpy()[fin]) < 2 * bound[fin])
    # argmax can differ only where two similarities are within rounding of each other: compare their values
    same = (g_arg.cpu() == c_arg).float().mean().item()
    assert same > 0.99


def test_cuda_ties_nan_empty():
    q = torch.ones(3, 4, device="cuda")
    doc = torch.zeros(100, 4, device="cuda")
    doc[[70, 9, 99]] = 1.0
    nan_doc = torch.ones(2, 4, device="cuda")
    nan_doc[1, 2] = float("nan")
    empty = torch.zeros(0, 4, device="cuda")
    neg = -torch.ones(5, 4, device="cuda")
    scores, argmax = tokenset.maxsim(q, [doc, nan_doc, empty, neg], return_argmax=True)
    scores = scores.cpu()
    assert scores[0, 0] == 12.0 and torch.all(argmax[0, 0].cpu() == 9)
    assert torch.isnan(scores[0, 1]) and scores[0, 2] == -float("inf") and scores[0, 3] == -12.0
    assert torch.all(argmax[0, 2].cpu() == -1)


def test_cuda_pairs_and_topk_match_cpu():
    rng = np.random.default_rng(2)
    queries = random_sets(rng, [8, 32, 3], 48)
    documents = random_sets(rng, rng.integers(0, 90, 70), 48)
    gq, gd = to_cuda(queries, "float32"), to_cuda(documents, "float32")
    cand = rng.integers(-1, 70, (3, 9))
    g = tokenset.maxsim_pairs(gq, gd, torch.from_numpy(cand).cuda()).cpu().numpy()
    c = tokenset.maxsim_pairs(queries, documents, cand)
    fin = np.isfinite(c)
    np.testing.assert_allclose(g[fin], c[fin], rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.isneginf(g), np.isneginf(c))
    gs, gi = tokenset.maxsim_topk(gq, gd, 10)
    cs, ci = tokenset.maxsim_topk(queries, documents, 10)
    np.testing.assert_allclose(gs.cpu().numpy(), cs, rtol=1e-4, atol=1e-4)
    assert (gi.cpu().numpy() == ci).mean() > 0.95  # near-ties may swap under different rounding


def test_cuda_topk_chunks_and_ties(monkeypatch):
    from tokenset.ops import maxsim as ops

    monkeypatch.setattr(ops, "TOPK_DOCUMENT_CHUNK", 4)
    q = torch.ones(1, 2, device="cuda")
    docs = [torch.ones(1, 2, device="cuda") for _ in range(11)]
    s, i = tokenset.maxsim_topk(q, docs, 5)
    assert i.cpu().tolist() == [[0, 1, 2, 3, 4]]
    s, i = tokenset.maxsim_topk(q, docs, 15)
    assert i.cpu()[0, 11:].tolist() == [-1] * 4


def test_cuda_non_contiguous_and_offset_views():
    x = torch.randn(300, 130, device="cuda", dtype=torch.float16)
    docs = tokenset.Ragged(x[::3, 1:129], [0, 40, 40, 100])  # strided rows, unaligned start
    q = torch.randn(9, 128, device="cuda", dtype=torch.float16)
    got = tokenset.maxsim(q, docs).cpu().numpy()
    want = tokenset.maxsim(q.cpu(), tokenset.Ragged(x[::3, 1:129].cpu(), [0, 40, 40, 100]))
    fin = np.isfinite(want.numpy())
    np.testing.assert_allclose(got[fin], want.numpy()[fin], rtol=1e-3, atol=1e-2)


def test_cuda_runs_on_the_current_stream():
    q = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    d = torch.randn(5000, 128, device="cuda", dtype=torch.float16)
    docs = tokenset.Ragged(d, np.arange(0, 5001, 50))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = tokenset.maxsim(q, docs)
        got_copy = got.clone()  # ordered after the kernel on the same stream
    stream.synchronize()
    want = tokenset.maxsim(q.cpu(), tokenset.Ragged(d.cpu(), np.arange(0, 5001, 50)))
    np.testing.assert_allclose(got_copy.cpu().numpy(), want.numpy(), rtol=1e-3, atol=1e-2)


def test_cuda_mixed_devices_error():
    with pytest.raises(ValueError, match="different devices"):
        tokenset.maxsim(torch.ones(3, 8, device="cuda"), torch.ones(2, 8))


def test_cuda_mixed_dtypes_follow_documents():
    q = torch.randn(4, 32, device="cuda")
    d = torch.randn(10, 32, device="cuda", dtype=torch.float16)
    got = tokenset.maxsim(q, d)
    want = tokenset.maxsim(q.half(), d)
    torch.testing.assert_close(got, want)


def test_cupy_inputs():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(3)
    queries = random_sets(rng, [6], 32)
    documents = random_sets(rng, [4, 0, 9], 32)
    got = tokenset.maxsim([cupy.asarray(q) for q in queries], [cupy.asarray(d) for d in documents])
    assert isinstance(got, cupy.ndarray)
    want = ref.maxsim(as_float64(queries), as_float64(documents))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got.get()[fin], want[fin], rtol=1e-4, atol=1e-4)
