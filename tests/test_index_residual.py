"""Index(storage="residual4" | "residual2" | "residual1"): PLAID residual codes with the index's own codec, reranked
in place, saved, loaded and verified through the same paths as float16 storage, with the bytes they promise."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tokenset

DIM = 32
STORAGES = ["residual4", "residual2", "residual1"]
# These corpora are small: the first add's codec training warns so (test_a_small_first_add_warns checks the warning).
pytestmark = pytest.mark.filterwarnings("ignore:Index\\(storage=")


def corpus(n=150, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.standard_normal((int(m), DIM)).astype(np.float32) for m in rng.integers(1, 30, n)]
    return [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]


def encoder():
    return tokenset.FDE(DIM, reps=6, simhash_bits=3, seed=0)


def queries(docs, count=12):
    return [d[: max(1, len(d) // 2)] for d in docs[:count]]


@pytest.mark.parametrize("storage", STORAGES)
def test_residual_tokens_rerank_from_their_codes(storage):
    """The codec is trained by the first add and kept; scores are MaxSim on the codes (tokenset.maxsim against
    ResidualCodes of the same codec), whatever the segments."""
    docs = corpus()
    index = tokenset.Index(DIM, fde=encoder(), storage=storage)
    index.add(docs[:90])
    codec = index.codec
    assert codec is not None and codec.bits == int(storage[-1]) and codec.dim == DIM
    index.add(docs[90:])
    assert index.codec is codec
    codes = codec.encode(docs)
    q = queries(docs)
    want = tokenset.maxsim(q, codes)
    ids, scores = index.exact_search(q, k=7)
    for a in range(len(q)):
        order = np.lexsort((np.arange(len(docs)), -want[a]))[:7]
        np.testing.assert_array_equal(ids[a], order)
        np.testing.assert_array_equal(scores[a], want[a, order])
    ids, scores = index.search(q, k=5, candidates=len(docs))  # every document a candidate: the exact answer
    np.testing.assert_array_equal(ids, index.exact_search(q, k=5)[0])
    np.testing.assert_array_equal(scores, np.take_along_axis(want, ids, 1))


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("storage", STORAGES)
def test_residual_storage_saves_loads_and_compacts(tmp_path, storage, mmap):
    docs = corpus(150, seed=2)
    index = tokenset.Index(DIM, fde=encoder(), storage=storage, fde_storage="int8")
    for part in (docs[:20], docs[20:25], docs[25:]):  # segments that merge
        index.add(part)
    index.remove([3, 21, 100])
    q = queries(docs)
    before = index.search(q, k=6), index.exact_search(q, k=6)
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx", mmap=mmap)
    loaded.verify()
    assert (loaded.storage, len(loaded)) == (storage, 147)
    assert loaded.codec == index.codec
    for got, want in zip((loaded.search(q, k=6), loaded.exact_search(q, k=6)), before):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    names = set(os.listdir(tmp_path / "idx"))
    assert any(n.startswith("centroid_ids-") for n in names) and any(n.endswith(".codec") for n in names)
    loaded.add(docs[:4])  # later adds use the loaded codec
    assert loaded.codec == index.codec and len(loaded) == 151
    other = tokenset.Index(DIM, fde=encoder())
    other.add(docs[:5])
    other.save(tmp_path / "idx")
    assert not any(n.startswith("centroid_ids") or n.endswith(".codec") for n in os.listdir(tmp_path / "idx"))


def test_an_empty_residual_index_saves_and_trains_on_its_first_add(tmp_path):
    index = tokenset.Index(DIM, fde=encoder(), storage="residual2")
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx")
    loaded.verify()
    assert loaded.codec is None and len(loaded) == 0
    loaded.add(corpus(30))
    assert loaded.codec is not None and loaded.codec.bits == 2


def test_token_less_documents_before_the_codec(tmp_path):
    """Documents without tokens need no codec: they are stored with the untrained placeholder, and the first tokens
    train the codec; merges, saves and loads keep the trained one."""
    index = tokenset.Index(DIM, fde=encoder(), storage="residual2")
    empty = [np.zeros((0, DIM), np.float32)] * 2
    assert index.add(empty).tolist() == [0, 1] and index.codec is None
    index.save(tmp_path / "empty")
    assert tokenset.Index.load(tmp_path / "empty").codec is None
    docs = corpus(40, seed=8)
    index.add(docs[:10])
    assert index.codec is not None and len(index._store.segments) == 1  # merged, with the trained codec
    assert index._store.segments[0].codec is index.codec
    index.add(docs[10:])
    q = queries(docs)
    want = index.exact_search(q, k=5)
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # again: the previous generation's codec file is deleted with its other files
    assert sum(n.endswith(".codec") for n in os.listdir(tmp_path / "idx")) == 1
    loaded = tokenset.Index.load(tmp_path / "idx")
    for got, w in zip(loaded.exact_search(q, k=5), want):
        np.testing.assert_array_equal(got, w)


def test_a_given_codec_is_used_and_checked():
    docs = corpus(60, seed=5)
    codec = tokenset.ResidualCodec.train(docs, bits=4, centroids=16)
    index = tokenset.Index(DIM, fde=encoder(), storage="residual4", codec=codec)
    index.add(docs)
    assert index.codec is codec
    np.testing.assert_array_equal(index._store.segments[0].tokens, codec.encode(docs).packed)
    with pytest.raises(ValueError, match="in 4 bits, but the index stores"):
        tokenset.Index(DIM, fde=encoder(), storage="residual2", codec=codec)
    with pytest.raises(ValueError, match="a codec is for residual storage"):
        tokenset.Index(DIM, fde=encoder(), storage="float16", codec=codec)
    with pytest.raises(TypeError, match="ResidualCodec"):
        tokenset.Index(DIM, fde=encoder(), storage="residual4", codec="codec")
    with pytest.raises(ValueError, match="multiple of 8"):
        tokenset.Index(12, fde=tokenset.FDE(12, reps=2, simhash_bits=2), storage="residual1")


def test_bytes_per_document_tell_the_truth():
    docs = corpus(50, seed=3)
    tokens = sum(len(d) for d in docs)
    for storage, bits in (("residual4", 4), ("residual2", 2), ("residual1", 1)):
        index = tokenset.Index(DIM, fde=encoder(), storage=storage)
        index.add(docs)
        seg = index._store.segments[0]
        stored = seg.tokens.nbytes + seg.token_scales.nbytes + seg.centroid_ids.nbytes
        b = index.bytes_per_document()
        assert b["tokens"] == pytest.approx(stored / len(docs) + 8)
        assert b["tokens"] == pytest.approx(tokens * (DIM * bits // 8 + 8) / 50 + 8)


def test_damaged_codes_and_codec_are_refused(tmp_path):
    docs = corpus(20, seed=4)
    index = tokenset.Index(DIM, fde=encoder(), storage="residual2")
    index.add(docs)
    folder = tmp_path / "idx"
    index.save(folder)
    with open(folder / "manifest.json") as f:
        manifest = json.load(f)
    ids_path = folder / manifest["arrays"]["centroid_ids"]["file"]
    original = ids_path.read_bytes()
    damaged = bytearray(original)
    damaged[-4:] = np.array([index.codec.num_centroids], np.int32).tobytes()  # a valid file, an id past the codec
    ids_path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="centroid_ids outside the codec"):
        tokenset.Index.load(folder)
    ids_path.write_bytes(original)
    codec_path = folder / manifest["codec"]["file"]
    original = codec_path.read_bytes()
    codec_path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="codec file does not match its checksum"):
        tokenset.Index.load(folder)
    codec_path.write_bytes(original)
    norms_path = folder / manifest["arrays"]["token_scales"]["file"]
    original = norms_path.read_bytes()
    damaged = bytearray(original)
    damaged[-4:] = np.array([-1.0], np.float32).tobytes()
    norms_path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="token_scales hold values that are not finite numbers >= 0"):
        tokenset.Index.load(folder)
    norms_path.write_bytes(original)
    tokenset.Index.load(folder).verify()


def test_non_finite_tokens_are_named():
    docs = corpus(10, seed=6)
    index = tokenset.Index(DIM, fde=encoder(), storage="residual4")
    index.add(docs)
    bad = [d.copy() for d in docs[:3]]
    bad[2][0, 5] = np.nan
    with pytest.raises(ValueError, match="document 2, token 0 holds NaN"):
        index.add(bad)
    assert len(index) == 10
    fresh = tokenset.Index(DIM, fde=encoder(), storage="residual2")
    with pytest.raises(ValueError, match="document 2, token 0 holds NaN"):  # named before a codec trains on them
        fresh.add(bad)
    assert fresh.codec is None


def test_a_small_first_add_warns():
    import warnings

    index = tokenset.Index(DIM, fde=encoder(), storage="residual2")
    with pytest.warns(UserWarning, match="trained on this first add's .* tokens"):
        index.add(corpus(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.add(corpus(10, seed=1))  # the codec exists: no training, no warning
        given = tokenset.Index(DIM, fde=encoder(), storage="residual2", codec=index.codec)
        given.add(corpus(10))


def test_residual_index_stays_on_the_cpu():
    index = tokenset.Index(DIM, fde=encoder(), storage="residual4")
    with pytest.raises(ValueError, match="searched on the CPU"):
        index.to("cuda")
