"""The FDE scan (issue 23, item 0): tokenset.inner_product_topk over float16 FDEs against numpy / torch matmul +
argpartition, in the same run, after an agreement check, with the machine's limits measured in the same run: the read
bandwidth (a 1 GiB float32 array summed by torch on all threads) and the float32 FMA peak.

Workload: 1, 8 and 32 queries against 20,000 and 100,000 float16 FDEs of 10,240 dims (410 MB and 2 GB), k = 200;
the same FDEs stored int8 with a scale per row (tokenset.quantize: half the bytes), with the overlap of their top-200
with the float16 scan's.
Reported per case: the time, GB/s of rows read (the FDE bytes over the time) and its share of the read bandwidth, and
GFLOP/s (2 * queries * rows * dims) and its share of the FMA peak.

    python benchmarks/bench_inner_product.py            # writes benchmarks/results/inner-product-<machine>-<date>.*
    python benchmarks/bench_inner_product.py --quick    # 20,000 FDEs only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402

DIM, K = 10240, 200


def read_bandwidth() -> float:
    """The machine's read bandwidth: GB/s of the fastest of a few torch sums of a 1 GiB float32 array (all threads)."""
    x = torch.empty(2**28).fill_(1.0)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def top_k_torch(q: torch.Tensor, x: torch.Tensor, k: int):
    scores = q @ x.T  # float32 GEMM on float32 queries and float16 rows converted per call
    return torch.topk(scores, k, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    threads = tokenset.get_num_threads()
    torch.set_num_threads(threads)
    peak = max(tokenset._core.measure_fma_peak(threads, 0.5) for _ in range(3))  # noise only lowers it
    bandwidth = read_bandwidth()
    print(f"{threads} threads, FMA peak {peak:.0f} GFLOP/s, read bandwidth {bandwidth:.1f} GB/s", flush=True)
    rng = np.random.default_rng(0)
    rows_list = (20000,) if args.quick else (20000, 100000)
    results = []
    for rows in rows_list:
        fdes = rng.standard_normal((rows, DIM), dtype=np.float32).astype(np.float16)
        x16 = torch.from_numpy(fdes)
        int8 = tokenset.quantize(fdes)  # int8 FDE storage (Index(fde_storage="int8")): half the bytes
        x32 = x16.float() if rows <= 20000 else None  # the float32 copy a numpy / torch user would scan (2x bytes)
        for nq in (1, 8, 32):
            q = rng.standard_normal((nq, DIM), dtype=np.float32)
            scores, ids = tokenset.inner_product_topk(q, fdes, K)
            want = (q.astype(np.float64) @ fdes.astype(np.float64).T)
            exact = np.take_along_axis(want, ids, 1)
            err = float(np.max(np.abs(scores - exact) / np.maximum(1.0, np.abs(exact))))
            assert err < 1e-4, err
            kth = np.sort(want, axis=1)[:, -K]
            assert np.all(scores[:, -1] >= kth - 1e-2 * np.abs(kth)), "tokenset's top-k misses the exact k-th score"
            scores8, ids8 = tokenset.inner_product_topk(q, int8.values, K, scales=int8.scales)
            recall8 = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids8, ids)]))
            fns = {"tokenset (float16 rows)": lambda: tokenset.inner_product_topk(q, fdes, K),
                   "tokenset (int8 rows)": lambda: tokenset.inner_product_topk(q, int8.values, K, scales=int8.scales)}
            tq = torch.from_numpy(q)
            if x32 is not None:
                fns["torch float32 GEMM + topk (float32 copy)"] = lambda: top_k_torch(tq, x32, K)
                fns["numpy float32 matmul + argpartition"] = (
                    lambda: np.argpartition(-(q @ x32.numpy().T), K, axis=1)[:, :K])
            times = time_interleaved(fns, 5 if rows <= 20000 else 3, budget_s=30.0)
            ours = times["tokenset (float16 rows)"]
            gbs = rows * DIM * 2 / ours / 1e9
            gflops = 2 * nq * rows * DIM / ours / 1e9
            int8_time = times["tokenset (int8 rows)"]
            row = {"rows": rows, "queries": nq, "times_s": times, "read_bandwidth_gbs": bandwidth,
                   "tokenset_gbs": gbs, "tokenset_gflops": gflops, "fma_peak_gflops": peak, "max_rel_error": err,
                   "int8_gbs": rows * (DIM + 4) / int8_time / 1e9, "int8_top200_overlap_with_float16": recall8}
            results.append(row)
            others = ", ".join(f"{name} {t * 1e3:.1f} ms (x{t / ours:.2f})" for name, t in times.items()
                               if not name.startswith("tokenset"))
            others += (f"; int8 rows {int8_time * 1e3:.1f} ms = {row['int8_gbs']:.1f} GB/s (x{ours / int8_time:.2f} "
                       f"vs float16, top-{K} overlap {recall8:.3f})")
            print(f"{rows:>7} rows, {nq:>2} queries: tokenset {ours * 1e3:.1f} ms = {gbs:.1f} GB/s "
                  f"({gbs / bandwidth:.0%} of {bandwidth:.1f} GB/s read), {gflops:.0f} GFLOP/s ({gflops / peak:.0%} of "
                  f"{peak:.0f}); {others}", flush=True)
        del fdes, x16, x32, int8
    table = ["| rows | queries | tokenset | GB/s (of read bandwidth) | GFLOP/s (of FMA peak) | int8 rows (GB/s, top-200 "
             "overlap) | torch GEMM + topk | numpy matmul + argpartition |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["times_s"]
        ours = t["tokenset (float16 rows)"]
        torch_t = t.get("torch float32 GEMM + topk (float32 copy)")
        numpy_t = t.get("numpy float32 matmul + argpartition")
        table.append(f"| {r['rows']:,} | {r['queries']} | {ours * 1e3:.1f} ms | {r['tokenset_gbs']:.1f} "
                     f"({r['tokenset_gbs'] / r['read_bandwidth_gbs']:.0%} of {r['read_bandwidth_gbs']:.1f}) | "
                     f"{r['tokenset_gflops']:.0f} ({r['tokenset_gflops'] / peak:.0%}) | "
                     f"{t['tokenset (int8 rows)'] * 1e3:.1f} ms ({r['int8_gbs']:.1f} GB/s, "
                     f"{r['int8_top200_overlap_with_float16']:.3f}) | "
                     + (f"{torch_t * 1e3:.1f} ms (x{torch_t / ours:.2f})" if torch_t else "-") + " | "
                     + (f"{numpy_t * 1e3:.1f} ms (x{numpy_t / ours:.2f})" if numpy_t else "-") + " |")
    table.append(f"\nfloat16 FDEs of {DIM:,} dims, k = {K}, {threads} threads, FMA peak {peak:.0f} GFLOP/s; the read "
                 f"bandwidth is the fastest torch sum of a 1 GiB float32 array; torch / numpy scan a float32 copy "
                 f"(20,000 rows only: 2x the bytes).")
    print("\n".join(table))
    path = write_results("inner-product-quick" if args.quick else "inner-product", "cpu",
                         {"threads": threads, "fma_peak_gflops": peak, "results": results,
                          "build": tokenset.build_info()}, "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
