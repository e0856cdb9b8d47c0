"""Command line: ``python -m tokenset demo`` (MaxSim: correctness against the reference, speed against torch/numpy;
then retrieval: MUVERA FDE candidates reranked by exact MaxSim), ``python -m tokenset info`` (what was built),
``python -m tokenset eval`` (an index's recall against exact MaxSim) and ``python -m tokenset prune-demo IMAGE...``
(which patches of real images each token reduction method keeps: a PNG grid; the [vision] extra)."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import tokenset
from tokenset._plot import write_recall_plot
from tokenset.reference import fde as fde_ref
from tokenset.reference import maxsim as ref
from tokenset.vision import prune_demo


def _median_seconds(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def demo(n_docs: int, dim: int, seed: int) -> int:
    info = tokenset.build_info()
    print(f"tokenset {info['version']}: SIMD {info['simd_active']} (built: {', '.join(info['simd_compiled'])}), "
          f"{info['num_threads']} threads, CUDA module: {'yes' if info['cuda'] else 'no'}, "
          f"GPUs visible: {info['cuda_devices']}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 301, n_docs)
    docs = [rng.standard_normal((int(n), dim)).astype(np.float32) for n in lengths]
    docs[1] = -np.abs(docs[1])  # a document whose similarities to a positive query are all negative
    docs[2] = docs[2][:0]       # an empty document
    query = np.abs(rng.standard_normal((32, dim))).astype(np.float32)
    batch = tokenset.ragged(docs)

    scores = tokenset.maxsim(query, batch)[0]
    checked = 200
    want = ref.maxsim([query.astype(np.float64)], [d.astype(np.float64) for d in docs[:checked]])[0]
    finite = np.isfinite(want)
    err = float(np.max(np.abs(scores[:checked][finite] - want[finite]) / np.maximum(1.0, np.abs(want[finite]))))
    ok = err < 1e-5 and scores[2] == -np.inf and scores[1] < 0
    print(f"\ncorrectness vs the float64 numpy reference on {checked} documents: max relative error {err:.1e} "
          f"({'OK' if ok else 'FAIL'})")
    print(f"  empty document scores {scores[2]}; all-negative document scores {scores[1]:.2f} (not clamped to 0)")

    top_s, top_i = tokenset.maxsim_topk(query, batch, k=5)
    print(f"  top-5 documents: {top_i[0].tolist()} scores {[round(float(s), 2) for s in top_s[0]]}")

    total = int(lengths.sum())
    t_ours = _median_seconds(lambda: tokenset.maxsim(query, batch))
    print(f"\nspeed: 32x{dim} query vs {n_docs} documents ({total} tokens), float32")
    print(f"  tokenset                  {t_ours * 1e3:8.2f} ms  ({2 * 32 * dim * total / t_ours / 1e9:.0f} GFLOP/s)")
    try:
        import torch

        tq = torch.from_numpy(query)
        tdocs = [torch.from_numpy(d) for d in docs]
        padded = torch.nn.utils.rnn.pad_sequence(tdocs, batch_first=True)
        mask = (torch.arange(padded.shape[1])[None] < torch.from_numpy(lengths)[:, None]).float()
        mask[2] = 0

        def einsum():
            s = torch.einsum("ash,bth->abst", tq[None], padded) * mask[None, :, None, :]
            return s.max(-1).values.sum(-1)

        t_einsum = _median_seconds(einsum)
        print(f"  torch einsum, padded      {t_einsum * 1e3:8.2f} ms  (tokenset x{t_einsum / t_ours:.1f} faster; "
              f"it also scores the all-negative document {float(einsum()[0, 1]):.2f} and the empty one 0.0)")
    except ImportError:
        print("  (torch not installed: pip install torch==2.13.0 to compare with PyLate-style einsum)")
    t_numpy = _median_seconds(lambda: [(query @ d.T).max(1).sum() for d in docs if len(d)], repeats=3)
    print(f"  numpy per-document loop   {t_numpy * 1e3:8.2f} ms  (tokenset x{t_numpy / t_ours:.1f} faster)")
    return 0 if ok and retrieval_demo(docs, rng) else 1


def retrieval_demo(docs, rng) -> bool:
    """MUVERA FDE finds 100 candidates per query, exact MaxSim reranks them; compared with exact MaxSim top-10."""
    dim = docs[0].shape[1]
    fde = tokenset.FDE(dim, proj_dim=16)
    sample = [d for d in docs[:20] if len(d)]
    got = fde.encode_documents(sample)
    want = fde_ref.encode(sample, fde.simhash, fde.projection, documents=True, fill_empty=True)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    ok = err < 1e-4
    batch = tokenset.ragged(docs)
    t_encode = _median_seconds(lambda: fde.encode_documents(batch), repeats=3)
    doc_fde = fde.encode_documents(batch)
    # Queries: 16 tokens sampled from a random document, plus noise.
    targets = rng.integers(3, len(docs), 32)
    queries = [docs[t][rng.choice(len(docs[t]), 16, replace=False)] for t in targets]
    queries = [q + 0.5 * rng.standard_normal(q.shape).astype(np.float32) for q in queries]
    candidates = np.argsort(-(fde.encode_queries(queries) @ doc_fde.T), axis=1, kind="stable")[:, :100]
    scores = tokenset.maxsim_pairs(queries, batch, candidates)
    best = candidates[np.arange(len(queries)), np.argmax(scores, axis=1)]
    _, exact = tokenset.maxsim_topk(queries, batch, k=1)
    in_candidates = float(np.mean([t in c for t, c in zip(targets, candidates)]))
    agree = float(np.mean(best == exact[:, 0]))
    print(f"\nretrieval: FDE (reps 20, 5 bits, proj 16 -> {fde.output_dim} dims) top-100 candidates, exact MaxSim rerank")
    print(f"  FDE vs the float64 numpy reference on {len(sample)} documents: max relative error {err:.1e} "
          f"({'OK' if ok else 'FAIL'})")
    print(f"  encoding {len(docs)} documents: {t_encode * 1e3:.1f} ms ({len(docs) / t_encode:,.0f} documents/s)")
    print(f"  32 queries sampled (with noise) from a document's tokens: that document is among the 100 candidates for "
          f"{in_candidates:.0%}; the reranked top-1 equals the exact MaxSim top-1 over all documents for {agree:.0%}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenset", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="retrieval on Wikipedia summaries with MiniLM tokens (the [demo] extra); "
                                     "--synthetic: MaxSim against the reference and torch on random data")
    d.add_argument("--synthetic", action="store_true", help="the random-data MaxSim/FDE demo (no extra needed)")
    d.add_argument("--quick", action="store_true", help="1,000 articles and 100 queries")
    d.add_argument("--articles", type=int, default=None)
    d.add_argument("--queries", type=int, default=None)
    d.add_argument("--cache", default=None, help="embedding cache directory (default ~/.cache/tokenset)")
    d.add_argument("--plot", default="wiki-demo-recall.png", help="recall-vs-candidates PNG ('' for none)")
    d.add_argument("--documents", type=int, default=1000, help="--synthetic: documents")
    d.add_argument("--dim", type=int, default=128, help="--synthetic: token dimension")
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="print build_info() as JSON")
    e = sub.add_parser("eval", help="recall@k of an index against exact MaxSim, latency, bytes per document, plot")
    e.add_argument("--index", required=True, help="a directory written by Index.save")
    e.add_argument("--queries", required=True,
                   help="an .npz with 'values' [tokens, dim] and 'offsets' [queries + 1] (int64); never pickle")
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--candidates", default="50,100,200,500", help="comma-separated candidate counts")
    e.add_argument("--plot", default=None, help="write a recall-vs-candidates PNG here (needs matplotlib)")
    e.add_argument("--json", default=None, help="write the report as JSON here")
    p = sub.add_parser("prune-demo", help="a PNG grid of the patches of real images that each token reduction "
                                           "method keeps (EfficientNet-Lite0 tokens; the [vision] extra)")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files or skimage:NAME (e.g. skimage:chelsea); default: "
                        + " ".join(prune_demo.DEFAULT_IMAGES))
    p.add_argument("--keep", default=str(prune_demo.DEFAULT_KEEP),
                   help="tokens kept per image: a ratio with a decimal point (0.25) or a count (49)")
    p.add_argument("--size", type=int, default=prune_demo.DEFAULT_SIZE,
                   help="side of the square input in pixels, a multiple of 16 (224 gives 14x14 tokens)")
    p.add_argument("--out", default=None,
                   help=f"the PNG to write (default {prune_demo.DEFAULT_OUT}, which is never overwritten unless named)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(tokenset.build_info(), indent=2))
        return 0
    if args.command == "eval":
        return evaluate(args)
    if args.command == "prune-demo":
        try:
            prune_demo.run(args.images, args.out, args.keep, args.size)
        except prune_demo.DemoError as exc:
            print(f"prune-demo: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.synthetic:
        return demo(args.documents, args.dim, args.seed)
    from . import wiki_demo

    wiki_demo.run(quick=args.quick, articles_limit=args.articles, queries_count=args.queries, cache=args.cache,
                  plot=args.plot or None, seed=args.seed)
    return 0


def load_queries(path: str):
    """Queries from an .npz of 'values' and 'offsets' (checked as any Ragged; object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != {"values", "offsets"}:
                raise ValueError(f"{path}: expected arrays 'values' and 'offsets', got {sorted(z.files)}")
            return tokenset.Ragged(np.asarray(z["values"]), np.asarray(z["offsets"]), name="queries")
    except (OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable .npz of queries ({exc})") from None


def evaluate(args) -> int:
    index = tokenset.Index.load(args.index)
    queries = load_queries(args.queries)
    candidates = [int(c) for c in args.candidates.split(",") if c.strip()]
    report = index.evaluate(queries, k=args.k, candidates=candidates)
    print(f"{report['documents']} documents, {report['queries']} queries, k={report['k']}; bytes per document: "
          + ", ".join(f"{name} {value:,.0f}" for name, value in report["bytes_per_document"].items()))
    for row in report["results"]:
        print(f"  candidates {row['candidates']:>5}: recall@{report['k']} {row['recall']:.3f}, latency p50 "
              f"{row['latency_ms_p50']:.2f} ms, p95 {row['latency_ms_p95']:.2f} ms")
    print(f"  peak resident memory {report['peak_rss_bytes'] / 2**20:,.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        try:
            write_recall_plot(report, args.plot, f"{report['documents']:,} documents, FDE {index.fde.output_dim} dims")
        except ImportError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
