"""Property-based and fuzz tests over every public call, checked against the numpy references.

* Public calls (hypothesis): random shapes, dtypes, layouts (lists, Ragged with offset gaps, padded with lengths or a
  mask, row-strided views, one 2-D set, torch tensors), empty sets, NaN/inf, candidates and k; every result is
  compared with the reference (scores within the float32 forward-error bound, NaN/inf exactly, argmax by the score
  it attains, top-k against the full score matrix, FDE against the float64 encoder).
* The native modules, called directly with adversarial descriptions (garbage offsets, wrong shapes, dtypes, strides,
  outputs and state): run in a subprocess, since a crash there is possible by construction; every call must return
  or raise ValueError/TypeError, and the subprocess must exit cleanly.
* File loading: byte flips and truncations of a saved encoder either load the same encoder or raise ValueError.

A CI-sized run by default; ``TOKENSET_FUZZ=long`` runs about 30x more examples (``pytest tests/test_fuzz.py``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import tokenset  # noqa: E402
from tokenset.reference import maxsim as ref  # noqa: E402

from conftest import (BF16, GAP_FILL, HAVE_TORCH, U32, as_dtype, check_fde_against_reference, fde_sanitize,  # noqa: E402
                      gapped, maxsim_error_bound, subprocess_env)

LONG = os.environ.get("TOKENSET_FUZZ") == "long"
EXAMPLES = 5000 if LONG else 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = ["float32", "float16"] + (["bfloat16"] if BF16 is not None else [])


# ---- drawing set batches ----------------------------------------------------------------------------------------------
def _as(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(BF16) if dtype == "bfloat16" else x.astype(dtype)


def draw_sets(data, dim: int, dtype: str, nonempty: bool, special: bool, max_sets: int = 5):
    """numpy sets in `dtype` (lengths 0..40, or 1..40 when nonempty), scaled by a power of two, optionally with NaN
    and inf at random places."""
    count = data.draw(st.integers(1, max_sets), label="sets")
    lengths = data.draw(st.lists(st.integers(1 if nonempty else 0, 40), min_size=count, max_size=count),
                        label="lengths")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    scale = 2.0 ** data.draw(st.integers(-3, 3), label="scale")
    sets = []
    for n in lengths:
        x = rng.standard_normal((n, dim)) * scale
        if special and n and rng.random() < 0.5:
            flat = x.reshape(-1)
            flat[rng.integers(0, flat.size, 2)] = rng.choice([np.nan, np.inf, -np.inf], 2)
        sets.append(_as(x, dtype))
    return sets


def draw_form(data, sets, dtype: str):
    """The sets in one of the input forms every op takes (all of them mean the same sets)."""
    forms = ["list", "ragged", "strided"]
    if len({len(s) for s in sets}) >= 1:
        forms += ["lengths", "mask"]
    if len(sets) == 1:
        forms.append("single")
    if HAVE_TORCH and dtype != "bfloat16":
        forms.append("torch")
    form = data.draw(st.sampled_from(forms), label="form")
    dim = sets[0].shape[1]
    if form == "list":
        return sets
    if form == "single":
        return sets[0]
    if form == "torch":
        import torch

        return [torch.from_numpy(np.ascontiguousarray(s)) for s in sets]
    if form == "strided":  # each set a row-strided view into a wider array
        out = []
        for s in sets:
            wide = np.zeros((s.shape[0], dim + 3), dtype=s.dtype)
            wide[:, 1:dim + 1] = s
            out.append(wide[:, 1:dim + 1])
        return out
    if form == "ragged":  # values with rows (sentinels) before the first set and after the last
        return gapped(sets, data.draw(st.integers(0, 3), label="gap"), data.draw(st.integers(0, 3), label="tail"))
    n = max([len(s) for s in sets] + [1]) + data.draw(st.integers(0, 2), label="pad")
    padded = np.zeros((len(sets), n, dim), sets[0].dtype)
    if form == "lengths":
        for i, s in enumerate(sets):
            padded[i, :len(s)] = s
        return tokenset.ragged(padded, lengths=np.array([len(s) for s in sets]))
    mask = np.zeros((len(sets), n), bool)  # valid tokens anywhere in the row, in order
    rng = np.random.default_rng(len(sets) * n)
    for i, s in enumerate(sets):
        where = np.sort(rng.choice(n, len(s), replace=False))
        mask[i, where] = True
        padded[i, where] = s
    return tokenset.ragged(padded, mask=mask)


def draw_layout(data, sets, per_token=None):
    """The sets in a layout prune / merge take, with per-token values (a list of [n_i] arrays, or None) laid out to
    match: a list of sets (values as a list or one flat array), a gapped Ragged (rows before the first set and after
    the last), or padded [B, N, d] with ``lengths`` or with a non-prefix ``mask`` (values as [B, N] at the same
    positions). Gap and padding rows, and padding values, hold sentinels (1e6): a read of one shows in any result.
    Returns (tokens, layout keywords, values)."""
    form = data.draw(st.sampled_from(["list", "gapped", "lengths", "mask"]), label="layout")
    if form == "list":
        flat = per_token is not None and data.draw(st.booleans(), label="flat values")
        return sets, {}, (np.concatenate(per_token) if flat else per_token)
    if form == "gapped":
        return gapped(sets, data.draw(st.integers(0, 3), label="gap"), data.draw(st.integers(0, 3), label="tail")), \
            {}, per_token
    lengths = np.array([len(s) for s in sets])
    n = int(lengths.max(initial=0)) + data.draw(st.integers(0, 3), label="pad")
    padded = _as(np.full((len(sets), n, sets[0].shape[1]), GAP_FILL), str(sets[0].dtype))
    laid = np.full((len(sets), n), GAP_FILL)
    mask = np.zeros((len(sets), n), bool)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="mask seed"))
    for i, s in enumerate(sets):
        where = np.arange(len(s)) if form == "lengths" else np.sort(rng.choice(n, len(s), replace=False))
        mask[i, where] = True
        padded[i, where] = s
        if per_token is not None:
            laid[i, where] = per_token[i]
    layout = {"lengths": lengths} if form == "lengths" else {"mask": mask}
    return padded, layout, (laid if per_token is not None else None)


def assert_same_reduction(got, want, sets):
    """prune / merge results of two layouts of the same sets: identical picks, groups, sizes and tokens."""
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(to_numpy(got.indices), to_numpy(want.indices))
    np.testing.assert_array_equal(to_numpy(got.sizes), to_numpy(want.sizes))
    values = lambda r: to_numpy(r.tokens.values).astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(values(got), values(want))


def to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def score_bound(queries, documents):
    clean = lambda sets: [np.nan_to_num(np.asarray(s, np.float64), posinf=0, neginf=0) for s in sets]  # noqa: E731
    return maxsim_error_bound(clean(queries), clean(documents))


def check_scores(got, want, bound):
    """NaN and inf exactly as the reference; finite scores within the float32 forward-error bound."""
    got = to_numpy(got).astype(np.float64)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf])
    finite = np.isfinite(want)
    assert np.all(np.abs(got[finite] - want[finite]) <= bound[finite] + 1e-6 * np.abs(want[finite])), (got, want)


# ---- public calls -----------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_maxsim_any_input(data):
    dim = data.draw(st.integers(1, 70), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    special = data.draw(st.booleans(), label="special")
    queries = draw_sets(data, dim, dtype, nonempty=True, special=special)
    documents = draw_sets(data, dim, dtype, nonempty=False, special=special, max_sets=8)
    q64 = [np.asarray(s, np.float64) for s in queries]
    d64 = [np.asarray(s, np.float64) for s in documents]
    want = ref.maxsim(q64, d64)
    q_in, d_in = draw_form(data, queries, dtype), draw_form(data, documents, dtype)
    scores, argmax = tokenset.maxsim(q_in, d_in, return_argmax=True)
    bound = score_bound(queries, documents)
    check_scores(scores, want, bound)
    argmax = to_numpy(argmax)
    assert argmax.shape == (len(queries), len(documents), max(len(q) for q in queries))
    for a, q in enumerate(q64):
        for b, d in enumerate(d64):
            row = argmax[a, b]
            assert (row[len(q):] == -1).all()
            if len(d) == 0:
                assert (row == -1).all()
                continue
            assert ((row[:len(q)] >= 0) & (row[:len(q)] < len(d))).all()
            if np.isfinite(q).all() and np.isfinite(d).all():  # the argmax tokens attain the score
                attained = (q * d[row[:len(q)]]).sum()
                assert abs(attained - want[a, b]) <= 2 * bound[a, b] + 1e-6 * abs(want[a, b])

    # Reranking: random candidates (valid, -1, and sometimes out of range: a ValueError, nothing computed).
    nd = len(documents)
    c = data.draw(st.integers(0, 6), label="candidates")
    seed = data.draw(st.integers(0, 2**31), label="cand seed")
    candidates = np.random.default_rng(seed).integers(-1, nd, (len(queries), c))
    if data.draw(st.booleans(), label="bad candidate") and candidates.size:
        candidates.flat[0] = data.draw(st.sampled_from([nd, -2, 2**40]), label="bad value")
        with pytest.raises(ValueError, match="candidates"):
            tokenset.maxsim_pairs(q_in, d_in, candidates)
    else:
        got = tokenset.maxsim_pairs(q_in, d_in, candidates)
        pick = lambda m: np.take_along_axis(m, np.maximum(candidates, 0), 1) if nd else np.zeros(candidates.shape)  # noqa: E731
        check_scores(got, np.where(candidates >= 0, pick(want), -np.inf), pick(bound))

    # Top-k: the best k of the full score matrix (NaN ranks as -inf, ties to the lower index), padded with -inf/-1.
    k = data.draw(st.integers(1, nd + 3), label="k")
    top_scores, top_indices = (to_numpy(a) for a in tokenset.maxsim_topk(q_in, d_in, k))
    # Without argmax: at the bfloat16 dot-product levels (avx512bf16, amx) argmax requests run the vector kernel,
    # whose float32 sums may round differently from the top-k's (both within the bound checked above).
    full = to_numpy(tokenset.maxsim(q_in, d_in))
    for a in range(len(queries)):
        key = np.where(np.isnan(full[a]), -np.inf, full[a])
        order = sorted(range(nd), key=lambda j: (-key[j], j))[:k]
        assert top_indices[a, :len(order)].tolist() == order
        assert np.array_equal(top_scores[a, :len(order)], full[a, order], equal_nan=True)
        assert (top_indices[a, len(order):] == -1).all() and (top_scores[a, len(order):] == -np.inf).all()


@FUZZ
@given(data=st.data())
def test_fde_any_input(data):
    dim = data.draw(st.integers(1, 40), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    reps = data.draw(st.integers(1, 4), label="reps")
    bits = data.draw(st.integers(0, 5), label="bits")
    proj = data.draw(st.one_of(st.none(), st.integers(1, 12)), label="proj_dim")
    final = data.draw(st.one_of(st.none(), st.integers(1, 64)), label="final_dim")
    fill = data.draw(st.booleans(), label="fill_empty")
    fde = tokenset.FDE(dim, reps=reps, simhash_bits=bits, proj_dim=proj, final_dim=final, fill_empty=fill,
                       seed=data.draw(st.integers(0, 1000), label="seed"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="sanitize seed"))
    documents = fde_sanitize(rng, draw_sets(data, dim, "float32", nonempty=False, special=False),
                             fde.simhash, np.float32)
    documents = [_as(s, dtype) for s in documents]
    documents = fde_sanitize(rng, documents, fde.simhash, documents[0].dtype)  # again, after rounding
    got = fde.encode_documents(draw_form(data, documents, dtype))
    check_fde_against_reference(fde, [np.asarray(s, np.float64) for s in documents], True, to_numpy(got))
    queries = [s for s in documents if len(s)]
    if queries:
        got = fde.encode_queries(draw_form(data, queries, dtype))
        check_fde_against_reference(fde, [np.asarray(s, np.float64) for s in queries], False, to_numpy(got))


# ---- the native modules, with adversarial descriptions, in a subprocess ------------------------------------------------
NATIVE_FUZZ = r"""
import sys, numpy as np
from tokenset import _core
seed, calls = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(seed)

class Batch:
    def __init__(self, values, offsets, sets=None, scales=None):
        self.values, self.offsets, self.sets, self.device_offsets = values, offsets, sets, None
        self.scales = scales

DIM = 8  # most arrays share it, so that most calls get past the first check and into the kernels

def values():
    rows = int(rng.integers(0, 30))
    if rng.random() < 0.7:  # valid
        return rng.standard_normal((rows, DIM)).astype(DTYPE)
    kind = rng.integers(0, 8)
    dim = int(rng.integers(0, 20))
    dtype = rng.choice([np.float32, np.float16, np.float64, np.int64, np.int8, np.int32])
    if kind == 0:
        return np.ones(rng.integers(0, 5), dtype)                      # 1-D
    if kind == 1:
        return np.ones((2, 3, 4), np.float32)                          # 3-D
    if kind == 2:
        return np.ones((rows, dim + 2), np.float32)[:, ::2]            # inner stride 2
    if kind == 3:
        return np.ones((rows, dim), np.float32)[::-1]                  # negative row stride (valid)
    if kind == 4:
        return "not an array"
    return rng.standard_normal((rows, max(dim, 1))).astype(dtype)

def offsets(rows):
    kind = rng.integers(0, 7) if rng.random() < 0.25 else 0
    n = int(rng.integers(0, 6))
    if kind == 0:
        return np.sort(rng.integers(0, rows + 1, n + 1)).astype(np.int64)  # valid
    if kind == 1:
        return rng.integers(-5, rows + 5, n + 1).astype(np.int64)          # anything
    if kind == 2:
        return np.array([0, 2**62, 2**63 - 1], np.int64)
    if kind == 3:
        return np.zeros((2, 2), np.int64)
    if kind == 4:
        return np.array([0, 1], np.int32)
    if kind == 5:
        return np.array([], np.int64)
    return np.array([0, rows], np.int64)

def batch():
    v = values()
    rows = v.shape[0] if hasattr(v, "shape") and v.ndim else 0
    if rng.random() < 0.2:  # a list of sets, read in place
        sets = [values() for _ in range(int(rng.integers(0 if rng.random() < 0.1 else 1, 4)))]
        lens = [s.shape[0] if hasattr(s, "shape") and s.ndim else 0 for s in sets]
        offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64) if rng.random() < 0.7 else offsets(5)
        return Batch(None, offs, sets)
    if rng.random() < 0.15:  # int8 tokens (MaxSim takes them) with scales of any length, dtype or value
        v = rng.integers(-128, 128, (rows, DIM)).astype(np.int8)
        n = max(0, rows + int(rng.integers(-2, 2)))
        scales = rng.choice([np.float32, np.float64])(rng.uniform(-1, 1, n)) if rng.random() < 0.9 else None
        if scales is not None and rng.random() < 0.2:
            scales[rng.integers(0, max(n, 1)) % max(n, 1):] = np.nan
        return Batch(v, offsets(rows), None, scales)
    return Batch(v, offsets(rows))

def out(shape_hint):
    kind = rng.integers(0, 5) if rng.random() < 0.3 else 0
    if kind == 0:
        return np.empty(shape_hint, np.float32)
    if kind == 1:
        return np.empty(tuple(max(s + int(rng.integers(-1, 2)), 0) for s in shape_hint), np.float32)
    if kind == 2:
        return np.empty(shape_hint, np.float64)
    if kind == 3:
        return np.empty(shape_hint, np.float32)[..., ::-1] if len(shape_hint) else np.empty(0, np.float32)
    a = np.empty(shape_hint, np.float32); a.setflags(write=False); return a

ok = errors = 0
for i in range(calls):
    DTYPE = np.float32 if rng.random() < 0.6 else np.float16  # one dtype for both sides, mostly
    q, d = batch(), batch()
    nq = max(len(getattr(q, "offsets", [])) - 1, 0) if getattr(q.offsets, "ndim", 0) == 1 else 1
    nd = max(len(getattr(d, "offsets", [])) - 1, 0) if getattr(d.offsets, "ndim", 0) == 1 else 1
    op = rng.integers(0, 10)
    try:
        if op == 8:  # MaxSim on residual codes: packed rows, ids, norms, bits and centroids of any shape or value
            rows = d.values.shape[0] if getattr(d.values, "ndim", 0) == 2 else 0
            bits = int(rng.choice([1, 2, 4])) if rng.random() < 0.9 else int(rng.integers(-1, 9))
            width = max(DIM * max(bits, 1) // 8 + (int(rng.integers(-1, 2)) if rng.random() < 0.2 else 0), 1)
            packed = rng.integers(0, 256, (rows, width)).astype(np.uint8 if rng.random() < 0.9 else np.int8)
            n_c = int(rng.integers(1, 6))
            ids = rng.integers(-2 if rng.random() < 0.2 else 0, n_c + (2 if rng.random() < 0.2 else 0),
                               max(0, rows + (int(rng.integers(-2, 2)) if rng.random() < 0.2 else 0)))
            norms = rng.uniform(0, 2, max(0, rows + (int(rng.integers(-2, 2)) if rng.random() < 0.2 else 0)))
            if rng.random() < 0.2 and norms.size:
                norms[rng.integers(0, norms.size)] = rng.choice([np.nan, -1.0, np.inf])
            args = type("R", (), {})()
            args.bits = bits
            args.centroids = rng.standard_normal((n_c, DIM if rng.random() < 0.9 else DIM + 1)).astype(np.float32)
            args.bucket_weights = rng.standard_normal(1 << max(min(bits, 4), 0) if rng.random() < 0.9 else 3).astype(
                np.float32)
            args.centroid_ids = ids.astype(np.int32 if rng.random() < 0.9 else np.int64)
            args.host_centroid_ids = args.host_inverse_norms = None
            docs = Batch(packed, d.offsets, None, norms.astype(np.float32 if rng.random() < 0.9 else np.float64))
            queries = Batch(q.values.astype(np.float32) if getattr(q.values, "ndim", 0) == 2 else q.values,
                            q.offsets) if q.values is not None else q
            kind = rng.integers(0, 3)
            if kind == 0:
                _core.maxsim(queries, docs, out((nq, nd)), None, residual=args)
            elif kind == 1:
                cand = rng.integers(-1, max(nd, 1) + 1, (nq, 3)).astype(np.int64)
                _core.maxsim(queries, docs, out(cand.shape), None, cand, cand, residual=args)
            else:
                _core.maxsim_topk(queries, docs, 3, out((nq, 3)), np.empty((nq, 3), np.int64), residual=args)
        elif op == 9:  # the residual codec: encode / decode with arrays of any shape, dtype or value
            rows = int(rng.integers(0, 6))
            bits = int(rng.choice([1, 2, 4])) if rng.random() < 0.9 else int(rng.integers(-1, 9))
            dim = DIM if rng.random() < 0.8 else int(rng.integers(1, 12))
            n_c = int(rng.integers(0, 4)) if rng.random() < 0.1 else 3
            centroids = rng.standard_normal((n_c, dim)).astype(np.float32)
            levels = 1 << max(min(bits, 4), 0)
            cutoffs = np.sort(rng.standard_normal(max(levels - 1 + (int(rng.integers(-1, 2)) if rng.random() < 0.1
                                                                     else 0), 0))).astype(np.float32)
            if rng.random() < 0.1 and cutoffs.size > 1:
                cutoffs = cutoffs[::-1].copy()
            weights = rng.standard_normal(levels).astype(np.float32)
            ids = rng.integers(-1 if rng.random() < 0.2 else 0, n_c + (1 if rng.random() < 0.2 else 0),
                               rows).astype(np.int32 if rng.random() < 0.9 else np.int64)
            width = max(dim * max(bits, 1) // 8 + (int(rng.integers(-1, 2)) if rng.random() < 0.2 else 0), 0)
            packed = rng.integers(0, 256, (rows, width)).astype(np.uint8)
            norms = rng.uniform(0, 2, rows).astype(np.float32)
            tokens = rng.standard_normal((rows, dim)).astype(np.float32)
            if rng.random() < 0.2 and rows:
                tokens[rng.integers(0, rows), 0] = np.nan
            if rng.random() < 0.5:
                _core.residual_codec(True, bits, centroids, cutoffs, weights, ids, tokens=tokens, packed=packed,
                                     inverse_norms=norms)
            else:
                _core.residual_codec(False, bits, centroids, cutoffs, weights, ids, packed=packed,
                                     inverse_norms=norms, decoded=out((rows, dim)))
        elif op == 7:  # attention scores: any q / k shapes, rows, lengths, reduce (valid or not), outputs
            b, h, n, dd = (int(rng.integers(0, 3)), int(rng.integers(1, 4)), int(rng.integers(0, 6)),
                           int(rng.integers(1, 5)))
            m = max(n + int(rng.integers(-1, 2)), 0)
            qa = rng.standard_normal((b, h, n, dd)).astype(np.float32)
            ka = rng.standard_normal((b, int(rng.integers(1, 4)), m, dd)).astype(DTYPE if rng.random() < 0.1
                                                                                  else np.float32)
            r = int(rng.integers(0, 3))
            rows = rng.integers(-2, n + 2, b * r + int(rng.random() < 0.1)).astype(np.int64) \
                if rng.random() < 0.7 else None
            lengths = rng.integers(-1, n + 2, b + int(rng.random() < 0.1)).astype(np.int64) \
                if rng.random() < 0.3 else None
            reduce = int(rng.integers(-1, 4)) if rng.random() < 0.1 else int(rng.integers(0, 3))
            width = max(m + int(rng.integers(-1, 2)), 0) if rng.random() < 0.3 else m
            heads = h if reduce == 0 else 1
            _core.attention_scores(qa, ka, out((b, heads, width) if rows is None else (b, heads, r, width)),
                                   None, None, None, None, lengths, None, lengths, None, rows, None,
                                   r if rows is not None else 0, reduce, bool(rng.integers(0, 2)), 0.5)
        elif op == 5:  # k-center: any batch, per-set k and first (valid or not), outputs
            b = nq
            k = rng.integers(-1, 6, b).astype(np.int64) if rng.random() < 0.3 else rng.integers(1, 6, b).astype(np.int64)
            first = rng.integers(-2, 8, b).astype(np.int64) if rng.random() < 0.3 else np.full(b, -1, np.int64)
            max_k = int(k.max(initial=1)) + int(rng.integers(-1, 2))
            if rng.random() < 0.1:
                k = k[:-1]
            _core.kcenter(q, int(rng.integers(-1, 4)) if rng.random() < 0.1 else int(rng.integers(0, 3)), k, None,
                          first, None, max_k, np.empty((b, max(max_k, 0)), np.int64),
                          out((b, max(max_k, 0))) if rng.random() < 0.5 else None)
        elif op == 6:  # greedy coverage: any matrix, rows / cols / k (valid or not), outputs
            m = rng.standard_normal((int(rng.integers(0, 4)), int(rng.integers(0, 9)), int(rng.integers(0, 9))))
            m = m.astype(np.float32) if rng.random() < 0.8 else m
            if rng.random() < 0.1:
                m = m[..., ::2]
            b = m.shape[0]
            rows = rng.integers(-1, m.shape[1] + 2, b).astype(np.int64)
            cols = rng.integers(-1, m.shape[2] + 2, b).astype(np.int64)
            if rng.random() < 0.7:
                rows, cols = np.clip(rows, 0, m.shape[1]), np.clip(cols, 0, m.shape[2])
            k = rng.integers(0 if rng.random() < 0.2 else 1, 5, b).astype(np.int64)
            max_k = int(k.max(initial=1))
            _core.coverage(m, rows, None, cols, None, k, None, max_k, np.empty((b, max_k), np.int64),
                           out((b, max_k)) if rng.random() < 0.5 else None)
        elif op == 4:  # inner-product top-k: any values as queries / vectors, any k, outputs and mask
            qv, vv = q.values if q.values is not None else values(), d.values if d.values is not None else values()
            rows_q = qv.shape[0] if hasattr(qv, "shape") and qv.ndim else 0
            rows_v = vv.shape[0] if hasattr(vv, "shape") and vv.ndim else 0
            k = int(rng.integers(-1, 6)) if rng.random() < 0.2 else int(rng.integers(1, 6))
            mask_rows = max(0, rows_v + int(rng.integers(-1, 2)))
            mask = None if rng.random() < 0.5 else (rng.random(mask_rows) < 0.5).view(np.uint8)
            scales = None
            if rng.random() < 0.3:
                vv = rng.integers(-128, 128, (rows_v, DIM)).astype(np.int8)
                scales = rng.uniform(-1, 1, max(0, rows_v + int(rng.integers(-1, 2)))).astype(
                    rng.choice([np.float32, np.float64])) if rng.random() < 0.9 else None
            _core.inner_product_topk(qv.astype(np.float32) if rng.random() < 0.8 and hasattr(qv, "astype") else qv,
                                     vv, k, out((rows_q, max(k, 0))), np.empty((rows_q, max(k, 0)), np.int64), mask,
                                     scales)
        elif op == 0:
            _core.maxsim(q, d, out((nq, nd)), np.empty((nq, nd, int(rng.integers(0, 40))), np.int32)
                         if rng.random() < 0.3 else None)
        elif op == 1:
            low, high = (-3, nd + 3) if rng.random() < 0.3 else (-1, nd)
            cand = rng.integers(low, max(high, low + 1), (nq, int(rng.integers(0, 4)))).astype(np.int64)
            _core.maxsim(q, d, out(cand.shape), None, cand, cand)
        elif op == 2:
            k = int(rng.integers(-1, 6)) if rng.random() < 0.2 else int(rng.integers(1, 6))
            _core.maxsim_topk(q, d, k, out((nq, max(k, 0))), np.empty((nq, max(k, 0)), np.int64))
        else:
            dim = DIM if rng.random() < 0.8 else int(rng.integers(1, 9))
            reps = int(rng.integers(0, 3)) if rng.random() < 0.2 else 2
            bits = int(rng.integers(-1, 4)) if rng.random() < 0.2 else 3
            state = {"dim": dim, "reps": reps, "simhash_bits": bits, "proj_dim": dim, "final_dim": 0,
                     "simhash": rng.standard_normal((dim, max(reps * bits, 0))).astype(np.float32),
                     "proj_index": None, "proj_weight": None, "final_index": None, "final_sign": None}
            if rng.random() < 0.4:
                pd = int(rng.integers(1, 5)); state["proj_dim"] = pd
                state["proj_index"] = rng.integers(-1, pd + 1, (max(reps, 0), dim)).astype(np.int32)
                state["proj_weight"] = np.ones((max(reps, 0), dim), np.float32)
            if rng.random() < 0.3:
                state[rng.choice(["reps", "dim", "final_dim"])] = rng.choice([None, 1.5, True, 2**70])
            width = max(reps, 1) * (1 << max(min(bits, 4), 0)) * max(state["proj_dim"] or 1, 1) \
                if isinstance(state["proj_dim"], int) else 1
            _core.fde_encode(q, state, state, bool(rng.integers(0, 2)), bool(rng.integers(0, 2)),
                             out((nq, width)))
        ok += 1
    except (ValueError, TypeError):
        errors += 1
print("done", ok, errors)
"""


@pytest.mark.parametrize("seed", range(8 if LONG else 2))
def test_native_modules_never_crash(seed):
    calls = 20000 if LONG else 1500
    env = subprocess_env(TOKENSET_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(NATIVE_FUZZ), str(seed), str(calls)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode} (a crash is a negative signal number)\n{proc.stderr[-3000:]}"
    done, ok, errors = proc.stdout.split()[-3:]
    assert int(ok) + int(errors) == calls and int(errors) > 0 and int(ok) > 0


# ---- file loading -----------------------------------------------------------------------------------------------------
def test_fde_file_byte_flips_and_truncations(tmp_path):
    """Every damaged file loads the same encoder (a flip in a field nothing reads, e.g. a zip timestamp) or raises
    ValueError; nothing else (it gave NotImplementedError, RuntimeError, EOFError, OSError, RecursionError)."""
    fde = tokenset.FDE(6, reps=2, simhash_bits=2, proj_dim=3, final_dim=8, seed=4)
    good = tmp_path / "good.fde"
    fde.save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.fde"
    rng = np.random.default_rng(0)
    positions = range(len(data)) if LONG else rng.choice(len(data), 400, replace=False)
    loaded_same = trials = 0
    for pos in positions:
        for flip in ([0x01, 0x80, 0xFF] if LONG else [int(rng.integers(1, 256))]):
            damaged = bytearray(data)
            damaged[pos] ^= flip
            trials += 1
            bad.write_bytes(bytes(damaged))
            try:
                loaded = tokenset.FDE.load(bad)
            except ValueError:
                continue
            assert loaded == fde, pos
            loaded_same += 1
    for cut in rng.choice(len(data), 60, replace=False):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            tokenset.FDE.load(bad)
    assert loaded_same < trials // 4  # most bytes matter (the rest: zip timestamps and attributes nothing reads)


@FUZZ
@given(data=st.data())
def test_inner_product_topk_any_input(data):
    dim = data.draw(st.integers(1, 80), label="dim")
    n = data.draw(st.integers(0, 60), label="n")
    nq = data.draw(st.integers(0, 12), label="nq")
    k = data.draw(st.integers(1, 70), label="k")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    vectors = _as(rng.standard_normal((n, dim)), dtype)
    if data.draw(st.booleans(), label="duplicates") and n > 1:
        vectors[n // 2:] = vectors[: n - n // 2]  # exact ties
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    mask = rng.random(n) < 0.7 if data.draw(st.booleans(), label="mask") else None
    scores, indices = tokenset.inner_product_topk(queries, vectors, k, mask=mask)
    v64 = np.asarray(vectors, np.float64)
    eligible = np.flatnonzero(np.ones(n, bool) if mask is None else mask)
    for a in range(nq):
        got = indices[a][indices[a] >= 0]
        assert len(got) == min(k, len(eligible)) and len(set(got.tolist())) == len(got)
        assert np.isin(got, eligible).all()
        exact = v64[eligible] @ queries[a].astype(np.float64)
        bound = 2 * U32 * (dim + 2) * (np.abs(v64[eligible]) @ np.abs(queries[a])).max(initial=0) + 1e-30
        kth = np.sort(exact)[::-1][len(got) - 1] if len(got) else -np.inf
        assert (v64[got] @ queries[a] >= kth - 2 * bound).all()  # a best set, up to rounding
        assert (np.diff(scores[a][: len(got)]) <= 0).all()


# ---- token selection and merging ----------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_kcenter_any_input(data):
    from tokenset.reference import kcenter as kref

    dim = data.draw(st.integers(1, 40), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    special = data.draw(st.booleans(), label="special")
    sets = draw_sets(data, dim, dtype, nonempty=False, special=special)
    metric = data.draw(st.sampled_from(["cosine", "l2", "ip"]), label="metric")
    k = data.draw(st.integers(1, 45), label="k")
    if data.draw(st.booleans(), label="duplicates"):
        sets = [np.concatenate([s, s[: len(s) // 2]]) for s in sets]  # exact ties
    given = sets
    if data.draw(st.booleans(), label="gapped"):  # rows (sentinels) before the first set and after the last
        given = gapped(sets, data.draw(st.integers(0, 3), label="gap"), data.draw(st.integers(0, 3), label="tail"))
    idx = tokenset.kcenter(given, k, metric=metric)
    assert idx.shape == (len(sets), k)
    for i, s in enumerate(sets):
        got = idx[i][idx[i] >= 0]
        assert len(got) == min(k, len(s)) and len(set(got.tolist())) == len(got)  # never a duplicate
        assert (idx[i][len(got):] == -1).all()
        if not special and len(s):
            x64 = np.asarray(s, np.float64)
            # Each pick is a farthest token at its step, up to float32 rounding of the distances.
            _, want_dist = kref.kcenter_set(x64, k, metric)
            _, dist = tokenset.kcenter([s], k, metric=metric, return_distances=True)
            finite = np.isfinite(want_dist)
            scale = (np.abs(x64).sum(axis=1).max() ** 2) if metric != "cosine" else 1.0
            assert np.allclose(dist[0, :len(got)][finite], want_dist[finite], atol=64 * U32 * dim * scale + 1e-6)


@FUZZ
@given(data=st.data())
def test_max_coverage_any_matrix(data):
    from tokenset.reference import coverage as cref

    count = data.draw(st.integers(1, 4), label="sets")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    mats = []
    for _ in range(count):
        r, c = data.draw(st.integers(0, 30), label="rows"), data.draw(st.integers(0, 30), label="cols")
        m = rng.standard_normal((r, c)).astype(np.float32)
        if data.draw(st.booleans(), label="special") and m.size:
            m.reshape(-1)[rng.integers(0, m.size, 3)] = rng.choice([np.nan, np.inf, -np.inf, 0.0], 3)
        if data.draw(st.booleans(), label="ties") and c > 1:
            m[:, c // 2:] = m[:, : c - c // 2]
        mats.append(m)
    k = data.draw(st.integers(1, 35), label="k")
    idx, gains = tokenset.max_coverage(mats, k, return_gains=True)
    for i, m in enumerate(mats):
        want_idx, want_gains = cref.coverage_set(m, k)
        np.testing.assert_array_equal(idx[i, :len(want_idx)], want_idx)
        np.testing.assert_array_equal(gains[i, :len(want_idx)], want_gains)


@FUZZ
@given(data=st.data())
def test_attention_scores_any_input(data):
    """attention_scores on any small shape, dtype, rows, padding, causal and reduction equals the dense float64
    softmax (2e-6 absolute + 2e-5 relative; NaN where the reference has NaN)."""
    from tokenset.reference import attention_scores as ref

    batch = data.draw(st.integers(1, 3), label="batch")
    kv = data.draw(st.integers(1, 3), label="kv heads")
    heads = kv * data.draw(st.integers(1, 3), label="group")
    n = data.draw(st.integers(1, 70), label="n")
    dim = data.draw(st.integers(1, 40), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    q = as_dtype(rng.standard_normal((batch, heads, n, dim)).astype(np.float32) * 3, dtype)
    k = as_dtype(rng.standard_normal((batch, kv, n, dim)).astype(np.float32) * 3, dtype)
    lengths = rng.integers(1, n + 1, batch)
    rows = data.draw(st.one_of(st.just("mean"), st.lists(st.integers(-1, 0), min_size=1, max_size=3)), label="rows")
    reduce = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduce")
    causal = data.draw(st.booleans(), label="causal")
    got = np.asarray(to_numpy(tokenset.attention_scores(q, k, rows=rows, reduce=reduce, causal=causal,
                                                        lengths=lengths)), np.float64)
    qf, kf = (np.asarray(to_numpy(x)).astype(np.float64) for x in (q, k))
    table = None if rows == "mean" else [[r % int(length) for r in rows] for length in lengths]
    want = ref.attention_scores([qf[b, :, :lengths[b]] for b in range(batch)],
                                [kf[b, :, :lengths[b]] for b in range(batch)], table, reduce, causal)
    for b in range(batch):
        np.testing.assert_allclose(got[b][..., :lengths[b]], want[b], atol=2e-6, rtol=2e-5)
        assert not got[b][..., lengths[b]:].any()


@FUZZ
@given(data=st.data())
def test_prune_any_input(data):
    """Every prune method on every layout (list, gapped Ragged, padded with lengths or a non-prefix mask) gives the
    result of the list of the same sets: the same picks, each set's own tokens (never a gap or padding row), scores
    read at the tokens' positions; a huge keep is clamped to the sets, never allocated."""
    dim = data.draw(st.integers(1, 12), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    sets = draw_sets(data, dim, dtype, nonempty=False, special=data.draw(st.booleans(), label="special"))
    method = data.draw(st.sampled_from(["divprune", "kcenter", "mmtok", "scores"]), label="method")
    keep = data.draw(st.one_of(st.integers(1, 45), st.floats(0.01, 1.0), st.just(2**40)), label="keep")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="options seed"))
    scores = [rng.standard_normal(len(s)) for s in sets] if method == "scores" else None
    options = {"kcenter": {"metric": data.draw(st.sampled_from(["cosine", "l2", "ip"]), label="metric"),
                           "first": "random", "seed": 2},
               "mmtok": {"text": rng.standard_normal((3, dim)).astype(np.float32)}}.get(method, {})
    want = tokenset.prune(sets, keep, method=method, **options, **({"scores": scores} if scores else {}))
    lengths = np.array([len(s) for s in sets])
    counts = np.maximum(1, np.rint(keep * lengths)) if isinstance(keep, float) else np.full(len(sets), keep)
    np.testing.assert_array_equal(want.lengths, np.minimum(counts, lengths))
    tokens, layout, laid = draw_layout(data, sets, scores)
    got = tokenset.prune(tokens, keep, method=method, **layout, **options, **({"scores": laid} if scores else {}))
    assert_same_reduction(got, want, sets)
    for i, s in enumerate(sets):
        n = got.lengths[i]
        picked = to_numpy(got.indices)[i, :n]
        assert (np.diff(picked) > 0).all() and (to_numpy(got.indices)[i, n:] == -1).all()
        np.testing.assert_array_equal(to_numpy(got.tokens[i]).astype(np.float64), s[picked].astype(np.float64))


@FUZZ
@given(data=st.data())
def test_merge_any_input(data):
    dim = data.draw(st.integers(1, 12), label="dim")
    sets = draw_sets(data, dim, "float32", nonempty=False, special=data.draw(st.booleans(), label="special"))
    method = data.draw(st.sampled_from(["tome", "dpc_knn", "kmeans", "kmedoids"]), label="method")
    keep = data.draw(st.one_of(st.integers(1, 45), st.floats(0.01, 1.0), st.just(2**40)), label="keep")
    sizes = None
    if method in ("tome", "dpc_knn") and data.draw(st.booleans(), label="sizes"):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="sizes seed"))
        sizes = [rng.random(len(s)) + 0.5 for s in sets]
    result = tokenset.merge(sets, keep, method=method, **({"sizes": sizes} if sizes else {}))
    lengths = np.array([len(s) for s in sets])
    assert (result.lengths <= lengths).all() and (result.lengths <= np.maximum(
        np.ceil(keep * lengths) if isinstance(keep, float) else keep, 1)).all()
    totals = lengths if sizes is None else [np.sum(w, dtype=np.float32) for w in sizes]
    assert np.allclose(result.sizes.sum(axis=1), totals, rtol=1e-5)  # every token belongs to exactly one group
    for i in range(len(sets)):
        n = result.lengths[i]
        assert len(set(result.indices[i, :n].tolist())) == n and (np.diff(result.indices[i, :n]) > 0).all()
        assert result.tokens[i].shape == (n, dim)
    # The same sets in any layout (gapped Ragged, padded with lengths or a non-prefix mask; sizes laid out to match):
    # the same groups and tokens, never a gap or padding row merged in.
    tokens, layout, laid = draw_layout(data, sets, sizes)
    got = tokenset.merge(tokens, keep, method=method, **layout, **({"sizes": laid} if sizes else {}))
    assert_same_reduction(got, result, sets)


@FUZZ
@given(data=st.data())
def test_merge_does_not_depend_on_the_batch(data):
    """A set merged alone and inside a batch of >= 64 small sets gets the same groups, NaN and inf included (once a
    GEMM per set and MaxSim's argmax ranked NaN differently; now one native nearest op for both, every pair summed
    alone in k order). Dimension >= 2: in dimension 1 every cosine is +-1 up to rounding."""
    dim = data.draw(st.integers(2, 12), label="dim")
    sets = draw_sets(data, dim, "float32", nonempty=False, special=data.draw(st.booleans(), label="special"))
    method = data.draw(st.sampled_from(["tome", "dpc_knn", "kmeans", "kmedoids"]), label="method")
    keep = data.draw(st.one_of(st.integers(1, 45), st.floats(0.01, 1.0)), label="keep")
    many = (sets * (64 // len(sets) + 1))[:max(64, len(sets))]
    batch = tokenset.merge(many, keep, method=method)
    for i, s in enumerate(sets):
        alone = tokenset.merge([s], keep, method=method)
        n = batch.lengths[i]
        assert alone.lengths[0] == n
        np.testing.assert_array_equal(batch.indices[i, :n], alone.indices[0, :n])
        np.testing.assert_array_equal(batch.sizes[i, :n], alone.sizes[0, :n])
