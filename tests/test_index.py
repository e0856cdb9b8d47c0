"""tokenset.Index: FDE candidates + exact MaxSim rerank, incremental add/remove, save/load (memory-mapped), integrity
checks. Search results are checked against the index's own brute force and tokenset.maxsim."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import tokenset

from conftest import subprocess_env

DIM = 32


def clustered_docs(rng, n, dim=DIM, topics=40):
    centres = rng.standard_normal((topics, dim))
    docs = []
    for length in rng.integers(5, 60, n):
        mix = centres[rng.integers(0, topics, 3)]
        x = mix[rng.integers(0, 3, int(length))] + 0.4 * rng.standard_normal((int(length), dim))
        docs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return docs


def small_index(rng, n=400, **kwargs):
    docs = clustered_docs(rng, n)
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=8, simhash_bits=4, proj_dim=8, seed=1), **kwargs)
    index.add(docs)
    return index, docs


def known_item_queries(rng, docs, count=30):
    picks = rng.choice(len(docs), count, replace=False)
    return picks, [docs[i][rng.choice(len(docs[i]), min(6, len(docs[i])), replace=False)] for i in picks]


def test_search_finds_known_items_and_reranks_exactly():
    rng = np.random.default_rng(0)
    index, docs = small_index(rng)
    picks, queries = known_item_queries(rng, docs)
    ids, scores = index.search(queries, k=5, candidates=100)
    assert ids.shape == scores.shape == (len(queries), 5)
    assert (ids[:, 0] == picks).mean() >= 0.9
    # Returned scores are exact MaxSim (documents stored float16, queries converted to it: the library rule).
    half_docs = [d.astype(np.float16) for d in docs]
    for row, q in enumerate(queries):
        want = tokenset.maxsim(q.astype(np.float16), [half_docs[i] for i in ids[row]])[0]
        assert np.array_equal(scores[row], want)
        assert (np.diff(scores[row]) <= 0).all()
    # With every document a candidate, search is the brute force.
    exact_ids, exact_scores = index.exact_search(queries, k=5)
    ids_all, scores_all = index.search(queries, k=5, candidates=len(docs))
    assert np.array_equal(ids_all, exact_ids) and np.array_equal(scores_all, exact_scores)


def test_evaluate_reports_recall_latency_and_bytes():
    rng = np.random.default_rng(1)
    index, docs = small_index(rng)
    _, queries = known_item_queries(rng, docs, 10)
    report = index.evaluate(queries, k=5, candidates=(20, 400))
    assert report["documents"] == 400 and report["k"] == 5
    recalls = [r["recall"] for r in report["results"]]
    assert recalls[-1] == 1.0 and 0 <= recalls[0] <= 1
    assert report["bytes_per_document"]["fde"] == index.fde.output_dim * 2


def test_ids_add_remove_and_edge_cases():
    rng = np.random.default_rng(2)
    docs = clustered_docs(rng, 30)
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
    assert len(index) == 0
    ids, scores = index.search(docs[0], k=3)  # empty index
    assert (ids == -1).all() and (scores == -np.inf).all()
    assert index.add(docs[:10]).tolist() == list(range(10))
    assert index.add(docs[10:20], ids=np.arange(100, 110)).tolist() == list(range(100, 110))
    assert index.add(docs[20:21]).tolist() == [110]  # one more than the largest id used
    with pytest.raises(ValueError, match="already in the index"):
        index.add(docs[:1], ids=[5])
    with pytest.raises(ValueError, match="distinct"):
        index.add(docs[:2], ids=[200, 200])
    with pytest.raises(ValueError, match="token dimension"):
        index.add([np.ones((3, DIM + 1), np.float32)])
    with pytest.raises(ValueError, match="token dimension"):
        index.search(np.ones((3, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(docs[0], k=0)
    with pytest.raises(ValueError, match="candidates must be"):
        index.search(docs[0], k=5, candidates=2)
    assert index.remove([3, 104]) == 2
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([3])
    assert len(index) == 19
    ids, _ = index.search(docs[3], k=30, candidates=30)  # k larger than the index
    assert 3 not in ids and 104 not in ids
    assert (ids[0, 19:] == -1).all() and (ids[0, :19] >= 0).all()


def test_save_load_round_trip_mmap_and_compaction(tmp_path):
    rng = np.random.default_rng(3)
    index, docs = small_index(rng, 200)
    index.remove(np.arange(0, 200, 7))
    _, queries = known_item_queries(rng, docs, 12)
    before = index.search(queries, k=8, candidates=60)
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx")
    assert len(loaded) == len(index) and np.array_equal(np.sort(loaded.ids), np.sort(index.ids))
    assert isinstance(loaded._store.segments[0].tokens, np.memmap)  # tokens read in place from the map
    after = loaded.search(queries, k=8, candidates=60)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    loaded.verify()
    # Incremental use of a loaded index, then a second save (the previous generation's files are deleted).
    new = loaded.add(clustered_docs(rng, 5))
    assert new.min() == 200  # ids continue after the largest ever used
    loaded.remove([1])
    loaded.save(tmp_path / "idx")
    again = tokenset.Index.load(tmp_path / "idx", mmap=False)
    assert len(again) == len(index) + 5 - 1 and 1 not in again.ids
    assert sum(name.startswith("tokens-") for name in os.listdir(tmp_path / "idx")) == 1


def test_load_detects_truncated_resized_and_edited_files(tmp_path):
    rng = np.random.default_rng(4)
    index, _ = small_index(rng, 50)
    path = tmp_path / "idx"
    index.save(path)
    manifest = json.loads((path / "manifest.json").read_text())
    files = {k: path / v["file"] for k, v in manifest["arrays"].items()}
    pristine = {k: f.read_bytes() for k, f in files.items()}

    def restore():
        for k, f in files.items():
            f.write_bytes(pristine[k])

    for name in ("tokens", "fde", "offsets", "ids"):
        files[name].write_bytes(pristine[name][:-3])  # truncated
        with pytest.raises(ValueError, match="truncated or resized|holds"):
            tokenset.Index.load(path)
        files[name].write_bytes(pristine[name] + b"\0" * 8)  # resized
        with pytest.raises(ValueError, match="truncated or resized"):
            tokenset.Index.load(path)
        restore()
    # Content corruption: load (sizes only) succeeds for tokens / FDEs, verify() finds it.
    damaged = bytearray(pristine["tokens"])
    damaged[-5] ^= 0x40
    files["tokens"].write_bytes(bytes(damaged))
    loaded = tokenset.Index.load(path)
    with pytest.raises(ValueError, match="checksum"):
        loaded.verify()
    restore()
    # An edited manifest (any value) is refused.
    text = (path / "manifest.json").read_text().replace('"next_id": 50', '"next_id": 5')
    (path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match="checksum"):
        tokenset.Index.load(path)


def test_concurrent_searches_equal_sequential():
    rng = np.random.default_rng(5)
    index, docs = small_index(rng, 300)
    _, queries = known_item_queries(rng, docs, 16)
    expected = [index.search(q, k=5, candidates=50) for q in queries]
    results = [None] * len(queries)

    def run(i):
        results[i] = index.search(queries[i], k=5, candidates=50)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_killed_save_leaves_the_previous_index(tmp_path):
    """A process killed in the middle of saving (here: right after the new token file is written) leaves the
    previous index loadable and unchanged."""
    rng = np.random.default_rng(6)
    index, docs = small_index(rng, 60)
    path = tmp_path / "idx"
    index.save(path)
    code = textwrap.dedent(f"""
        import os, numpy as np, tokenset
        from tokenset import _storage
        index = tokenset.Index.load({str(path)!r}, mmap=False)
        index.add([np.ones((4, {DIM}), np.float32)] * 10)
        real = _storage.atomic_write
        def dying(target, write):
            real(target, write)
            if os.path.basename(str(target)).startswith("tokens-"):
                os._exit(9)  # killed mid-save
        _storage.atomic_write = dying
        index.save({str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    loaded = tokenset.Index.load(path)
    assert len(loaded) == 60
    loaded.verify()


def test_eval_command(tmp_path):
    """`python -m tokenset eval`: loads a saved index and an .npz of queries, prints recall and latency, writes JSON
    (and a PNG where matplotlib is installed)."""
    rng = np.random.default_rng(7)
    index, docs = small_index(rng, 80)
    index.save(tmp_path / "idx")
    _, queries = known_item_queries(rng, docs, 5)
    batch = tokenset.ragged(queries)
    np.savez(tmp_path / "q.npz", values=batch.values, offsets=batch.offsets)
    from tokenset.__main__ import main

    args = ["eval", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npz"), "--k", "5",
            "--candidates", "10,80", "--json", str(tmp_path / "r.json")]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(tmp_path / "r.png")]
    except ImportError:
        pass
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["results"][-1]["recall"] == 1.0 and report["peak_rss_bytes"] > 0
    if "--plot" in args:
        assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    np.savez(tmp_path / "bad.npz", values=batch.values)
    with pytest.raises(ValueError, match="expected arrays"):
        main(["eval", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "bad.npz")])


def test_many_small_adds_keep_few_segments_and_exact_results():
    rng = np.random.default_rng(8)
    docs = clustered_docs(rng, 200)
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
    for i in range(0, 200, 5):  # add, search, add, search...
        index.add(docs[i:i + 5])
        index.search(docs[i], k=1)
        if i == 100:
            index.remove([3, 50])
    assert len(index._store.segments) <= 9  # O(log n)
    _, queries = known_item_queries(rng, docs, 8)
    ids, scores = index.search(queries, k=5, candidates=200)
    exact_ids, exact_scores = index.exact_search(queries, k=5)
    assert np.array_equal(ids, exact_ids) and np.array_equal(scores, exact_scores)
    assert 3 not in ids and 50 not in ids


def test_wiki_demo_queries_and_cache(tmp_path):
    """The demo's known-item split (a sentence leaves its document) and its embedding cache (reused when the texts
    match, recomputed when damaged), with a stand-in for the MiniLM model."""
    from tokenset import wiki_demo

    articles = [(f"t{i}", f"First sentence {i} here. Second one about item {i}. Third one, also {i} words.")
                for i in range(6)] + [("short", "Only one sentence here.")]
    documents, queries, truth = wiki_demo.known_items(articles, 3, np.random.default_rng(0))
    assert len(queries) == 3 and 6 not in truth
    for q, t in zip(queries, truth):
        assert q not in documents[t] and q in articles[t][1]

    torch = pytest.importorskip("torch")
    calls = []

    class Model:
        def encode(self, texts, **kwargs):
            calls.append(len(texts))
            return [torch.ones(len(t.split()), 384) for t in texts]

    batch = wiki_demo.cached_embeddings(documents, tmp_path, "docs", lambda: Model())
    assert len(batch) == len(documents) and batch.dtype == np.float16 and calls
    calls.clear()
    again = wiki_demo.cached_embeddings(documents, tmp_path, "docs", lambda: Model())
    assert not calls and np.array_equal(again.values, batch.values)  # from the cache
    cached = next(tmp_path.glob("docs-*.npz"))
    cached.write_bytes(cached.read_bytes()[:50])  # damaged: recomputed, not trusted
    wiki_demo.cached_embeddings(documents, tmp_path, "docs", lambda: Model())
    assert calls


def test_usearch_backend(tmp_path):
    """The approximate candidate stage (usearch HNSW over the float16 FDEs): known items found, removed ids never
    returned (the graph follows add/remove), the backend recorded in the manifest and the graph rebuilt after load."""
    pytest.importorskip("usearch", reason='pip install "tokenset[ann]"')
    rng = np.random.default_rng(9)
    docs = clustered_docs(rng, 300)
    fde = tokenset.FDE(DIM, reps=8, simhash_bits=4, proj_dim=8, seed=1)
    index = tokenset.Index(DIM, fde=fde, backend="usearch", backend_options={"connectivity": 16})
    index.add(docs[:200])
    picks, queries = known_item_queries(rng, docs[:200], 20)
    ids, _ = index.search(queries, k=5, candidates=100)  # builds the graph
    assert (ids[:, 0] == picks).mean() >= 0.85
    index.add(docs[200:], ids=np.arange(1000, 1100))  # kept in sync once built
    index.remove(picks[:5])
    ids, scores = index.search(queries, k=5, candidates=100)
    assert not np.isin(picks[:5], ids).any()
    assert (ids[5:, 0] == picks[5:]).mean() >= 0.85
    exact_ids, exact_scores = index.exact_search(queries, k=5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact_ids.tolist())])
    assert recall >= 0.8
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx")
    assert loaded.backend == "usearch" and loaded.backend_options == {"connectivity": 16}
    again, _ = loaded.search(queries, k=5, candidates=100)
    single, _ = loaded.search(queries[7], k=5, candidates=100)  # one query: usearch answers differently
    assert np.array_equal(single[0], again[7])
    assert not np.isin(picks[:5], again).any() and (again[5:, 0] == picks[5:]).mean() >= 0.85
    with pytest.raises(ValueError, match="backend must be one of"):
        tokenset.Index(DIM, backend="faiss-ivf")
    with pytest.raises(ValueError, match="backend_options"):
        tokenset.Index(DIM, backend="usearch", backend_options={"connectivity": 0})


def test_to_rejects_bad_devices():
    index = tokenset.Index(8, fde=tokenset.FDE(8, reps=2, simhash_bits=2, seed=0))
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        index.to("tpu")
    with pytest.raises(TypeError, match="device must be a string"):
        index.to(0)
    assert index.to("cpu") is index and index.device == "cpu"


def test_gpu_index_matches_cpu(cuda, tmp_path):
    """Index.to("cuda"): FDE encoding, the FDE scan and the rerank run on the GPU; the answers are the CPU's."""
    import torch

    rng = np.random.default_rng(5)
    docs = [rng.standard_normal((int(n), 32)).astype(np.float32) for n in rng.integers(1, 60, 700)]
    queries = [d[:5] + 0.01 for d in docs[:40]]
    index = tokenset.Index(32, fde=tokenset.FDE(32, reps=8, simhash_bits=3, final_dim=1024, seed=1))
    index.add(docs[:400])
    index.add(docs[400:])  # two segments
    index.remove([3, 450])
    cpu_ids, cpu_scores = index.search(queries, k=10, candidates=100)
    assert index.to("cuda") is index and index.device == "cuda:0"
    for q in (queries, [torch.from_numpy(x).cuda() for x in queries]):
        ids, scores = index.search(q, k=10, candidates=100)
        np.testing.assert_array_equal(ids, cpu_ids)
        np.testing.assert_allclose(scores, cpu_scores, rtol=1e-5, atol=1e-5)
    index.remove([7])
    ids, _ = index.search(queries, k=10, candidates=100)
    assert 7 not in ids and 3 not in ids and 450 not in ids
    index.save(tmp_path / "idx")
    loaded = tokenset.Index.load(tmp_path / "idx").to("cuda")
    np.testing.assert_array_equal(loaded.search(queries, k=10, candidates=100)[0], ids)
    assert index.to("cpu").search(queries, k=10, candidates=100)[0].tolist() == ids.tolist()
