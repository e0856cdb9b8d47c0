"""Bad input gets a clear Python exception naming the argument and the fix; nothing reaches C++ unchecked, and what
does reach C++ directly is checked again there (no crash)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import tokenset
from tokenset import _core

from conftest import requires_torch

Q = np.ones((3, 8), np.float32)
DOCS = [np.ones((2, 8), np.float32), np.ones((4, 8), np.float32)]


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"\[B, N, d\] or \[n, d\]"):
        tokenset.maxsim(np.ones(8, np.float32), DOCS)
    with pytest.raises(ValueError, match="each set must be 2-D"):
        tokenset.maxsim(Q, [np.ones(8, np.float32)])
    with pytest.raises(ValueError, match="must be 2-D"):
        tokenset.Ragged(np.ones((2, 3, 4), np.float32), [0, 2])


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension 8 but documents have 5"):
        tokenset.maxsim(Q, [np.ones((2, 5), np.float32)])
    with pytest.raises(ValueError, match="token dimension 5 differs"):
        tokenset.ragged([np.ones((2, 8), np.float32), np.ones((2, 5), np.float32)])


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.bool_])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=r"not supported.*float32, float16 or bfloat16.*astype"):
        tokenset.maxsim(Q.astype(dtype), DOCS)


def test_not_an_array():
    with pytest.raises(TypeError, match="set batch"):
        tokenset.maxsim("hello", DOCS)
    with pytest.raises(TypeError, match="expected an array"):
        tokenset.maxsim(Q, [[1.0, 2.0]])


@pytest.mark.parametrize("offsets,match", [
    ([0, 3, 2], "non-decreasing"),
    ([0, 2, 99], "past the end"),
    ([-1, 2], ">= 0"),
    ([], "B\\+1 >= 1"),
    ([[0, 1]], "1-D"),
    ([0.0, 1.5], "integers"),
])
def test_bad_offsets(offsets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tokenset.Ragged(np.ones((4, 8), np.float32), np.array(offsets))


def test_bad_lengths_and_mask():
    x = np.ones((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        tokenset.ragged(x, lengths=[1, 4])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        tokenset.ragged(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="boolean"):
        tokenset.ragged(x, mask=np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        tokenset.ragged(x, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="not both"):
        tokenset.ragged(x, lengths=[1, 1], mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="padded"):
        tokenset.ragged(Q, lengths=[1])


def test_empty_query_is_an_error():
    with pytest.raises(ValueError, match="query 1 has no tokens"):
        tokenset.maxsim([Q, np.zeros((0, 8), np.float32)], DOCS)


def test_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty list"):
        tokenset.maxsim([], DOCS)


@pytest.mark.parametrize("cand,match", [
    (np.array([[0, 2]]), r"candidates\[0, 1\] = 2 is not a document index in \[0, 2\)"),
    (np.array([[0, -2]]), "-2"),
    (np.array([0, 1]), r"shape \[num_queries=1, c\]"),
    (np.array([[0.5, 1.0]]), "integers"),
])
def test_bad_candidates(cand, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tokenset.maxsim_pairs(Q, DOCS, cand)


@pytest.mark.parametrize("k,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_k(k, exc):
    with pytest.raises(exc, match="k must be"):
        tokenset.maxsim_topk(Q, DOCS, k)


def test_bad_simd_level_and_threads():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        tokenset.set_simd_level("sse9")
    with pytest.raises(ValueError, match="in 1..4096"):
        tokenset.set_num_threads(0)


# ---- the C++ layer checks what it is given, even when Python's checks are bypassed ----------------------------------

class Batch:
    """What ops/_dispatch.KernelBatch carries, built by hand to bypass every Python check."""

    def __init__(self, values=None, offsets=None, sets=None, device_offsets=None):
        self.values, self.offsets, self.sets, self.device_offsets = values, offsets, sets, device_offsets


def _call(q_values=Q, q_off=None, d_values=None, d_off=None, d_sets=None, cand=None, scores=None, argmax=None):
    q_off = np.array([0, 3], np.int64) if q_off is None else q_off
    d_values = np.ones((6, 8), np.float32) if d_values is None else d_values
    d_off = np.array([0, 2, 6], np.int64) if d_off is None else d_off
    columns = max(len(d_off) - 1, 0) if cand is None else np.shape(cand)[-1]
    scores = np.empty((len(q_off) - 1, columns), np.float32) if scores is None else scores
    return _core.maxsim(Batch(q_values, q_off), Batch(d_values, d_off, d_sets), scores, argmax, cand)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), None),
    (dict(d_off=np.array([0, 2, 7], np.int64)), "exceeds"),
    (dict(d_off=np.array([0, 5, 2], np.int64)), "non-decreasing"),
    (dict(d_off=np.array([-4, 2], np.int64)), "negative"),
    (dict(d_off=np.array([0, 2], np.int32)), "int64"),
    (dict(d_off=np.array([[0, 2]], np.int64)), "1-D"),
    (dict(d_off=np.array([], np.int64)), "at least one"),
    (dict(d_values=np.ones((6, 8), np.float16)), "queries are float32 but documents are float16"),
    (dict(d_values=np.ones((6, 8), np.float64)), "float64 is not supported"),
    (dict(d_values=np.ones((6, 8), np.int32)), "int32 is not supported"),
    (dict(d_values=np.ones((6, 5), np.float32)), "dimension"),
    (dict(d_values=np.ones(6, np.float32)), "2-D"),
    (dict(d_values=np.asfortranarray(np.ones((6, 8), np.float32))), "contiguous"),
    (dict(d_values="not an array"), "expected an array"),
    (dict(d_sets=[np.ones((2, 8), np.float32)]), "1 sets but 2 offsets"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((3, 8), np.float32)]), "3 tokens but the offsets give it 4"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((4, 7), np.float32)]), "token dimension 7"),
    (dict(d_sets=[np.ones((2, 8), np.float32), np.ones((4, 8), np.float16)]), "one dtype"),
    (dict(q_off=np.array([0, 0], np.int64)), "no tokens"),
    (dict(cand=np.array([[5]], np.int64)), "not a document index"),
    (dict(cand=np.array([[0]], np.int32)), "int64"),
    (dict(cand=np.array([[0], [1]], np.int64)), "shape"),
    (dict(scores=np.empty((1, 3), np.float32)), r"scores must have shape \(1, 2\), got \(1, 3\)"),
    (dict(scores=np.empty((1, 2), np.float64)), "scores: dtype float64 is not supported"),
    (dict(scores=np.empty((1, 2), np.int64)), "scores must be float32, got int64"),
    (dict(scores=np.empty((1, 4), np.float32)[:, ::2]), "C-contiguous"),
    (dict(scores=np.empty((1, 2), np.float32)[:, ::-1]), "C-contiguous"),
    (dict(argmax=np.empty((1, 2, 2), np.int32)), r"argmax must have shape \(1, 2, 3\)"),
])
def test_core_rejects_bad_buffers(kwargs, match):
    if match is None:  # the baseline call is valid
        _call(**kwargs)
        return
    with pytest.raises((ValueError, TypeError), match=match):
        _call(**kwargs)


def test_core_rejects_read_only_output():
    scores = np.empty((1, 2), np.float32)
    scores.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _call(scores=scores)


def test_core_topk_rejects_bad_k():
    off = np.array([0, 3], np.int64)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core.maxsim_topk(Batch(Q, off), Batch(Q, off), 0, np.empty((1, 0), np.float32), np.empty((1, 0), np.int64))
    with pytest.raises(ValueError, match="top-k indices must have shape"):
        _core.maxsim_topk(Batch(Q, off), Batch(Q, off), 2, np.empty((1, 2), np.float32), np.empty((1, 3), np.int64))


@requires_torch
def test_unsupported_device():
    import torch

    with pytest.raises(ValueError, match="device 'meta' are not supported; use a CPU or CUDA tensor"):
        tokenset.maxsim(torch.ones(3, 8), torch.ones(2, 8, device="meta"))


@requires_torch
def test_torch_unsupported_dtype():
    import torch

    with pytest.raises(TypeError, match=r"torch.float64 is not supported.*x.float\(\)"):
        tokenset.maxsim(torch.ones(3, 8, dtype=torch.float64), DOCS)


def test_cuda_missing_is_a_clear_error():
    info = tokenset.build_info()
    if info["cuda"] and info["cuda_devices"] > 0:
        pytest.skip("a GPU is present")
    from tokenset import _backend

    if _backend._cuda is None:
        with pytest.raises(RuntimeError, match="TOKENSET_CUDA=ON"):
            _backend.cuda()
    else:  # a CUDA build without a GPU or with too old a driver: every CUDA call says why and what to install
        assert info["cuda_devices"] == 0 and info["cuda_error"]
        with pytest.raises(RuntimeError, match=r"cannot run here: .*driver >= .*CPU-only build"):
            _backend.cuda()
        with pytest.raises(RuntimeError, match="cannot run here"):
            tokenset.Index(4).to("cuda")


# ---- regressions: inputs that used to be accepted wrongly or fail with the wrong error --------------------------------
def test_scalar_offsets_are_not_zero_sets():
    with pytest.raises(ValueError, match="offsets must be 1-D"):
        tokenset.Ragged(np.ones((5, 4), np.float32), 5)


def test_ragged_offsets_stay_as_checked():
    given = np.array([0, 2, 5])
    r = tokenset.Ragged(np.ones((5, 4), np.float32), given)
    assert given.flags.writeable  # the caller's array is not touched
    with pytest.raises(ValueError):
        r.offsets.setflags(write=True)  # and ours cannot be made writable
    with pytest.raises(ValueError):
        r.offsets[0] = 3


def test_maxsim_pairs_needs_candidates():
    with pytest.raises(TypeError, match="needs candidates"):
        tokenset.maxsim_pairs(Q, DOCS, None)


def test_unsigned_candidates_never_wrap():
    with pytest.raises(ValueError, match="does not fit in int64"):
        tokenset.maxsim_pairs(Q, DOCS, np.array([[2**64 - 1]], np.uint64))
    got = tokenset.maxsim_pairs(Q, DOCS, np.array([[1, 0]], np.uint64))
    assert np.array_equal(got, tokenset.maxsim(Q, DOCS))


@pytest.mark.parametrize("threads", [1.5, "2", True, None, np.float32(2)])
def test_set_num_threads_takes_integers(threads):
    before = tokenset.get_num_threads()
    with pytest.raises(TypeError, match="takes an integer"):
        tokenset.set_num_threads(threads)
    assert tokenset.get_num_threads() == before
    tokenset.set_num_threads(np.int64(before))  # numpy integers are integers


def test_argmax_int32_overflow_is_refused():
    """argmax is int32: a document of 2^31 tokens would return wrapped (negative) indices. A zero-stride view makes
    one without memory."""
    doc = np.lib.stride_tricks.as_strided(np.ones((1, 2), np.float32), shape=(2**31 + 5, 2), strides=(0, 4))
    with pytest.raises(ValueError, match="argmax indices are int32"):
        tokenset.maxsim(np.ones((1, 2), np.float32), [doc], return_argmax=True)


def test_token_dimension_limit():
    with pytest.raises(ValueError, match="token dimension must be in 1..65536"):
        tokenset.maxsim(np.ones((1, 2**16 + 1), np.float16), [np.ones((1, 2**16 + 1), np.float16)])


TOKEN_DIM_CALLS = {  # every public entry that checks the token dimension in Python, by the path it takes
    "maxsim": lambda x: tokenset.maxsim(x, x),  # kernel wrappers (_dispatch.kernel_batch)
    "maxsim_topk": lambda x: tokenset.maxsim_topk(x, x, 1),
    "inner_product_topk": lambda x: tokenset.inner_product_topk(x[0], x[0], 1),  # ops/inner_product
    "kcenter": lambda x: tokenset.kcenter(x, 1),
    "segment_sum": lambda x: tokenset.segment_sum(x[0], [0, 0]),  # ops/segment_sum
    "coverage": lambda x: tokenset.coverage(x, 1),  # selection (_array.check_tokens)
    "prune": lambda x: tokenset.prune(x, 1, method="kcenter"),
    "merge": lambda x: tokenset.merge(x, 1),
}


@pytest.mark.parametrize("dim", [0, 2**16 + 1])
def test_token_dimension_limit_is_one_constant_and_one_message(dim, monkeypatch):
    """The limit was written twice (_dispatch.MAX_TOKEN_DIM and _array.MAX_DIM) with two messages: the kernels'
    wrappers said "got 65537", the selection ops "got 65537 (project the tokens to at most 65536 first)". One
    constant now, one message on every path; changing the constant changes both."""
    from tokenset import _array

    fix = "a token needs at least one coordinate" if dim < 1 else "project the tokens to at most 65536 first"
    for name, call in TOKEN_DIM_CALLS.items():
        with pytest.raises(ValueError) as error:
            call(np.zeros((1, 2, dim), np.float16))
        assert str(error.value).split(": ", 1)[1] == f"token dimension must be in 1..65536, got {dim} ({fix})", name
    monkeypatch.setattr(_array, "MAX_TOKEN_DIM", 8)
    for name, call in TOKEN_DIM_CALLS.items():
        with pytest.raises(ValueError, match=r"token dimension must be in 1\.\.8, got 9 \(project the tokens to at most 8 "):
            call(np.zeros((1, 2, 9), np.float16))


def test_float32_overflow_is_inf_on_every_level():
    """A dot product beyond float32's range: +-inf (the FMA chain in k order), the same on every SIMD level; it gave
    NaN on the scalar level and inf on AVX2/AVX-512 before the levels were made bit-identical."""
    big = np.full((2, 64), 1e30, np.float32)
    alternating = big.copy()
    alternating[:, ::2] = -1e30
    docs = [big, -big, alternating, np.concatenate([alternating, np.ones((1, 64), np.float32)])]
    results = []
    before = tokenset.simd_level()
    try:
        for level in tokenset.build_info()["simd_compiled"]:
            try:
                tokenset.set_simd_level(level)
            except ValueError:
                continue  # not supported by this CPU
            results.append(tokenset.maxsim(big, docs))
    finally:
        tokenset.set_simd_level(before)
    for r in results:
        assert np.array_equal(r, results[0])
    assert results[0][0, 0] == np.inf and results[0][0, 1] == -np.inf
    assert not np.isnan(results[0]).any()


def test_fde_sizes_are_bounded_before_any_work():
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match="reps must be in 1..4096"):
        tokenset.FDE(dim=1, reps=2**31 - 1, simhash_bits=0)  # used to loop in Python for hours
    with pytest.raises(ValueError, match="dim must be in 1..65536"):
        tokenset.FDE(dim=2**40)
    with pytest.raises(ValueError, match="hyperplane coordinates"):
        tokenset.FDE(dim=65536, reps=4096, simhash_bits=30, proj_dim=1)
    assert time.perf_counter() - start < 1.0


def test_from_arrays_rejects_complex():
    with pytest.raises(TypeError, match="real numbers"):
        tokenset.FDE.from_arrays(np.ones((1, 4, 2), np.complex64))
    with pytest.raises(TypeError, match="real numbers"):
        tokenset.FDE.from_arrays(np.ones((1, 4, 2), np.float32), projection=np.ones((1, 4, 3), complex))


def test_kernel_state_is_read_only_and_checked():
    fde = tokenset.FDE(4, reps=2, simhash_bits=2)
    state = fde.kernel_state()
    with pytest.raises(TypeError):
        state["reps"] = None
    from tokenset.ops import fde as fde_ops

    edited = dict(state, reps=None)
    with pytest.raises(TypeError, match="'reps' must be an integer"):
        fde_ops.encode(tokenset.ragged(np.ones((3, 4), np.float32)), edited, documents=True)
    with pytest.raises(TypeError, match="'reps' must be an integer, got NoneType"):  # the native check, directly
        _core.fde_encode(_batch(np.ones((3, 4), np.float32), [0, 3]), edited, edited, True, True,
                         np.empty((1, 32), np.float32))


def _batch(values, offsets):
    class Batch:
        pass

    b = Batch()
    b.values, b.offsets, b.sets, b.device_offsets = values, np.asarray(offsets, np.int64), None, None
    return b


def test_paths_may_be_bytes_or_pathlike(tmp_path):
    fde = tokenset.FDE(4, reps=2, simhash_bits=2, seed=1)
    fde.save(bytes(tmp_path / "a.fde"))
    assert tokenset.FDE.load(bytes(tmp_path / "a.fde")) == fde
    assert tokenset.FDE.load(tmp_path / "a.fde") == fde
    with pytest.raises(TypeError, match="str, bytes or os.PathLike"):
        tokenset.FDE.load(3)


@requires_torch
def test_torch_nested_tensors_are_set_batches():
    import torch

    sets = [torch.randn(3, 8), torch.randn(5, 8)]
    expected = tokenset.maxsim(sets, sets)
    for layout in (torch.strided, torch.jagged):
        nested = torch.nested.nested_tensor(sets, layout=layout)
        assert torch.equal(tokenset.maxsim(nested, nested), expected)
    with pytest.raises(ValueError, match="carries its own lengths"):
        tokenset.ragged(torch.nested.nested_tensor(sets), lengths=[1, 2])


@requires_torch
def test_fde_out_that_requires_grad_is_refused():
    import torch

    fde = tokenset.FDE(4, reps=2, simhash_bits=2)
    out = torch.zeros(1, fde.output_dim, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        fde.encode_documents(torch.ones(3, 4), out=out)


@requires_torch
@pytest.mark.parametrize("side", ["queries", "documents"])
def test_autograd_with_mixed_libraries(side):
    """A torch side that requires grad with a numpy other side: gradients as if both were torch (it raised
    AttributeError: 'numpy.ndarray' object has no attribute 'detach')."""
    import torch

    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    tq, td = torch.tensor(q, requires_grad=True), torch.tensor(d, requires_grad=True)
    tokenset.maxsim(tq, td).sum().backward()
    if side == "queries":
        leaf = torch.tensor(q, requires_grad=True)
        scores = tokenset.maxsim(leaf, d)
        expected = tq.grad
    else:
        leaf = torch.tensor(d, requires_grad=True)
        scores = tokenset.maxsim(q, leaf)
        expected = td.grad
    assert isinstance(scores, torch.Tensor)
    scores.sum().backward()
    assert torch.allclose(leaf.grad, expected)


# ---- token selection and merging: counts, token values, layouts (issue: reliability) ---------------------------------
X = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
SELECTION_CALLS = {
    "kcenter": lambda x, k: tokenset.kcenter(x, k),
    "coverage": lambda x, k: tokenset.coverage(x, k),
    "max_coverage": lambda x, k: tokenset.max_coverage(np.ones((2, 3, 5), np.float32), k),
    "prune": lambda x, k: tokenset.prune(x, k),
    "prune-mmtok": lambda x, k: tokenset.prune(x, k, method="mmtok"),
    "merge": lambda x, k: tokenset.merge(x, k),
    "merge-kmeans": lambda x, k: tokenset.merge(x, k, method="kmeans"),
}


@pytest.mark.parametrize("call", list(SELECTION_CALLS))
@pytest.mark.parametrize("k", [2**63, 2**64 - 1, 2**70, np.uint64(2**63), np.array([2**64 - 1, 1], np.uint64),
                               [2**63, 1], [1, 2**70], np.array([1, 2**63 + 5], np.uint64)],
                         ids=["2^63", "2^64-1", "2^70", "np.uint64", "uint64 array", "list", "list 2^70",
                              "uint64 second"])
def test_counts_beyond_int64_are_refused_never_wrapped(call, k):
    """k / keep >= 2**63 raised OverflowError from numpy; a per-set uint64 above 2**63 - 1 was wrapped to a negative
    count (and then refused with the wrapped value, or taken as a float)."""
    name = "keep" if call.startswith(("prune", "merge")) else "k"
    with pytest.raises(ValueError, match=rf"{name}(\[\d\])?=\d+ does not fit in int64 .*refused, never wrapped"):
        SELECTION_CALLS[call](X, k)


def test_kcenter_first_beyond_int64_is_refused():
    with pytest.raises(ValueError, match="first=18446744073709551615 does not fit in int64"):
        tokenset.kcenter(X, 2, first=np.array([2**64 - 1, 0], np.uint64))


@pytest.mark.parametrize("call", ["coverage", "prune-mmtok", "prune-scores", "merge"])
def test_selection_refuses_tokens_it_cannot_compute_on(call):
    """coverage / prune(method="mmtok") took complex tokens (the imaginary part silently dropped) and token
    dimensions 0 and 65,537; the other ops refused them natively."""
    run = {"coverage": lambda x: tokenset.coverage(x, 2),
           "prune-mmtok": lambda x: tokenset.prune(x, 2, method="mmtok"),
           "prune-scores": lambda x: tokenset.prune(x, 2, method="scores", scores=np.ones(x.shape[:-1])),
           "merge": lambda x: tokenset.merge(x, 2)}[call]
    for dtype in (np.complex64, np.complex128, np.float64, np.int32):
        with pytest.raises(TypeError, match=rf"dtype {np.dtype(dtype)} is not supported.*float32.*astype"):
            run(X.astype(dtype))
    with pytest.raises(ValueError, match="token dimension must be in 1..65536, got 0"):
        run(np.zeros((2, 3, 0), np.float32))
    with pytest.raises(ValueError, match="token dimension must be in 1..65536, got 65537"):
        run(np.zeros((1, 2, 65537), np.float16))


def test_coverage_checks_text_and_keys_too():
    with pytest.raises(TypeError, match="text: dtype complex64 is not supported"):
        tokenset.coverage(X, 2, text=np.ones((3, 4), np.complex64))
    with pytest.raises(TypeError, match="vision_keys: dtype complex64 is not supported"):
        tokenset.coverage(X, 2, vision_keys=np.ones((2, 5, 3), np.complex64))
    with pytest.raises(ValueError, match="vision_keys: token dimension must be in 1..65536, got 0"):
        tokenset.coverage(X, 2, vision_keys=np.ones((2, 5, 0), np.float32))


def test_max_coverage_list_entries_must_be_arrays():
    m = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"matrix\[1\] must be a 2-D numpy array, torch tensor or cupy array.*NoneType"):
        tokenset.max_coverage([m, None], 1)
    with pytest.raises(TypeError, match=r"matrix\[0\] must be a 2-D .*list"):
        tokenset.max_coverage([[[1.0]], m], 1)
    with pytest.raises(ValueError, match=r"matrix\[1\] must be 2-D \[rows, cols\]"):
        tokenset.max_coverage([m, np.ones(3, np.float32)], 1)


@requires_torch
def test_sparse_torch_tensors_are_refused_with_the_fix():
    """A sparse tensor reached torch / numpy calls that raised RuntimeError ("unsupported memory format option") or
    NotImplementedError; every entry point now refuses it, naming the argument and the fix."""
    import torch

    s = torch.randn(4, 8).to_sparse()
    dense = torch.randn(4, 8)
    calls = {
        "maxsim": lambda: tokenset.maxsim(s, dense),
        "maxsim documents": lambda: tokenset.maxsim(dense, [dense, s]),
        "kcenter": lambda: tokenset.kcenter(s, 2),
        "coverage": lambda: tokenset.coverage(s, 2),
        "coverage text": lambda: tokenset.coverage(dense, 2, text=s),
        "max_coverage": lambda: tokenset.max_coverage(s, 2),
        "max_coverage list": lambda: tokenset.max_coverage([dense, s], 2),
        "prune": lambda: tokenset.prune(s, 2),
        "prune scores": lambda: tokenset.prune(dense, 2, method="scores", scores=torch.ones(4).to_sparse()),
        "merge": lambda: tokenset.merge(s, 2),
        "merge sizes": lambda: tokenset.merge(dense, 2, sizes=torch.ones(4).to_sparse()),
        "Ragged": lambda: tokenset.Ragged(s, [0, 4]),
        "ragged": lambda: tokenset.ragged(s),
        "ragged list": lambda: tokenset.ragged([dense, s]),
        "ragged mask": lambda: tokenset.ragged(torch.randn(2, 4, 8), mask=torch.ones(2, 4).bool().to_sparse()),
        "kcenter k": lambda: tokenset.kcenter(dense, torch.ones(1, dtype=torch.int64).to_sparse()),
        "segment_sum": lambda: tokenset.segment_sum(s, [0, 0, 1, 1]),
        "segment_sum weights": lambda: tokenset.segment_sum(dense, [0, 0, 1, 1],
            weights=torch.ones(4).to_sparse()),
    }
    for label, call in calls.items():
        with pytest.raises(TypeError, match=r"layout torch\.sparse_coo is not supported.*call \.to_dense\(\)"):
            call()
    with warnings.catch_warnings():  # torch, once per process: "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        csr = torch.randn(4, 8).to_sparse_csr()
    with pytest.raises(TypeError, match=r"x: a torch tensor with layout torch\.sparse_csr .*\.to_dense\(\)"):
        tokenset.kcenter(csr, 2)


@pytest.mark.parametrize("k", [2**40, 2**62, 2**63 - 1, 2**63])
def test_topk_with_an_unallocatable_k_names_k(k):
    """k far beyond the candidates used to fail inside numpy ("array is too big", "Maximum allowed dimension") or
    with OverflowError, never naming k."""
    q, d = [np.ones((2, 4), np.float32)], [np.ones((3, 4), np.float32)]
    with pytest.raises(ValueError, match=r"k=\d+: the output .* cannot be allocated"):
        tokenset.maxsim_topk(q, d, k)
    with pytest.raises(ValueError, match=r"k=\d+: the output .* cannot be allocated"):
        tokenset.inner_product_topk(q[0], d[0], k)


def test_tome_metric_is_checked_before_any_work(monkeypatch):
    """ToMe's metric= skipped the token checks: a broadcast [1, 512, 2**17] view (no memory of its own) went through
    the GEMMs (+258 MiB) before segment_sum refused it as "values: ..."; float64 keys were refused as "tokens: ...".
    Now checked (dtype, dimension) right after it becomes a Ragged, naming metric."""
    import importlib

    segments = importlib.import_module("tokenset._segments")
    x = np.ones((1, 512, 8), np.float32)

    def no_work(values):
        raise AssertionError("tokens or keys were converted before the keys were checked")

    monkeypatch.setattr(segments, "float32", no_work)
    with pytest.raises(ValueError, match=r"^metric: token dimension must be in 1..65536, got 131072"):
        tokenset.merge(x, 64, method="tome", metric=np.broadcast_to(np.float32(1), (1, 512, 1 << 17)))
    for metric, error, match in [(np.zeros((1, 512, 3)), TypeError, r"^metric: dtype float64 is not supported"),
                                 (np.zeros((1, 512, 3), np.complex64), TypeError, r"^metric: dtype complex64"),
                                 (np.zeros((1, 512, 0), np.float32), ValueError, r"^metric: token dimension .* got 0"),
                                 ([np.broadcast_to(np.float16(0), (512, 70000))], ValueError, r"^metric: token dimension")]:
        with pytest.raises(error, match=match):
            tokenset.merge(x, 64, method="tome", metric=metric)


@pytest.mark.parametrize("dtype", [np.float64, np.complex64, np.int64, np.int32, np.bool_])
def test_max_coverage_refuses_one_set_of_dtypes_in_every_form(dtype):
    """[B, R, N] float64 / complex / int matrices were refused while the same matrices as a list were cast silently
    (complex: the imaginary part dropped with only numpy's ComplexWarning)."""
    real = np.random.default_rng(0).random((2, 3, 4))
    m = real.astype(dtype)
    with pytest.raises(TypeError, match=rf"^matrix: dtype {np.dtype(dtype)} is not supported.*float32"):
        tokenset.max_coverage(m, 2)
    with pytest.raises(TypeError, match=rf"^matrix\[0\]: dtype {np.dtype(dtype)} is not supported.*float32"):
        tokenset.max_coverage(list(m), 2)
    with pytest.raises(TypeError, match=rf"^matrix\[1\]: dtype {np.dtype(dtype)}"):
        tokenset.max_coverage([real[0].astype(np.float32), m[1]], 2)
    with pytest.raises(TypeError, match=rf"^matrix: dtype {np.dtype(dtype)}"):
        tokenset.max_coverage(m[0], 2)


def test_max_coverage_converts_half_precision_in_every_form():
    m = np.random.default_rng(1).random((2, 5, 7)).astype(np.float16)
    want = tokenset.max_coverage(m.astype(np.float32), 3)
    np.testing.assert_array_equal(tokenset.max_coverage(m, 3), want)
    np.testing.assert_array_equal(tokenset.max_coverage(list(m), 3), want)


@requires_torch
def test_max_coverage_list_is_one_library():
    import torch

    m = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"matrix: all matrices must come from one array library.*matrix\[1\]"):
        tokenset.max_coverage([m, torch.ones(2, 3)], 1)


def test_complex_scores_and_sizes_are_refused():
    """scores= / sizes= took complex values and used their real part."""
    x = np.ones((1, 4, 3), np.float32)
    for value in (np.ones((1, 4), np.complex64), [np.ones(4, np.complex128)], np.ones(4, np.complex64),
                  [[1 + 1j, 2, 3, 4]]):
        with pytest.raises(TypeError, match=r"^scores(\[0\])?: dtype complex\d+ is not supported; pass real numbers"):
            tokenset.prune(x, 2, method="scores", scores=value)
        with pytest.raises(TypeError, match=r"^sizes(\[0\])?: dtype complex\d+ is not supported; pass real numbers"):
            tokenset.merge(x, 2, sizes=value)


@requires_torch
def test_sparse_text_names_text():
    """A sparse text= was refused as "input: ..." (is_array's default name)."""
    import torch

    with pytest.raises(TypeError, match=r"^text: a torch tensor with layout torch\.sparse_coo"):
        tokenset.coverage(torch.ones(4, 3), 2, text=torch.ones(2, 3).to_sparse())
    with pytest.raises(TypeError, match=r"^text: a torch tensor with layout torch\.sparse_coo"):
        tokenset.prune(torch.ones(4, 3), 2, method="mmtok", text=torch.ones(2, 3).to_sparse())


@pytest.mark.parametrize("protected", [2**63, 2**70, np.uint64(2**63), np.uint64(2**64 - 1)])
def test_protected_beyond_int64_names_protected(protected):
    """protected=2**63 raised numpy's OverflowError ("Python int too large to convert to C long")."""
    with pytest.raises(ValueError, match=r"^protected=\d+ does not fit in int64"):
        tokenset.merge(X, 2, protected=protected)
    r = tokenset.merge(X, 2, protected=2**63 - 1)  # the largest int64: every token protected, nothing merged
    assert r.lengths.tolist() == [5, 5]


def test_bools_in_per_set_counts_are_refused_like_a_bare_bool():
    """keep=[True, 2] was read by numpy as [1, 2]; a bare True was already a TypeError."""
    for keep in ([True, 2], (2, False), [np.True_, 2]):
        with pytest.raises(TypeError, match=r"^keep\[\d\] must be an integer, got bool"):
            tokenset.prune(X, keep)
        with pytest.raises(TypeError, match=r"^keep\[\d\] must be an integer, got bool"):
            tokenset.merge(X, keep)
        with pytest.raises(TypeError, match=r"^k\[\d\] must be an integer, got bool"):
            tokenset.kcenter(X, keep)
        with pytest.raises(TypeError, match=r"^k\[\d\] must be an integer, got bool"):
            tokenset.coverage(X, keep)
    for keep in (True, np.True_, np.array(True)):
        with pytest.raises(TypeError, match="got bool"):
            tokenset.prune(X, keep)
    with pytest.raises(TypeError, match=r"^first\[0\] must be an integer, got bool"):
        tokenset.kcenter(X, 2, first=[True, 0])


def test_zero_dimensional_counts_are_scalars():
    """keep=np.array(3) was refused with "must have one entry per set, shape (2,), got ()"."""
    want = tokenset.prune(X, 3).indices
    np.testing.assert_array_equal(tokenset.prune(X, np.array(3)).indices, want)
    np.testing.assert_array_equal(tokenset.prune(X, np.array(3, np.uint8)).indices, want)
    np.testing.assert_array_equal(tokenset.prune(X, np.array(0.6)).indices, tokenset.prune(X, 0.6).indices)
    np.testing.assert_array_equal(tokenset.merge(X, np.array(2)).indices, tokenset.merge(X, 2).indices)
    np.testing.assert_array_equal(tokenset.kcenter(X, np.array(2)), tokenset.kcenter(X, 2))
    np.testing.assert_array_equal(tokenset.coverage(X, np.array(2)), tokenset.coverage(X, 2))
    with pytest.raises(ValueError, match=r"^keep=9223372036854775808 does not fit in int64"):
        tokenset.prune(X, np.array(2**63, np.uint64))
    with pytest.raises(ValueError, match=r"^keep must be >= 1, got 0"):
        tokenset.prune(X, np.array(0))


@pytest.mark.parametrize("k", [2**40, 2**62, 2**63 - 1])
def test_selection_with_an_unallocatable_k_names_k(k):
    """kcenter / coverage / max_coverage with k = 2**62 failed inside numpy ("array is too big"), never naming k.
    The output stays [B, max k] (a k beyond a set only adds -1 padding); one that cannot be allocated is refused."""
    match = r"^k=\d+: the output \[2, \d+\] \(\d+ bytes per entry\) cannot be allocated; the longest set has 5 " \
            r"tokens.*pass k <= 5"
    with pytest.raises(ValueError, match=match):
        tokenset.kcenter(X, k)
    with pytest.raises(ValueError, match=match.replace(r"\(\d+ bytes", r"\(12 bytes")):
        tokenset.kcenter(X, k, return_distances=True)
    with pytest.raises(ValueError, match=match):
        tokenset.coverage(X, k)
    with pytest.raises(ValueError, match=match.replace("has 5", "has 7").replace("<= 5", "<= 7")):
        tokenset.max_coverage(np.ones((2, 3, 7), np.float32), [1, k])
    assert tokenset.prune(X, k).lengths.tolist() == [5, 5]  # keep is clamped to the sets, as before


@pytest.mark.parametrize("count", [2**60, 2**63])
def test_segment_sum_with_an_unallocatable_count_names_count(count):
    with pytest.raises(ValueError, match=rf"count={count}: the output .* cannot be allocated"):
        tokenset.segment_sum(np.ones((2, 3), np.float32), [0, 1], count=count)


def test_measure_fma_peak_takes_any_arguments():
    """Thread counts are clamped to the pool and durations to [calibration, 10 s]: NaN, zero and negative durations
    run the short calibration only (a huge duration once overflowed the round count and returned a negative peak)."""
    from tokenset import _core

    for threads, seconds in [(0, 0.01), (-5, 0.01), (10 ** 6, 0.01), (1, float("nan")), (1, -1.0), (1, 0.0)]:
        peak = _core.measure_fma_peak(threads, seconds)
        assert np.isfinite(peak) and peak > 0
