"""Attention rows without the attention matrix (issue 20): tokenset.attention_scores against what VisionZip, FastV,
VTC-CLS and HiPrune do today, the eager attention matrix softmax(q k^T * scale) in torch, in the same process, after
an agreement check on the same inputs.

Workload: batch 1, 32 heads, d 128, float32, N = 576, 2,880 and 16,384 query and key tokens; three queries:
* 1 row (the last row, FastV) and 8 rows, head mean;
* the column mean over all rows (HiPrune), head mean.
At N = 16,384 the eager matrix of 32 heads is 32 GiB: it runs head by head (1 GiB at a time), a lower bound on its
time. The peak memory of each method is the resident-set growth of one call in a fresh interpreter.

    python benchmarks/bench_attention_scores.py            # writes benchmarks/results/attention-scores-<machine>-<date>.*
    python benchmarks/bench_attention_scores.py --quick    # N = 576 and 2,880 only
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402

HEADS, DIM = 32, 128
WHOLE_MATRIX_LIMIT = 4096  # above this N, the eager matrix runs head by head


def eager(q: torch.Tensor, k: torch.Tensor, what: str) -> torch.Tensor:
    """The methods' way: the full softmax matrix, then its rows or column mean, head-averaged."""
    scale = q.shape[-1] ** -0.5
    n = q.shape[2]

    def one(qh, kh):
        weights = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)
        if what == "column mean":
            return weights.mean(-2)
        return weights[..., -(1 if what == "1 row" else 8):, :].clone()  # not a view that keeps the matrix alive

    if n <= WHOLE_MATRIX_LIMIT:
        return one(q, k).mean(1)
    return torch.stack([one(q[:, h], k[:, h]) for h in range(q.shape[1])], 1).mean(1)


def ours(q: torch.Tensor, k: torch.Tensor, what: str) -> torch.Tensor:
    n = q.shape[2]
    rows = "mean" if what == "column mean" else (-1 if what == "1 row" else list(range(n - 8, n)))
    return tokenset.attention_scores(q, k, rows=rows)


PEAK = """
import sys, torch, tokenset
sys.path.insert(0, {here!r})
from bench_attention_scores import eager, ours
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
small = torch.randn(1, 32, 64, 128)
(ours if {method!r} == "tokenset" else eager)(small, small, {what!r})
q, k = torch.randn(1, 32, {n}, 128), torch.randn(1, 32, {n}, 128)
before = status("VmRSS:")
(ours if {method!r} == "tokenset" else eager)(q, k, {what!r})
print("PEAK", status("VmHWM:") - before)
"""


def peak_bytes(method: str, what: str, n: int) -> int:
    code = PEAK.format(here=str(HERE), method=method, what=what, n=n)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"peak memory run failed: {proc.stderr[-2000:]}")
    return int(proc.stdout.split("PEAK")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of timing per comparison")
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = tokenset.get_num_threads()
    torch.set_num_threads(threads)
    sizes = (576, 2880) if args.quick else (576, 2880, 16384)
    rows = []
    for n in sizes:
        q, k = torch.randn(1, HEADS, n, DIM), torch.randn(1, HEADS, n, DIM)
        for what in ("1 row", "8 rows", "column mean"):
            got, want = ours(q, k, what), eager(q, k, what)
            err = float((got - want).abs().max())
            assert err < 1e-5, (n, what, err)
            repeats = args.repeats if n <= 2880 else 2
            times = time_interleaved({"tokenset": lambda: ours(q, k, what), "torch eager matrix": lambda: eager(q, k,
                                                                                                             what)},
                                     repeats, budget_s=args.budget if n <= 2880 else 10.0)
            peaks = {m: peak_bytes(m, what, n) for m in ("tokenset", "torch eager matrix")}
            row = {"n": n, "what": what, "max_abs_error": err, "times_s": times, "peak_bytes": peaks,
                   "speedup": times["torch eager matrix"] / times["tokenset"]}
            rows.append(row)
            print(f"N={n:>6} {what:>11}: tokenset {times['tokenset'] * 1e3:9.1f} ms, eager "
                  f"{times['torch eager matrix'] * 1e3:9.1f} ms, x{row['speedup']:.1f}; peak "
                  f"{peaks['tokenset'] / 2**20:.1f} vs {peaks['torch eager matrix'] / 2**20:.0f} MiB (error {err:.1e})",
                  flush=True)
    table = ["| N | query | tokenset | torch eager matrix | speedup | peak memory tokenset | peak memory eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, p = r["times_s"], r["peak_bytes"]
        table.append(f"| {r['n']:,} | {r['what']} | {t['tokenset'] * 1e3:.1f} ms | "
                     f"{t['torch eager matrix'] * 1e3:.1f} ms | x{r['speedup']:.1f} | {p['tokenset'] / 2**20:.1f} MiB | "
                     f"{p['torch eager matrix'] / 2**20:,.0f} MiB |")
    table.append(f"\nbatch 1, {HEADS} heads, d {DIM}, float32, {threads} threads, torch {torch.__version__}; above "
                 f"N = {WHOLE_MATRIX_LIMIT:,} the eager matrix runs head by head (the whole one needs "
                 f"{HEADS * 16384 ** 2 * 4 / 2**30:.0f} GiB at 16,384).")
    print("\n".join(table))
    path = write_results("attention-scores-quick" if args.quick else "attention-scores", "cpu",
                         {"threads": threads, "torch": torch.__version__, "rows": rows,
                          "build": tokenset.build_info()}, "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
