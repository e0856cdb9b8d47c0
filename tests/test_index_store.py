"""The index's store, ids, ranking and search overheads: the id domain, refused calls that change nothing, search
cost independent of the corpus, exact_search == search, the usearch graph under concurrent changes, shards."""
from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

import tokenset
from tokenset.index import MAX_ID, core as index_core
from tokenset.index.ann import AnnGraph

from conftest import held_by_another_thread, requires_torch

DIM = 8


def fde(dim=DIM, **kwargs):
    kwargs.setdefault("reps", 2)
    kwargs.setdefault("simhash_bits", 2)
    return tokenset.FDE(dim, seed=0, **kwargs)


def random_docs(rng, n, dim=DIM, low=1, high=8):
    return [rng.standard_normal((int(m), dim)).astype(np.float32) for m in rng.integers(low, high, n)]


def test_id_domain():
    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(np.random.default_rng(0), 3)
    for bad in ([-1, 2, 3], [0, 1, 2**63 - 1], [0, 0, 1]):
        with pytest.raises(ValueError, match="id domain|distinct"):
            index.add(docs, ids=np.array(bad, dtype=np.int64) if bad[-1] < 2**63 - 1 else np.array(bad, np.uint64))
    assert len(index) == 0
    index.add(docs[:1], ids=[MAX_ID])  # the largest id: stored, saved and loaded like any other
    with pytest.raises(ValueError, match="no generated ids left"):
        index.add(docs[1:])  # generated ids would pass the domain: a clear error, never OverflowError
    assert len(index) == 1 and index.add(docs[1:], ids=[5, 6]).tolist() == [5, 6]
    ids, _ = index.search(docs[0], k=5)
    assert ids[0, 0] == MAX_ID and ids[0, 3:].tolist() == [-1, -1]


def test_id_domain_round_trips(tmp_path):
    index = tokenset.Index(DIM, fde=fde())
    index.add(random_docs(np.random.default_rng(1), 2), ids=[0, MAX_ID])
    index.save(tmp_path)
    loaded = tokenset.Index.load(tmp_path)
    assert sorted(loaded.ids.tolist()) == [0, MAX_ID]
    with pytest.raises(ValueError, match="no generated ids left"):
        loaded.add(random_docs(np.random.default_rng(2), 1))


def test_refused_calls_change_nothing():
    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(np.random.default_rng(3), 10)
    index.add(docs)
    with pytest.raises(ValueError, match="more than once"):
        index.remove([1, 1])  # used to remove 1, then raise KeyError
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([2, 99])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(docs[:2], ids=[50, 3])
    assert len(index) == 10 and sorted(index.ids.tolist()) == list(range(10))
    assert index.remove([1, 2]) == 2 and len(index) == 8


def test_exact_search_after_empty_add_and_with_nonfinite_scores():
    index = tokenset.Index(DIM, fde=fde())
    empty = tokenset.Ragged(np.zeros((0, DIM), np.float32), [0])
    index.add(empty)  # used to make exact_search raise IndexError
    q = np.ones((2, DIM), np.float32)
    ids, scores = index.exact_search(q, 3)
    assert ids.tolist() == [[-1] * 3] and np.isneginf(scores).all()
    index.add([np.ones((2, DIM), np.float32)])
    # A later segment whose documents score -inf and NaN: kept, ranked after the finite one (used to be dropped).
    index.add([np.full((1, DIM), -np.inf, np.float32), np.full((1, DIM), np.nan, np.float32)])
    want = index.search(q, k=4, candidates=4)
    got = index.exact_search(q, k=4)
    assert got[0].tolist() == [[0, 1, 2, -1]] and np.array_equal(got[0], want[0])
    assert np.array_equal(got[1], want[1], equal_nan=True)


def test_ties_go_to_the_lower_id_in_search_exact_search_and_after_compaction(tmp_path):
    """Identical documents stored in an order unlike their ids: every top-k rule picks the lower ids."""
    index = tokenset.Index(DIM, fde=fde())
    same = np.ones((2, DIM), np.float32)
    index.add([same] * 6, ids=[40, 7, 30, 3, 20, 10])
    want = [3, 7, 10]
    assert index.search(same, k=3)[0].tolist() == [want]
    assert index.exact_search(same, k=3)[0].tolist() == [want]
    index.remove([7])
    index.save(tmp_path)
    loaded = tokenset.Index.load(tmp_path)
    assert loaded.search(same, k=3)[0].tolist() == [[3, 10, 20]] == loaded.exact_search(same, k=3)[0].tolist()


def test_exact_search_matches_search_with_every_document_a_candidate(monkeypatch):
    rng = np.random.default_rng(4)
    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(rng, 300)
    index.add(docs[:100])
    index.add(docs[100:], ids=np.arange(1000, 1200))
    index.remove(np.arange(0, 100, 5))
    monkeypatch.setattr(index_core, "_EXACT_SCORE_BYTES", index_core._EXACT_BYTES_PER_SCORE * 3 * 7)  # 7 documents
    queries = docs[:3]
    for k in (1, 10, 400):
        a = index.search(queries, k=k, candidates=max(k, 300))
        b = index.exact_search(queries, k=k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_gapped_queries_and_documents():
    """A Ragged whose offsets start past row 0 (rows before and after hold sentinels that must never be read)."""
    rng = np.random.default_rng(5)
    docs = random_docs(rng, 20)
    values = np.concatenate([np.full((3, DIM), 1e4, np.float32)] + docs + [np.full((2, DIM), 1e4, np.float32)])
    offsets = 3 + np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    gapped = tokenset.Ragged(values, offsets)
    a, b = tokenset.Index(DIM, fde=fde()), tokenset.Index(DIM, fde=fde())
    a.add(gapped)
    b.add(docs)
    for got, want in zip(a.search(gapped, k=4), b.search(docs, k=4)):
        assert np.array_equal(got, want)


def test_search_cost_does_not_grow_with_the_corpus(monkeypatch):
    """1M tiny documents (4 tokens of dim 16): beyond the FDE scan itself, a search's memory and time do not depend
    on the corpus. It used to copy the liveness array and concatenate all ids per call: 10.6 ms and 8.6 MiB at 1M
    documents with 2 queries and 4 candidates."""
    rng = np.random.default_rng(6)
    encoder = tokenset.FDE(16, reps=1, simhash_bits=2, final_dim=16, seed=0)
    small, large = tokenset.Index(16, fde=encoder), tokenset.Index(16, fde=encoder)
    tokens = rng.standard_normal((1_000_000, 4, 16)).astype(np.float32)
    small.add(tokens[:1000])
    large.add(tokens)
    large.remove([5, 999_999])  # tombstones: the liveness path
    q = tokens[:2, :2]

    def traced_peak(index):
        index.search(q, k=2, candidates=4)
        tracemalloc.start()
        try:
            index.search(q, k=2, candidates=4)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert traced_peak(large) < 256 << 10  # the scan's heaps and the [2, 4] lists, not ~9 bytes per document
    # Time outside the scan: the scan replaced by fixed candidates, the rest (snapshot, query FDEs, rerank, ids) timed.
    monkeypatch.setattr(index_core, "fde_candidates", lambda qf, snap, c, dev: np.array([[0, 1, 2, 3]] * 2))

    def median_ms(index):
        times = []
        for _ in range(30):
            start = time.perf_counter()
            index.search(q, k=2, candidates=4)
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    median_ms(small), median_ms(large)  # warm
    assert median_ms(large) < 3 * median_ms(small) + 0.5


def test_add_encodes_outside_the_lock(monkeypatch):
    """A long add (FDE encoding) does not block searches: only linking the new segment in takes the lock."""
    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(np.random.default_rng(7), 20)
    index.add(docs)
    entered, release = threading.Event(), threading.Event()
    real = index.fde.encode_documents

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(index.fde, "encode_documents", slow)
    adder = threading.Thread(target=index.add, args=(docs[:3],))
    adder.start()
    assert entered.wait(10)
    start = time.perf_counter()
    ids, _ = index.search(docs[0], k=1)  # would wait for the add if it held the lock while encoding
    assert time.perf_counter() - start < 5 and ids[0, 0] == 0
    release.set()
    adder.join()
    assert len(index) == 23


@requires_torch
def test_add_torch_bfloat16_and_float16_overflow():
    import torch

    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(np.random.default_rng(8), 4)
    index.add([torch.from_numpy(d).to(torch.bfloat16) for d in docs])  # used to raise torch's TypeError
    assert len(index) == 4
    big = [np.full((2, DIM), 1e5, np.float32)]
    with pytest.raises(ValueError, match="float16's range"):
        index.add(big)  # used to be stored as inf, making every score NaN
    assert len(index) == 4
    wide = tokenset.Index(DIM, fde=fde(), dtype="float32")
    with pytest.raises(ValueError, match="float16's range"):
        wide.add([np.full((2, DIM), 1e5, np.float32)])  # its float16 FDEs would overflow
    wide.add([np.full((2, DIM), 100.0, np.float32)])


def test_usearch_graph_keeps_changes_made_while_it_builds(monkeypatch):
    """Documents added (and removed) while the first search builds the graph end up in it (they used to stay out of
    it forever); searches meanwhile answer from the exact scan instead of waiting; the build holds no index lock."""
    pytest.importorskip("usearch")
    rng = np.random.default_rng(9)
    index = tokenset.Index(DIM, fde=fde(), backend="usearch")
    docs = random_docs(rng, 50, low=4, high=8)
    index.add(docs[:40])
    building, release = threading.Event(), threading.Event()
    real_add = AnnGraph._add

    def slow_add(graph, ids, fdes):
        building.set()
        release.wait(10)
        real_add(graph, ids, fdes)

    monkeypatch.setattr(AnnGraph, "_add", staticmethod(slow_add))
    first = threading.Thread(target=index.search, args=(docs[0],), kwargs={"k": 3})
    first.start()
    assert building.wait(10)
    index.add(docs[40:], ids=np.arange(100, 110))  # not blocked by the build
    index.remove([100, 3])
    ids, _ = index.search(docs[45], k=1, candidates=20)  # exact scan while the graph builds
    assert ids[0, 0] == 105
    release.set()
    first.join()
    monkeypatch.setattr(AnnGraph, "_add", staticmethod(real_add))
    assert index._ann.ready
    snap = index._store.snapshot()
    found = index._ann.candidates(np.asarray(index.fde.encode_queries(docs[45]), np.float32), snap, 60)
    got = set(snap.ids_at(found[found >= 0]).tolist())
    assert 105 in got and 100 not in got and 3 not in got
    ids, _ = index.search(docs[45], k=1, candidates=20)
    assert ids[0, 0] == 105


def test_a_folder_with_negative_ids_says_why_it_cannot_load(tmp_path):
    """Version-1 folders of an older tokenset could hold negative ids; they are refused with the reason, not called
    damaged."""
    import hashlib
    import json

    from tokenset import _storage

    index = tokenset.Index(DIM, fde=fde())
    index.add(random_docs(np.random.default_rng(10), 2), ids=[4, 7])
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    meta = manifest["arrays"]["ids"]
    ids = np.array([-5, 7], np.int64)
    np.save(tmp_path / meta["file"], ids)
    meta["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    del manifest[_storage.CONFIG_DIGEST_KEY]
    manifest[_storage.CONFIG_DIGEST_KEY] = hashlib.sha256(_storage.canonical_json(manifest)).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="negative ids .* an older tokenset accepted"):
        tokenset.Index.load(tmp_path)


def test_usearch_candidates_are_bounded_by_the_graph():
    """candidates=10**7 on a 10-document usearch index allocated nq x 10**7 positions (2.5 GB)."""
    pytest.importorskip("usearch")
    index = tokenset.Index(DIM, fde=fde(), backend="usearch")
    docs = random_docs(np.random.default_rng(11), 10)
    index.add(docs)
    index.search(docs[0], k=1)  # builds the graph
    tracemalloc.start()
    try:
        ids, _ = index.search(docs[:4], k=3, candidates=10**7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20 and ids.shape == (4, 3)


def test_exact_search_memory_is_its_block_budget(monkeypatch):
    """exact_search's scratch per block was ~10x the score block (ids, sort keys, order); blocks are now sized by
    what ranking a score costs."""
    rng = np.random.default_rng(12)
    monkeypatch.setattr(index_core, "_EXACT_SCORE_BYTES", 8 << 20)
    index = tokenset.Index(4, fde=fde(4), dtype="float32")
    index.add(tokenset.Ragged(rng.standard_normal((6000, 4)).astype(np.float32), np.arange(6001)))
    q = tokenset.Ragged(rng.standard_normal((1000, 4)).astype(np.float32), np.arange(1001))
    tracemalloc.start()
    try:
        index.exact_search(q, k=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (8 << 20) + (1 << 20), peak / 2**20


def test_segments_stay_logarithmic_whatever_the_add_sizes():
    """Adds of shrinking sizes (400, 399, ..., 1 documents) never met the merge rule and left 400 segments (a
    search costs O(segments))."""
    index = tokenset.Index(4, fde=fde(4))
    x = np.ones((400, 1, 4), np.float32)
    for n in range(400, 0, -1):
        index.add(x[:n])
    total = 400 * 401 // 2
    assert len(index) == total and len(index._store.segments) <= 2 * total.bit_length() + 2
    assert np.array_equal(np.sort(index.ids), np.arange(total))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork")
def test_an_index_works_in_a_child_forked_while_another_thread_holds_its_lock():
    import os
    import signal

    index = tokenset.Index(DIM, fde=fde())
    docs = random_docs(np.random.default_rng(13), 20)
    index.add(docs)
    with held_by_another_thread(index._store.lock):
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a hang is a failure, not a stuck suite
            ok = index.search(docs[3], k=1)[0][0, 0] == 3 and len(index.add(docs[:2])) == 2
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
