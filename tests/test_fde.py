"""MUVERA FDE against the float64 numpy reference: random sweeps, hand-made cases, every dtype and SIMD level.

Tolerance: the kernel sums n tokens of `dim`-term projections in float32 (then divides, and sums Count-Sketch buckets
of m terms), so each coordinate errs by at most ~(n + dim + m + 2) * u * (the same FDE computed on |x|, |weights|,
|signs| with the same partitions), u = 2^-24; the tests allow 4x that. Partitions are exact: test tokens whose dot
product with a hyperplane is within 1e-4 of the sum of its terms' magnitudes are redrawn, so float32 and float64 agree
on every sign bit.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import zipfile

import numpy as np
import pytest

import tokenset
from tokenset import _storage
from tokenset.reference import fde as ref
from conftest import BF16, EDGE_LENGTHS, FDE_SWEEP as SWEEP, U32, check_fde_against_reference as check_against_reference, \
    fde_sanitize as sanitize, requires_torch


DTYPES = [np.float32, np.float16] + ([BF16] if BF16 is not None else [])


# ---- reference agreement ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim,reps,bits,proj,fill,final", SWEEP)
def test_reference_sweep(simd, dim, reps, bits, proj, fill, final):
    rng = np.random.default_rng(hash((dim, reps, bits, proj, fill, final)) % 2**32)
    fde = tokenset.FDE(dim, reps=reps, simhash_bits=bits, proj_dim=proj, fill_empty=fill, final_dim=final, seed=3)
    lengths = [0, 1, 2, 7, 40, 300] if bits < 12 else [0, 1, 5, 30]
    docs = sanitize(rng, [rng.standard_normal((n, dim)) for n in lengths], fde.simhash, np.float32)
    check_against_reference(fde, docs, True, fde.encode_documents(docs))
    queries = [d for d in docs if len(d)]
    check_against_reference(fde, queries, False, fde.encode_queries(queries))
    parts = fde.partitions(docs)
    assert parts.dtype == np.int32 and parts.shape == (sum(lengths), reps)
    expected = np.concatenate([ref.partitions(d, fde.simhash) for d in docs if len(d)])
    np.testing.assert_array_equal(parts, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("proj", [None, 16])
def test_dtypes(simd, dtype, proj):
    rng = np.random.default_rng(7)
    fde = tokenset.FDE(48, reps=4, simhash_bits=4, proj_dim=proj, seed=11)
    docs = sanitize(rng, [rng.standard_normal((n, 48)) for n in (3, 50, 129)], fde.simhash, dtype)
    got = fde.encode_documents(docs)
    assert got.dtype == np.float32
    check_against_reference(fde, docs, True, got)
    check_against_reference(fde, docs, False, fde.encode_queries(docs))


def test_random_configurations(simd):
    """A seeded sweep over random shapes and options, mixed lengths 0..300."""
    rng = np.random.default_rng(2026)
    for trial in range(12):
        dim = int(rng.integers(1, 100))
        bits = int(rng.integers(0, 9))
        reps = int(rng.integers(1, 5))
        proj = [None, int(rng.integers(1, 80))][trial % 2]
        final = [None, int(rng.integers(1, 300))][(trial // 2) % 2]
        fde = tokenset.FDE(dim, reps=reps, simhash_bits=bits, proj_dim=proj, fill_empty=bool(trial % 3),
                           final_dim=final, seed=trial)
        lengths = rng.integers(0, 301, size=int(rng.integers(1, 6)))
        docs = sanitize(rng, [rng.standard_normal((int(n), dim)) for n in lengths], fde.simhash, np.float32)
        check_against_reference(fde, docs, True, fde.encode_documents(docs))
        queries = [d for d in docs if len(d)]
        if queries:
            check_against_reference(fde, queries, False, fde.encode_queries(queries))


# ---- Gray code and hand-made cases ------------------------------------------------------------------------------------
def axis_encoder(bits, proj=False, fill=True):
    """Hyperplane j = unit vector e_j (dim = bits): a token's sign bits are the signs of its coordinates."""
    simhash = np.eye(bits, dtype=np.float32)[None]
    projection = np.ones((1, bits, 1), np.float32) if proj else None
    return tokenset.FDE.from_arrays(simhash, projection, fill_empty=fill)


def token_with_pattern(pattern, bits):
    """A ±1 token whose sign bits (first hyperplane most significant) are `pattern`."""
    return np.array([1.0 if (pattern >> (bits - 1 - j)) & 1 else -1.0 for j in range(bits)], np.float32)



@pytest.mark.parametrize("proj, fill", [(None, True), (4, True), (None, False)])
def test_sets_longer_than_a_chunk(simd, proj, fill):
    """Sets longer than the 4,096-token chunk (scratch is sized by the chunk): chunked sums, and empty partitions of
    long sets (tokens clustered in a few partitions) filled by the second pass, equal the reference; tokens do not
    leak between sets."""
    rng = np.random.default_rng(5 + (proj or 0))
    fde = tokenset.FDE(8, reps=2, simhash_bits=6, proj_dim=proj, fill_empty=fill, seed=3)
    centre = rng.standard_normal(8)
    clustered = lambda n: centre + 0.3 * rng.standard_normal((n, 8))  # noqa: E731
    sets = sanitize(rng, [clustered(9000), rng.standard_normal((4096, 8)), clustered(4097), np.ones((1, 8)),
                          np.ones((0, 8)), rng.standard_normal((5000, 8))], fde.simhash, np.float16)
    got = fde.encode_documents(sets)
    check_against_reference(fde, sets, True, got)
    check_against_reference(fde, sets[:4], False, fde.encode_queries(sets[:4]))
    assert np.array_equal(fde.partitions(sets[:1]), ref.partitions(np.asarray(sets[0], np.float64), fde.simhash))


@pytest.mark.parametrize("bits", range(1, 31))
def test_gray_code_round_trip(bits):
    rng = np.random.default_rng(bits)
    patterns = np.unique(np.concatenate([rng.integers(0, 2**bits, 64), [0, 2**bits - 1, 1, 2 ** (bits - 1)]]))
    for p in patterns:
        idx = 0
        for j in range(bits):
            idx = ref.append_bit(idx, (int(p) >> (bits - 1 - j)) & 1)
        assert ref.gray_code(idx) == p  # decoding the built index gives back the sign bits
        assert 0 <= idx < 2**bits
    tokens = np.stack([token_with_pattern(int(p), bits) for p in patterns])
    fde = axis_encoder(bits, proj=True)
    got = fde.partitions(tokens)[:, 0]
    np.testing.assert_array_equal([ref.gray_code(int(g)) for g in got], patterns)
    np.testing.assert_array_equal(got, ref.partitions(tokens, fde.simhash)[:, 0])


def test_many_hyperplane_columns():
    """180 repetitions x 23 bits = 4,140 hyperplane columns: sign bits span more than 64 words of 64 bits."""
    fde = tokenset.FDE(8, reps=180, simhash_bits=23, proj_dim=1, seed=2)
    rng = np.random.default_rng(3)
    tokens = sanitize(rng, [rng.standard_normal((5, 8))], fde.simhash, np.float32)[0]
    np.testing.assert_array_equal(fde.partitions(tokens), ref.partitions(tokens, fde.simhash))


def test_gray_code_by_hand():
    # Bits 1, 0 -> idx = (0 << 1) + (1 ^ 0) = 1, then (1 << 1) + (0 ^ 1) = 3: partition 3, whose Gray code is 0b10.
    fde = axis_encoder(2)
    token = token_with_pattern(0b10, 2)
    assert fde.partitions(token[None]).tolist() == [[3]]
    out = fde.encode_queries(token[None]).reshape(4, 2)
    np.testing.assert_array_equal(out, [[0, 0], [0, 0], [0, 0], token])
    # Bits 0, 1 -> partition 1; bits 1, 1 -> partition 2; bits 0, 0 (and the zero vector: 0 is not > 0) -> 0.
    tokens = np.stack([token_with_pattern(0b01, 2), token_with_pattern(0b11, 2), np.zeros(2, np.float32)])
    assert fde.partitions(tokens)[:, 0].tolist() == [1, 2, 0]


def test_fill_nearest_token_and_ties():
    bits = 3
    fde = axis_encoder(bits)
    # Patterns 011 and 110 sit at Hamming distance 1 from the empty partition with pattern 010 (and 111); the lower
    # token index wins, whichever pattern it has.
    a, b = token_with_pattern(0b011, bits), token_with_pattern(0b110, bits)
    for first, second in ((a, b), (b, a)):
        doc = np.stack([first, 2 * second])
        out = fde.encode_documents(doc).reshape(8, bits)
        for p in range(8):
            pattern = ref.gray_code(p)
            if pattern in (0b011, 0b110):
                own = first if token_with_pattern(pattern, bits).tolist() == first.tolist() else 2 * second
                np.testing.assert_array_equal(out[p], own)
                continue
            d_first = bin(pattern ^ (0b011 if first is a else 0b110)).count("1")
            d_second = bin(pattern ^ (0b110 if first is a else 0b011)).count("1")
            expected = first if d_first <= d_second else 2 * second
            np.testing.assert_array_equal(out[p], expected, err_msg=f"partition {p} pattern {pattern:03b}")
    # Without fill the empty partitions stay zero.
    nofill = axis_encoder(bits, fill=False).encode_documents(np.stack([a, b])).reshape(8, bits)
    assert np.count_nonzero(np.abs(nofill).sum(axis=1)) == 2


def test_single_token_document_fills_every_partition(simd):
    fde = tokenset.FDE(12, reps=3, simhash_bits=4, proj_dim=5, seed=2)
    token = np.random.default_rng(0).standard_normal((1, 12)).astype(np.float32)
    out = fde.encode_documents(token).reshape(3, 16, 5)
    for r in range(3):
        projected = token[0].astype(np.float64) @ fde.projection[r]
        np.testing.assert_allclose(out[r], np.broadcast_to(projected, (16, 5)), rtol=1e-6, atol=1e-6)


def test_empty_sets():
    fde = tokenset.FDE(8, reps=2, simhash_bits=3, proj_dim=4, final_dim=10)
    docs = [np.zeros((0, 8), np.float32), np.ones((2, 8), np.float32), np.zeros((0, 8), np.float32)]
    out = fde.encode_documents(docs)
    assert out.shape == (3, 10)
    assert not out[0].any() and not out[2].any()  # nothing to fill from: zeros, with fill on
    with pytest.raises(ValueError, match="query 1 has no tokens|set 1 has no tokens"):
        fde.encode_queries([np.ones((1, 8), np.float32), np.zeros((0, 8), np.float32)])
    none = fde.encode_documents(tokenset.Ragged(np.zeros((0, 8), np.float32), [0]))
    assert none.shape == (0, 10)


def test_query_sums_document_averages():
    fde = tokenset.FDE(6, reps=1, simhash_bits=0)  # one partition: the whole set
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(fde.encode_queries(x)[0], x.sum(0))
    np.testing.assert_array_equal(fde.encode_documents(x)[0], x.mean(0))


def test_nan_and_inf():
    fde = tokenset.FDE(4, reps=2, simhash_bits=2, seed=5)
    good = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -1.0, 0.5]], np.float32)
    doc = np.concatenate([good, [[np.nan, 0, 0, 0]]]).astype(np.float32)
    out = fde.encode_documents(doc).reshape(2, 4, 4)
    parts = fde.partitions(doc)
    assert (parts[2] == 0).all()  # NaN dots are not > 0: all sign bits 0, partition 0
    for r in range(2):
        assert np.isnan(out[r, 0]).any()  # the NaN lands in partition 0 and propagates there
        others = [p for p in range(4) if p != 0]
        assert np.isfinite(out[r, others]).all()
    inf_doc = np.array([[np.inf, 1, 1, 1]], np.float32)
    got = fde.encode_documents(inf_doc)
    exact = ref.encode([inf_doc.astype(np.float64)], fde.simhash, None, documents=True, fill_empty=True)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(exact))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))


# ---- input forms ------------------------------------------------------------------------------------------------------
def test_input_forms_agree():
    rng = np.random.default_rng(4)
    fde = tokenset.FDE(16, reps=2, simhash_bits=3, proj_dim=4)
    docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (3, 5, 1)]
    expected = fde.encode_documents(docs)
    padded = np.zeros((3, 5, 16), np.float32)
    mask = np.zeros((3, 5), bool)
    for i, d in enumerate(docs):
        padded[i, : len(d)] = d
        mask[i, : len(d)] = True
    np.testing.assert_array_equal(fde.encode_documents(padded, lengths=[3, 5, 1]), expected)
    np.testing.assert_array_equal(fde.encode_documents(padded, mask=mask), expected)
    np.testing.assert_array_equal(fde.encode_documents(tokenset.ragged(docs)), expected)
    np.testing.assert_array_equal(fde.encode_documents(docs[1]), expected[1:2])
    # Strided rows (every other row of a bigger array) and a Ragged whose offsets do not start at 0.
    big = np.zeros((18, 16), np.float32)
    big[::2] = np.concatenate(docs)
    np.testing.assert_array_equal(fde.encode_documents(tokenset.Ragged(big[::2], [0, 3, 8, 9])), expected)
    shifted = tokenset.Ragged(np.concatenate([np.ones((4, 16), np.float32), np.concatenate(docs)]), [4, 7, 12, 13])
    np.testing.assert_array_equal(fde.encode_documents(shifted), expected)
    np.testing.assert_array_equal(fde.partitions(shifted), fde.partitions(docs))
    # Elements strided within a row: one documented copy.
    wide = np.zeros((9, 32), np.float32)
    wide[:, ::2] = np.concatenate(docs)
    np.testing.assert_array_equal(fde.encode_documents(tokenset.Ragged(wide[:, ::2], [0, 3, 8, 9])), expected)


def test_out_argument(tmp_path):
    fde = tokenset.FDE(16, reps=2, simhash_bits=3, proj_dim=4)
    docs = [np.random.default_rng(i).standard_normal((i + 1, 16)).astype(np.float32) for i in range(5)]
    expected = fde.encode_documents(docs)
    store = np.lib.format.open_memmap(tmp_path / "fde.npy", mode="w+", dtype=np.float32, shape=(5, fde.output_dim))
    head = store[:3]
    assert fde.encode_documents(docs[:3], out=head) is head
    fde.encode_documents(docs[3:], out=store[3:])
    np.testing.assert_array_equal(store, expected)
    with pytest.raises(ValueError, match="shape"):
        fde.encode_documents(docs, out=np.zeros((4, fde.output_dim), np.float32))
    with pytest.raises(TypeError, match="float32"):
        fde.encode_documents(docs, out=np.zeros((5, fde.output_dim)))
    with pytest.raises(ValueError, match="C-contiguous"):
        fde.encode_documents(docs, out=np.zeros((5, 2 * fde.output_dim), np.float32)[:, ::2])
    frozen = np.zeros((5, fde.output_dim), np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fde.encode_documents(docs, out=frozen)


@requires_torch
def test_torch_in_torch_out():
    import torch

    fde = tokenset.FDE(16, reps=2, simhash_bits=3)
    x = torch.randn(2, 7, 16)
    out = fde.encode_documents(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), fde.encode_documents(x.numpy()))
    bf = x.to(torch.bfloat16)
    np.testing.assert_array_equal(fde.encode_queries(bf).numpy(),
                                  fde.encode_queries(bf.float().numpy()))


def test_threads_do_not_change_results():
    rng = np.random.default_rng(9)
    fde = tokenset.FDE(32, reps=5, simhash_bits=4, proj_dim=8, final_dim=300)
    docs = [rng.standard_normal((int(n), 32)).astype(np.float32) for n in rng.integers(0, 200, 64)]
    before = tokenset.get_num_threads()
    try:
        tokenset.set_num_threads(1)
        one = fde.encode_documents(docs)
        tokenset.set_num_threads(max(2, before))
        many = fde.encode_documents(docs)
    finally:
        tokenset.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


# ---- random state, persistence ----------------------------------------------------------------------------------------
def test_seed_determinism():
    a = tokenset.FDE(16, reps=3, simhash_bits=4, proj_dim=5, final_dim=50, seed=7)
    b = tokenset.FDE(16, reps=3, simhash_bits=4, proj_dim=5, final_dim=50, seed=7)
    c = tokenset.FDE(16, reps=3, simhash_bits=4, proj_dim=5, final_dim=50, seed=8)
    assert a == b and a != c
    assert a.simhash.shape == (3, 16, 4) and a.projection.shape == (3, 16, 5)
    assert set(np.unique(a.projection)) <= {-1.0, 0.0, 1.0}
    assert ((a.projection != 0).sum(axis=2) == 1).all()  # one ±1 per input coordinate
    assert a.final_index.shape == (a.fde_dim,) and set(np.unique(a.final_sign)) == {-1.0, 1.0}
    # Repetition r depends on (seed, r) only: a shorter encoder is a prefix of a longer one.
    longer = tokenset.FDE(16, reps=5, simhash_bits=4, proj_dim=5, seed=7)
    np.testing.assert_array_equal(longer.simhash[:3], a.simhash)
    np.testing.assert_array_equal(longer.projection[:3], a.projection)
    assert a.simhash.flags.writeable is False


def test_from_arrays_round_trip():
    a = tokenset.FDE(10, reps=2, simhash_bits=3, proj_dim=4, final_dim=20, seed=1)
    b = tokenset.FDE.from_arrays(a.simhash, a.projection, final_index=a.final_index, final_sign=a.final_sign,
                                 final_dim=20)
    assert a == b and b.seed is None
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    np.testing.assert_array_equal(a.encode_documents(x), b.encode_documents(x))
    with pytest.raises(ValueError, match="one output column"):
        bad = a.projection.copy()
        bad[1, 2, :2] = 1.0
        tokenset.FDE.from_arrays(a.simhash, bad)


def test_save_load_round_trip(tmp_path):
    for kwargs in (dict(), dict(proj_dim=8, final_dim=100), dict(simhash_bits=0, fill_empty=False)):
        fde = tokenset.FDE(24, reps=3, seed=4, **kwargs)
        path = tmp_path / "enc.fde"
        fde.save(path)
        loaded = tokenset.FDE.load(path)
        assert loaded == fde and repr(loaded) == repr(fde)
        x = np.random.default_rng(1).standard_normal((2, 9, 24)).astype(np.float32)
        np.testing.assert_array_equal(loaded.encode_documents(x), fde.encode_documents(x))
        with zipfile.ZipFile(path) as z:
            assert "config.json" in z.namelist()
            assert json.loads(z.read("config.json"))["format"] == "tokenset.FDE"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def rewrite(path, out, replace=None, drop=None, add=None):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name == drop:
                continue
            data = src.read(name)
            if replace and name in replace:
                data = replace[name](data)
            dst.writestr(name, data)
        for name, data in (add or {}).items():
            dst.writestr(name, data)


def test_load_rejects_corrupt_files(tmp_path):
    fde = tokenset.FDE(8, reps=2, simhash_bits=2, proj_dim=4, final_dim=6)
    good = tmp_path / "good.fde"
    fde.save(good)
    bad = tmp_path / "bad.fde"

    def config_edit(reseal=True, **changes):
        """Edits config.json; with reseal, also recomputes its own checksum (what a careful forger would do), so
        the value checks behind the checksum are reached."""
        def edit(data):
            config = json.loads(data)
            config.update(changes)
            if reseal:
                config.pop("config_sha256")
                config["config_sha256"] = hashlib.sha256(_storage.canonical_json(config)).hexdigest()
            return json.dumps(config).encode()
        return {"config.json": edit}

    def flip_last_byte(data):
        return data[:-1] + bytes([data[-1] ^ 0xFF])

    cases = [
        (dict(replace={"simhash.npy": flip_last_byte}), "checksum"),
        (dict(drop="final_sign.npy"), "members"),
        (dict(add={"extra.npy": b"x"}), "members"),
        (dict(replace=config_edit(reps=3)), "holds|checksum|larger"),
        (dict(replace=config_edit(simhash_bits=31)), "simhash_bits"),
        (dict(replace=config_edit(reps=True)), "reps"),
        (dict(replace=config_edit(fill_empty="yes")), "fill_empty"),
        (dict(replace=config_edit(format="pickle")), "does not describe"),
        (dict(replace=config_edit(version=99)), "version"),
        (dict(replace=config_edit(version=True)), "version"),
        (dict(replace=config_edit(dim=2**40)), "dim must be in"),
        (dict(replace=config_edit(reps=2**31 - 1)), "reps must be in"),
        (dict(replace={"config.json": lambda d: b"{not json"}), "unreadable|checksum"),
        (dict(replace={"config.json": lambda d: b"[" * 100000 + b"]" * 100000}), "nests"),
        # values that are not array shapes are covered too: an edited file never loads a different encoder
        (dict(replace=config_edit(reseal=False, final_dim=7)), "checksum"),
        (dict(replace=config_edit(reseal=False, fill_empty=False)), "checksum"),
        (dict(replace=config_edit(reseal=False, seed=5)), "checksum"),
        (dict(replace=config_edit(reseal=False, version=1)), "checksum"),
    ]
    for kwargs, message in cases:
        rewrite(good, bad, **kwargs)
        with pytest.raises(ValueError, match=message):
            tokenset.FDE.load(bad)
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a zip"):
        tokenset.FDE.load(bad)
    # An object array (which would need pickle) is refused, never unpickled.
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rewrite(good, bad, replace={"final_sign.npy": lambda d: buf.getvalue()})
    with pytest.raises(ValueError, match="unreadable|holds|checksum"):
        tokenset.FDE.load(bad)
    # Out-of-range Count-Sketch index with a matching checksum: still refused.
    idx = fde.final_index.copy()
    idx[0] = 99
    buf = io.BytesIO()
    np.lib.format.write_array(buf, idx)
    def fix_digest(data):
        config = json.loads(data)
        config["sha256"]["final_index"] = hashlib.sha256(idx.tobytes()).hexdigest()
        config.pop("config_sha256")
        config["config_sha256"] = hashlib.sha256(_storage.canonical_json(config)).hexdigest()
        return json.dumps(config).encode()

    rewrite(good, bad, replace={"final_index.npy": lambda d: buf.getvalue(), "config.json": fix_digest})
    with pytest.raises(ValueError, match="out of range"):
        tokenset.FDE.load(bad)


# ---- bad input --------------------------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="simhash_bits must be in 0..30"):
        tokenset.FDE(8, simhash_bits=31)
    with pytest.raises(ValueError, match="simhash_bits must be in 0..30"):
        tokenset.FDE(8, simhash_bits=-1)
    with pytest.raises(ValueError, match="reps must be in 1..4096"):
        tokenset.FDE(8, reps=0)
    with pytest.raises(ValueError, match="proj_dim must be in 1..65536"):
        tokenset.FDE(8, proj_dim=0)
    with pytest.raises(ValueError, match="final_dim must be"):
        tokenset.FDE(8, final_dim=0)
    with pytest.raises(ValueError, match="dim must be in 1..65536"):
        tokenset.FDE(0)
    with pytest.raises(TypeError, match="reps must be an integer"):
        tokenset.FDE(8, reps=2.0)
    with pytest.raises(TypeError, match="fill_empty must be a bool"):
        tokenset.FDE(8, fill_empty="yes")
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        tokenset.FDE(128, reps=20, simhash_bits=30)
    fde = tokenset.FDE(8, reps=2, simhash_bits=2)
    with pytest.raises(ValueError, match="token dimension 9 but the encoder was built for dim=8"):
        fde.encode_documents(np.ones((3, 9), np.float32))
    with pytest.raises(TypeError, match="float64 is not supported.*astype"):
        fde.encode_documents(np.ones((3, 8)))
    with pytest.raises(TypeError, match="not supported"):
        fde.encode_queries(np.ones((3, 8), np.int32))


def test_kernel_checks_state():
    """The C++ layer checks the state it is given, whatever Python sends."""
    fde = tokenset.FDE(8, reps=2, simhash_bits=2, proj_dim=4, final_dim=6)
    state = dict(fde.kernel_state(), **fde._gpu_grouping())  # the grouping is checked whenever given
    x = np.ones((3, 8), np.float32)
    call = tokenset._backend._core.fde_encode

    class Batch:
        values, offsets, sets, device_offsets = x, np.array([0, 3], np.int64), None, None

    def run(**changes):
        s = dict(state, **changes)
        out = np.empty((1, s["final_dim"] or 1), np.float32) if s["simhash_bits"] <= 30 else np.empty((1, 6), np.float32)
        return call(Batch(), s, s, True, True, out)

    run()
    bad_index = state["proj_index"].copy()
    bad_index[1, 3] = 4
    with pytest.raises(ValueError, match="projection index .* outside"):
        run(proj_index=bad_index)
    bad_final = state["final_index"].copy()
    bad_final[5] = -1
    with pytest.raises(ValueError, match="Count-Sketch index"):
        run(final_index=bad_final, final_order=None, final_starts=None)
    with pytest.raises(ValueError, match=r"simhash must have shape \(8, 4\), got \(8, 3\)"):
        run(simhash=np.ones((8, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        run(simhash=state["simhash"].astype(np.float64))
    with pytest.raises(ValueError, match="simhash_bits"):
        run(simhash_bits=40)
    with pytest.raises(ValueError, match="groups"):
        run(final_starts=np.zeros(7, np.int32))
    with pytest.raises(TypeError, match="'reps' must be an integer, got NoneType"):
        run(reps=None)
    with pytest.raises(ValueError, match="out must have shape"):
        call(Batch(), state, state, True, True, np.empty((2, 6), np.float32))

    class Empty:
        values, offsets, sets, device_offsets = x, np.array([0, 0], np.int64), None, None

    with pytest.raises(ValueError, match="no tokens"):
        call(Empty(), state, state, False, False, np.empty((1, 6), np.float32))


# ---- quality ----------------------------------------------------------------------------------------------------------
def clustered_corpus(rng, num_docs=1000, num_queries=60, dim=64, topics=100, topics_per_doc=6):
    """Documents mixing a few of many topics; each query is a noisy sample of one document's tokens.

    Every document draws its own point near each of its topics and tokens around those points, so that documents
    sharing topics differ in detail: the document average alone (one partition) finds ~70% of the exact top-10 in
    its top-100, well short of what partitioning reaches (see test_quality_needs_partitions).
    """
    def normalize(v):
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    centres = normalize(rng.standard_normal((topics, dim)))
    docs = []
    for _ in range(num_docs):
        chosen = centres[rng.choice(topics, size=topics_per_doc, replace=False)]
        points = normalize(chosen + 0.8 * normalize(rng.standard_normal(chosen.shape)))
        n = int(rng.integers(20, 80))
        noise = 0.8 / np.sqrt(dim) * rng.standard_normal((n, dim))
        docs.append(normalize(points[rng.integers(topics_per_doc, size=n)] + noise))
    queries = []
    for d in rng.integers(num_docs, size=num_queries):
        take = docs[d][rng.choice(len(docs[d]), size=min(16, len(docs[d])), replace=False)]
        queries.append(normalize(take + 0.4 / np.sqrt(dim) * rng.standard_normal(take.shape)))
    return queries, docs


def fde_recall(queries, docs, fde, k=10, candidates=100):
    exact = tokenset.maxsim(queries, docs)
    approx = fde.encode_queries(queries) @ fde.encode_documents(docs).T
    top_exact = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top_fde = np.argsort(-approx, axis=1, kind="stable")[:, :candidates]
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(top_exact, top_fde)]))


def test_quality_recall_at_default_parameters():
    rng = np.random.default_rng(0)
    queries, docs = clustered_corpus(rng)
    recall = fde_recall(queries, docs, tokenset.FDE(64))
    assert recall >= 0.9, f"exact top-10 inside the FDE top-100: {recall:.3f}"


def test_quality_needs_partitions():
    """Partitioning is what makes FDE work: with one partition it degenerates to sum(q) . mean(D), which misses."""
    rng = np.random.default_rng(0)
    queries, docs = clustered_corpus(rng)
    single = fde_recall(queries, docs, tokenset.FDE(64, reps=1, simhash_bits=0))
    default = fde_recall(queries, docs, tokenset.FDE(64))
    assert single < 0.8 and default >= single + 0.15, (single, default)


# ---- the shared edge-case table ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(EDGE_LENGTHS))
def test_edge_lengths(device, case):
    rng = np.random.default_rng(9)
    fde = tokenset.FDE(16, reps=3, simhash_bits=3, proj_dim=8, final_dim=50)
    docs = sanitize(rng, [rng.standard_normal((n, 16)) for n in EDGE_LENGTHS[case]], fde.simhash, np.float32)
    given = docs if device == "cpu" else _cuda_sets(docs)
    got = fde.encode_documents(given)
    check_against_reference(fde, docs, True, _numpy(got))


def test_lists_are_read_in_place(simd):
    rng = np.random.default_rng(10)
    fde = tokenset.FDE(32, reps=4, simhash_bits=3, proj_dim=8)
    wide = rng.standard_normal((300, 40)).astype(np.float32)
    docs = [wide[:70, :32], wide[100:200:3, 5:37], wide[:0, :32], wide[299:200:-1, :32]]
    batch = tokenset.ragged(docs)
    got = fde.encode_documents(batch)
    assert batch._values is None  # never concatenated
    flat = tokenset.Ragged(np.concatenate([np.ascontiguousarray(d) for d in docs]), batch.offsets)
    np.testing.assert_array_equal(got, fde.encode_documents(flat))
    np.testing.assert_array_equal(fde.partitions(docs), fde.partitions(flat))


# ---- CUDA: against the reference and the CPU encoder (skipped without a GPU, failing on a broken build) ------------
def _cuda_sets(sets, dtype="float32"):
    import torch

    return [torch.from_numpy(np.asarray(s, np.float32)).to("cuda", getattr(torch, dtype)) for s in sets]


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else (x.get() if hasattr(x, "get") else np.asarray(x))


@pytest.mark.parametrize("dim,reps,bits,proj,fill,final", SWEEP)
def test_cuda_fde_matches_reference(cuda, dim, reps, bits, proj, fill, final):
    rng = np.random.default_rng(dim * 1000 + bits)
    fde = tokenset.FDE(dim, reps=reps, simhash_bits=bits, proj_dim=proj, fill_empty=fill, final_dim=final, seed=3)
    lengths = [0, 1, 2, 7, 40, 300] if bits < 12 else [0, 1, 5, 30]
    docs = sanitize(rng, [rng.standard_normal((n, dim)) for n in lengths], fde.simhash, np.float32)
    got = fde.encode_documents(_cuda_sets(docs))
    assert got.is_cuda
    check_against_reference(fde, docs, True, _numpy(got))
    np.testing.assert_allclose(_numpy(got), fde.encode_documents(docs), rtol=1e-5, atol=1e-5)
    queries = [d for d in docs if len(d)]
    check_against_reference(fde, queries, False, _numpy(fde.encode_queries(_cuda_sets(queries))))
    np.testing.assert_array_equal(_numpy(fde.partitions(_cuda_sets(docs))), fde.partitions(docs))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_fde_half_inputs_match_cpu(cuda, dtype):
    rng = np.random.default_rng(5)
    fde = tokenset.FDE(64, reps=4, simhash_bits=4, proj_dim=8, final_dim=300)
    docs = sanitize(rng, [rng.standard_normal((n, 64)) for n in (3, 90, 0, 257)], fde.simhash, np.float32)
    gpu = _cuda_sets(docs, dtype)
    np.testing.assert_allclose(_numpy(fde.encode_documents(gpu)), _numpy(fde.encode_documents([d.cpu() for d in gpu])),
                               rtol=1e-5, atol=1e-5)


def test_cuda_fde_count_sketch_is_bitwise_cpu(cuda):
    """Identity sums run in the CPU's order and the sketch uses unfused multiply-add: bit-identical results."""
    rng = np.random.default_rng(6)
    fde = tokenset.FDE(32, reps=3, simhash_bits=3, final_dim=77)
    docs = sanitize(rng, [rng.standard_normal((n, 32)) for n in (5, 60, 1)], fde.simhash, np.float32)
    np.testing.assert_array_equal(_numpy(fde.encode_queries(_cuda_sets(docs))), fde.encode_queries(docs))


def test_cuda_fde_all_empty_batch_and_out(cuda):
    import torch

    fde = tokenset.FDE(16, reps=2, simhash_bits=3, proj_dim=4, final_dim=30)
    empty = tokenset.Ragged(torch.zeros(0, 16, device="cuda"), [0, 0, 0, 0])
    got = fde.encode_documents(empty)
    assert got.shape == (3, 30) and not _numpy(got).any()
    rng = np.random.default_rng(7)
    docs = sanitize(rng, [rng.standard_normal((n, 16)) for n in rng.integers(0, 50, 9)], fde.simhash, np.float32)
    out = torch.empty((9, 30), device="cuda")
    assert fde.encode_documents(_cuda_sets(docs), out=out) is out
    np.testing.assert_allclose(_numpy(out), fde.encode_documents(docs), rtol=1e-5, atol=1e-5)


def test_cuda_fde_streams_and_cupy(cuda):
    """Decisive stream test (input written behind a sleep on a side stream), per-stream device state, cupy."""
    import torch

    fde = tokenset.FDE(16, reps=2, simhash_bits=3)
    src = torch.randn(4, 9, 16, device="cuda")
    want = _numpy(fde.encode_documents(src))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.zeros_like(src)
        torch.cuda._sleep(200_000_000)
        x.copy_(src)
        got = fde.encode_documents(x)
    side.synchronize()
    np.testing.assert_array_equal(_numpy(got), want)
    assert len(fde._device_states) == 2  # one device copy of the state per stream
    cupy = pytest.importorskip("cupy")
    with cupy.cuda.Stream(non_blocking=True):
        c = fde.encode_documents(cupy.asarray(src.cpu().numpy()))
    np.testing.assert_allclose(cupy.asnumpy(c), want, rtol=1e-5, atol=1e-6)
