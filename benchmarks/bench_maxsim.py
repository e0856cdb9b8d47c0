"""MaxSim benchmark: tokenset against what users run today, in the same process, as ratios.

Workloads (issue 2): a 32-token query against 1,000 and 10,000 documents of 40..300 tokens, dim 128 and 384, float32
and float16, and bfloat16 (AMX tiles where the CPU has them). Alternatives: torch einsum over padded batches (PyLate's
colbert_scores), torch per-document matmul (ColBERT-style loops), a numpy per-document loop, fast-maxsim (when
installed). The machine's ceiling is the rate of a large torch float32 matmul, timed among the methods of each case.
Every alternative is first checked to agree with tokenset.

    python benchmarks/bench_maxsim.py            # full run, writes benchmarks/results/maxsim-<machine>-<date>.{json,md}
    python benchmarks/bench_maxsim.py --quick    # 1,000 documents only
    python benchmarks/bench_maxsim.py --device cuda   # GPU: float16 scan of 100k documents vs memory bandwidth
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenset  # noqa: E402
from _common import machine_name, time_interleaved, write_results  # noqa: E402

try:
    import torch
except ImportError:
    sys.exit("this benchmark compares against torch: pip install torch==2.13.0")
try:
    import fast_maxsim
except ImportError:
    fast_maxsim = None
try:
    import ml_dtypes  # bfloat16 numpy arrays
except ImportError:
    ml_dtypes = None


SLOW_CALL_S = 3.0  # alternatives slower than this per call are timed from a single call


PADDED_BATCH = 1000  # documents per padded einsum batch


def pylate_colbert_scores(q, d_padded, mask):
    """PyLate's colbert_scores: einsum over padded batches, padding multiplied to 0, max, sum."""
    scores = torch.einsum("ash,bth->abst", q, d_padded)
    scores = scores * mask[None, :, None, :]
    return scores.max(dim=-1).values.sum(dim=-1)


def padded_batches(tdocs, lengths, tdtype):
    """Documents in batches of PADDED_BATCH, each padded to its own longest document, with PyLate's 0/1 mask. One
    batch of all 10,000 float16 documents did not finish in 15 minutes (torch's CPU float16 einsum), and users batch."""
    batches = []
    for i in range(0, len(tdocs), PADDED_BATCH):
        padded = torch.nn.utils.rnn.pad_sequence(tdocs[i:i + PADDED_BATCH], batch_first=True)
        lens = torch.from_numpy(lengths[i:i + PADDED_BATCH])
        batches.append((padded, (torch.arange(padded.shape[1])[None, :] < lens[:, None]).to(tdtype)))
    return batches


def pylate_batched(q, batches):
    return torch.cat([pylate_colbert_scores(q[None], padded, mask) for padded, mask in batches], dim=1)


def torch_per_document(q, docs):
    return torch.stack([(q @ d.T).max(dim=1).values.sum() for d in docs])


def numpy_per_document(q, docs):
    return np.array([(q @ d.T).max(axis=1).sum() for d in docs], dtype=np.float32)


CEILING = "ceiling_matmul"  # a 2048^3 torch float32 matmul, timed among the methods of every case
CEILING_N = 2048


def run_cpu_case(n_docs, dim, dtype, rng, repeats):
    lengths = rng.integers(40, 301, n_docs)
    docs32 = [rng.standard_normal((int(n), dim)).astype(np.float32) for n in lengths]
    q32 = rng.standard_normal((32, dim)).astype(np.float32)
    docs = [d.astype(dtype) for d in docs32]
    q = q32.astype(dtype)
    ragged_docs = tokenset.ragged(docs)
    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[np.dtype(dtype).name]
    # torch.from_numpy knows no ml_dtypes bfloat16: hand torch the same 16 bits as int16 and reinterpret them
    to_torch = ((lambda a: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)) if tdtype == torch.bfloat16
                else torch.from_numpy)
    tq = to_torch(q)
    tdocs = [to_torch(d) for d in docs]
    batches = padded_batches(tdocs, lengths, tdtype)
    # numpy and fast-maxsim take float32: float16/bfloat16 data is upcast once, outside the timing
    nq = q.astype(np.float32)
    ndocs = [d.astype(np.float32) for d in docs]

    methods = {
        "tokenset": lambda: tokenset.maxsim(q, ragged_docs),
        "torch_einsum_padded": lambda: pylate_batched(tq, batches),
        "torch_matmul_per_doc": lambda: torch_per_document(tq, tdocs),
        "numpy_per_doc": lambda: numpy_per_document(nq, ndocs),
    }
    if fast_maxsim is not None:
        methods["fast_maxsim"] = lambda: np.asarray(fast_maxsim.maxsim_scores_variable(nq, ndocs))

    # Agreement first: every alternative must give tokenset's scores.
    ours = np.asarray(methods["tokenset"]()).reshape(-1).astype(np.float64)
    agreement, single_call = {}, {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        theirs = fn()
        elapsed = time.perf_counter() - t0
        if elapsed > SLOW_CALL_S and name != "tokenset":
            single_call[name] = elapsed  # too slow to repeat: its one (agreement) call is its time
        theirs = (theirs.float().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs))
        theirs = theirs.reshape(-1).astype(np.float64)
        rel = float(np.max(np.abs(theirs - ours) / np.maximum(1.0, np.abs(ours))))
        tol = 1e-4 if dtype == np.float32 else 2e-2  # 16-bit torch CPU kernels may accumulate in 16 bits
        if not rel <= tol:
            raise SystemExit(f"{name} disagrees with tokenset: max relative difference {rel:.2e} > {tol}")
        agreement[name] = rel

    a, b = torch.randn(CEILING_N, CEILING_N), torch.randn(CEILING_N, CEILING_N)
    timed = {k: v for k, v in methods.items() if k not in single_call}
    timed[CEILING] = lambda: a @ b
    times = time_interleaved(timed, repeats)
    ceiling = 2.0 * CEILING_N ** 3 / times.pop(CEILING) / 1e9
    times.update(single_call)
    flops = 2.0 * 32 * dim * float(lengths.sum())
    return {
        "documents": n_docs, "dim": dim, "dtype": np.dtype(dtype).name, "query_tokens": 32,
        "document_tokens": int(lengths.sum()),
        "ms": {k: v * 1e3 for k, v in times.items()},
        "speedup_vs": {k: v / times["tokenset"] for k, v in times.items() if k != "tokenset"},
        "tokenset_gflops": flops / times["tokenset"] / 1e9,
        "matmul_gflops": ceiling,
        "fraction_of_matmul": flops / times["tokenset"] / 1e9 / ceiling,
        "max_rel_diff": agreement,
        "timed_from_one_call": sorted(single_call),
    }


def write_cpu_results(cases):
    info = tokenset.build_info()
    payload = {"benchmark": "maxsim", "device": "cpu", "simd": info["simd_active"], "threads": info["num_threads"],
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "padded_einsum_batch": PADDED_BATCH, "cases": cases}
    alts = sorted({k for c in cases for k in c["speedup_vs"]})
    lines = [f"# MaxSim on {machine_name()} ({info['simd_active']}, {info['num_threads']} threads)", "",
             "Query 32 tokens; documents 40..300 tokens. Times are medians (ms); `xN` = alternative time / tokenset "
             "time (higher is better for tokenset); `*` = timed from one call (over 3 s per call). numpy and "
             "fast-maxsim take float32, so in float16/bfloat16 rows they get float32 copies made outside the timing. "
             f"torch_einsum_padded is PyLate's colbert_scores over batches of {PADDED_BATCH} padded documents. "
             f"matmul = a {CEILING_N}^3 torch float32 matmul timed among the methods of the same case.", "",
             "| docs | dim | dtype | tokenset ms | GFLOP/s | matmul GFLOP/s | % of matmul | " + " | ".join(alts) + " |",
             "|---" * (7 + len(alts)) + "|"]
    for c in cases:
        cells = [f"{c['ms'][a]:.1f} ms (x{c['speedup_vs'][a]:.1f})" + ("*" if a in c["timed_from_one_call"] else "")
                 if a in c["ms"] else "-" for a in alts]
        lines.append(f"| {c['documents']} | {c['dim']} | {c['dtype']} | {c['ms']['tokenset']:.2f} | "
                     f"{c['tokenset_gflops']:.0f} | {c['matmul_gflops']:.0f} | {100 * c['fraction_of_matmul']:.0f}% | "
                     + " | ".join(cells) + " |")
    return write_results("maxsim", "cpu", payload, "\n".join(lines))


def cpu_main(args):
    rng = np.random.default_rng(0)
    cases = []
    sizes = [1000] if args.quick else [1000, 10000]
    for n_docs in sizes:
        for dim in (128, 384):
            for dtype in (np.float32, np.float16) + ((ml_dtypes.bfloat16,) if ml_dtypes is not None else ()):
                repeats = args.repeats if n_docs <= 1000 else max(3, args.repeats // 3)
                case = run_cpu_case(n_docs, dim, dtype, rng, repeats)
                cases.append(case)
                print(f"{n_docs:>6} docs dim {dim} {case['dtype']:>7}: tokenset {case['ms']['tokenset']:8.2f} ms "
                      f"({case['tokenset_gflops']:.0f} GFLOP/s, {100 * case['fraction_of_matmul']:.0f}% of matmul)  " +
                      "  ".join(f"{k} x{v:.1f}" for k, v in case["speedup_vs"].items()), flush=True)
                path = write_cpu_results(cases)  # after every case: an interrupted run keeps its results
    print(f"wrote {path}.json and .md")


def cuda_main(args):
    if not torch.cuda.is_available() or tokenset.build_info()["cuda_devices"] == 0:
        sys.exit("no CUDA device (or tokenset was built without CUDA)")
    rng = np.random.default_rng(0)
    n_docs, dim = (10000 if args.quick else 100000), 128
    lengths = rng.integers(40, 301, n_docs)
    offsets = np.r_[0, np.cumsum(lengths)]
    values = torch.randn(int(offsets[-1]), dim, device="cuda", dtype=torch.float16)
    q = torch.randn(32, dim, device="cuda", dtype=torch.float16)
    docs = tokenset.Ragged(values, offsets)
    # agreement with the CPU kernel on a slice
    sub = tokenset.Ragged(values[: offsets[200]], offsets[:201])
    gpu = tokenset.maxsim(q, sub).cpu().numpy()
    cpu = tokenset.maxsim(q.cpu(), tokenset.Ragged(values[: offsets[200]].cpu(), offsets[:201]))
    rel = float(np.max(np.abs(gpu - cpu) / np.maximum(1, np.abs(cpu))))
    assert rel < 1e-3, rel
    methods = {"tokenset": lambda: tokenset.maxsim(q, docs)}
    padded_n = 5000  # padded einsum over a chunk of documents, as PyLate on GPU
    pad = torch.nn.utils.rnn.pad_sequence([values[offsets[i]:offsets[i + 1]] for i in range(padded_n)], True)
    mask = (torch.arange(pad.shape[1], device="cuda")[None] < torch.from_numpy(lengths[:padded_n]).cuda()[:, None]).half()
    methods["torch_einsum_padded_5k"] = lambda: pylate_colbert_scores(q[None], pad, mask)
    times = time_interleaved(methods, args.repeats, sync=torch.cuda.synchronize)
    bytes_read = values.numel() * 2
    bw = bytes_read / times["tokenset"] / 1e9
    # peak bandwidth: a large device-to-device copy in the same run
    big = torch.empty(int(2e9) // 2, dtype=torch.float16, device="cuda")
    big2 = torch.empty_like(big)
    copy_t = time_interleaved({"copy": lambda: big2.copy_(big)}, 10, sync=torch.cuda.synchronize)["copy"]
    copy_bw = 2 * big.numel() * 2 / copy_t / 1e9
    per_doc = {"tokenset": times["tokenset"] / n_docs, "torch_einsum_padded": times["torch_einsum_padded_5k"] / padded_n}
    payload = {"benchmark": "maxsim", "device": "cuda", "gpu": torch.cuda.get_device_name(), "documents": n_docs,
               "dim": dim, "dtype": "float16", "ms": {k: v * 1e3 for k, v in times.items()},
               "tokenset_gbps": bw, "copy_gbps": copy_bw, "fraction_of_copy_bandwidth": bw / copy_bw,
               "speedup_per_document_vs_padded_einsum": per_doc["torch_einsum_padded"] / per_doc["tokenset"],
               "max_rel_diff_vs_cpu": rel}
    table = "\n".join([f"# MaxSim on {torch.cuda.get_device_name()}", "",
                       "| docs | tokenset ms | GB/s | % of copy bandwidth | per-doc speed-up vs padded einsum |",
                       "|---|---|---|---|---|",
                       f"| {n_docs} | {times['tokenset'] * 1e3:.2f} | {bw:.0f} | {100 * bw / copy_bw:.0f}% | "
                       f"x{payload['speedup_per_document_vs_padded_einsum']:.1f} |"])
    print(table)
    path = write_results("maxsim", "cuda", payload, table)
    print(f"wrote {path}.json and .md")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    cuda_main(args) if args.device == "cuda" else cpu_main(args)


if __name__ == "__main__":
    main()
