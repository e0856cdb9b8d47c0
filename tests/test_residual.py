"""PLAID residual codes: tokenset.ResidualCodec (train, encode, decode, files) against its numpy reference, and MaxSim
scored in place on the codes (within a stated tolerance of the reference's float64 centroid table, bit-identical across
SIMD levels and thread counts, within lut_error_bound of MaxSim on the decoded tokens)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import tokenset
from tokenset.reference import maxsim as ref_maxsim
from tokenset.reference import residual as ref

from conftest import BF16, EDGE_LENGTHS, SIMD_LEVELS, random_sets, requires_torch

LEVELS = [lvl for lvl in SIMD_LEVELS if lvl != "amx"]


def unit_sets(rng, lengths, dim):
    return [s / np.linalg.norm(s, axis=1, keepdims=True) for s in random_sets(rng, lengths, dim)]


def trained(bits, dim, lengths=(30, 0, 17, 1, 60), centroids=8, seed=0):
    rng = np.random.default_rng(seed + 10 * bits + dim)
    sets = unit_sets(rng, lengths, dim)
    return tokenset.ResidualCodec.train(sets, bits=bits, centroids=centroids), sets


def reference_documents(codes):
    return [(codes[i][1], codes[i][0], codes[i][2]) for i in range(len(codes))]


def reference_scores(queries, codes):
    codec = codes.codec
    return ref.maxsim(queries, reference_documents(codes), codec.centroids.astype(np.float32), codec.bucket_weights,
                      codec.bits)


def assert_close_to_reference(got, want, queries):
    """The kernels chain float32 FMAs for the centroid table where the reference rounds a float64 dot product: a few
    ulps per similarity, summed over the query tokens."""
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    tolerance = 1e-5 * max(len(q) for q in queries)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=tolerance)


# ---- the codec ------------------------------------------------------------------------------------------------------

def test_centroid_count_is_plaids_rule():
    assert tokenset.residual.centroid_count(1) == 16
    assert tokenset.residual.centroid_count(1_000_000) == 2 ** 13  # 16 * 1000 = 16000
    assert tokenset.residual.centroid_count(17_000_000) == 2 ** 16
    assert all(tokenset.residual.centroid_count(n) == ref.centroid_count(n) for n in (5, 999, 123_456, 10 ** 8))


def test_packing_is_plaids_bit_order():
    # 4 bits, dims (1, 2): stream bits (code >> j) & 1 = 1,0,0,0 then 0,1,0,0, packed MSB first: 0b10000100.
    assert ref.pack(np.array([[1, 2]]), 4).tolist() == [[0b10000100]]
    # 2 bits, dims (3, 0, 1, 2): 1,1, 0,0, 1,0, 0,1 -> 0b11001001.
    assert ref.pack(np.array([[3, 0, 1, 2]]), 2).tolist() == [[0b11001001]]
    codec = tokenset.ResidualCodec(np.eye(2, 8, dtype=np.float16), [-0.5, 0.0, 0.5], [-1.0, -0.25, 0.25, 1.0], 2)
    x = np.array([[1.0, -0.9, 0.1, 0.9, -0.1, 0.0, 0.6, -0.6]], np.float32)  # centroid 0: residual x - e0
    codes = codec.encode(x)
    residual = x[0] - np.eye(2, 8)[0]
    want = ref.pack(np.searchsorted([-0.5, 0.0, 0.5], residual, side="left")[None], 2)
    np.testing.assert_array_equal(codes.packed, want)
    np.testing.assert_array_equal(ref.unpack(codes.packed, 2, 8)[0], [1, 0, 2, 3, 1, 1, 3, 0])


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("dim", [8, 16, 64, 128, 136])
def test_encode_and_decode_match_the_reference_bit_for_bit(simd, bits, dim):
    if simd == "amx":
        pytest.skip("no residual kernel of its own")
    codec, sets = trained(bits, dim)
    codes = codec.encode(sets)
    c32 = codec.centroids.astype(np.float32)
    ids, packed, norms = ref.encode(np.concatenate(sets), c32, codec.bucket_cutoffs, codec.bucket_weights, bits)
    np.testing.assert_array_equal(codes.centroid_ids, ids)
    np.testing.assert_array_equal(codes.packed, packed)
    np.testing.assert_array_equal(codes.inverse_norms, norms)
    assert codes.offsets.tolist() == [0, 30, 30, 47, 48, 108]
    decoded = codes.decode()
    want = ref.decode(ids, packed, norms, c32, codec.bucket_weights, bits)
    np.testing.assert_array_equal(decoded.values, want)
    np.testing.assert_allclose(np.linalg.norm(decoded.values, axis=1), 1.0, rtol=1e-5)
    # PLAID's decompression: centroid + weights[code], L2-normalised
    plaid = ref.reconstruct(ids, packed, c32, codec.bucket_weights, bits)
    plaid /= np.linalg.norm(plaid, axis=1, keepdims=True)
    np.testing.assert_allclose(decoded.values, plaid, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_encode_converts_half_precision_tokens_exactly(dtype):
    codec, sets = trained(2, 64)
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        half = [s.astype(BF16) for s in sets]
    else:
        half = [s.astype(np.float16) for s in sets]
    got = codec.encode(half)
    want = codec.encode([h.astype(np.float32) for h in half])
    np.testing.assert_array_equal(got.packed, want.packed)
    np.testing.assert_array_equal(got.inverse_norms, want.inverse_norms)


def test_token_equal_to_its_centroid_and_zero_tokens():
    codec, _ = trained(4, 16)
    c = codec.centroids.astype(np.float32)
    x = np.concatenate([c[3:4], np.zeros((1, 16), np.float32)])
    codes = codec.encode(x)
    assert codes.centroid_ids[0] == 3
    zero_code = int(np.searchsorted(codec.bucket_cutoffs, 0.0, side="left"))
    np.testing.assert_array_equal(ref.unpack(codes.packed[:1], 4, 16)[0], np.full(16, zero_code))
    assert codes.centroid_ids[1] == 0  # every inner product ties at 0: the lowest index
    ids, packed, norms = ref.encode(x, c, codec.bucket_cutoffs, codec.bucket_weights, 4)
    np.testing.assert_array_equal(codes.inverse_norms, norms)


def test_a_zero_reconstruction_has_inverse_norm_zero():
    codec = tokenset.ResidualCodec(np.full((1, 8), 0.5, np.float16), [0.0], [-0.5, 0.5], 1)
    codes = codec.encode(np.full((1, 8), -1.0, np.float32))  # residual < 0 everywhere: centroid - itself = 0
    assert codes.inverse_norms.tolist() == [0.0]
    assert (codes.decode().values == 0).all()
    assert tokenset.maxsim(np.ones((2, 8), np.float32), codes).tolist() == [[0.0]]


def test_gapped_codes_and_empty_sets():
    codec, sets = trained(2, 32)
    codes = codec.encode(sets)
    view = tokenset.ResidualCodes(codes.packed, codes.centroid_ids, codes.inverse_norms, codes.offsets[1:5], codec)
    assert view.offsets[0] == 30
    np.testing.assert_array_equal(view.decode().values, codes.decode().values[30:48])
    q = [np.ones((3, 32), np.float32)]
    full = tokenset.maxsim(q, codes)
    np.testing.assert_array_equal(tokenset.maxsim(q, view), full[:, 1:4])
    assert np.isneginf(full[0, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite_tokens(bad):
    codec, sets = trained(2, 16)
    sets[2][5, 3] = bad
    with pytest.raises(ValueError, match="set 2, token 5 holds NaN or infinity"):
        codec.encode(sets)


def test_codec_arguments_are_checked():
    x = np.random.default_rng(0).standard_normal((50, 12)).astype(np.float32)
    assert tokenset.ResidualCodec.train(x, bits=2, centroids=4).bytes_per_token == 3 + 8  # 12 x 2 bits: 3 bytes
    with pytest.raises(ValueError, match="bits must be 1, 2 or 4"):
        tokenset.ResidualCodec.train(x[:, :8], bits=3)
    with pytest.raises(ValueError, match="no tokens"):
        tokenset.ResidualCodec.train(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="centroids must be"):
        tokenset.ResidualCodec.train(x[:, :8], centroids=0)
    with pytest.raises(ValueError, match="non-decreasing"):
        tokenset.ResidualCodec(np.eye(2, 8), [0.5, 0.0, 1.0], [0, 0, 0, 0], 2)
    with pytest.raises(ValueError, match="NaN or infinity"):
        tokenset.ResidualCodec(np.full((2, 8), np.inf), [0.0], [0, 1], 1)
    with pytest.raises(ValueError, match="need 1 bucket cutoffs"):
        tokenset.ResidualCodec(np.eye(2, 8), [0.0, 1.0], [0, 1], 1)
    codec = tokenset.ResidualCodec.train(x[:, :8], bits=1, centroids=500)  # more centroids than tokens: capped
    assert codec.num_centroids == 50
    with pytest.raises(ValueError, match="dimension 12 but the codec's is 8"):
        codec.encode(x)


def test_dim_that_does_not_fill_bytes_is_refused():
    x = np.random.default_rng(0).standard_normal((50, 12)).astype(np.float32)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        tokenset.ResidualCodec.train(x, bits=1)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        tokenset.ResidualCodec.train(x[:, :3], bits=2)


def test_training_is_plaids_and_deterministic():
    rng = np.random.default_rng(4)
    sets = unit_sets(rng, [40] * 20, 32)
    a = tokenset.ResidualCodec.train(sets, bits=2, seed=3)
    b = tokenset.ResidualCodec.train(sets, bits=2, seed=3)
    assert a == b and a.num_centroids == ref.centroid_count(800) == 256
    assert a.centroids.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(a.centroids.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # buckets: the quantiles of the sample's residuals (the whole corpus here)
    x = np.concatenate(sets)
    c = a.centroids.astype(np.float32)
    cutoffs, weights = ref.buckets(x - c[ref.nearest_centroid(x, c)], 2)
    np.testing.assert_allclose(a.bucket_cutoffs, cutoffs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.bucket_weights, weights, rtol=1e-6, atol=1e-7)
    assert tokenset.ResidualCodec.train(sets, bits=2, seed=4) != a
    # other bit widths over the same centroids: only the buckets are trained
    b4 = tokenset.ResidualCodec.train(sets, bits=4, centroids=a.centroids, seed=3)
    np.testing.assert_array_equal(b4.centroids, a.centroids)
    np.testing.assert_allclose(b4.bucket_weights, ref.buckets(x - c[ref.nearest_centroid(x, c)], 4)[1], rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(ValueError, match="dimension"):
        tokenset.ResidualCodec.train(sets, bits=2, centroids=np.ones((3, 16), np.float32))
    # and their codes from the same centroid ids, without the nearest-centroid search
    codes2 = a.encode(sets)
    codes4 = b4.encode(sets, centroid_ids=codes2.centroid_ids)
    np.testing.assert_array_equal(codes4.packed, b4.encode(sets).packed)
    with pytest.raises(ValueError, match="centroid_ids must be int32"):
        b4.encode(sets, centroid_ids=codes2.centroid_ids[:5])
    bad = codes2.centroid_ids.copy()
    bad[7] = 10 ** 6
    with pytest.raises(ValueError, match=r"centroid_ids\[7\] = 1000000 is not in \[0, 256\)"):
        b4.encode(sets, centroid_ids=bad)


# ---- files ----------------------------------------------------------------------------------------------------------

def test_save_and_load(tmp_path):
    codec, sets = trained(4, 64)
    path = tmp_path / "codec.zip"
    codec.save(path)
    back = tokenset.ResidualCodec.load(path)
    assert back == codec and back.bits == 4
    np.testing.assert_array_equal(back.encode(sets).packed, codec.encode(sets).packed)
    assert tokenset.ResidualCodec.from_bytes(codec.to_bytes()) == codec


def _rewrite(path, member, data):
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items[member] = data
    with zipfile.ZipFile(path, "w") as z:
        for n, d in items.items():
            z.writestr(n, d)


def test_bad_codec_files_are_refused(tmp_path):
    codec, _ = trained(2, 16)
    good = tmp_path / "good.zip"
    codec.save(good)
    with zipfile.ZipFile(good) as z:
        config = z.read("config.json")
        weights = z.read("bucket_weights.npy")
    cases = {
        "checksum": ("bucket_weights.npy", weights[:-4] + np.float32(7).tobytes()),
        "truncated": ("centroids.npy", b"\x93NUMPY"),
        "config": ("config.json", config.replace(b'"bits": 2', b'"bits": 3')),
        "junk": ("config.json", b"{not json"),
    }
    for name, (member, data) in cases.items():
        bad = tmp_path / f"{name}.zip"
        bad.write_bytes(good.read_bytes())
        _rewrite(bad, member, data)
        with pytest.raises(ValueError):
            tokenset.ResidualCodec.load(bad)
    (tmp_path / "notzip").write_bytes(b"hello")
    with pytest.raises(ValueError):
        tokenset.ResidualCodec.load(tmp_path / "notzip")
    fde = tmp_path / "fde.zip"
    tokenset.FDE(16, reps=1, simhash_bits=1).save(fde)
    with pytest.raises(ValueError, match="ResidualCodec"):
        tokenset.ResidualCodec.load(fde)


# ---- MaxSim on codes ------------------------------------------------------------------------------------------------

SHAPES = [(16, [1, 5], [3, 0, 7]), (64, [31, 32, 33], [40, 1]), (128, [32, 65], [50, 9, 0, 70]),
          (72, [7], [20, 21]), (256, [3], [12])]


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("dim,q_lengths,d_lengths", SHAPES)
def test_maxsim_on_codes_matches_the_reference_and_every_level(bits, dim, q_lengths, d_lengths):
    rng = np.random.default_rng(dim + bits)
    docs = unit_sets(rng, d_lengths, dim)
    codec = tokenset.ResidualCodec.train(docs, bits=bits, centroids=5)
    codes = codec.encode(docs)
    queries = random_sets(rng, q_lengths, dim)
    want = reference_scores(queries, codes)
    by_level = {}
    try:
        for level in LEVELS:
            tokenset.set_simd_level(level)
            by_level[level] = tokenset.maxsim(queries, codes)
    finally:
        tokenset.set_simd_level(tokenset.build_info()["simd_best"])
    assert_close_to_reference(by_level["scalar"], want, queries)
    for level, got in by_level.items():
        np.testing.assert_array_equal(got, by_level["scalar"], err_msg=level)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_lut_scores_are_within_the_bound_of_maxsim_on_the_decoded_tokens(bits):
    rng = np.random.default_rng(bits)
    docs = unit_sets(rng, [60, 1, 33, 90], 128)
    codec = tokenset.ResidualCodec.train(docs, bits=bits, centroids=16)
    codes = codec.encode(docs)
    queries = unit_sets(rng, [32, 5], 128)
    got = tokenset.maxsim(queries, codes)
    decoded = codes.decode()
    exact = ref_maxsim.maxsim(queries, [decoded[i] for i in range(len(decoded))])
    c32 = codec.centroids.astype(np.float32)
    for a, q in enumerate(queries):
        for b, (ids, packed, norms) in enumerate(reference_documents(codes)):
            bound = ref.lut_error_bound(q, ids, packed, norms, c32, codec.bucket_weights, bits)
            assert abs(got[a, b] - exact[a, b]) <= bound + 1e-5 * len(q), (a, b)
            # and in practice far below it: well under 1% of a unit-vector score
            assert abs(got[a, b] - exact[a, b]) <= 0.01 * len(q)


def test_pairs_and_topk_agree_with_all_pairs():
    rng = np.random.default_rng(9)
    docs = unit_sets(rng, [10, 0, 30, 5, 41, 8], 64)
    codec = tokenset.ResidualCodec.train(docs, bits=2, centroids=6)
    codes = codec.encode(docs)
    queries = random_sets(rng, [4, 33], 64)
    full = tokenset.maxsim(queries, codes)
    cand = np.array([[5, -1, 1, 1], [0, 2, 4, 3]])
    pairs = tokenset.maxsim_pairs(queries, codes, cand)
    assert np.isneginf(pairs[0, 1]) and np.isneginf(pairs[0, 2])
    np.testing.assert_array_equal(pairs[cand >= 0], np.take_along_axis(full, np.maximum(cand, 0), 1)[cand >= 0])
    scores, index = tokenset.maxsim_topk(queries, codes, k=7)
    for a in range(2):
        order = np.lexsort((np.arange(6), -full[a]))
        np.testing.assert_array_equal(index[a, :6], order)
        np.testing.assert_array_equal(scores[a, :6], full[a, order])
        assert index[a, 6] == -1 and np.isneginf(scores[a, 6])


@pytest.mark.parametrize("name,lengths", list(EDGE_LENGTHS.items()))
def test_edge_lengths_and_threads(name, lengths):
    rng = np.random.default_rng(len(lengths))
    docs = unit_sets(rng, lengths, 128)
    codec = tokenset.ResidualCodec.train([d for d in docs if len(d)] or docs, bits=4, centroids=3)
    codes = codec.encode(docs)
    queries = random_sets(rng, [1, 33], 128)
    want = reference_scores(queries, codes)
    before = tokenset.get_num_threads()
    try:
        runs = []
        for threads in (1, 3):
            tokenset.set_num_threads(threads)
            runs.append(tokenset.maxsim(queries, codes))
    finally:
        tokenset.set_num_threads(before)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert_close_to_reference(runs[0], want, queries)


def test_scoring_refuses_what_it_cannot_score():
    codec, docs = trained(2, 16)
    codes = codec.encode(docs)
    q = np.ones((2, 16), np.float32)
    with pytest.raises(ValueError, match="return_argmax"):
        tokenset.maxsim(q, codes, return_argmax=True)
    bad = q.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="query 0, token 1 holds NaN or infinity"):
        tokenset.maxsim(bad, codes)
    with pytest.raises(TypeError, match="float tokens"):
        tokenset.maxsim(tokenset.quantize(q), codes)
    with pytest.raises(TypeError, match="as documents"):
        tokenset.maxsim(codes, q)
    with pytest.raises(ValueError, match="dimension"):
        tokenset.maxsim(np.ones((2, 8), np.float32), codes)


def test_native_checks_ids_norms_and_arrays():
    codec, docs = trained(2, 16)
    codes = codec.encode(docs)
    q = np.ones((2, 16), np.float32)
    ids = codes.centroid_ids.copy()
    ids[40] = codec.num_centroids
    bad = tokenset.ResidualCodes(codes.packed, ids, codes.inverse_norms, codes.offsets, codec)
    with pytest.raises(ValueError, match="centroid id 8 is not in"):
        tokenset.maxsim(q, bad)
    with pytest.raises(ValueError, match=r"centroid ids\[40\] = 8 is not in \[0, 8\)"):
        bad.decode()
    # pairs mode checks its candidates' documents only
    cand = np.array([[0, 1]])
    np.testing.assert_array_equal(tokenset.maxsim_pairs(q, bad, cand), tokenset.maxsim_pairs(q, codes, cand))
    norms = codes.inverse_norms.copy()
    norms[3] = np.nan
    with pytest.raises(ValueError, match="inverse norm nan"):
        tokenset.maxsim(q, tokenset.ResidualCodes(codes.packed, codes.centroid_ids, norms, codes.offsets, codec))
    with pytest.raises(ValueError, match="uint8"):
        tokenset.ResidualCodes(codes.packed.view(np.int8), codes.centroid_ids, codes.inverse_norms, codes.offsets,
                               codec)
    with pytest.raises(ValueError, match="past the end"):
        tokenset.ResidualCodes(codes.packed, codes.centroid_ids, codes.inverse_norms, [0, 500], codec)
    other = tokenset.ResidualCodec.train(docs, bits=4, centroids=3)
    with pytest.raises(ValueError, match="packed must be uint8"):
        tokenset.ResidualCodes(codes.packed, codes.centroid_ids, codes.inverse_norms, codes.offsets, other)
    with pytest.raises(ValueError, match="another codec"):
        other.decode(codes)
    # the native layer itself, given a uint8 batch without residual arguments or with the wrong widths
    from tokenset._backend import _core
    from tokenset.ops import _dispatch

    batch = _dispatch.KernelBatch(codes.packed, None, codes.offsets, None, codes.inverse_norms)
    qb = _dispatch.KernelBatch(q, None, np.array([0, 2]), None)
    out = np.empty((1, len(codes)), np.float32)
    with pytest.raises(TypeError, match="uint8"):
        _core.maxsim(qb, batch, out)
    from tokenset.ops.maxsim import _ResidualArgs

    args = _ResidualArgs(codes, "numpy", ("cpu", -1))
    args.bits = 4
    with pytest.raises(ValueError, match="bucket weights must have shape"):
        _core.maxsim(qb, batch, out, residual=args)
    args.bucket_weights = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="not dim x bits / 8"):
        _core.maxsim(qb, batch, out, residual=args)
    args.bits, args.bucket_weights = 2, codec.bucket_weights
    args.centroid_ids = codes.centroid_ids[:10]
    with pytest.raises(ValueError, match="reach past the centroid ids"):
        _core.maxsim(qb, batch, out, residual=args)


@requires_torch
def test_torch_tensors_and_gradients():
    import torch

    codec, docs = trained(2, 32)
    codes = codec.encode([torch.from_numpy(d) for d in docs])
    assert isinstance(codes.packed, torch.Tensor) and codes.packed.dtype == torch.uint8
    want = codec.encode(docs)
    np.testing.assert_array_equal(codes.packed.numpy(), want.packed)
    q = torch.ones((3, 32), requires_grad=True)
    with pytest.raises(TypeError, match="not differentiable"):
        tokenset.maxsim(q, codes)
    with torch.no_grad():
        got = tokenset.maxsim(q, codes)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), tokenset.maxsim(np.ones((3, 32), np.float32), want))


def test_strided_codes_and_ids_of_another_library():
    codec, docs = trained(4, 32)
    codes = codec.encode(docs)
    q = random_sets(np.random.default_rng(1), [5], 32)
    rows = codes.packed.shape[0]
    wide = np.zeros((rows, 2 * codes.packed.shape[1]), np.uint8)
    wide[:, ::2] = codes.packed  # strided rows of codes; ids and norms strided too
    ids2, norms2 = np.repeat(codes.centroid_ids, 2), np.repeat(codes.inverse_norms, 2)
    strided = tokenset.ResidualCodes(wide[:, ::2], ids2[::2], norms2[::2], codes.offsets, codec)
    np.testing.assert_array_equal(tokenset.maxsim(q, strided), tokenset.maxsim(q, codes))
    np.testing.assert_array_equal(strided.decode().values, codes.decode().values)
    pytest.importorskip("torch")
    import torch

    again = codec.encode([torch.from_numpy(d) for d in docs], centroid_ids=codes.centroid_ids)  # numpy ids
    np.testing.assert_array_equal(again.packed.numpy(), codes.packed)


def test_bytes_per_token():
    codec, docs = trained(2, 128)
    codes = codec.encode(docs)
    assert codec.bytes_per_token == 40  # 32 bytes of codes + id + norm: 6.4x smaller than float16's 256
    assert codes.nbytes == 108 * 40


def test_other_ops_refuse_codes():
    codec, docs = trained(2, 16)
    codes = codec.encode(docs)
    with pytest.raises(TypeError):
        tokenset.kcenter(codes, 2)


# ---- CUDA -------------------------------------------------------------------------------------------------------------

def test_cuda_codes_match_the_cpu_bit_for_bit(cuda):
    """The CUDA codec and in-place scoring compute the CPU's numbers in the CPU's order."""
    import torch

    rng = np.random.default_rng(23)
    docs = unit_sets(rng, [50, 0, 1, 130, 64], 128)
    for bits in (1, 2, 4):
        codec = tokenset.ResidualCodec.train(docs, bits=bits, centroids=7)
        cpu = codec.encode(docs)
        gpu = codec.encode([torch.from_numpy(d).cuda() for d in docs])
        assert gpu.packed.device.type == "cuda"
        np.testing.assert_array_equal(gpu.centroid_ids.cpu().numpy(), cpu.centroid_ids)
        np.testing.assert_array_equal(gpu.packed.cpu().numpy(), cpu.packed)
        np.testing.assert_array_equal(gpu.inverse_norms.cpu().numpy(), cpu.inverse_norms)
        np.testing.assert_array_equal(gpu.decode().values.cpu().numpy(), cpu.decode().values)
        queries = random_sets(rng, [1, 32, 45], 128)
        want = tokenset.maxsim(queries, cpu)
        gq = [torch.from_numpy(q).cuda() for q in queries]
        np.testing.assert_array_equal(tokenset.maxsim(gq, gpu).cpu().numpy(), want)
        cand = np.array([[4, -1, 0], [1, 2, 3], [3, 3, 0]])
        np.testing.assert_array_equal(tokenset.maxsim_pairs(gq, gpu, cand).cpu().numpy(),
                                      tokenset.maxsim_pairs(queries, cpu, cand))
        s, i = tokenset.maxsim_topk(gq, gpu, 3)
        ws, wi = tokenset.maxsim_topk(queries, cpu, 3)
        np.testing.assert_array_equal(s.cpu().numpy(), ws)
        np.testing.assert_array_equal(i.cpu().numpy(), wi)
