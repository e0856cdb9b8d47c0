"""Limits and guarantees: fork safety, bounded memory (peak RSS of a subprocess), concurrent saves, offsets that
change during a call. Each case is a regression test of a reproduced failure (issue: reliability).

Memory is measured in a fresh interpreter: its own peak resident set (``VmHWM``; not ``ru_maxrss``, which a child
inherits from its parent) after building the input, then after the call; the difference is what the call added at
its peak. Bounds are stated per op in the README ("Limits and
guarantees") and asserted here with headroom for the allocator.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import tokenset

from conftest import PEAK_OF_THIS_PROCESS, subprocess_env

MiB = 1 << 20


def run_python(code: str, threads: int = 2, timeout: float = 120, **env_extra: str) -> str:
    """Runs `code` in a fresh interpreter (TOKENSET_NUM_THREADS=threads); returns its stdout, fails on a non-zero
    exit (a crash or a hang past `timeout` fails the test instead of the suite)."""
    env = subprocess_env(TOKENSET_NUM_THREADS=str(threads), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                         **env_extra)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


PEAK = PEAK_OF_THIS_PROCESS + """
import numpy as np, tokenset
"""


def peak_added(setup: str, call: str, threads: int) -> int:
    """Bytes the peak RSS grew by during `call`, after `setup` ran (and a warm-up call on a tiny input)."""
    out = run_python(PEAK + textwrap.dedent(setup) + f"\nbefore = peak()\n{textwrap.dedent(call)}\n"
                     "print('ADDED', peak() - before)", threads=threads)
    return int(out.split("ADDED")[-1])


def peak_live(setup: str, call: str, threads: int) -> int:
    """Bytes the resident set grew by at its highest during `call` over what it was just before, with glibc returning
    every freed block of 128 KiB or more at once (a fixed mmap threshold): what the call holds at its peak. (With
    glibc's defaults a freed block may stay resident or not, by the threads' timing: 2-10 MiB more here.) Skips the
    test where the high-water mark cannot be reset (/proc/self/clear_refs, Linux 4.0+)."""
    out = run_python("import numpy as np, tokenset\n" + textwrap.dedent(setup) + "\n" + textwrap.dedent("""
        import sys
        def _status(key):
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # the high-water mark starts again from the resident set now
        except OSError:
            print("NO-RESET")
            sys.exit(0)
        before = _status("VmRSS:")
        """) + textwrap.dedent(call) + '\nprint("ADDED", _status("VmHWM:") - before)\n',
        threads=threads, MALLOC_MMAP_THRESHOLD_="131072")
    if "NO-RESET" in out:
        pytest.skip("the peak resident set cannot be reset here (/proc/self/clear_refs)")
    return int(out.split("ADDED")[-1])


# ---- fork ------------------------------------------------------------------------------------------------------------
EVERY_OP = """
import numpy as np, tokenset
rng = np.random.default_rng(0)
q = [rng.standard_normal((n, 64)).astype(np.float32) for n in (3, 9)]
d = [rng.standard_normal((n, 64)).astype(np.float32) for n in rng.integers(1, 60, 400)]
fde = tokenset.FDE(64, reps=4, simhash_bits=3, proj_dim=16, final_dim=256)
attn = rng.standard_normal((1, 2, 128, 64)).astype(np.float32)
q8, d8 = tokenset.quantize(q), tokenset.quantize(d)
codec = tokenset.ResidualCodec.train(d, bits=2, centroids=8)
codes = codec.encode(d)
def every_op():
    return [tokenset.maxsim(q, codes), *tokenset.maxsim_topk(q, codes, 4), codes.decode().values,
            codec.encode(d[:30]).packed, tokenset.maxsim(q, d), tokenset.maxsim(q, d, return_argmax=True)[1],
            tokenset.maxsim_pairs(q, d, np.array([[0, 5, -1], [7, 399, 2]])), *tokenset.maxsim_topk(q, d, 10),
            fde.encode_documents(d), fde.encode_queries(q), fde.partitions(d),
            *tokenset.inner_product_topk(q[1], np.concatenate(d), 7), tokenset.kcenter(d, 5),
            tokenset.kcenter(d[0], 5, metric="l2"), tokenset.coverage(d[:40], 4, text=q[0]),
            tokenset.merge(d[:40], 3, method="tome").tokens.values,
            tokenset.merge(d[:20], 3, method="kmeans").tokens.values,
            tokenset.sparse_attention(attn, attn, attn, [0, 2, 3, 5, 6], [0, 1, 1, 0, 1, 0], 64, 32, True),
            tokenset.routing_attention(attn[:, :, :64], attn[:, :, :64], attn[:, :, :64], (8, 8), 2, 2),
            tokenset.attention_scores(attn, attn, rows="mean"), tokenset.attention_scores(attn, attn, [0, -1]),
            tokenset.maxsim(q8, d8), *tokenset.maxsim_topk(q8, d8, 5), tokenset.maxsim(q, d8),
            *tokenset.inner_product_topk(q[1], d8.values, 7, scales=d8.scales)]
"""


def test_fork_after_multithreaded_calls_of_every_op():
    """A forked child (DataLoader workers, multiprocessing on Linux) gets a fresh pool: it used to hang in
    pthread_cond_broadcast on the parent's condition variable."""
    out = run_python(EVERY_OP + """
import os
assert tokenset.get_num_threads() == 4
parent = every_op()
for _ in range(3):  # fork repeatedly, after more multi-threaded calls each time
    pid = os.fork()
    if pid == 0:
        ok = all(np.array_equal(a, b) for a, b in zip(every_op(), parent)) and tokenset.get_num_threads() == 4
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, status
    every_op()
print("ok")
""", threads=4, timeout=120)
    assert "ok" in out


def test_multiprocessing_fork_pool():
    out = run_python(EVERY_OP + """
import multiprocessing as mp
def work(i):
    return [float(np.asarray(a, np.float64).sum()) for a in every_op()]
if __name__ == "__main__":
    expected = work(0)
    with mp.get_context("fork").Pool(3) as pool:
        results = pool.map(work, range(6))
    assert all(r == expected for r in results)
    print("ok")
""", threads=4, timeout=120)
    assert "ok" in out


# ---- bounded memory ---------------------------------------------------------------------------------------------------
def test_fde_long_document_scratch_is_bounded_by_a_chunk():
    """One float16 document of 1M tokens with 8 workers: +1.3 GiB (2 threads) / +5.1 GiB (8) before, when every
    worker's scratch was sized for the longest set and zero-filled."""
    added = peak_added("""
fde = tokenset.FDE(128, reps=4, simhash_bits=4, seed=0)
x = np.ones((1_000_000, 128), np.float16)
x[::3] = -1
fde.encode_documents(x[:10])
""", "fde.encode_documents(x)", threads=8)
    assert added < 48 * MiB, added / MiB


def test_fde_many_partitions_scratch_only_for_running_workers():
    """2^22 partitions, one set: +528 MiB at 16 threads before (every thread's scratch allocated for one set)."""
    added = peak_added("""
fde = tokenset.FDE(1, reps=1, simhash_bits=22, seed=0)
x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(16, 1)
tokenset.FDE(1, reps=1, simhash_bits=3).encode_documents(x)
""", "out = fde.encode_documents(x)", threads=16)
    assert added < 16 * MiB + 48 * MiB, added / MiB  # the 16 MiB output, one worker's row-sized scratch


def test_fde_count_sketch_state_is_not_sized_by_final_dim_on_the_cpu():
    """final_dim = 2**24 (a 64 MiB output row): the GPU grouping (int64 starts [final_dim + 1] and a bincount) was
    built and kept on the CPU too, +2 GiB for final_dim = 2**27."""
    added = peak_added("""
x = np.ones((4, 8), np.float32)
""", """
fde = tokenset.FDE(8, reps=2, simhash_bits=2, final_dim=2**24, seed=0)
out = fde.encode_documents(x[:1])
""", threads=2)
    assert added < 64 * MiB + 48 * MiB, added / MiB


def test_maxsim_packing_is_bounded_by_the_budget():
    """2,000 one-token queries of dim 4,096: every query took a whole 32-token panel, 1 GiB for a 32 MiB input."""
    added = peak_added("""
q = np.ones((2000, 1, 4096), np.float32)
d = np.ones((3, 5, 4096), np.float32)
tokenset.maxsim(q[:2], d)
""", "s = tokenset.maxsim(q, d); t = tokenset.maxsim_topk(q, d, 2)", threads=2)
    assert added < 64 * MiB + 48 * MiB, added / MiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
def test_residual_tables_are_bounded_by_their_group_budget():
    """Against residual codes every query has a centroid table (centroids x 32 lanes x 4 bytes: 2 MiB here); queries
    are packed in groups of 4 MiB of tables (or one query), not the driver's 64 MiB, so 64 queries (128 MiB of tables)
    hold at most one group's tables at a time (measured: 2.0 MiB, the table of the one query a group holds here)."""
    added = peak_live("""
rng = np.random.default_rng(0)
codec = tokenset.ResidualCodec(rng.standard_normal((16384, 64)).astype(np.float16), [0.0], [-0.1, 0.1], 1)
tokens = 4000
codes = tokenset.ResidualCodes(rng.integers(0, 256, (tokens, 8), dtype=np.uint8),
                               rng.integers(0, 16384, tokens).astype(np.int32), np.ones(tokens, np.float32),
                               np.arange(0, tokens + 1, 40), codec)
q = rng.standard_normal((64, 32, 64)).astype(np.float32)
tokenset.maxsim(q[:1], codes)
""", "s = tokenset.maxsim(q, codes); t = tokenset.maxsim_topk(q, codes, 3)", threads=2)
    assert added < 4 * MiB + 2 * MiB, added / MiB


def test_kcenter_scratch_is_bounded_by_chunks_not_by_n_squared():
    """One float16 set of 60,000 tokens, the most isolated first pick (O(n^2) distances): scratch is a few floats per
    token plus 4 MiB of packed pivots and 1 MiB of converted rows per worker; an n x n matrix would be 13 GiB."""
    added = peak_added("""
x = np.random.default_rng(0).standard_normal((60_000, 64)).astype(np.float16)
tokenset.kcenter(x[:100], 3)
""", "idx = tokenset.kcenter(x[:20_000], 2); idx = tokenset.kcenter([x, x[:5]], 2, first=0)", threads=2)
    assert added < 48 * MiB, added / MiB


def test_fde_load_allocates_by_the_file_not_by_its_claims(tmp_path):
    """A 1 MiB crafted file used to allocate 2 GiB before its checksum was looked at; a config claiming dim 2**40
    ran into MemoryError. Now sizes are checked against limits and the file before anything is read."""
    import hashlib
    import json
    import zipfile
    from tokenset import _storage

    config = {"format": "tokenset.FDE", "version": 2, "dim": 65536, "reps": 4096, "simhash_bits": 1,
              "proj_dim": None, "fill_empty": True, "final_dim": None, "seed": 0, "sha256": {"simhash": "0" * 64}}
    config["config_sha256"] = hashlib.sha256(_storage.canonical_json(config)).hexdigest()
    path = tmp_path / "crafted.fde"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("simhash.npy", b"\x93NUMPY" + b"\0" * MiB)
    out = run_python(PEAK + f"""
before = peak()
try:
    tokenset.FDE.load({str(path)!r})
except ValueError as e:
    print("ValueError", e)
print("ADDED", peak() - before)
""")
    assert "ValueError" in out and "simhash.npy" in out
    assert int(out.split("ADDED")[-1]) < 16 * MiB


# ---- concurrency ------------------------------------------------------------------------------------------------------
def test_concurrent_saves_to_one_path(tmp_path):
    """8 threads saving to one path: 349 of 800 saves raised FileNotFoundError and 3 of 60 final files were corrupt
    when every thread used the temp name path.tmp-<pid>."""
    path = tmp_path / "enc.fde"
    encoders = [tokenset.FDE(16, reps=2, simhash_bits=3, proj_dim=4 + i % 3, final_dim=64 if i % 2 else None, seed=i)
                for i in range(8)]
    errors = []

    def save(i):
        try:
            for _ in range(25):
                encoders[i].save(path)
                loaded = tokenset.FDE.load(path)  # whatever was renamed last: always complete and valid
                assert any(loaded == e for e in encoders)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert sorted(os.listdir(tmp_path)) == ["enc.fde"]  # no temporary file left behind


def test_offsets_changed_during_a_call_are_never_followed():
    """A caller that rewrites its offsets buffer while a kernel runs (another thread; the GIL is released) used to
    crash the process: the kernel re-read what had been checked. Now the checked copy is what kernels read: every
    call returns a result computed from some valid offsets or raises ValueError, never crashes."""
    out = run_python("""
import threading, numpy as np, tokenset
core = tokenset._backend._core
x = np.ones((2000, 32), np.float32)
good = np.array([0, 1000, 2000], np.int64)
bad = np.array([0, 10**12, 2000], np.int64)
offsets = good.copy()
class Batch:
    values, sets, device_offsets = x, None, None
    offsets = offsets
stop = False
def flip():
    while not stop:
        offsets[:] = bad
        offsets[:] = good
t = threading.Thread(target=flip); t.start()
raised = 0
for _ in range(300):
    scores = np.empty((2, 2), np.float32)
    try:
        core.maxsim(Batch(), Batch(), scores)
    except ValueError:
        raised += 1
    else:
        assert np.all(scores == 32000.0), scores
stop = True; t.join()
print("ok", raised)
""", threads=2)
    assert out.startswith("ok")


def test_per_set_arrays_changed_during_a_call_are_never_followed():
    """Per-set int64 arrays given to a native entry (k-center's k and first, coverage's rows, segment_sum's order,
    MaxSim's candidates) used to be checked and then read in the caller's memory: rewritten by another thread while
    the kernel ran (the GIL is released), they crashed the process (a first pick of 10**12). Now the binding checks
    a copy the call owns and the kernel reads that copy: every call returns the valid result or raises ValueError."""
    out = run_python("""
import threading, numpy as np, tokenset
core = tokenset._backend._core
rng = np.random.default_rng(0)
x = rng.standard_normal((64 * 300, 16)).astype(np.float32)
class Batch:
    values, sets, device_offsets = x, None, None
    offsets = np.arange(0, 64 * 300 + 1, 300, dtype=np.int64)
q = rng.standard_normal((20, 16)).astype(np.float32)
class Queries:
    values, sets, device_offsets = q, None, None
    offsets = np.array([0, 10, 20], np.int64)
matrix = rng.random((64, 200, 100)).astype(np.float32)
full = lambda v: np.full(64, v, np.int64)
starts = np.arange(0, len(x) + 1, 3, dtype=np.int64)
def kcenter(k_first):
    out = np.empty((64, 4), np.int64)
    core.kcenter(Batch(), 1, k_first[0], None, k_first[1], None, 4, out)
    return out
def coverage(rows):
    out = np.empty((64, 5), np.int64)
    core.coverage(matrix, rows, None, full(100), None, full(5), None, 5, out)
    return out
def segment_sum(order):
    out = np.empty((len(starts) - 1, 16), np.float32)
    core.segment_sum(x, order, None, starts, None, None, out)
    return out
def candidates(cand):
    out = np.empty((2, 500), np.float32)
    core.maxsim(Queries(), Batch(), out, None, cand)
    return out
cases = [  # (call, the caller's arrays, their valid contents, contents that would be followed out of bounds)
    (kcenter, (full(4), full(0)), (full(4), full(0)), (full(10**6), full(10**12))),
    (coverage, (full(200),), (full(200),), (full(10**9),)),
    (segment_sum, (np.arange(len(x))[::-1].copy(),), (np.arange(len(x))[::-1].copy(),), (np.full(len(x), 10**12),)),
    (candidates, (rng.integers(0, 64, (2, 500)),), (rng.integers(0, 64, (2, 500)),), (np.full((2, 500), 10**12),)),
]
for call, arrays, good, bad in cases:
    arrays = tuple(np.asarray(a, np.int64) for a in arrays)
    for a, g in zip(arrays, good):
        a[...] = g
    expected = call(tuple(np.asarray(g, np.int64) for g in good) if call is kcenter else np.asarray(good[0], np.int64))
    stop = False
    def flip():
        while not stop:
            for a, b in zip(arrays, bad):
                a[...] = b
            for a, g in zip(arrays, good):
                a[...] = g
    t = threading.Thread(target=flip); t.start()
    try:
        for _ in range(200):
            try:
                got = call(arrays if call is kcenter else arrays[0])
            except ValueError:
                continue
            assert np.array_equal(got, expected), call.__name__
    finally:
        stop = True; t.join()
print("ok")
""", threads=2, timeout=300)
    assert out.startswith("ok")


def test_set_num_threads_during_calls_never_indexes_past_scratch():
    """Every CPU driver sizes per-worker scratch for the thread count it reads once; parallel_for used to read the
    count again (no worker count given), so tokenset.set_num_threads on another thread during a call handed out
    worker ids past the scratch: a segfault or heap corruption (6 of 9 runs). The worker count is now a required
    argument of parallel_for and the pool never hands out an id at or above it. Every op, on inputs large enough to
    go parallel, while a thread switches between 1, 8, 2 and 4 threads: no crash, and the same results."""
    out = run_python("""
import threading, numpy as np, tokenset
rng = np.random.default_rng(0)
q = [rng.standard_normal((n, 64)).astype(np.float32) for n in (5, 9, 17)]
d = [rng.standard_normal((n, 64)).astype(np.float16) for n in rng.integers(1, 80, 600)]
d32 = [x.astype(np.float32) for x in d]
flat = np.concatenate(d)
big = [rng.standard_normal((3000, 32)).astype(np.float32)]
cov = rng.random((64, 40, 30)).astype(np.float32)
fde = tokenset.FDE(64, reps=4, simhash_bits=3, proj_dim=16, final_dim=256)
seg = rng.integers(0, 500, len(flat))
cand = rng.integers(-1, len(d), (3, 40))
from tokenset.ops import sparse_attention as attention_ops
from tokenset.sparse_attention import make_plan
attn = rng.standard_normal((2, 4, 300, 64)).astype(np.float32)
attn_grad = rng.standard_normal(attn.shape).astype(np.float32)
attn_lists = [np.flatnonzero(rng.random(300) < 0.3) for _ in range(2 * 4 * 5)]  # stripes: 5 query blocks of 64
attn_index = np.concatenate(attn_lists)
attn_offsets = np.cumsum([0] + [len(x) for x in attn_lists])
attn_plan = make_plan(attn, attn_offsets, attn_index, 64, 1, True, None, None, None)
def attention():
    out, lse = attention_ops.forward(attn, attn[:, :2], attn[:, 2:], attn_plan)
    return [out, lse, *attention_ops.backward(attn, attn[:, :2], attn[:, 2:], out, lse, attn_grad, attn_plan)]
def every_op():
    return [tokenset.maxsim(q, d), tokenset.maxsim(q, d, return_argmax=True)[1], *tokenset.maxsim_topk(q, d, 10),
            tokenset.maxsim_pairs(q, d, cand), *tokenset.inner_product_topk(q[2], flat, 7),
            tokenset.kcenter(d32, 6), tokenset.kcenter(big, 8, metric="l2"),  # threads over sets / within a set
            tokenset.max_coverage(cov, 5), fde.encode_documents(d32), fde.encode_queries(q),
            tokenset.segment_sum(flat, seg, 500), *attention(),
            tokenset.attention_scores(attn, attn[:, :2], rows="mean", causal=True),  # one pass (8 pairs)
            tokenset.attention_scores(attn[:1, :2], attn[:1, :1], rows="mean", reduce="none"),  # two passes
            tokenset.attention_scores(attn, attn, rows=[0, 150, -1], reduce="none"),
            tokenset.maxsim(q8, d8), *tokenset.maxsim_topk(q8, d8, 10), tokenset.maxsim_pairs(q, d8, cand),
            *tokenset.inner_product_topk(q[2], d8.values, 7, scales=d8.scales), tokenset.maxsim(q, codes),
            *tokenset.maxsim_topk(q, codes, 10), tokenset.maxsim_pairs(q, codes, cand), codes.decode().values,
            codec.encode(d).packed]
q8, d8 = tokenset.quantize(q), tokenset.quantize(d)
codec = tokenset.ResidualCodec.train(d, bits=4, centroids=32)
codes = codec.encode(d)
initial = tokenset.get_num_threads()
expected = every_op()
stop = False
def switch():
    i = 0
    while not stop:
        tokenset.set_num_threads((1, 8, 2, 4)[i % 4])
        i += 1
t = threading.Thread(target=switch); t.start()
try:
    for _ in range(60):
        for a, b in zip(every_op(), expected):
            assert np.array_equal(a, b, equal_nan=True)
finally:
    stop = True; t.join()
    tokenset.set_num_threads(initial)
assert tokenset.get_num_threads() == initial
print("ok")
""", threads=1, timeout=300)
    assert out.startswith("ok")


def test_token_dimension_limit_is_checked_before_any_copy():
    """A broadcast input of width 2**31 (no memory of its own) used to be made contiguous (8 GiB per row pair)
    before the native check refused its token dimension. The limit is now checked in Python before any conversion
    or copy, with the native message. Run under a 3 GiB address-space limit: a copy is a MemoryError, not a slow
    machine."""
    out = run_python("""
import resource, numpy as np, tokenset
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
wide = np.broadcast_to(np.float32(0), (2, 2**31))
wide16 = np.broadcast_to(np.float16(0), (2, 2**31))
padded = np.broadcast_to(np.float32(0), (2, 3, 2**31))
fde = tokenset.FDE(8, reps=2, simhash_bits=2, seed=0)
calls = {
    "maxsim": lambda: tokenset.maxsim(wide, wide),
    "maxsim, queries converted": lambda: tokenset.maxsim(wide, wide16),
    "maxsim, lists": lambda: tokenset.maxsim([wide], [wide]),
    "maxsim_topk": lambda: tokenset.maxsim_topk(wide, wide, 1),
    "maxsim_pairs": lambda: tokenset.maxsim_pairs(wide, wide, np.zeros((1, 1), np.int64)),
    "inner_product_topk": lambda: tokenset.inner_product_topk(wide, wide, 1),
    "inner_product_topk, float16": lambda: tokenset.inner_product_topk(wide16, wide16, 1),
    "kcenter": lambda: tokenset.kcenter(wide, 1),
    "kcenter, padded": lambda: tokenset.kcenter(padded, 1, lengths=[1, 2]),
    "coverage": lambda: tokenset.coverage(wide, 1),
    "fde documents": lambda: fde.encode_documents(wide),
    "fde queries": lambda: fde.encode_queries(wide),
    "segment_sum": lambda: tokenset.segment_sum(wide, [0, 1]),
}
for name, call in calls.items():
    try:
        call()
    except ValueError as e:
        assert "2147483648" in str(e) and ("token dimension" in str(e) or "dim=8" in str(e)), (name, str(e))
    else:
        raise AssertionError(name + ": no error")
print("ok")
""", threads=2)
    assert out.startswith("ok")


def test_index_search_memory_is_bounded_by_candidates_not_the_corpus(tmp_path):
    """Index.search over 20,000 documents (a saved, memory-mapped index): the FDE scan keeps per-thread heaps of
    `candidates` per query and the rerank reads tokens in place, so a search adds a few MiB, not a copy of the 40 MiB
    of FDEs (a float32 copy of a chunk alone would be 32 MiB). The warm-up search maps the FDE pages first."""
    rng = np.random.default_rng(0)
    index = tokenset.Index(32, fde=tokenset.FDE(32, reps=4, simhash_bits=3, final_dim=1024, seed=0))
    index.add(rng.standard_normal((20000, 8, 32)).astype(np.float32))
    index.save(tmp_path / "idx")
    added = peak_added(f"""
index = tokenset.Index.load({str(tmp_path / "idx")!r})
q = np.random.default_rng(1).standard_normal((4, 4, 32)).astype(np.float32)
index.search(q[:1], k=10, candidates=50)
""", "ids, scores = index.search(q, k=10, candidates=500)", threads=2)
    assert added < 12 * MiB, added / MiB


def test_index_add_copies_the_corpus_once():
    """Index.add stores tokens (float16) and FDEs (float16) once; the float32 encoder output is encoded in 64 MiB
    chunks. It used to keep a per-set copy list, concatenate it, and hold the whole float32 FDE matrix: 100,000
    documents ran a 23 GiB machine out of memory."""
    added = peak_added("""
docs = np.ones((20000, 32, 64), np.float32)
docs[:, ::2] = -1
index = tokenset.Index(64, fde=tokenset.FDE(64, reps=8, simhash_bits=4, final_dim=2048, seed=0))
index.add(docs[:2])
stored = 20000 * 32 * 64 * 2 + 20000 * 2048 * 2
""", "index.add(docs[2:]); index.search(docs[0, :4], k=1)", threads=2)
    stored = 20000 * 32 * 64 * 2 + 20000 * 2048 * 2  # 160 MiB of float16 tokens and FDEs
    assert added < stored + 64 * MiB + 32 * MiB, added / MiB


def test_fde_state_changed_during_a_call_is_never_followed():
    """The FDE's int32 indices (projection, Count-Sketch) given to the native entry used to be checked and then read
    in the caller's memory (the Python API keeps them immutable, a direct call need not): rewritten by another thread
    during the kernel, they were followed out of bounds (a segfault in 3 of 3 runs). The binding now checks a copy
    the call owns, which the kernel reads."""
    out = run_python("""
import threading, time, numpy as np, tokenset
core = tokenset._backend._core
fde = tokenset.FDE(16, reps=8, simhash_bits=3, proj_dim=8, final_dim=64, seed=0)
state = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in fde.kernel_state().items()}
x = np.random.default_rng(0).standard_normal((64 * 300, 16)).astype(np.float32)
class Batch:
    values, sets, device_offsets = x, None, None
    offsets = np.arange(0, 64 * 300 + 1, 300, dtype=np.int64)
def encode():
    out = np.empty((64, 64), np.float32)
    core.fde_encode(Batch(), state, state, True, True, out, None, 0, None)
    return out
expected = encode()
good = {k: state[k].copy() for k in ("proj_index", "final_index")}
stop = False
def flip():  # mostly valid (so most checks pass), briefly out of range while kernels run
    while not stop:
        for k in good:
            state[k][...] = 10**9
        time.sleep(0.0002)
        for k in good:
            state[k][...] = good[k]
        time.sleep(0.002)
t = threading.Thread(target=flip); t.start()
try:
    for _ in range(1000):
        try:
            got = encode()
        except ValueError:
            continue
        assert np.array_equal(got, expected)
finally:
    stop = True; t.join()
print("ok")
""", threads=2, timeout=300)
    assert out.startswith("ok")


def test_set_num_threads_releases_the_gil_while_it_waits():
    """set_num_threads waits for a running job; it used to hold the GIL meanwhile, stalling every Python thread until
    the job ended (a 10 ms sleep of another thread took 0.3 s more)."""
    out = run_python("""
import threading, time, numpy as np, tokenset
rng = np.random.default_rng(0)
q = rng.standard_normal((64, 128)).astype(np.float32)
v = rng.standard_normal((1_000_000, 128)).astype(np.float16)
start = time.perf_counter(); tokenset.inner_product_topk(q, v, 10); one = time.perf_counter() - start
job = threading.Thread(target=tokenset.inner_product_topk, args=(q, v, 10)); job.start()
time.sleep(one / 5)
t0 = time.perf_counter()
setter = threading.Thread(target=tokenset.set_num_threads, args=(1,)); setter.start()
time.sleep(0.01)  # the setter waits for the job meanwhile; this thread needs the GIL back to return
stall = time.perf_counter() - t0 - 0.01
job.join(); setter.join()
print("ok" if stall < one / 8 else f"stalled {stall:.3f} s behind a {one:.3f} s job")
""", threads=2, timeout=300)
    assert out.startswith("ok"), out


def test_a_window_of_a_large_array_is_not_copied_whole():
    """A Ragged over a few rows of a large array that needs converting (Fortran order here) used to be made
    contiguous whole before the kernel: kcenter added +98 MiB and maxsim +195 MiB for 10 tokens. Only the sets' rows
    are converted now."""
    added = peak_added("""
x = np.asfortranarray(np.random.default_rng(0).standard_normal((400_000, 64)).astype(np.float32))
r = tokenset.Ragged(x, [200_000, 200_004, 200_010])
tokenset.kcenter(r, 2); tokenset.maxsim(r, r)
""", "tokenset.kcenter(r, 2); tokenset.maxsim(r, r); tokenset.maxsim_topk(r, r, 1)", threads=2)
    assert added < 8 * MiB, added / MiB
