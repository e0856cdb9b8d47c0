"""Compressed documents (issue 23): MaxSim over int8 documents against tokenset's float32 / float16 kernels and torch's
float32 / bfloat16 / int8 GEMM + max over padded batches (PyLate's way), in the same run, after an agreement check.

Workload: queries of 32 x 128 tokens, documents of 40..300 tokens (uniform), top-10:
  * 1 and 32 queries against 10,000 documents (1.7M tokens): every method;
  * 1 query against 100,000 documents (17M tokens; 4.4 GB in float16, 2.6 GB in int8 + scales): tokenset only.
Reported per method: the time, nanoseconds per document token per core (time x threads / document tokens, one query
token block of 32), and the ratio to tokenset's float32 kernel in the same case.

tokenset methods:
  * float32 / float16: MaxSim's float kernels (float32 queries, the documents' dtype);
  * int8 docs, float queries: Quantized documents against float32 queries (exact against the dequantised tokens);
  * int8 docs, int8 queries: both quantised, exact int32 dot products (AVX-512 VNNI where the CPU has it);
  * bfloat16: bfloat16 queries and documents, AVX-512 BF16 dot products (vdpbf16ps) where the CPU has them (the
    level avx512bf16; otherwise the float kernel converts the rows);
  * residual 4 / 2 / 1 bits: PLAID residual codes (tokenset.ResidualCodec with PLAID's centroid count for the
    corpus: 16,384 at 10,000 documents, 65,536 at 100,000; k-means on a 2^17-token sample, shared by the three widths)
    scored in place from the codes. At 10,000 documents the corpus is encoded (one nearest-centroid search for the
    three widths); at 100,000 the codes are random centroid ids and bucket codes over the trained codec (the kernel's
    cost does not depend on the values, and encoding 17M tokens against 65,536 centroids takes most of an hour on two
    cores). Agreement: the returned scores against float32 MaxSim on the decoded documents (what the in-place scores
    approximate), within 0.05 on these sums; the quality of the codes is bench_storage_quality.py's table.
torch (10,000 documents): the documents padded to the longest (300) in chunks of 1,000, one GEMM per chunk
(float32, bfloat16, or torch._int_mm on int8 codes then the scales), masked max over document tokens, sum, top-k.

    python benchmarks/bench_compressed.py            # writes benchmarks/results/compressed-<machine>-<date>.*
    python benchmarks/bench_compressed.py --quick    # 10,000 documents only
    python benchmarks/bench_compressed.py --quick --tokenset-only   # ... and no torch GEMMs (minutes, not tens)
    python benchmarks/bench_compressed.py --quick --tokenset-only --levels avx2,avxvnni,avx512,avx512vnni
        # ... plus int8 x int8 and residual 4 bits at each SIMD level named (the levels this CPU runs)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402

DIM, QUERY_TOKENS, K, CHUNK = 128, 32, 10, 1000


def corpus(rng, n):
    lengths = rng.integers(40, 301, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.empty((int(offsets[-1]), DIM), np.float16)
    for t0 in range(0, values.shape[0], 1 << 20):  # normalised tokens, as ColBERT's, made in blocks
        block = rng.standard_normal((min(1 << 20, values.shape[0] - t0), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        values[t0:t0 + block.shape[0]] = block
    return values, offsets


class TorchPadded:
    """PyLate-style scoring: padded [chunk, 300, d] documents, one GEMM per chunk, masked max, sum, top-k."""

    def __init__(self, values, offsets, dtype, scales=None):
        n = len(offsets) - 1
        longest = int(np.diff(offsets).max())
        self.chunks = []
        for c0 in range(0, n, CHUNK):
            c1 = min(n, c0 + CHUNK)
            lengths = np.diff(offsets[c0:c1 + 1])
            padded = np.zeros((c1 - c0, longest, DIM), values.dtype)
            mask = np.arange(longest)[None, :] < lengths[:, None]
            padded[mask] = values[offsets[c0]:offsets[c1]]
            pad_scales = None
            if scales is not None:
                pad_scales = np.zeros((c1 - c0, longest), np.float32)
                pad_scales[mask] = scales[offsets[c0]:offsets[c1]]
                pad_scales = torch.from_numpy(pad_scales.reshape(-1))
            docs = torch.from_numpy(padded.reshape(-1, DIM))
            self.chunks.append((docs.to(dtype) if scales is None else docs, torch.from_numpy(mask), pad_scales))
        self.dtype, self.int8 = dtype, scales is not None

    def topk(self, queries, query_scales=None):
        nq = queries.shape[0] // QUERY_TOKENS
        q = queries if self.int8 else queries.to(self.dtype)
        scores = []
        for docs, mask, doc_scales in self.chunks:
            if self.int8:
                sims = torch._int_mm(q, docs.T).float() * query_scales[:, None] * doc_scales[None, :]
            else:
                sims = (q @ docs.T).float()
            sims = sims.view(nq, QUERY_TOKENS, mask.shape[0], mask.shape[1]).masked_fill(~mask, -torch.inf)
            scores.append(sims.amax(dim=3).sum(dim=1))
        return torch.topk(torch.cat(scores, 1), K, dim=1)


def agree(name, got_ids, want_scores, bound):
    """The method's top-k ids score, by exact float32 MaxSim, within `bound` of the exact top-k scores."""
    exact_of_got = np.take_along_axis(want_scores, np.asarray(got_ids), 1)
    kth = np.sort(want_scores, axis=1)[:, ::-1][:, :K]
    worst = float(np.max(kth - np.sort(exact_of_got, axis=1)[:, ::-1]))
    assert worst <= bound, f"{name}: its top-{K} scores {worst:.4f} below the exact top-{K} (bound {bound})"
    return worst


def agree_codes(name, out, queries, codes, bound=0.05):
    """The returned top-k scores (in place, from the codes) against float32 MaxSim on those documents decoded."""
    scores, ids = out
    worst = 0.0
    for a in range(len(queries)):
        picked = tokenset.ResidualCodes(*(np.concatenate([codes[int(i)][j] for i in ids[a]]) for j in range(3)),
                                        np.concatenate([[0], np.cumsum([len(codes[int(i)][0]) for i in ids[a]])]),
                                        codes.codec)
        exact = tokenset.maxsim(queries[a], picked.decode())[0]
        worst = max(worst, float(np.max(np.abs(exact - scores[a]))))
    assert worst <= bound, f"{name}: in-place scores {worst:.4f} from MaxSim on the decoded documents (bound {bound})"
    return worst


def residual_codes(d16, rng, encode):
    """Codes of 4, 2 and 1 bits over one k-means (PLAID's centroid count, a 2^17-token sample): the corpus encoded, or
    random codes of its shape (see the module docstring)."""
    first = tokenset.ResidualCodec.train(d16, bits=4, sample=1 << 17)
    codecs = {4: first}
    for bits in (2, 1):
        codecs[bits] = tokenset.ResidualCodec.train(d16, bits=bits, centroids=first.centroids, sample=1 << 17)
    tokens = int(d16.offsets[-1])
    if encode:
        codes = {4: first.encode(d16)}
        for bits in (2, 1):
            codes[bits] = codecs[bits].encode(d16, centroid_ids=codes[4].centroid_ids)
        return codes
    ids = rng.integers(0, first.num_centroids, tokens).astype(np.int32)
    out = {}
    for bits, codec in codecs.items():
        packed = rng.integers(0, 256, (tokens, DIM * bits // 8), dtype=np.uint8)
        norms = np.empty(tokens, np.float32)
        c32 = codec.centroids.astype(np.float32)
        for t0 in range(0, tokens, 1 << 18):  # the true 1/||reconstruction|| of each random code
            t1 = min(tokens, t0 + (1 << 18))
            bits_ = np.unpackbits(packed[t0:t1], axis=1).reshape(t1 - t0, DIM, bits)
            code = (bits_ << np.arange(bits, dtype=np.uint8)).sum(axis=2)
            v = c32[ids[t0:t1]] + codec.bucket_weights[code]
            norms[t0:t1] = 1 / np.linalg.norm(v, axis=1)
        out[bits] = tokenset.ResidualCodes(packed, ids, norms, d16.offsets, codec)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokenset-only", action="store_true", help="skip torch's padded GEMMs")
    parser.add_argument("--levels", default="", help="comma-separated SIMD levels: int8 x int8 and residual 4 bits "
                                                     "timed at each too (those this CPU runs)")
    args = parser.parse_args()
    active = tokenset.simd_level()  # the best level, or the one TOKENSET_SIMD capped it to
    levels = []
    for level in filter(None, args.levels.split(",")):
        try:
            tokenset.set_simd_level(level)
            levels.append(level)
        except ValueError as err:
            print(f"skipping level {level}: {err}", flush=True)
    tokenset.set_simd_level(active)

    def at_level(level, fn):
        def run():
            tokenset.set_simd_level(level)
            try:
                return fn()
            finally:
                tokenset.set_simd_level(active)
        return run

    threads = tokenset.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"{threads} threads, SIMD level {tokenset.simd_level()}", flush=True)
    results = []
    for n in ((10000,) if args.quick else (10000, 100000)):
        values, offsets = corpus(rng, n)
        tokens = int(offsets[-1])
        d16 = tokenset.Ragged(values, offsets)
        d8 = tokenset.quantize(d16)
        d32 = tokenset.Ragged(values.astype(np.float32), offsets) if n <= 10000 else None
        codes = residual_codes(d16, rng, encode=n <= 10000)
        print(f"  {n:,} documents: {codes[4].codec.num_centroids} centroids", flush=True)
        d_bf16 = tokenset.Ragged(torch.from_numpy(values).to(torch.bfloat16), offsets)
        torch_methods = {}
        if n <= 10000 and not args.tokenset_only:
            torch_methods = {"torch float32 GEMM + max (padded)": TorchPadded(values, offsets, torch.float32),
                             "torch bfloat16 GEMM + max (padded)": TorchPadded(values, offsets, torch.bfloat16),
                             "torch int8 _int_mm + max (padded)": TorchPadded(d8.values, offsets, torch.int8,
                                                                              d8.scales)}
        for nq in ((1, 32) if n <= 10000 else (1,)):
            q = rng.standard_normal((nq * QUERY_TOKENS, DIM), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            queries = tokenset.Ragged(q, np.arange(nq + 1, dtype=np.int64) * QUERY_TOKENS)
            q8 = tokenset.quantize(queries)
            exact = tokenset.maxsim(queries, d32 if d32 is not None else d16)  # the float scores to agree with
            q_bf16 = tokenset.Ragged(torch.from_numpy(q).to(torch.bfloat16), queries.offsets)
            fns = {"tokenset float16": lambda: tokenset.maxsim_topk(queries, d16, K),
                   f"tokenset bfloat16 ({tokenset.simd_level()})": lambda: tokenset.maxsim_topk(q_bf16, d_bf16, K),
                   "tokenset int8 docs, float queries": lambda: tokenset.maxsim_topk(queries, d8, K),
                   "tokenset int8 docs, int8 queries": lambda: tokenset.maxsim_topk(q8, d8, K)}
            for bits, c in codes.items():
                fns[f"tokenset residual {bits} bits"] = lambda c=c: tokenset.maxsim_topk(queries, c, K)
            for level in levels:
                fns[f"tokenset int8 docs, int8 queries [{level}]"] = at_level(
                    level, lambda: tokenset.maxsim_topk(q8, d8, K))
                fns[f"tokenset residual 4 bits [{level}]"] = at_level(
                    level, lambda: tokenset.maxsim_topk(queries, codes[4], K))
            if d32 is not None:
                fns = {"tokenset float32": lambda: tokenset.maxsim_topk(queries, d32, K), **fns}
            tq, tq8, tq8_scales = torch.from_numpy(q), torch.from_numpy(q8.values), torch.from_numpy(q8.scales)
            for name, method in torch_methods.items():
                fns[name] = (lambda m=method: m.topk(tq8, tq8_scales)) if "int8" in name else \
                    (lambda m=method: m.topk(tq))
            # Agreement: every method's top-10 holds documents whose exact float MaxSim is within the quantisation
            # bound of the exact top-10 (int8 moves a score by ~0.1 on these 32-token sums; float16 by ~0.01).
            errors = {}
            for name, fn in fns.items():
                out = fn()
                if "residual" in name:
                    errors[name] = agree_codes(name, out, [q[a * QUERY_TOKENS:(a + 1) * QUERY_TOKENS]
                                                           for a in range(nq)], codes[int(name.split()[2])])
                    if "[" in name:  # the kernels give the same bits at every level
                        assert np.array_equal(out[0], fns["tokenset residual 4 bits"]()[0]), name
                    continue
                ids = out[1].numpy() if isinstance(out[1], torch.Tensor) else out[1]
                errors[name] = agree(name, ids, exact, 0.5 if ("int8" in name or "bfloat16" in name) else 0.05)
                if "[" in name:  # the int8 kernels give the same bits at every level
                    assert np.array_equal(out[0], fns["tokenset int8 docs, int8 queries"]()[0]), name
            times = time_interleaved(fns, 5 if n <= 10000 else 3, budget_s=60.0)
            base_name = "tokenset float32" if "tokenset float32" in times else "tokenset float16"
            base = times[base_name]
            row = {"documents": n, "document_tokens": tokens, "queries": nq, "threads": threads, "times_s": times,
                   "ns_per_document_token_per_core": {k: t * threads / (tokens * nq) * 1e9 for k, t in times.items()},
                   "speedup_vs": base_name, "speedup": {k: base / t for k, t in times.items()},
                   "top10_exact_score_gap": errors}
            results.append(row)
            print(f"{n:,} documents ({tokens:,} tokens), {nq} queries:", flush=True)
            for name, t in times.items():
                print(f"  {name:40s} {t * 1e3:9.1f} ms  {row['ns_per_document_token_per_core'][name]:6.1f} ns/token/core"
                      f"  x{base / t:.2f} vs {base_name}", flush=True)
        del values, d16, d8, d32, torch_methods, codes, d_bf16
    names = []
    for r in results:
        names += [k for k in r["times_s"] if k not in names]
    table = ["| documents | queries | method | time | ns / doc token / core | vs tokenset float32 |", "|---|---|---|---|---|---|"]
    for r in results:
        for name in names:
            if name in r["times_s"]:
                t = r["times_s"][name]
                table.append(f"| {r['documents']:,} | {r['queries']} | {name} | {t * 1e3:.1f} ms | "
                             f"{r['ns_per_document_token_per_core'][name]:.1f} | x{r['speedup'][name]:.2f}"
                             + ("" if r["speedup_vs"] == "tokenset float32" else " (vs float16)") + " |")
    table.append(f"\nQueries {QUERY_TOKENS} x {DIM}, documents of 40..300 tokens, top-{K}, {threads} threads, SIMD "
                 f"level {tokenset.simd_level()}; ns / doc token / core = time x threads / (queries x document tokens).")
    print("\n".join(table))
    path = write_results(("compressed-quick" if args.quick else "compressed") + ("-tokenset" if args.tokenset_only else "")
                         + ("-levels" if levels else ""),
                         "cpu",
                         {"results": results, "build": tokenset.build_info()}, "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
