"""Token selection and merging benchmark: tokenset against what users run today, in the same process, as ratios.

Workload (issue 12): batches of 32 sets of 576 and 2,880 tokens (one and five 24x24 image tiles), dims 1024 and 4096,
float32, keep about 10% (58 / 288). Same run, after an agreement check on the same inputs:

* DivPrune's published loop (torch: cosine distance matrix, per-image loop, batch 1) vs tokenset.kcenter (cosine,
  most isolated first); also tokenset with a given first token (no O(n^2) isolation pass).
* torch_cluster.fps (squared L2 from index 0, one batched call) and fpsample.fps_sampling (per set) on unit vectors vs
  tokenset.kcenter(metric="l2", first=0): the same picks.
* ToMe's bipartite soft matching + size-weighted merge (torch, batched, rounds of at most n/2 until keep) vs
  tokenset.merge(method="tome").
* An MMTok-style torch greedy (coverage matrix per image, batch 1, 32 text tokens) vs tokenset.coverage.
* A batched torch k-means (cdist, argmin, scatter_add; 10 iterations from the same farthest-first centres) vs
  tokenset.merge(method="kmeans").
* The Gram part of k-center (kcenter with k = 1: the most-isolated pass, each pair once) in GFLOP/s against the
  float32 FMA peak measured at the start of the run (tokenset._core.measure_fma_peak) and torch's batched GEMM.

    python benchmarks/bench_select.py            # all four shapes; writes benchmarks/results/select-<machine>-<date>.*
    python benchmarks/bench_select.py --quick    # 576 x 1024 only, batch 8
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402

PEAK_GFLOPS = float("nan")  # the float32 FMA peak, measured at the start of main()

try:
    import torch_cluster
except ImportError:
    torch_cluster = None
try:
    import fpsample
except ImportError:
    fpsample = None


# ---- the alternatives, written from the published algorithms --------------------------------------------------------
def divprune_loop(batch: torch.Tensor, k: int) -> list:
    """DivPrune (Alvar et al.): per image, the cosine distance matrix, then k steps each taking the min over all picked
    rows (O(k^2 n)); the first pick by the second-smallest distance of each column."""
    out = []
    for x in batch:
        unit = x / x.norm(dim=1, keepdim=True)
        dist = 1.0 - unit @ unit.T
        picks = torch.empty(k, dtype=torch.long)
        for i in range(k):
            if i == 0:
                scores = torch.topk(dist, 2, dim=0, largest=False).values[1]
            else:
                scores = dist.index_select(0, picks[:i]).min(dim=0).values
            picks[i] = torch.argmax(scores)
        out.append(picks)
    return out


def tome_round(x: torch.Tensor, size: torch.Tensor, r: int):
    """One ToMe step (bipartite soft matching on the tokens themselves + merge_wavg), batched [B, n, d]."""
    metric = x / x.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, ::2], t[:, 1::2]
        n, t1, c = src.shape
        unm = src.gather(1, unm_idx.expand(n, t1 - r, c))
        moved = src.gather(1, src_idx.expand(n, r, c))
        return torch.cat([unm, dst.scatter_reduce(1, dst_idx.expand(n, r, c), moved, reduce="sum")], dim=1)

    x, size = merge(x * size), merge(size)
    return x / size, size


def tome_torch(x: torch.Tensor, keep: int):
    size = torch.ones(x.shape[0], x.shape[1], 1)
    while x.shape[1] > keep:
        x, size = tome_round(x, size, min(x.shape[1] - keep, x.shape[1] // 2))
    return x, size


def mmtok_torch(vision: torch.Tensor, text: torch.Tensor, k: int) -> list:
    """MMTok's coverage greedy, per image: C = [softmax(t v^T / 0.01) / m; 0.5 softmax(v v^T / 0.2) / n]."""
    out = []
    for v, t in zip(vision, text):
        vn = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        tn = t / t.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        m, n = tn.shape[0], vn.shape[0]
        c = torch.cat([torch.softmax(tn @ vn.T / 0.01, dim=1) / m, 0.5 * torch.softmax(vn @ vn.T / 0.2, dim=1) / n])
        best = torch.zeros(c.shape[0])
        mask = torch.zeros(n)
        picks = torch.empty(k, dtype=torch.long)
        for i in range(k):
            j = torch.argmax((c - best[:, None]).clamp_min(0).sum(dim=0) + mask)
            picks[i] = j
            mask[j] = -float("inf")
            best = torch.maximum(best, c[:, j])
        out.append(picks)
    return out


def kmeans_torch(x: torch.Tensor, centres: torch.Tensor, iters: int):
    """Batched Lloyd k-means [B, n, d] from given centres [B, k, d]; empty clusters keep their centre."""
    b, n, d = x.shape
    k = centres.shape[1]
    for _ in range(iters + 1):
        assign = torch.cdist(x, centres).argmin(dim=-1)
        counts = torch.zeros(b, k).scatter_add_(1, assign, torch.ones(b, n))
        sums = torch.zeros(b, k, d).scatter_add_(1, assign[..., None].expand(b, n, d), x)
        centres = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centres)
    return centres, counts


def _radius(points: np.ndarray, picks) -> float:
    """max over the tokens of the distance (1 - cosine) to the nearest pick, float64: the k-center objective."""
    x = points.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float((1.0 - x @ x[np.asarray(picks)].T).min(axis=1).max())


# ---- one shape -------------------------------------------------------------------------------------------------------
def run_shape(batch: int, n: int, dim: int, keep: int, repeats: int, budget: float) -> list:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=2, keepdims=True)
    xt, ut = torch.from_numpy(x), torch.from_numpy(unit)
    text = rng.standard_normal((batch, 32, dim)).astype(np.float32)
    tt = torch.from_numpy(text)
    rows = []

    def report(name, fns, agree):
        times = time_interleaved(fns, repeats, budget_s=budget)
        names = list(fns)
        ours = times[names[0]]
        for other in names[1:]:
            rows.append({"workload": name, "shape": f"{batch}x{n}x{dim}", "keep": keep, "tokenset": names[0],
                         "alternative": other, "tokenset_s": ours, "alternative_s": times[other],
                         "speedup": times[other] / ours, "agreement": agree})
            print(f"  {name:10s} {names[0]:28s} {ours * 1e3:9.1f} ms   {other:28s} {times[other] * 1e3:9.1f} ms"
                  f"   x{times[other] / ours:6.2f}   agreement {agree}", flush=True)

    # k-center / DivPrune
    ours = tokenset.kcenter(x, keep)
    theirs = divprune_loop(xt, keep)
    same = float(np.mean([np.array_equal(ours[i], theirs[i].numpy()) for i in range(batch)]))
    agree = same if same == 1.0 else f"{same:.2f} identical, radius ratio " + str(round(max(
        _radius(x[i], ours[i]) / _radius(x[i], theirs[i].numpy()) for i in range(min(batch, 4))), 4))
    report("divprune", {"tokenset.kcenter": lambda: tokenset.kcenter(x, keep),
                        "DivPrune torch loop": lambda: divprune_loop(xt, keep)}, agree)
    report("kcenter", {"tokenset.kcenter first=0": lambda: tokenset.kcenter(x, keep, first=0),
                       "DivPrune torch loop": lambda: divprune_loop(xt, keep)}, "same objective, first pick given")

    # The Gram part: kcenter with k = 1 is the most-isolated pass alone (every pair's distance once: B n^2 d useful
    # FMAs' flops, the half Gram), against the FMA peak measured in this run and torch's batched GEMM (the whole
    # Gram, 2 B n^2 d flops) on the same tokens.
    gram = time_interleaved({"kcenter k=1": lambda: tokenset.kcenter(x, 1),
                             "torch bmm": lambda: torch.bmm(xt, xt.transpose(1, 2))}, repeats, budget_s=budget)
    ours_gflops = batch * n * n * dim / gram["kcenter k=1"] / 1e9
    torch_gflops = 2 * batch * n * n * dim / gram["torch bmm"] / 1e9
    rows.append({"workload": "gram", "shape": f"{batch}x{n}x{dim}", "keep": 1, "tokenset": "kcenter k=1 (half Gram)",
                 "alternative": "torch bmm (whole Gram)", "tokenset_s": gram["kcenter k=1"],
                 "alternative_s": gram["torch bmm"], "speedup": gram["torch bmm"] / gram["kcenter k=1"],
                 "agreement": f"{ours_gflops:.0f} vs {torch_gflops:.0f} GFLOP/s; FMA peak {PEAK_GFLOPS:.0f}: "
                              f"{ours_gflops / PEAK_GFLOPS:.0%} vs {torch_gflops / PEAK_GFLOPS:.0%}"})
    print(f"  gram       kcenter k=1 {gram['kcenter k=1'] * 1e3:.1f} ms = {ours_gflops:.0f} GFLOP/s "
          f"({ours_gflops / PEAK_GFLOPS:.0%} of the {PEAK_GFLOPS:.0f} GFLOP/s FMA peak); torch bmm "
          f"{torch_gflops:.0f} GFLOP/s ({torch_gflops / PEAK_GFLOPS:.0%})", flush=True)

    # farthest point sampling on unit vectors, squared L2 from index 0. Over hundreds of picks among distances that
    # concentrate (high dimension), float32 rounding in a different order settles some near-ties differently, and
    # one different pick changes the rest of the sequence: agreement is the fraction of identical sequences and the
    # worst ratio of covering radii (max over tokens of the distance to the nearest pick, float64; 1 = as good).
    ours_l2 = tokenset.kcenter(unit, keep, metric="l2", first=0)

    def radius(i, picks, points=unit):
        """max over tokens of the Euclidean distance to the nearest pick (float64; for unit vectors a monotone
        function of 1 - cosine, so it also scores DivPrune's objective)."""
        x = points[i].astype(np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        p = x[np.asarray(picks)]
        d2 = (x ** 2).sum(1)[:, None] + (p ** 2).sum(1)[None, :] - 2.0 * x @ p.T
        return float(np.sqrt(np.maximum(d2, 0).min(axis=1).max()))

    def fps_agreement(theirs):
        same = float(np.mean([np.array_equal(ours_l2[i], theirs[i]) for i in range(batch)]))
        worst = max(radius(i, ours_l2[i]) / radius(i, theirs[i]) for i in range(min(batch, 4)))
        return f"{same:.2f} identical, radius ratio {worst:.4f}"

    fps_fns = {"tokenset.kcenter l2 first=0": lambda: tokenset.kcenter(unit, keep, metric="l2", first=0)}
    if torch_cluster is not None:
        flat = ut.reshape(batch * n, dim)
        owner = torch.arange(batch).repeat_interleave(n)
        ratio = keep / n
        got = torch_cluster.fps(flat, owner, ratio=ratio, random_start=False).reshape(batch, -1) - \
            (torch.arange(batch) * n)[:, None]
        agree = fps_agreement([got[i, :keep].numpy() for i in range(batch)])
        fps_fns["torch_cluster.fps"] = lambda: torch_cluster.fps(flat, owner, ratio=ratio, random_start=False)
        report("fps", dict(fps_fns), agree)
        del fps_fns["torch_cluster.fps"]
    if fpsample is not None:
        got = [fpsample.fps_sampling(unit[i], keep, start_idx=0) for i in range(batch)]
        agree = fps_agreement(got)
        fps_fns["fpsample.fps_sampling"] = lambda: [fpsample.fps_sampling(u, keep, start_idx=0) for u in unit]
        report("fps", fps_fns, agree)

    # ToMe
    merged = tokenset.merge(x, keep, method="tome")
    tx, tsize = tome_torch(xt, keep)
    agree = float(np.mean([np.allclose(np.sort(merged.sizes[i]), np.sort(tsize[i, :, 0].numpy())) and np.allclose(
        np.sort(merged.tokens[i], axis=0), np.sort(tx[i].numpy(), axis=0), atol=1e-4) for i in range(batch)]))
    report("tome", {"tokenset.merge tome": lambda: tokenset.merge(x, keep, method="tome"),
                    "ToMe torch": lambda: tome_torch(xt, keep)}, agree)

    # MMTok coverage
    # The two build C with different float32 GEMMs and sum gains in different orders; later gains are tiny, so near
    # ties are settled differently: agreement is the fraction of identical pick lists and the worst ratio of the
    # coverage objective (float64, on the reference matrix) reached by tokenset over the torch greedy.
    from tokenset.reference import coverage as coverage_ref

    ours_cov = tokenset.coverage(x, keep, text=list(text))
    theirs_cov = mmtok_torch(xt, tt, keep)
    same = float(np.mean([np.array_equal(ours_cov[i], theirs_cov[i].numpy()) for i in range(batch)]))
    ratios = []
    for i in range(min(batch, 4)):
        matrix = coverage_ref.mmtok_matrix(x[i], text[i])
        ratios.append(coverage_ref.objective(matrix, ours_cov[i]) / coverage_ref.objective(matrix, theirs_cov[i]))
    agree = f"{same:.2f} identical, objective ratio {min(ratios):.5f}"
    report("mmtok", {"tokenset.coverage": lambda: tokenset.coverage(x, keep, text=list(text)),
                     "MMTok torch greedy": lambda: mmtok_torch(xt, tt, keep)}, agree)

    # k-means from the same farthest-first centres
    merge_module = importlib.import_module("tokenset.merge")
    ragged = tokenset.ragged(x)
    init_rows, _ = merge_module._init_centres(ragged, ragged.values, np.full(batch, keep), ragged.values)
    centres = torch.from_numpy(ragged.values[init_rows].reshape(batch, keep, dim))
    ours_km = tokenset.merge(x, keep, method="kmeans", iters=10)
    _, counts = kmeans_torch(xt, centres, 10)
    agree = float(np.mean([np.array_equal(np.sort(ours_km.sizes[i][ours_km.sizes[i] > 0]),
                                          np.sort(counts[i][counts[i] > 0].numpy())) for i in range(batch)]))
    report("kmeans", {"tokenset.merge kmeans": lambda: tokenset.merge(x, keep, method="kmeans", iters=10),
                      "torch k-means": lambda: kmeans_torch(xt, centres, 10)}, agree)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", default=None, help="comma-separated n x dim, e.g. 576x1024,2880x4096")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing per comparison")
    parser.add_argument("--name", default=None, help="results file stem (default select / select-quick)")
    args = parser.parse_args(argv)
    torch.set_num_threads(tokenset.get_num_threads())
    global PEAK_GFLOPS
    PEAK_GFLOPS = tokenset._core.measure_fma_peak(tokenset.get_num_threads(), 0.5)
    print(f"float32 FMA peak ({tokenset._core.simd_level()}, {tokenset.get_num_threads()} threads): "
          f"{PEAK_GFLOPS:.0f} GFLOP/s", flush=True)
    batch = args.batch or (8 if args.quick else 32)
    shapes = args.shapes or ("576x1024" if args.quick else "576x1024,576x4096,2880x1024,2880x4096")
    rows = []
    for shape in shapes.split(","):
        n, dim = (int(v) for v in shape.split("x"))
        keep = int(round(0.1 * n)) if n != 576 else 58
        print(f"{batch} sets x {n} tokens x dim {dim}, keep {keep} (tokenset {tokenset.get_num_threads()} threads, "
              f"torch {torch.get_num_threads()})", flush=True)
        start = time.perf_counter()
        rows += run_shape(batch, n, dim, keep, args.repeats, args.budget)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    table = ["| workload | shape | tokenset | alternative | tokenset ms | alternative ms | speedup | agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['workload']} | {r['shape']} | {r['tokenset']} | {r['alternative']} | "
                     f"{r['tokenset_s'] * 1e3:.1f} | {r['alternative_s'] * 1e3:.1f} | x{r['speedup']:.2f} | "
                     f"{r['agreement']} |")
    stem = args.name or ("select-quick" if args.quick else "select")
    path = write_results(stem, "cpu", {"batch": batch, "rows": rows, "fma_peak_gflops": PEAK_GFLOPS,
                                       "build": tokenset.build_info()},
                         "\n".join(table))
    print(f"wrote {path}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
