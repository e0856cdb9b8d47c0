"""Greedy maximum coverage (MMTok) against the numpy reference.

Tolerance: none. Gains are float32 sums over rows in row order with no fused operations, so the kernels (every SIMD
level, the GPU) and the reference compute bit-identical gains, and identical picks, on any matrix. MMTok matrices
built by tokenset (float32 GEMM + softmax) and by the reference (float64) differ by rounding, so picks from tokens
are compared on random data where no two gains are that close.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tokenset
from tokenset.reference import coverage as ref

from conftest import (DTYPES, PEAK_OF_THIS_PROCESS, as_dtype, gapped, on_device, random_sets, requires_torch,
                      subprocess_env, to_numpy)


def random_matrices(rng, shapes):
    return [rng.random((r, c)).astype(np.float32) ** 4 for r, c in shapes]


@pytest.mark.parametrize("shapes", [[(1, 1), (5, 40), (70, 3)], [(300, 576)], [(0, 5), (4, 0), (33, 17)]])
def test_given_matrices_bit_identical(simd, shapes):
    rng = np.random.default_rng(len(shapes))
    mats = random_matrices(rng, shapes)
    for k in (1, 7, 600):
        idx, gains = tokenset.max_coverage(mats, k, return_gains=True)
        for i, m in enumerate(mats):
            want_idx, want_gains = ref.coverage_set(m, k)
            np.testing.assert_array_equal(idx[i, :len(want_idx)], want_idx)
            np.testing.assert_array_equal(gains[i, :len(want_idx)], want_gains)  # bit for bit
            assert (idx[i, len(want_idx):] == -1).all()


def test_ties_nan_negative_and_saturation():
    c = np.array([[0.5, 0.5, -1.0, np.nan],
                  [0.2, 0.2, -2.0, 0.9],
                  [-1.0, -1.0, -1.0, -1.0]], np.float32)
    idx, gains = tokenset.max_coverage(c, 4, return_gains=True)
    want_idx, want_gains = ref.coverage_set(c, 4)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(gains, want_gains)
    assert idx[0] == 3  # 0.9 beats 0.5 + 0.2; the NaN covers nothing
    assert idx[1] == 0  # columns 0 and 1 tie: the lower wins
    assert sorted(idx.tolist()) == [0, 1, 2, 3]  # zero gains still pick unpicked columns, never a duplicate


def test_padded_matrices_with_rows_and_cols():
    rng = np.random.default_rng(3)
    full = rng.random((3, 10, 12)).astype(np.float32)
    full[0, 6:] = 100.0  # padding is never read
    rows, cols = np.array([6, 10, 0]), np.array([12, 5, 4])
    idx = tokenset.max_coverage(full, 4, rows=rows, cols=cols)
    for i in range(3):
        want = ref.coverage_set(full[i, :rows[i], :cols[i]], 4)[0]
        np.testing.assert_array_equal(idx[i, :len(want)], want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mmtok_reference_sweep(device, dtype):
    rng = np.random.default_rng(8)
    vision = random_sets(rng, [1, 7, 120, 576], 64)
    text = random_sets(rng, [3, 0, 12, 30], 64)
    vision_d = on_device(vision, device, dtype)
    text_d = on_device(text, device, "float32")
    got = to_numpy(tokenset.coverage(vision_d, 20, text=text_d))
    for i in range(4):
        v = np.asarray(to_numpy(vision_d[i]), np.float32)
        want = ref.coverage_set(ref.mmtok_matrix(v, text[i]), 20)[0]
        np.testing.assert_array_equal(got[i, :len(want)], want, err_msg=f"set {i}")


def test_mmtok_options_and_objective():
    rng = np.random.default_rng(12)
    v = rng.standard_normal((200, 32)).astype(np.float32)
    keys = rng.standard_normal((200, 16)).astype(np.float32)
    t = rng.standard_normal((9, 32)).astype(np.float32)
    kw = dict(text_temperature=0.05, vision_temperature=0.5, vision_weight=2.0)
    got = tokenset.coverage(v, 15, text=t, vision_keys=keys, **kw)
    matrix = ref.mmtok_matrix(v, t, keys, **kw)
    np.testing.assert_array_equal(got, ref.coverage_set(matrix, 15)[0])
    only_image = tokenset.coverage(v, 15)
    np.testing.assert_array_equal(only_image, ref.coverage_set(ref.mmtok_matrix(v), 15)[0])
    # Greedy coverage beats a random subset of the same size on its own objective.
    random_pick = np.random.default_rng(0).choice(200, 15, replace=False)
    assert ref.objective(matrix, got) > ref.objective(matrix, random_pick)


def test_shared_text_per_set_k_and_empty_sets():
    rng = np.random.default_rng(6)
    vision = random_sets(rng, [0, 10, 50], 16)
    t = rng.standard_normal((4, 16)).astype(np.float32)
    got = tokenset.coverage(vision, np.array([3, 20, 5]), text=t)
    assert got.shape == (3, 20) and (got[0] == -1).all()
    np.testing.assert_array_equal(got[1, :10], ref.coverage_set(ref.mmtok_matrix(vision[1], t), 20)[0])
    np.testing.assert_array_equal(got[2, :5], ref.coverage_set(ref.mmtok_matrix(vision[2], t), 5)[0])
    assert (got[2, 5:] == -1).all()


def test_gapped_ragged_reads_only_its_sets():
    """Vision tokens, text tokens and vision keys as Raggeds whose values start past row 0 and end after the last set
    (sentinel rows in the gaps): the same picks as the lists of their sets."""
    rng = np.random.default_rng(21)
    vision = random_sets(rng, [0, 9, 60, 33], 16)
    text = random_sets(rng, [2, 5, 0, 7], 16)
    keys = random_sets(rng, [0, 9, 60, 33], 6)
    want = tokenset.coverage(vision, 8, text=text, vision_keys=keys)
    for before, after in [(3, 2), (0, 5), (4, 0)]:
        got = tokenset.coverage(gapped(vision, before, after), 8, text=gapped(text, after, before),
                                vision_keys=gapped(keys, before, before))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(tokenset.coverage(gapped(vision, before, after), 8),
                                      tokenset.coverage(vision, 8))


def test_padded_vision_keys_follow_the_mask():
    """[B, N, dk] keys beside [B, N, d] vision with a mask (or lengths) are gathered at the same positions (they were
    refused for a length mismatch)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 20, 8)).astype(np.float32)
    keys = rng.standard_normal((3, 20, 4)).astype(np.float32)
    mask = rng.random((3, 20)) < 0.6
    want = tokenset.coverage([x[i][mask[i]] for i in range(3)], 5, vision_keys=[keys[i][mask[i]] for i in range(3)])
    np.testing.assert_array_equal(tokenset.coverage(x, 5, vision_keys=keys, mask=mask), want)
    r = tokenset.prune(x, 5, method="mmtok", vision_keys=keys, mask=mask)
    np.testing.assert_array_equal(r.indices, np.sort(np.where(want >= 0, want, 99), axis=1)[:, :r.indices.shape[1]])
    lengths = np.array([20, 3, 0])
    want = tokenset.coverage([x[i, :n] for i, n in enumerate(lengths)], 5,
                             vision_keys=[keys[i, :n] for i, n in enumerate(lengths)])
    np.testing.assert_array_equal(tokenset.coverage(x, 5, vision_keys=keys, lengths=lengths), want)


def test_chunked_build_equals_one_chunk(monkeypatch):
    module = importlib.import_module("tokenset.coverage")  # the module, not the function of the same name

    rng = np.random.default_rng(1)
    vision = random_sets(rng, [40, 60, 30, 50], 8)
    whole = tokenset.coverage(vision, 6)
    monkeypatch.setattr(module, "_CHUNK_BYTES", 1)  # one set per chunk
    np.testing.assert_array_equal(tokenset.coverage(vision, 6), whole)


def whole_matrix_formula(v, t, keys, tt, tv, w, library):
    """The coverage matrix as tokenset built it before it was built in place: each step a new n x n array."""
    if library == "torch":
        import torch

        unit = lambda a: a.float() / torch.linalg.vector_norm(a.float(), dim=1, keepdim=True).clamp_min(1e-8)
        softmax, cat = (lambda s: torch.softmax(s, dim=1)), (lambda parts: torch.cat(parts, dim=0))
    else:
        def unit(a):
            a = a.astype(np.float32)
            return a / np.maximum(np.sqrt((a * a).sum(axis=1, keepdims=True)), np.float32(1e-8))

        def softmax(s):
            e = np.exp(s - s.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        cat = lambda parts: np.concatenate(parts, axis=0)
    vu = unit(v)
    ku = unit(keys) if keys is not None else vu
    parts = []
    if t is not None:
        tu = unit(t)
        parts.append(softmax((tu @ vu.T) * (1.0 / tt)) / tu.shape[0])
    parts.append(softmax((ku @ ku.T) * (1.0 / tv)) * (w / vu.shape[0]))
    return cat(parts)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("block_bytes", [1, 4096, None])
def test_matrix_built_in_place_is_bit_identical(monkeypatch, library, block_bytes):
    """The MMTok matrix is now written straight into the padded chunk (GEMM into its rows, softmax in place in blocks
    of rows): the same element-wise operations and row reductions as the whole-matrix expressions, so the same bits,
    whatever the block size; the padding around the set's rows and columns is not written."""
    if library == "torch":
        pytest.importorskip("torch")
    module = importlib.import_module("tokenset.coverage")
    if block_bytes is not None:
        monkeypatch.setattr(module, "_SOFTMAX_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(3)
    for n, m, d, with_keys in [(1, 0, 3, False), (9, 4, 5, True), (300, 20, 64, False), (700, 0, 48, True)]:
        v, t = rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((m, d)).astype(np.float32)
        keys = rng.standard_normal((n, 11)).astype(np.float32) if with_keys else None
        out = np.full((2, n + m + 3, n + 2), 7.0, np.float32)
        args = [v, t if m else None, keys]
        if library == "torch":
            import torch

            args = [None if a is None else torch.from_numpy(a) for a in args]
            out_lib = torch.from_numpy(out)
        else:
            out_lib = out
        want = to_numpy(whole_matrix_formula(*args, 0.02, 0.3, 0.7, library))
        module.mmtok_matrix(*args, 0.02, 0.3, 0.7, out=out_lib[1, :n + m, :n])
        np.testing.assert_array_equal(out[1, :n + m, :n].view(np.uint32), want.view(np.uint32))
        assert (out[0] == 7).all() and (out[1, n + m:] == 7).all() and (out[1, :, n:] == 7).all()
        got = to_numpy(module.mmtok_matrix(*args, 0.02, 0.3, 0.7))  # allocated when no out is given
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_one_large_set_peak_memory_is_its_matrix(library):
    """One set of n = 3,000 vision tokens and m = 20 text tokens: the README bounds the coverage scratch by the set's
    matrix, (m + n) * n * 4 bytes = 35 MiB, but the scale, max-subtract, exp, divide, multiply and concatenate steps
    each made a new n x n array and the result was then copied into the padded chunk: +105 MiB. The matrix is now
    built in its slice of the chunk (measured +39 MiB numpy, +40 MiB torch): the bound + the unit rows and a block
    of softmax temporaries, within 12 MiB."""
    if library == "torch":
        pytest.importorskip("torch")
    n, m = 3000, 20
    code = PEAK_OF_THIS_PROCESS + textwrap.dedent(f"""
        import numpy as np, tokenset
        rng = np.random.default_rng(0)
        v = rng.standard_normal(({n}, 64)).astype(np.float32)
        t = rng.standard_normal(({m}, 64)).astype(np.float32)
        if {library!r} == "torch":
            import torch
            v, t = torch.from_numpy(v), torch.from_numpy(t)
        tokenset.coverage(v[:50], 3, text=t)  # warm-up
        before = peak()
        tokenset.coverage(v, 64, text=t)
        print(peak() - before)
        """)
    env = subprocess_env(TOKENSET_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = int(proc.stdout.split()[-1])
    assert added < (m + n) * n * 4 + (12 << 20), f"{library}: +{added / 2**20:.0f} MiB"


@requires_torch
def test_torch_in_torch_out():
    import torch

    v = torch.randn(2, 40, 16)
    got = tokenset.coverage(v, 5, text=torch.randn(3, 16))
    assert isinstance(got, torch.Tensor) and got.shape == (2, 5)


def test_bad_input():
    v = np.ones((2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="text has 3 sets but vision has 2"):
        tokenset.coverage(v, 2, text=[np.ones((1, 4), np.float32)] * 3)
    with pytest.raises(ValueError, match="text tokens have dimension 5"):
        tokenset.coverage(v, 2, text=np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="text_temperature must be a positive number"):
        tokenset.coverage(v, 2, text_temperature=0)
    with pytest.raises(ValueError, match="vision_weight"):
        tokenset.coverage(v, 2, vision_weight=-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        tokenset.coverage(v, 0)
    with pytest.raises(ValueError, match="vision_keys must have one token per vision token"):
        tokenset.coverage(v, 2, vision_keys=np.ones((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="matrix must be"):
        tokenset.max_coverage(np.ones(4, np.float32), 2)
    with pytest.raises(ValueError, match=r"cols\[0\]=9 must be in 0..3"):
        tokenset.max_coverage(np.ones((1, 2, 3), np.float32), 2, cols=[9])


def test_gpu_matches_cpu(cuda):
    import torch

    rng = np.random.default_rng(4)
    mats = random_matrices(rng, [(30, 576), (1, 1), (200, 50)])
    cpu_idx, cpu_gains = tokenset.max_coverage(mats, 40, return_gains=True)
    gpu_idx, gpu_gains = tokenset.max_coverage([torch.from_numpy(m).cuda() for m in mats], 40, return_gains=True)
    np.testing.assert_array_equal(to_numpy(gpu_idx), cpu_idx)
    np.testing.assert_array_equal(to_numpy(gpu_gains), cpu_gains)  # the same float32 operations in the same order
    vision = random_sets(rng, [100, 576], 64)
    for dtype in DTYPES:
        cpu = tokenset.coverage([as_dtype(s, dtype) for s in vision], 30)
        gpu = tokenset.coverage(on_device(vision, "cuda", dtype), 30)
        assert (to_numpy(gpu) == cpu).mean() > 0.9  # matrices built by different GEMMs: rare near-ties may differ
