"""Index(storage="int8") and Index(fde_storage="int8"): int8 tokens and FDEs with a float32 scale per row, searched,
saved, loaded and verified through the same paths as float16 storage, with the bytes they promise."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tokenset

DIM = 32


def corpus(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(m), DIM)).astype(np.float32) for m in rng.integers(1, 30, n)]


def encoder():
    return tokenset.FDE(DIM, reps=6, simhash_bits=3, seed=0)


def queries(docs, count=12):
    return [d[: max(1, len(d) // 2)] for d in docs[:count]]


@pytest.mark.parametrize("fde_storage", ["float16", "int8"])
def test_int8_tokens_rerank_as_their_dequantised_values(fde_storage):
    """exact_search of an int8 index equals a float32 index over the dequantised tokens, bit for bit; search scores
    are MaxSim against the dequantised tokens too."""
    docs = corpus()
    int8 = tokenset.Index(DIM, fde=encoder(), storage="int8", fde_storage=fde_storage)
    int8.add(docs[:70])
    int8.add(docs[70:])
    plain_docs = [tokenset.quantize(d).dequantize().values for d in docs]
    plain = tokenset.Index(DIM, fde=encoder(), storage="float32")
    plain.add(plain_docs)
    q = queries(docs)
    for got, want in zip(int8.exact_search(q, k=7), plain.exact_search(q, k=7)):
        np.testing.assert_array_equal(got, want)
    ids, scores = int8.search(q, k=5, candidates=len(docs))  # every document a candidate: the exact answer
    np.testing.assert_array_equal(ids, plain.exact_search(q, k=5)[0])
    for a in range(len(q)):
        want = tokenset.maxsim([q[a]], [plain_docs[i] for i in ids[a]])[0]
        np.testing.assert_array_equal(scores[a], want)


def test_int8_fdes_find_the_float16_candidates():
    docs = corpus(200, seed=1)
    q = queries(docs, 30)
    half = tokenset.Index(DIM, fde=encoder())
    int8 = tokenset.Index(DIM, fde=encoder(), fde_storage="int8")
    half.add(docs)
    int8.add(docs)
    a, _ = half.search(q, k=10, candidates=40)
    b, _ = int8.search(q, k=10, candidates=40)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])
    assert overlap >= 0.9, overlap
    # the stored codes are the quantised FDEs of the documents
    seg = int8._store.segments[0]
    want = tokenset.quantize(encoder().encode_documents(docs))
    np.testing.assert_array_equal(seg.fde, want.values)
    np.testing.assert_array_equal(seg.fde_scales, want.scales)


@pytest.mark.parametrize("mmap", [True, False])
def test_int8_storage_saves_loads_and_compacts(tmp_path, mmap):
    docs = corpus(150, seed=2)
    index = tokenset.Index(DIM, fde=encoder(), storage="int8", fde_storage="int8")
    for part in (docs[:20], docs[20:25], docs[25:]):  # segments that merge
        index.add(part)
    index.remove([3, 21, 100])
    q = queries(docs)
    before = index.search(q, k=6), index.exact_search(q, k=6)
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx", mmap=mmap)
    loaded.verify()
    assert (loaded.storage, loaded.fde_storage, len(loaded)) == ("int8", "int8", 147)
    for got, want in zip((loaded.search(q, k=6), loaded.exact_search(q, k=6)), before):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    names = set(os.listdir(tmp_path / "idx"))
    assert any(n.startswith("token_scales-") for n in names) and any(n.startswith("fde_scales-") for n in names)
    # saved again in float16 form by another index into the same folder: the int8 generation's files are gone
    other = tokenset.Index(DIM, fde=encoder())
    other.add(docs[:5])
    other.save(tmp_path / "idx")
    assert not any("scales" in n for n in os.listdir(tmp_path / "idx"))


def test_bytes_per_document_tell_the_truth():
    docs = corpus(50, seed=3)
    tokens = sum(len(d) for d in docs)
    for storage, fde_storage, per_token, per_fde in [("float16", "float16", 2 * DIM, 2), ("int8", "float16",
                                                     DIM + 4, 2), ("float32", "int8", 4 * DIM, 1), ("int8", "int8",
                                                                                                   DIM + 4, 1)]:
        index = tokenset.Index(DIM, fde=encoder(), storage=storage, fde_storage=fde_storage)
        index.add(docs)
        b = index.bytes_per_document()
        seg = index._store.segments[0]
        stored = seg.tokens.nbytes + (0 if seg.token_scales is None else seg.token_scales.nbytes)
        assert b["tokens"] == pytest.approx(stored / len(docs) + 8) == pytest.approx(tokens * per_token / 50 + 8)
        fde_bytes = seg.fde.nbytes + (0 if seg.fde_scales is None else seg.fde_scales.nbytes)
        assert b["fde"] == pytest.approx(fde_bytes / len(docs))
        assert b["fde"] == index.fde.output_dim * per_fde + (4 if fde_storage == "int8" else 0)


def test_damaged_scales_are_refused(tmp_path):
    docs = corpus(20, seed=4)
    index = tokenset.Index(DIM, fde=encoder(), storage="int8", fde_storage="int8")
    index.add(docs)
    folder = tmp_path / "idx"
    index.save(folder)
    with open(folder / "manifest.json") as f:
        manifest = json.load(f)
    for name in ("token_scales", "fde_scales"):
        path = folder / manifest["arrays"][name]["file"]
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[-4:] = np.array([np.nan], np.float32).tobytes()  # a valid file whose last scale is NaN
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=f"{name} hold values that are not finite"):
            tokenset.Index.load(folder)
        damaged[-4:] = np.array([0.5], np.float32).tobytes()  # plausible, but not what was saved
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="does not match its checksum"):
            tokenset.Index.load(folder).verify()
        path.write_bytes(original)
    tokenset.Index.load(folder).verify()


def test_storage_arguments_are_checked():
    with pytest.raises(ValueError, match="storage must be one of"):
        tokenset.Index(DIM, storage="int4")
    with pytest.raises(ValueError, match="fde_storage must be one of"):
        tokenset.Index(DIM, fde_storage="float32")
    with pytest.raises(ValueError, match="disagree"):
        tokenset.Index(DIM, storage="int8", dtype="float16")
    assert tokenset.Index(DIM, dtype="float32").storage == "float32"  # the older name
    index = tokenset.Index(DIM, fde=encoder(), storage="int8")
    with pytest.raises(ValueError, match="searched on the CPU"):
        index.to("cuda")
    bad = corpus(3)
    bad[1][2, 3] = np.inf
    with pytest.raises(ValueError, match="document 1, token 2 holds NaN or infinity"):
        index.add(bad)
    assert len(index) == 0


def test_usearch_over_int8_fdes():
    pytest.importorskip("usearch")
    docs = corpus(100, seed=5)
    index = tokenset.Index(DIM, fde=encoder(), fde_storage="int8", backend="usearch")
    index.add(docs)
    ids, _ = index.search(queries(docs), k=3)
    assert (ids[:, 0] == np.arange(12)).mean() >= 0.8


def test_add_names_the_document_and_token_that_is_not_finite():
    docs = corpus(10, seed=6)
    values = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    values[offsets[7] + 2, 5] = np.nan
    index = tokenset.Index(DIM, fde=encoder(), storage="int8")
    with pytest.raises(ValueError, match="document 7, token 2 holds NaN"):
        index.add(tokenset.Ragged(values, offsets))
    assert len(index) == 0


def test_int8_fdes_out_of_float16_range_are_refused_for_usearch_only():
    """usearch keeps float16 vectors: int8 FDEs beyond its range would become inf there and silently lose recall."""
    docs = [d * 1e5 for d in corpus(20, seed=7)]
    exact = tokenset.Index(DIM, fde=encoder(), storage="float32", fde_storage="int8")
    exact.add(docs)  # the exact scan reads the codes and scales: any finite range works
    assert exact.search(queries(docs, 3), k=1)[0][:, 0].tolist() == [0, 1, 2]
    pytest.importorskip("usearch")
    graph = tokenset.Index(DIM, fde=encoder(), storage="float32", fde_storage="int8", backend="usearch")
    with pytest.raises(ValueError, match="float16 graph cannot hold"):
        graph.add(docs)


def test_sharded_build_refuses_disagreeing_storage_names(tmp_path):
    distributed = pytest.importorskip("tokenset.distributed")
    with pytest.raises(ValueError, match="disagree"):
        distributed.ShardedIndex.build(corpus(4), tmp_path, 2, DIM, fde=encoder(), storage="int8", dtype="float16")


def test_load_refuses_int8_fdes_the_usearch_graph_cannot_hold(tmp_path):
    """An index saved before add() checked the range (or edited with a valid checksum) must not reach the float16
    graph with infinities: recall fell to 0.17 silently."""
    pytest.importorskip("usearch")
    docs = [d * 1e5 for d in corpus(10, seed=8)]
    index = tokenset.Index(DIM, fde=encoder(), storage="float32", fde_storage="int8")  # exact: any range is fine
    index.add(docs)
    index.save(tmp_path / "idx")
    with open(tmp_path / "idx" / "manifest.json") as f:
        manifest = json.load(f)
    manifest["backend"]["name"] = "usearch"  # as a usearch index saved by an earlier version would say
    from tokenset import _storage

    manifest.pop(_storage.CONFIG_DIGEST_KEY)
    manifest[_storage.CONFIG_DIGEST_KEY] = __import__("hashlib").sha256(_storage.canonical_json(manifest)).hexdigest()
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="usearch backend's float16 graph cannot hold"):
        tokenset.Index.load(tmp_path / "idx")


def test_non_finite_tokens_are_named_whatever_the_fde_storage():
    for storage, fde_storage in [("int8", "int8"), ("float32", "int8")]:
        docs = corpus(6, seed=9)
        docs[4][1, 0] = np.nan
        index = tokenset.Index(DIM, fde=encoder(), storage=storage, fde_storage=fde_storage)
        with pytest.raises(ValueError, match="document 4, token 1 holds NaN or infinity"):
            index.add(docs)
