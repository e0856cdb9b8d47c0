"""CUDA FDE: checked against the float64 reference (same tolerance as tests/test_fde.py) and the CPU encoder.
Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from test_fde import SWEEP, check_against_reference, sanitize

torch = pytest.importorskip("torch")
HAVE_GPU = tokenset.build_info()["cuda"] and tokenset.build_info()["cuda_devices"] > 0 and torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA build or no GPU here")


def on_gpu(sets, dtype=torch.float32):
    return [torch.from_numpy(np.asarray(s, np.float32)).to("cuda", dtype) for s in sets]


@pytest.mark.parametrize("dim,reps,bits,proj,fill,final", SWEEP)
def test_cuda_fde_matches_reference(dim, reps, bits, proj, fill, final):
    rng = np.random.default_rng(dim * 1000 + bits)
    fde = tokenset.FDE(dim, reps=reps, simhash_bits=bits, proj_dim=proj, fill_empty=fill, final_dim=final, seed=3)
    lengths = [0, 1, 2, 7, 40, 300] if bits < 12 else [0, 1, 5, 30]
    docs = sanitize(rng, [rng.standard_normal((n, dim)) for n in lengths], fde.simhash, np.float32)
    got = fde.encode_documents(on_gpu(docs))
    assert got.is_cuda and got.dtype == torch.float32
    check_against_reference(fde, docs, True, got.cpu().numpy())
    queries = [d for d in docs if len(d)]
    check_against_reference(fde, queries, False, fde.encode_queries(on_gpu(queries)).cpu().numpy())
    np.testing.assert_array_equal(fde.partitions(on_gpu(docs)).cpu().numpy(), fde.partitions(docs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_fde_half_inputs_match_cpu(dtype):
    rng = np.random.default_rng(5)
    fde = tokenset.FDE(64, reps=4, simhash_bits=4, proj_dim=8, final_dim=300)
    docs = sanitize(rng, [rng.standard_normal((n, 64)) for n in (3, 90, 0, 257)], fde.simhash, np.float32)
    gpu = on_gpu(docs, dtype)
    cpu = [d.cpu() for d in gpu]
    np.testing.assert_allclose(fde.encode_documents(gpu).cpu().numpy(), fde.encode_documents(cpu).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_cuda_fde_count_sketch_is_bitwise_cpu():
    """Identity sums run in the CPU's order and the sketch uses unfused multiply-add: bit-identical results."""
    rng = np.random.default_rng(6)
    fde = tokenset.FDE(32, reps=3, simhash_bits=3, final_dim=77)
    docs = sanitize(rng, [rng.standard_normal((n, 32)) for n in (5, 60, 1)], fde.simhash, np.float32)
    np.testing.assert_array_equal(fde.encode_queries(on_gpu(docs)).cpu().numpy(), fde.encode_queries(docs))


def test_cuda_fde_chunks_and_out(monkeypatch):
    from tokenset.ops import fde as ops

    monkeypatch.setattr(ops, "CUDA_SCRATCH_BYTES", 1)  # one set per chunk
    rng = np.random.default_rng(7)
    fde = tokenset.FDE(16, reps=2, simhash_bits=3, proj_dim=4, final_dim=30)
    docs = sanitize(rng, [rng.standard_normal((n, 16)) for n in rng.integers(0, 50, 9)], fde.simhash, np.float32)
    out = torch.empty((9, 30), device="cuda")
    assert fde.encode_documents(on_gpu(docs), out=out) is out
    np.testing.assert_allclose(out.cpu().numpy(), fde.encode_documents(docs), rtol=1e-5, atol=1e-5)


def test_cuda_fde_stream_and_cupy():
    fde = tokenset.FDE(16, reps=2, simhash_bits=3)
    x = torch.randn(4, 9, 16, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = fde.encode_documents(x)
    stream.synchronize()
    np.testing.assert_allclose(got.cpu().numpy(), fde.encode_documents(x.cpu()).numpy(), rtol=1e-5, atol=1e-6)
    cupy = pytest.importorskip("cupy")
    c = cupy.asarray(x.cpu().numpy())
    np.testing.assert_allclose(cupy.asnumpy(fde.encode_documents(c)), got.cpu().numpy(), rtol=1e-5, atol=1e-6)
