"""Index benchmark: recall@10 of FDE candidates + exact rerank against brute-force MaxSim, latency, bytes, open time.

Synthetic clustered corpus (documents mix 3 of 200 topics; lengths 40..300; dim 128; unit-norm tokens), known-item
queries (32 tokens sampled from a document, with noise). Agreement first: with every document a candidate, search
must equal tokenset's brute force. Then, per FDE configuration, recall@10 of the exact top-10 for several candidate
counts and the single-query latency, timed in the same run as brute force (tokenset's maxsim_topk).

    PYTHONPATH=python python benchmarks/bench_index.py --quick     # 5,000 documents
    PYTHONPATH=python python benchmarks/bench_index.py             # 100,000 documents
    PYTHONPATH=python python benchmarks/bench_index.py --wiki      # the demo corpus (needs the [demo] extra)

The last configuration uses the approximate candidate stage (usearch HNSW over the default FDEs) where usearch is
installed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenset  # noqa: E402
from _common import write_results  # noqa: E402

CONFIGS = {
    "identity, sketch 10240 (default)": dict(reps=20, simhash_bits=5, final_dim=10240),
    "proj 32, 20480": dict(reps=20, simhash_bits=5, proj_dim=32),
    "identity, sketch 4096": dict(reps=20, simhash_bits=5, final_dim=4096),
    "identity, sketch 2048": dict(reps=20, simhash_bits=5, final_dim=2048),
    "proj 16 (fastembed), 10240": dict(reps=20, simhash_bits=5, proj_dim=16),
    "proj 8, 4 bits, 20 reps (2560)": dict(reps=20, simhash_bits=4, proj_dim=8),
}


def corpus(rng, n, dim=128, topics=200):
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    docs = []
    for length in rng.integers(40, 301, n):
        mix = centres[rng.integers(0, topics, 3)]
        x = mix[rng.integers(0, 3, int(length))] + 0.6 * rng.standard_normal((int(length), dim)).astype(np.float32)
        docs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    return docs


def queries_for(rng, docs, count, length=32):
    picks = rng.choice(len(docs), count, replace=False)
    out = []
    for i in picks:
        d = docs[i].astype(np.float32)
        x = d[rng.integers(0, len(d), length)] + 0.3 * rng.standard_normal((length, d.shape[1])).astype(np.float32)
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


def median_ms(fn, items):
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--documents", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--wiki", action="store_true", help="the demo corpus: Wikipedia summaries, MiniLM tokens")
    parser.add_argument("--cache", default=None, help="--wiki: the demo's embedding cache directory")
    parser.add_argument("--configs", default=None,
                        help="comma-separated substrings: only the configurations whose name contains one")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.wiki:
        from tokenset import wiki_demo

        articles = wiki_demo.load_articles()[: args.documents or None]
        documents, texts, _ = wiki_demo.known_items(articles, args.queries or 400, rng)
        cache = Path(args.cache) if args.cache else Path.home() / ".cache" / "tokenset"
        loader = {}

        def model():
            return loader.setdefault("m", wiki_demo._model())

        batch = wiki_demo.cached_embeddings(documents, cache, f"wiki-docs-{len(documents)}", model)
        qbatch = wiki_demo.cached_embeddings(texts, cache, f"wiki-queries-{len(texts)}", model)
        docs = [np.asarray(batch[i]) for i in range(len(batch))]
        queries = [np.asarray(qbatch[i], np.float32) for i in range(len(qbatch))]
        source = f"{len(docs)} Wikipedia summaries (MiniLM tokens, dim {batch.dim})"
    else:
        n = args.documents or (5000 if args.quick else 100_000)
        docs = corpus(rng, n)
        queries = queries_for(rng, docs, args.queries or (30 if args.quick else 100))
        source = f"{n} synthetic documents (40..300 tokens, dim 128, float16)"
    n, nq, dim = len(docs), len(queries), docs[0].shape[1]
    print(f"tokenset {tokenset.__version__}, SIMD {tokenset.simd_level()}, {tokenset.get_num_threads()} threads; "
          f"{source}, {nq} queries")
    exact_ids = brute_ms = None
    rows = []
    configs = [(name, config, "exact") for name, config in CONFIGS.items()]
    try:
        import usearch  # noqa: F401

        configs.append(("default FDE, usearch HNSW", CONFIGS["identity, sketch 10240 (default)"], "usearch"))
    except ImportError:
        print("  (usearch not installed: no approximate row)")
    if args.configs:
        wanted = [w.strip() for w in args.configs.split(",")]
        configs = [c for c in configs if any(w in c[0] for w in wanted)]
    for name, config, backend in configs:
        start = time.perf_counter()
        index = tokenset.Index(dim, fde=tokenset.FDE(dim, seed=0, **config), backend=backend)
        index.add(docs)
        build_s = time.perf_counter() - start
        if exact_ids is None:  # brute force over the same stored tokens (the index's exact_search), timed once
            exact_ids, _ = index.exact_search(queries, 10)
            brute_ms = median_ms(lambda q: index.exact_search(q, 10), queries)
            print(f"brute force (tokenset maxsim_topk over all documents): {brute_ms:.1f} ms per query")
        # Agreement: with every document a candidate the index is the brute force.
        if backend == "exact":
            full_ids, _ = index.search(queries[:3], 10, candidates=n)
            assert np.array_equal(full_ids, exact_ids[:3]), "index with all candidates disagrees with brute force"
        else:
            index.search(queries[:1], 10)  # builds the graph (reported as build time)
            build_s = time.perf_counter() - start
        recalls = {}
        for c in (50, 100, 200, 500):
            got, _ = index.search(queries, 10, candidates=c)
            recalls[c] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact_ids.tolist())]))
        search_ms = median_ms(lambda q: index.search(q, 10, candidates=200), queries)
        search_ms_500 = median_ms(lambda q: index.search(q, 10, candidates=500), queries)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(tmp)
            start = time.perf_counter()
            tokenset.Index.load(tmp)
            open_s = time.perf_counter() - start
        b = index.bytes_per_document()
        rows.append({"config": name, "fde_bytes": b["fde"], "token_bytes": b["tokens"], "recall": recalls,
                     "search_ms_200": search_ms, "search_ms_500": search_ms_500, "brute_ms": brute_ms,
                     "speedup": brute_ms / search_ms, "speedup_500": brute_ms / search_ms_500,
                     "build_s": build_s, "open_s": open_s})
        print(f"  {name}: FDE {b['fde'] / 1024:.1f} KiB/doc (tokens {b['tokens'] / 1024:.1f}); recall@10 "
              + ", ".join(f"{c}: {r:.3f}" for c, r in recalls.items())
              + f"; search (200 candidates) {search_ms:.2f} ms = x{brute_ms / search_ms:.1f} brute force, (500) "
                f"{search_ms_500:.2f} ms = x{brute_ms / search_ms_500:.1f}; "
                f"build {build_s:.1f} s, open {open_s * 1e3:.0f} ms")
    table = ["| FDE | bytes/doc (FDE) | recall@10 @50 | @100 | @200 | @500 | search ms (200) | x brute force | "
             "search ms (500) | x brute force | open ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['config']} | {r['fde_bytes']:.0f} | " + " | ".join(f"{r['recall'][c]:.3f}"
                                                                            for c in (50, 100, 200, 500))
                     + f" | {r['search_ms_200']:.2f} | x{r['speedup']:.1f} | {r['search_ms_500']:.2f} | "
                       f"x{r['speedup_500']:.1f} | {r['open_s'] * 1e3:.0f} |")
    stem = "index-wiki" if args.wiki else "index" + ("-quick" if args.quick else "")
    base = write_results(stem, "cpu",
                         {"source": source, "documents": n, "queries": nq, "brute_ms": brute_ms, "rows": rows},
                         "\n".join(table))
    print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
