"""MUVERA FDE benchmark: tokenset's encoder against fastembed's Muvera (pure numpy), in the same process, as ratios.

Workload (issue 3): 10,000 documents of 40..300 tokens and 1,000 queries of 32 tokens, dim 128, float32; encoders with
fastembed's defaults (k_sim=5, dim_proj=16, r_reps=20) and with the identity projection (fastembed: dim_proj=dim).

Agreement first: fastembed uses plain binary partition ids where the authors' C++ (and tokenset) use Gray codes, a
dense ±1/sqrt(dim_proj) projection applied after averaging where they use the sparse AMS projection, and picks fill
tokens with another tie rule. With the identity projection, the same hyperplanes and no fill, the two must then give
the same partition sums up to the permutation of partition blocks binary id -> Gray index; that is checked to float32
precision. The projected encoders cannot agree number for number, so the run also reports each one's candidate recall
(exact MaxSim top-10 inside the FDE top-100) on clustered data, and the recall grid over reps x simhash_bits.

    python benchmarks/bench_fde.py                 # writes benchmarks/results/fde-<machine>-<date>.{json,md}
    python benchmarks/bench_fde.py --quick         # 2,000 documents, 200 queries, no recall grid
    python benchmarks/bench_fde.py --device cuda   # adds tokenset on the GPU (torch CUDA tensors) vs tokenset on CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402

try:
    from fastembed.postprocess import Muvera
except ImportError:
    Muvera = None

DIM = 128
CHUNK = 512  # documents per call, as a corpus is encoded in batches (10k identity FDEs would be 3.3 GB at once)


def normalized(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_sets(rng, count, low, high):
    return [normalized(rng, int(n), DIM) for n in rng.integers(low, high + 1, size=count)]


def sanitized(rng, sets, simhash):
    """Redraws tokens whose dot with a hyperplane is within float32 noise of 0 (float32 and float64 could disagree on
    that sign bit); only used for the number-for-number agreement check."""
    g = simhash.astype(np.float64)
    out = []
    for s in sets:
        s = s.copy()
        for _ in range(100):
            x = s.astype(np.float64)
            bad = (np.abs(np.einsum("nd,rdk->nrk", x, g)) <= 1e-4 * np.einsum("nd,rdk->nrk", np.abs(x), np.abs(g)))
            bad = bad.any(axis=(1, 2))
            if not bad.any():
                break
            s[bad] = normalized(rng, int(bad.sum()), DIM)
        out.append(s)
    return out


def binary_to_gray_index(bits):
    """For every fastembed cluster id f (bit i = hyperplane i), the tokenset partition of the same sign bits."""
    order = np.empty(1 << bits, dtype=np.int64)
    for f in range(1 << bits):
        pattern = 0
        for j in range(bits):  # tokenset: hyperplane j is bit (bits - 1 - j) of the pattern
            pattern |= ((f >> j) & 1) << (bits - 1 - j)
        p = pattern
        shift = 1
        while shift < 32:
            p ^= p >> shift
            shift <<= 1
        order[f] = p
    return order


def check_agreement_with_fastembed(rng, reps=20, bits=5, n_docs=40, n_queries=40):
    """Identity projection, same hyperplanes, no fill: tokenset == fastembed with partition blocks permuted."""
    muvera = Muvera(dim=DIM, k_sim=bits, dim_proj=DIM, r_reps=reps, random_seed=42)
    simhash = np.stack([s.simhash_vectors for s in muvera.simhash_projections]).astype(np.float32)
    for s, h in zip(muvera.simhash_projections, simhash):
        s.simhash_vectors = h.astype(np.float64)  # both sides use the same (float32-exact) hyperplanes
    fde = tokenset.FDE.from_arrays(simhash, None, fill_empty=False)
    docs = sanitized(rng, make_sets(rng, n_docs, 40, 300), simhash)
    queries = sanitized(rng, make_sets(rng, n_queries, 32, 32), simhash)
    perm = binary_to_gray_index(bits)
    worst = 0.0
    for sets, ours, documents in ((docs, fde.encode_documents(docs), True),
                                  (queries, fde.encode_queries(queries), False)):
        for i, s in enumerate(sets):
            theirs = muvera.process(s, fill_empty_clusters=False, normalize_by_count=documents)
            theirs = theirs.reshape(reps, 1 << bits, DIM)
            mine = np.asarray(ours[i], np.float64).reshape(reps, 1 << bits, DIM)[:, perm]
            scale = np.abs(theirs).max() + 1e-30
            worst = max(worst, float(np.abs(mine - theirs).max() / scale))
    if worst > 1e-5:
        raise SystemExit(f"tokenset and fastembed disagree (max relative difference {worst:.2e})")
    return worst


def recall(queries, docs, q_fde, d_fde, k=10, candidates=100):
    exact = tokenset.maxsim(queries, docs)
    approx = np.asarray(q_fde, np.float64) @ np.asarray(d_fde, np.float64).T
    top_exact = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top_fde = np.argsort(-approx, axis=1, kind="stable")[:, :candidates]
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(top_exact, top_fde)]))


def quality(rng, with_fastembed):
    """Candidate recall of the projected encoders (fastembed defaults) on clustered data."""
    from test_fde import clustered_corpus

    queries, docs = clustered_corpus(rng, dim=DIM)
    rows = {}
    for name, fde in (("tokenset identity", tokenset.FDE(DIM)),
                      ("tokenset proj_dim=16", tokenset.FDE(DIM, proj_dim=16))):
        rows[name] = recall(queries, docs, fde.encode_queries(queries), fde.encode_documents(docs))
    if with_fastembed:
        for name, pd in (("fastembed dim_proj=128 (identity)", DIM), ("fastembed dim_proj=16", 16)):
            m = Muvera(dim=DIM, k_sim=5, dim_proj=pd, r_reps=20, random_seed=42)
            rows[name] = recall(queries, docs, np.stack([m.process_query(q) for q in queries]),
                                np.stack([m.process_document(d) for d in docs]))
    return rows


def recall_grid(rng, reps_values=(1, 5, 10, 20), bits_values=(0, 2, 3, 4, 5, 6)):
    """Candidate recall of the default (identity) encoder over reps x simhash_bits, dim 64."""
    from test_fde import clustered_corpus

    queries, docs = clustered_corpus(rng, dim=64)
    grid = {}
    for reps in reps_values:
        for bits in bits_values:
            fde = tokenset.FDE(64, reps=reps, simhash_bits=bits)
            grid[f"{reps}x{bits}"] = recall(queries, docs, fde.encode_queries(queries), fde.encode_documents(docs))
    return grid


def encode_all(fde, docs_chunks, queries):
    def run_docs():
        for chunk in docs_chunks:
            fde.encode_documents(chunk)

    return run_docs, lambda: fde.encode_queries(queries)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--fastembed-sets", type=int, default=200, help="sets fastembed encodes per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.fastembed_sets = 2000, 200, 100
    rng = np.random.default_rng(0)
    docs = make_sets(rng, args.docs, 40, 300)
    queries = tokenset.ragged(make_sets(rng, args.queries, 32, 32))
    chunks = [tokenset.ragged(docs[i:i + CHUNK]) for i in range(0, len(docs), CHUNK)]
    fe_docs, fe_queries = docs[: args.fastembed_sets], [queries[i] for i in range(min(args.fastembed_sets, len(queries)))]
    print(f"tokenset {tokenset.__version__}, SIMD {tokenset.simd_level()}, {tokenset.get_num_threads()} threads; "
          f"{args.docs} documents (40..300 tokens), {args.queries} queries (32 tokens), dim {DIM}")

    results = {"docs": args.docs, "queries": args.queries, "dim": DIM, "simd": tokenset.simd_level(),
               "threads": tokenset.get_num_threads(), "cases": []}
    if Muvera is not None:
        worst = check_agreement_with_fastembed(rng)
        print(f"agreement with fastembed (identity, same hyperplanes, no fill): max relative difference {worst:.1e}")
        results["fastembed_agreement_max_rel_diff"] = worst
    else:
        print("fastembed not installed (pip install fastembed): tokenset timings only")

    torch = None
    if args.device == "cuda":
        import torch
        gpu_chunks = [tokenset.Ragged(torch.from_numpy(np.asarray(c.values)).cuda(), c.offsets) for c in chunks]
        gpu_queries = tokenset.Ragged(torch.from_numpy(np.asarray(queries.values)).cuda(), queries.offsets)

    for label, proj in (("fastembed defaults: k_sim 5, proj 16, reps 20", 16), ("identity projection, k_sim 5, "
                                                                              "reps 20", None)):
        fde = tokenset.FDE(DIM, reps=20, simhash_bits=5, proj_dim=proj)
        fns = {}
        fns["tokenset docs"], fns["tokenset queries"] = encode_all(fde, chunks, queries)
        if Muvera is not None:
            m = Muvera(dim=DIM, k_sim=5, dim_proj=proj or DIM, r_reps=20, random_seed=42)
            fns["fastembed docs"] = lambda m=m: [m.process_document(d) for d in fe_docs]
            fns["fastembed queries"] = lambda m=m: [m.process_query(q) for q in fe_queries]
        if torch is not None:
            fns["tokenset cuda docs"], fns["tokenset cuda queries"] = encode_all(fde, gpu_chunks, gpu_queries)
            got = fde.encode_documents(gpu_chunks[0]).cpu().numpy()
            want = fde.encode_documents(chunks[0])
            close = np.isclose(got, want, rtol=1e-4, atol=1e-5).mean()
            print(f"  GPU vs CPU: {close:.6f} of coordinates within 1e-4 (sign-bit flips at |dot| ~ 0 differ)")
        times = time_interleaved(fns, args.repeats, sync=(torch.cuda.synchronize if torch is not None else
                                                          lambda: None), budget_s=300)
        case = {"case": label, "proj_dim": proj, "output_dim": fde.output_dim}
        case["tokenset_docs_per_s"] = args.docs / times["tokenset docs"]
        case["tokenset_queries_per_s"] = args.queries / times["tokenset queries"]
        line = (f"{label}: tokenset {case['tokenset_docs_per_s']:,.0f} docs/s, "
                f"{case['tokenset_queries_per_s']:,.0f} queries/s")
        if Muvera is not None:
            case["fastembed_docs_per_s"] = len(fe_docs) / times["fastembed docs"]
            case["fastembed_queries_per_s"] = len(fe_queries) / times["fastembed queries"]
            case["docs_speedup"] = case["tokenset_docs_per_s"] / case["fastembed_docs_per_s"]
            case["queries_speedup"] = case["tokenset_queries_per_s"] / case["fastembed_queries_per_s"]
            line += (f"; fastembed {case['fastembed_docs_per_s']:,.1f} docs/s, {case['fastembed_queries_per_s']:,.1f}"
                     f" queries/s -> x{case['docs_speedup']:,.0f} docs, x{case['queries_speedup']:,.0f} queries")
        if torch is not None:
            case["cuda_docs_per_s"] = args.docs / times["tokenset cuda docs"]
            case["cuda_queries_per_s"] = args.queries / times["tokenset cuda queries"]
            case["cuda_over_cpu_docs"] = case["cuda_docs_per_s"] / case["tokenset_docs_per_s"]
            line += f"; GPU {case['cuda_docs_per_s']:,.0f} docs/s (x{case['cuda_over_cpu_docs']:.1f} the CPU encoder)"
        print(line, flush=True)
        results["cases"].append(case)

    if not args.quick:
        results["recall_fastembed_defaults"] = quality(np.random.default_rng(1), Muvera is not None)
        print("candidate recall (exact top-10 in FDE top-100, clustered data, dim 128):")
        for name, value in results["recall_fastembed_defaults"].items():
            print(f"  {name}: {value:.3f}")
        results["recall_grid_identity_dim64"] = recall_grid(np.random.default_rng(2))
        print("recall grid (identity, dim 64), reps x simhash_bits:", results["recall_grid_identity_dim64"])

    table = ["| case | tokenset docs/s | fastembed docs/s | docs ratio | tokenset queries/s | fastembed queries/s | "
             "queries ratio |" + (" GPU docs/s | GPU / CPU |" if torch is not None else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if torch is not None else "")]
    for c in results["cases"]:
        row = (f"| {c['case']} | {c['tokenset_docs_per_s']:,.0f} | {c.get('fastembed_docs_per_s', float('nan')):,.1f} "
               f"| x{c.get('docs_speedup', float('nan')):,.0f} | {c['tokenset_queries_per_s']:,.0f} | "
               f"{c.get('fastembed_queries_per_s', float('nan')):,.1f} | x{c.get('queries_speedup', float('nan')):,.0f} |")
        if torch is not None:
            row += f" {c['cuda_docs_per_s']:,.0f} | x{c['cuda_over_cpu_docs']:.1f} |"
        table.append(row)
    if "recall_fastembed_defaults" in results:
        table += ["", "| encoder (k_sim 5, reps 20) | exact top-10 in FDE top-100 |", "|---|---|"]
        table += [f"| {k} | {v:.3f} |" for k, v in results["recall_fastembed_defaults"].items()]
    if "recall_grid_identity_dim64" in results:
        grid = results["recall_grid_identity_dim64"]
        bits_values = sorted({int(k.split("x")[1]) for k in grid})
        reps_values = sorted({int(k.split("x")[0]) for k in grid})
        table += ["", "| reps \\ simhash_bits | " + " | ".join(map(str, bits_values)) + " |",
                  "|---|" + "---|" * len(bits_values)]
        table += [f"| {r} | " + " | ".join(f"{grid[f'{r}x{b}']:.2f}" for b in bits_values) + " |" for r in reps_values]
    stem = "fde" if args.device == "cpu" else "fde-cuda"
    path = write_results(stem, args.device, results, "\n".join(table))
    print(f"wrote {path}.json and .md")


if __name__ == "__main__":
    main()
