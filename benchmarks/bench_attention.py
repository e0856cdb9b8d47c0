"""Sparse attention benchmark (issue 19): tokenset.sparse_attention and routing_attention against what users run
today, in the same process, as ratios, after an agreement check on the same inputs.

Block-sparse workload: 1 x 8 heads x N x d, N = 4,096 and 16,384, d = 64 and 128, float32, random key-block lists of
128-token blocks (FlexAttention's block size) at 5%, 10% and 25% density, different per head. Methods:

* tokenset.sparse_attention (forward; forward + backward)
* dense SDPA (torch.nn.functional.scaled_dot_product_attention, no mask; forward; forward + backward)
* SDPA with the expanded boolean mask (N = 4,096 only: at 16,384 the mask alone is 2 GiB)
* FlexAttention compiled with the same BlockMask (forward only: its CPU backward raises NotImplementedError);
  compile time reported apart

Routing workload: BiFormer's 56 x 56 grid, 7 x 7 regions, top-4, C = 512 (16 heads of 32), batch 1: routing_attention
against BiFormer's gather implementation (regions rearranged, K / V gathered per query region with torch.gather on an
expanded view, softmax attention), forward and forward + backward, and the peak memory of each (the resident-set
growth of one full-size call in a fresh interpreter, outputs and gradients included).

    python benchmarks/bench_attention.py            # everything; writes benchmarks/results/attention-<machine>-<date>.*
    python benchmarks/bench_attention.py --quick    # N = 4,096, d = 64, 10% only, and the routing workload
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

BLOCK = 128


def random_block_lists(rng, lists: int, blocks: int, density: float):
    per = max(1, round(density * blocks))
    index = np.concatenate([np.sort(rng.choice(blocks, per, replace=False)) for _ in range(lists)])
    return np.arange(lists + 1, dtype=np.int64) * per, index.astype(np.int64)


PEAK_SNIPPET = """
import sys, torch, tokenset
sys.path.insert(0, {here!r})
from bench_attention import biformer_gather
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
grid, regions, topk, heads, dim = (56, 56), 7, 4, 16, 32
scale = (heads * dim) ** -0.5
def run(q, k, v, g):
    if {method!r} == "tokenset":
        out = tokenset.routing_attention(q, k, v, g, regions, topk)
    else:
        out = biformer_gather(q, k, v, g, regions, topk, scale)
    if {backward!r}:
        out.backward(torch.ones_like(out))
    return out
small = [torch.randn(1, heads, 14 * 14, dim, requires_grad={backward!r}) for _ in range(3)]
run(*small, (14, 14))  # libraries loaded, thread pools started
q, k, v = (torch.randn(1, heads, grid[0] * grid[1], dim, requires_grad={backward!r}) for _ in range(3))
before = status("VmRSS:")
run(q, k, v, grid)
print("PEAK", status("VmHWM:") - before)
"""


def peak_bytes(method: str, backward: bool) -> int:
    """Resident-set growth of one call at full size in a fresh interpreter (after a warm-up call on a small grid):
    what the call allocates, outputs included; a later call in a warm process would reuse freed memory and hide it."""
    import subprocess

    code = PEAK_SNIPPET.format(here=str(HERE), method=method, backward=backward)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"peak memory run failed: {proc.stderr[-2000:]}")
    return int(proc.stdout.split("PEAK")[-1])


def check(name: str, got, want, atol: float) -> float:
    err = float((got.float() - want.float()).abs().max())
    if not err <= atol:
        raise SystemExit(f"agreement check failed: {name}: max |diff| {err:.3g} > {atol}")
    return err


def block_sparse(n: int, dim: int, density: float, rng, flex_cache: dict, dense_cache: dict, repeats: int,
                 budget: float, rows: list):
    """One shape and density. Dense SDPA does not depend on the density: it is timed (interleaved with tokenset) at
    the shape's first density and reused for the others."""
    heads = 8
    q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
    blocks = n // BLOCK
    offsets, index = random_block_lists(rng, heads * blocks, blocks, density)
    lists = (offsets, index, BLOCK)
    mask_blocks = torch.zeros(1, heads, blocks, blocks, dtype=torch.bool)
    rows_i = torch.arange(heads * blocks).repeat_interleave(torch.from_numpy(np.diff(offsets)))
    mask_blocks.view(-1, blocks)[rows_i, torch.from_numpy(index)] = True
    flops = 4 * n * n * dim * heads * density  # QK^T and PV over the listed pairs
    ours = tokenset.sparse_attention(q, k, v, *lists)
    fns = {"tokenset": lambda: tokenset.sparse_attention(q, k, v, *lists)}
    if (n, dim) not in dense_cache:
        fns["dense SDPA"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    agreement = {}
    if n <= 4096:
        dense_mask = mask_blocks.repeat_interleave(BLOCK, 2).repeat_interleave(BLOCK, 3)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)
        agreement["SDPA + mask"] = check("SDPA + mask", ours, want, 1e-4)
        fns["SDPA + mask"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)
    compile_s = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def mask_mod(b, h, q_idx, kv_idx):
            return mask_blocks[b, h, q_idx // BLOCK, kv_idx // BLOCK]

        block_mask = create_block_mask(mask_mod, 1, heads, n, n, device="cpu", BLOCK_SIZE=BLOCK)
        key = (n, dim)
        if key not in flex_cache:
            compiled = torch.compile(flex_attention)
            t0 = time.perf_counter()
            compiled(q, k, v, block_mask=block_mask)
            flex_cache[key] = (compiled, time.perf_counter() - t0)
        compiled, compile_s = flex_cache[key]
        agreement["FlexAttention"] = check("FlexAttention", ours, compiled(q, k, v, block_mask=block_mask), 1e-4)
        fns["FlexAttention (compiled)"] = lambda: compiled(q, k, v, block_mask=block_mask)
    except Exception as exc:  # noqa: BLE001 (reported: compile needs a C++ toolchain and AVX2)
        print(f"  FlexAttention unavailable: {type(exc).__name__}: {str(exc)[:200]}")
    times = time_interleaved(fns, repeats, budget_s=budget)

    # forward + backward
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    grad = torch.randn_like(q)

    def ours_fb():
        out = tokenset.sparse_attention(*leaves, *lists)
        out.backward(grad)

    def sdpa_fb():
        out = torch.nn.functional.scaled_dot_product_attention(*leaves)
        out.backward(grad)

    fb = {"tokenset": ours_fb}
    if (n, dim) not in dense_cache:
        fb["dense SDPA"] = sdpa_fb
    times_fb = time_interleaved(fb, max(2, repeats // 2), budget_s=budget)
    if (n, dim) not in dense_cache:
        dense_cache[(n, dim)] = (times["dense SDPA"], times_fb["dense SDPA"])
    times["dense SDPA"], times_fb["dense SDPA"] = dense_cache[(n, dim)]
    row = {"n": n, "dim": dim, "density": density, "heads": heads, "block": BLOCK, "times_s": times,
           "times_forward_backward_s": times_fb, "agreement_max_abs": agreement, "flex_compile_s": compile_s,
           "tokenset_gflops": flops / times["tokenset"] / 1e9}
    rows.append(row)
    print(f"N={n} d={dim} density={density:.0%}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
          + f" | fwd+bwd: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times_fb.items()))
    return row


def biformer_gather(q, k, v, grid, regions, topk, scale):
    """BiFormer's routing + rrsda attention, as its published torch code does it (gather on an expanded view)."""
    batch, heads, n, dim = q.shape
    side_h, side_w = grid[0] // regions, grid[1] // regions

    def to_regions(x):
        x = x.reshape(batch, heads, regions, side_h, regions, side_w, dim).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(batch, heads, regions * regions, side_h * side_w, dim)

    qs, ks, vs = to_regions(q), to_regions(k), to_regions(v)
    q_r = qs.detach().mean(3).transpose(1, 2).reshape(batch, regions * regions, heads * dim)
    k_r = ks.detach().mean(3).transpose(1, 2).reshape(batch, regions * regions, heads * dim)
    _, idx = torch.topk(q_r @ k_r.transpose(-1, -2), k=topk, dim=-1)
    index = idx[:, None, :, :, None, None].expand(-1, heads, -1, -1, side_h * side_w, dim)
    k_g = torch.gather(ks[:, :, None].expand(-1, -1, regions * regions, -1, -1, -1), 3, index)
    v_g = torch.gather(vs[:, :, None].expand(-1, -1, regions * regions, -1, -1, -1), 3, index)
    attn = torch.softmax((qs * scale) @ k_g.flatten(3, 4).transpose(-1, -2), -1)
    out = attn @ v_g.flatten(3, 4)
    out = out.reshape(batch, heads, regions, regions, side_h, side_w, dim).permute(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(batch, heads, n, dim)


def routing(repeats: int, budget: float) -> dict:
    grid, regions, topk, heads, dim = (56, 56), 7, 4, 16, 32
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
    scale = (heads * dim) ** -0.5
    ours = tokenset.routing_attention(q, k, v, grid, regions, topk)
    err = check("BiFormer gather", ours, biformer_gather(q, k, v, grid, regions, topk, scale), 1e-4)
    times = time_interleaved({"tokenset": lambda: tokenset.routing_attention(q, k, v, grid, regions, topk),
                              "BiFormer gather": lambda: biformer_gather(q, k, v, grid, regions, topk, scale)},
                             repeats, budget_s=budget)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    grad = torch.randn_like(q)

    def ours_fb():
        tokenset.routing_attention(*leaves, grid, regions, topk).backward(grad)

    def theirs_fb():
        biformer_gather(*leaves, grid, regions, topk, scale).backward(grad)

    times_fb = time_interleaved({"tokenset": ours_fb, "BiFormer gather": theirs_fb}, repeats, budget_s=budget)
    memory = {name: peak_bytes(name, False) for name in ("tokenset", "BiFormer gather")}
    memory_fb = {name: peak_bytes(name, True) for name in ("tokenset", "BiFormer gather")}
    print(f"routing 56x56: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
          + " | fwd+bwd: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times_fb.items())
          + " | peak MiB: " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in memory.items()))
    return {"grid": grid, "regions": regions, "topk": topk, "heads": heads, "dim": dim, "times_s": times,
            "times_forward_backward_s": times_fb, "peak_bytes": memory, "peak_bytes_forward_backward": memory_fb,
            "agreement_max_abs": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", default=None, help="only these block-sparse shapes, e.g. 16384:128:0.1,4096:64:0.05 "
                        "(results written as attention-shapes-*)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of timing per comparison")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    threads = tokenset.get_num_threads()
    torch.set_num_threads(threads)
    peak = tokenset._core.measure_fma_peak(threads, 0.5)
    print(f"{threads} threads, float32 FMA peak {peak:.0f} GFLOP/s, torch {torch.__version__}")
    shapes = [(4096, 64, 0.10)] if args.quick else [(n, d, p) for n in (4096, 16384) for d in (64, 128)
                                                    for p in (0.05, 0.10, 0.25)]
    if args.shapes:
        shapes = [(int(n), int(d), float(p)) for n, d, p in (item.split(":") for item in args.shapes.split(","))]
    # Routing first, in a fresh process (every large allocation page-faults, as in a model's first steps), and again
    # at the end, after the block-sparse runs have grown the allocator's heap (large blocks reused without faults).
    route_fresh = routing(args.repeats, args.budget)
    rows, flex_cache, dense_cache = [], {}, {}
    for n, d, p in shapes:
        block_sparse(n, d, p, rng, flex_cache, dense_cache, args.repeats if n <= 4096 else max(2, args.repeats // 2),
                     args.budget, rows)
    route_warm = routing(args.repeats, args.budget)
    table = ["| N | d | density | tokenset fwd | dense SDPA | SDPA + mask | Flex (compiled) | vs dense | vs Flex | "
             "tokenset fwd+bwd | SDPA fwd+bwd | vs SDPA fwd+bwd | GFLOP/s (of peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, fb = r["times_s"], r["times_forward_backward_s"]
        ms = lambda x: f"{x * 1e3:.1f} ms" if x is not None else "-"  # noqa: E731
        flex = t.get("FlexAttention (compiled)")
        table.append(f"| {r['n']} | {r['dim']} | {r['density']:.0%} | {ms(t['tokenset'])} | {ms(t['dense SDPA'])} | "
                     f"{ms(t.get('SDPA + mask'))} | {ms(flex)} | x{t['dense SDPA'] / t['tokenset']:.2f} | "
                     + (f"x{flex / t['tokenset']:.2f}" if flex else "-")
                     + f" | {ms(fb['tokenset'])} | {ms(fb['dense SDPA'])} | x{fb['dense SDPA'] / fb['tokenset']:.2f} | "
                     f"{r['tokenset_gflops']:.0f} ({r['tokenset_gflops'] / peak:.0%}) |")
    compile_times = {f"{n}x{d}": round(c[1], 1) for (n, d), c in flex_cache.items()}
    table.append(f"\nFlexAttention first-call compile time per shape (s): {compile_times}")
    table += ["", "| routing 56x56, 7x7 regions, top-4, 16 x 32 | tokenset | BiFormer gather | ratio |", "|---|---|---|---|"]
    for label, route in (("fresh process", route_fresh), ("after the block-sparse runs", route_warm)):
        rt, rfb = route["times_s"], route["times_forward_backward_s"]
        table += [f"| forward, {label} | {rt['tokenset'] * 1e3:.1f} ms | {rt['BiFormer gather'] * 1e3:.1f} ms | "
                  f"x{rt['BiFormer gather'] / rt['tokenset']:.2f} |",
                  f"| forward + backward, {label} | {rfb['tokenset'] * 1e3:.1f} ms | "
                  f"{rfb['BiFormer gather'] * 1e3:.1f} ms | x{rfb['BiFormer gather'] / rfb['tokenset']:.2f} |"]
    mem, memfb = route_fresh["peak_bytes"], route_fresh["peak_bytes_forward_backward"]
    table += [f"| peak memory, forward | {mem['tokenset'] / 2**20:.1f} MiB | {mem['BiFormer gather'] / 2**20:.1f} MiB | "
              f"x{mem['BiFormer gather'] / max(mem['tokenset'], 1):.1f} less |",
              f"| peak memory, forward + backward | {memfb['tokenset'] / 2**20:.1f} MiB | "
              f"{memfb['BiFormer gather'] / 2**20:.1f} MiB | x{memfb['BiFormer gather'] / max(memfb['tokenset'], 1):.1f} "
              f"less |"]
    print("\n".join(table))
    stem = "attention-shapes" if args.shapes else ("attention-quick" if args.quick else "attention")
    path = write_results(stem, "cpu", {"threads": threads, "fma_peak_gflops": peak, "torch": torch.__version__,
                                       "block_sparse": rows, "routing_fresh": route_fresh,
                                       "routing_after_block_sparse": route_warm, "build": tokenset.build_info()},
                         "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
