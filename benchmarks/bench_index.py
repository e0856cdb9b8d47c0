"""Index benchmark: recall@10 of FDE candidates + exact rerank against brute-force MaxSim, latency, bytes, open time.

Synthetic clustered corpus (documents mix 3 of 200 topics; lengths 40..300; dim 128; unit-norm tokens), known-item
queries (32 tokens sampled from a document, with noise). Agreement first: with every document a candidate, search
must equal tokenset's brute force. Then, per FDE configuration, recall@10 of the exact top-10 for several candidate
counts and the single-query latency, timed in the same run as brute force (tokenset's maxsim_topk).

    PYTHONPATH=python python benchmarks/bench_index.py --quick     # 5,000 documents
    PYTHONPATH=python python benchmarks/bench_index.py             # 100,000 documents
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
    args = parser.parse_args()
    n = args.documents or (5000 if args.quick else 100_000)
    nq = args.queries or (30 if args.quick else 100)
    rng = np.random.default_rng(0)
    docs = corpus(rng, n)
    queries = queries_for(rng, docs, nq)
    print(f"tokenset {tokenset.__version__}, SIMD {tokenset.simd_level()}, {tokenset.get_num_threads()} threads; "
          f"{n} documents (40..300 tokens, dim 128, float16), {nq} queries of 32 tokens")
    brute = tokenset.Index(128, fde=tokenset.FDE(128, reps=1, simhash_bits=0, proj_dim=1))  # tokens only
    brute.add(docs)
    exact_ids, _ = brute.exact_search(queries, 10)
    brute_ms = median_ms(lambda q: brute.exact_search(q, 10), queries)
    print(f"brute force (tokenset maxsim_topk over all documents): {brute_ms:.1f} ms per query")
    rows = []
    for name, config in CONFIGS.items():
        start = time.perf_counter()
        index = tokenset.Index(128, fde=tokenset.FDE(128, seed=0, **config))
        index.add(docs)
        build_s = time.perf_counter() - start
        # Agreement: with every document a candidate the index is the brute force.
        full_ids, _ = index.search(queries[:3], 10, candidates=n)
        assert np.array_equal(full_ids, exact_ids[:3]), "index with all candidates disagrees with brute force"
        recalls = {}
        for c in (50, 100, 200, 500):
            got, _ = index.search(queries, 10, candidates=c)
            recalls[c] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact_ids.tolist())]))
        search_ms = median_ms(lambda q: index.search(q, 10, candidates=200), queries)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(tmp)
            start = time.perf_counter()
            tokenset.Index.load(tmp)
            open_s = time.perf_counter() - start
        b = index.bytes_per_document()
        rows.append({"config": name, "fde_bytes": b["fde"], "token_bytes": b["tokens"], "recall": recalls,
                     "search_ms_200": search_ms, "brute_ms": brute_ms, "speedup": brute_ms / search_ms,
                     "build_s": build_s, "open_s": open_s})
        print(f"  {name}: FDE {b['fde'] / 1024:.1f} KiB/doc (tokens {b['tokens'] / 1024:.1f}); recall@10 "
              + ", ".join(f"{c}: {r:.3f}" for c, r in recalls.items())
              + f"; search (200 candidates) {search_ms:.2f} ms = x{brute_ms / search_ms:.1f} brute force; "
                f"build {build_s:.1f} s, open {open_s * 1e3:.0f} ms")
    table = ["| FDE | bytes/doc (FDE) | recall@10 @50 | @100 | @200 | @500 | search ms (200) | x brute force | open ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['config']} | {r['fde_bytes']:.0f} | " + " | ".join(f"{r['recall'][c]:.3f}"
                                                                            for c in (50, 100, 200, 500))
                     + f" | {r['search_ms_200']:.2f} | x{r['speedup']:.1f} | {r['open_s'] * 1e3:.0f} |")
    base = write_results("index" + ("-quick" if args.quick else ""), "cpu",
                         {"documents": n, "queries": nq, "brute_ms": brute_ms, "rows": rows}, "\n".join(table))
    print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
