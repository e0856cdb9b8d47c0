"""Storage quality (issue 23, item 6): recall@10 against exact MaxSim and bytes, per storage type.

1. The Wikipedia demo corpus (10,033 summaries, MiniLM 384-d tokens, 400 known-item queries; the embeddings cached by
   ``python -m tokenset demo``): ``tokenset.Index`` with tokens float16 / int8 / residual 4, 2, 1 bits and FDEs
   float16 / int8, searched with 200 candidates, and its exact_search (the rerank alone); recall@10 against exact
   MaxSim of the float16 tokens (float32 accumulation), how often the query's article comes first, bytes per token and
   per document. The residual codec is trained once on the whole corpus (PLAID's centroid count, 8,192; k-means on
   its default sample), its three widths over one k-means, and given to the indexes.
2. A synthetic clustered corpus of 100,000 documents (40..300 normalised 128-d tokens mixing 6 of 1,000 topics; 20
   queries of 32 tokens drawn from one document's topics): brute-force top-10 by each scorer (float16, int8 documents
   with float queries, int8 x int8, residual codes of 4, 2, 1 bits scored in place) against exact MaxSim. The codec
   has 4,096 centroids, not PLAID's 65,536 for 17M tokens: encoding costs tokens x centroids x dim FMAs (an hour on
   two cores at 65,536); fewer centroids leave larger residuals, so the figures are, if anything, pessimistic.

    python benchmarks/bench_storage_quality.py            # writes benchmarks/results/storage-quality-<machine>-<date>.*
    python benchmarks/bench_storage_quality.py --quick    # a synthetic corpus of 10,000 documents
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from tokenset import wiki_demo  # noqa: E402
from _common import write_results  # noqa: E402

STORAGES = [("float16", "float16"), ("int8", "float16"), ("float16", "int8"), ("int8", "int8"),
            ("residual4", "float16"), ("residual2", "float16"), ("residual1", "float16"), ("residual2", "int8")]


def codecs_for(docs, centroids=None):
    """Residual codecs of 4, 2 and 1 bits over one k-means (PLAID's rules; `centroids`: their count)."""
    first = tokenset.ResidualCodec.train(docs, bits=4, centroids=centroids)
    return {4: first, **{b: tokenset.ResidualCodec.train(docs, bits=b, centroids=first.centroids) for b in (2, 1)}}


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / want.shape[1] for a, b in zip(got, want)]))


def wikipedia(limit):
    articles = wiki_demo.load_articles()[:limit]
    documents, queries, truth = wiki_demo.known_items(articles, 400, np.random.default_rng(0))

    def no_model():
        raise RuntimeError("the Wikipedia embeddings are not cached: run `python -m tokenset demo` first")

    cache = Path.home() / ".cache" / "tokenset"
    docs = wiki_demo.cached_embeddings(documents, cache, f"wiki-docs-{len(documents)}", no_model)
    qs = wiki_demo.cached_embeddings(queries, cache, f"wiki-queries-{len(queries)}", no_model)
    exact_scores = tokenset.maxsim(qs, docs)  # float16 tokens, float32 accumulation: the reference ranking
    exact = np.argsort(-exact_scores, axis=1, kind="stable")[:, :10]
    codecs = codecs_for(docs)
    print(f"  residual codec: {codecs[4].num_centroids} centroids", flush=True)
    rows = []
    for storage, fde_storage in STORAGES:
        codec = codecs[int(storage[-1])] if storage.startswith("residual") else None
        index = tokenset.Index(docs.dim, storage=storage, fde_storage=fde_storage, codec=codec)
        for s in range(0, len(docs), 1000):
            index.add([docs[i] for i in range(s, min(len(docs), s + 1000))])
        ids, _ = index.search(qs, k=10, candidates=200)
        rerank_ids, _ = index.exact_search(qs, k=10)
        b = index.bytes_per_document()
        tokens = int(docs.offsets[-1])
        row = {"storage": storage, "fde_storage": fde_storage, "recall_at_10_search_200": recall(ids, exact),
               "recall_at_10_exact_search": recall(rerank_ids, exact),
               "article_first": float(np.mean(ids[:, 0] == truth)),
               "token_bytes_per_token": (b["tokens"] - 8) * len(docs) / tokens, "bytes_per_document": b}
        rows.append(row)
        print(f"  wikipedia tokens {storage:9s} FDE {fde_storage:7s}: recall@10 {row['recall_at_10_search_200']:.3f} "
              f"(200 candidates), {row['recall_at_10_exact_search']:.3f} (exact_search), article first "
              f"{row['article_first']:.0%}, {row['token_bytes_per_token']:.0f} B/token, "
              f"{b['total'] / 1024:.1f} KiB/document", flush=True)
    q8, d8 = tokenset.quantize(qs), tokenset.quantize(docs)
    int8_ids = tokenset.maxsim_topk(q8, d8, 10)[1]
    print(f"  wikipedia brute-force int8 x int8 MaxSim: recall@10 {recall(int8_ids, exact):.3f}", flush=True)
    return {"documents": len(docs), "queries": len(qs), "rows": rows, "int8_x_int8_recall_at_10": recall(int8_ids, exact)}


def synthetic(n, queries=20, dim=128, seed=0):
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((1000, dim)).astype(np.float32)
    lengths = rng.integers(40, 301, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.empty((int(offsets[-1]), dim), np.float16)
    doc_topics = rng.integers(0, 1000, (n, 6))
    for d0 in range(0, n, 5000):  # made in blocks of documents
        d1 = min(n, d0 + 5000)
        count = int(offsets[d1] - offsets[d0])
        owner = np.repeat(np.arange(d0, d1), lengths[d0:d1])
        pick = doc_topics[owner, rng.integers(0, 6, count)]
        block = topics[pick] + 0.7 * rng.standard_normal((count, dim), dtype=np.float32)
        values[offsets[d0]:offsets[d1]] = block / np.linalg.norm(block, axis=1, keepdims=True)
    docs = tokenset.Ragged(values, offsets)
    source = rng.integers(0, n, queries)
    q = topics[doc_topics[source][:, rng.integers(0, 6, 32)]] + 0.9 * rng.standard_normal((queries, 32, dim),
                                                                                          dtype=np.float32)
    q = (q / np.linalg.norm(q, axis=2, keepdims=True)).reshape(-1, dim)
    qs = tokenset.Ragged(q, np.arange(queries + 1, dtype=np.int64) * 32)
    exact = tokenset.maxsim_topk(qs, docs, 10)[1]
    d8 = tokenset.quantize(docs)
    out = {"documents": n, "queries": queries, "float16_bytes_per_token": 2 * dim, "int8_bytes_per_token": dim + 4,
           "recall_at_10": {"int8 documents, float queries": recall(tokenset.maxsim_topk(qs, d8, 10)[1], exact),
                            "int8 documents, int8 queries": recall(tokenset.maxsim_topk(tokenset.quantize(qs), d8,
                                                                                        10)[1], exact)}}
    codecs = codecs_for(docs, centroids=4096)
    codes = {4: codecs[4].encode(docs)}
    for bits in (2, 1):
        codes[bits] = codecs[bits].encode(docs, centroid_ids=codes[4].centroid_ids)
    out["residual_bytes_per_token"] = {}
    for bits, c in codes.items():
        out["recall_at_10"][f"residual {bits} bits (in place)"] = recall(tokenset.maxsim_topk(qs, c, 10)[1], exact)
        out["residual_bytes_per_token"][f"residual {bits} bits (in place)"] = c.codec.bytes_per_token
    for name, r in out["recall_at_10"].items():
        per_token = out["residual_bytes_per_token"].get(name, dim + 4)
        print(f"  synthetic {n:,}: {name}: recall@10 {r:.3f} of exact float16 MaxSim ({per_token} vs {2 * dim} "
              f"bytes per token)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("Wikipedia demo corpus", flush=True)
    wiki = wikipedia(None)  # the cached demo corpus (embedding anew would take minutes)
    print("synthetic clustered corpus", flush=True)
    synth = synthetic(10000 if args.quick else 100000)
    table = ["| corpus | tokens | FDEs | recall@10, search (200 candidates) | recall@10, exact_search | bytes per token "
             "| KiB per document |", "|---|---|---|---|---|---|---|"]
    for r in wiki["rows"]:
        table.append(f"| Wikipedia ({wiki['documents']:,} docs, 384-d) | {r['storage']} | {r['fde_storage']} | "
                     f"{r['recall_at_10_search_200']:.3f} | {r['recall_at_10_exact_search']:.3f} | "
                     f"{r['token_bytes_per_token']:.0f} | {r['bytes_per_document']['total'] / 1024:.1f} |")
    table.append(f"| Wikipedia, brute-force int8 x int8 MaxSim | int8 (queries too) | - | - | "
                 f"{wiki['int8_x_int8_recall_at_10']:.3f} | 388 | - |")
    for name, r in synth["recall_at_10"].items():
        per_token = synth["residual_bytes_per_token"].get(name, synth["int8_bytes_per_token"])
        table.append(f"| synthetic ({synth['documents']:,} docs, 128-d), brute force | {name} | - | - | {r:.3f} | "
                     f"{per_token} (float16: {synth['float16_bytes_per_token']}) | - |")
    table.append("\nrecall@10 against exact MaxSim of the float16 tokens (float32 accumulation).")
    print("\n".join(table))
    path = write_results("storage-quality-quick" if args.quick else "storage-quality", "cpu",
                         {"wikipedia": wiki, "synthetic": synth, "build": tokenset.build_info()}, "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
