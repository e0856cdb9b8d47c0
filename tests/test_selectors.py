"""The attention-based selectors (prune methods vtc_cls, fastv, hiprune, visionzip): their rows computed by
tokenset.attention_scores from random q / k, against numpy transcriptions of each paper's code on the dense attention
matrices (batch 1, where the originals are defined), then batched beyond it with different lengths."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset
from tokenset.reference import attention_scores as ref_attention
from tokenset.reference import selectors as ref


def layer_qk(rng, layers, heads, n, d=16):
    return [(rng.standard_normal((heads, n, d)).astype(np.float32),
             rng.standard_normal((heads, n, d)).astype(np.float32)) for _ in range(layers)]


def dense(q, k):
    return np.stack([ref_attention.probabilities(q[h], k[h], q.shape[-1] ** -0.5, False) for h in range(q.shape[0])])


def test_vtc_cls_matches_the_transcription_and_batches():
    rng = np.random.default_rng(0)
    layers, heads, n = 24, 4, 1 + 36
    images = [layer_qk(rng, layers, heads, n) for _ in range(3)]
    rows = np.stack([np.stack([tokenset.attention_scores(q[None], k[None], rows="cls")[0, 1:] for q, k in image])
                     for image in images], axis=1)  # [L, B, N]
    got = tokenset.prune(np.zeros((3, n - 1, 8), np.float32), 9, method="vtc_cls", attention=rows)
    for b, image in enumerate(images):
        want = ref.vtc_cls([dense(q, k) for q, k in image], 9, start=16)
        np.testing.assert_array_equal(got.indices[b], want)
    other = tokenset.prune(np.zeros((3, n - 1, 8), np.float32), 9, method="vtc_cls", attention=rows, start=3, stop=None)
    want = ref.vtc_cls([dense(q, k) for q, k in images[0]][3:] + [np.zeros((heads, n, n))], 9, start=0)
    np.testing.assert_array_equal(other.indices[0], want)


def test_fastv_matches_the_transcription_with_position_gaps_and_batches():
    rng = np.random.default_rng(1)
    heads, system, image_len, text = 4, 5, 40, 7
    seq = system + image_len + text
    batch_last_rows, wants = [], []
    for _ in range(2):
        q = rng.standard_normal((heads, seq, 16)).astype(np.float32)
        k = rng.standard_normal((heads, seq, 16)).astype(np.float32)
        wants.append(ref.fastv(np.stack([ref_attention.probabilities(q[h], k[h], 0.25, True) for h in range(heads)]),
                               system, image_len, ratio=0.75))
        batch_last_rows.append(tokenset.attention_scores(q[None], k[None], rows="last", causal=True)[0])
    last = np.stack(batch_last_rows)
    image_attention = last[:, system:system + image_len]
    got = tokenset.prune(np.zeros((2, image_len, 8), np.float32), 0.25, method="fastv", attention=image_attention)
    for b in range(2):
        kept_positions = np.concatenate([np.arange(system), got.indices[b] + system,
                                         np.arange(system + image_len, seq)])
        np.testing.assert_array_equal(kept_positions, wants[b])  # int(40 * 0.25) = 10 image tokens
    assert got.lengths.tolist() == [10, 10]
    # a ratio is floored as FastV's int(): 0.3 of 37 tokens keeps 11 (the shared rounding would keep 11 too; 0.33 of
    # 40 keeps 13, not 13.2 -> 13; 0.99 of 3 keeps 2, not 3)
    assert tokenset.prune(np.zeros((1, 3, 2), np.float32), 0.99, method="fastv", attention=[[1.0, 2, 3]]).lengths[0] == 2


@pytest.mark.parametrize("keep,alpha", [(12, 0.5), (20, 1.0), (5, 0.1), (30, 0.3)])
def test_hiprune_matches_the_transcription_without_wrap_around(keep, alpha):
    rng = np.random.default_rng(keep)
    heads, side = 4, 7
    n = 1 + side * side
    images = [(layer_qk(rng, 1, heads, n)[0], layer_qk(rng, 1, heads, n)[0]) for _ in range(3)]
    obj = np.stack([tokenset.attention_scores(q[None], k[None], rows="mean")[0, 1:] for (q, k), _ in images])
    deep = np.stack([tokenset.attention_scores(q[None], k[None], rows="mean")[0, 1:] for _, (q, k) in images])
    got = tokenset.prune(np.zeros((3, n - 1, 4), np.float32), keep, method="hiprune", object_attention=obj,
                         deep_attention=deep, grid=(side, side), alpha=alpha)
    for b, ((qo, ko), (qd, kd)) in enumerate(images):
        want = ref.hiprune(dense(qo, ko), dense(qd, kd), keep, side, alpha=alpha, wrap=False)
        np.testing.assert_array_equal(got.indices[b], want)
        assert got.lengths[b] == keep


def test_hiprune_equals_the_original_away_from_row_edges_and_drops_wrapped_neighbours():
    n, side = 36, 6
    obj = np.zeros(n)
    obj[14] = 1.0  # an interior anchor (row 2, column 2)
    deep = np.arange(n, dtype=np.float64)[::-1] / n
    attn_obj = np.zeros((1, n + 1, n + 1))
    attn_obj[0, :, 1:] = obj
    attn_deep = np.zeros((1, n + 1, n + 1))
    attn_deep[0, :, 1:] = deep
    got = tokenset.prune(np.zeros((n, 2), np.float32), 10, method="hiprune", object_attention=obj,
                         deep_attention=deep, grid=(side, side), alpha=0.5)
    np.testing.assert_array_equal(got.indices[0], ref.hiprune(attn_obj, attn_deep, 10, side, alpha=0.5, wrap=True))
    obj[:] = 0
    obj[12] = 1.0  # a row's first token: the original would take 11 (the previous row's end) as its left buffer
    got = tokenset.prune(np.zeros((n, 2), np.float32), 5, method="hiprune", object_attention=obj,
                         deep_attention=np.zeros(n), grid=(side, side), alpha=1.0)
    assert 11 not in got.indices[0].tolist() and {12, 13, 6, 18} <= set(got.indices[0].tolist())


def test_visionzip_matches_the_transcription_and_batches_different_lengths():
    rng = np.random.default_rng(3)
    heads, c = 4, 24
    lengths = [1 + 49, 1 + 36]
    hidden, rows, metrics, wants = [], [], [], []
    for n in lengths:
        q, k = layer_qk(rng, 1, heads, n)[0]
        h = rng.standard_normal((n, c)).astype(np.float32)
        metric = k.mean(0)  # head-mean keys
        wants.append(ref.visionzip(h, dense(q, k), metric, dominant=8, contextual=4))
        hidden.append(h)
        rows.append(tokenset.attention_scores(q[None], k[None], rows="cls", reduce="sum")[0])
        metrics.append(metric)
    got = tokenset.prune(hidden, 12, method="visionzip", attention=rows, keys=metrics, contextual=4)
    offsets = np.concatenate([[0], np.cumsum(got.lengths)])
    for b, (want_idx, want_tokens) in enumerate(wants):
        np.testing.assert_array_equal(got.indices[b][:got.lengths[b]], want_idx)
        np.testing.assert_allclose(got.tokens.values[offsets[b]:offsets[b + 1]], want_tokens, rtol=1e-5, atol=1e-5)
    assert got.sizes[0, :8].tolist() == [1.0] * 8 and got.sizes[0, 8:12].sum() == 50 - 8  # every other token counted once


def test_selector_bad_input_is_a_clear_error():
    x = np.zeros((2, 16, 4), np.float32)
    s = np.random.default_rng(0).random((2, 16))
    with pytest.raises(ValueError, match="grid"):
        tokenset.prune(x, 4, method="hiprune", object_attention=s, deep_attention=s, grid=(3, 5))
    with pytest.raises(ValueError, match="not a square grid"):
        tokenset.prune(x[:, :15], 4, method="hiprune", object_attention=s[:, :15], deep_attention=s[:, :15])
    with pytest.raises(ValueError, match="alpha"):
        tokenset.prune(x, 4, method="hiprune", object_attention=s, deep_attention=s, alpha=2.0)
    with pytest.raises(ValueError, match="needs object_attention"):
        tokenset.prune(x, 4, method="hiprune", deep_attention=s)
    with pytest.raises(ValueError, match="needs attention"):
        tokenset.prune(x, 4, method="fastv")
    with pytest.raises(ValueError, match="select none"):
        tokenset.prune(x, 4, method="vtc_cls", attention=np.stack([s] * 3))
    with pytest.raises(ValueError, match="needs keys"):
        tokenset.prune(x, 4, method="visionzip", attention=s)
    with pytest.raises(ValueError, match="contextual must be"):
        tokenset.prune(x, 4, method="visionzip", attention=s, keys=x, contextual=-1)
    with pytest.raises(TypeError, match="takes no option"):
        tokenset.prune(x, 4, method="fastv", attention=s, grid=(4, 4))
    with pytest.raises(ValueError, match="keep as a ratio"):
        tokenset.prune(x, 1.5, method="fastv", attention=s)
    with pytest.raises(ValueError, match="16 entries but set 0 has"):
        tokenset.prune([x[0, :10], x[1]], 4, method="fastv", attention=[s[0], s[1]])


def test_selectors_on_empty_sets_one_token_and_keep_above_length():
    x = [np.zeros((0, 4), np.float32), np.ones((1, 4), np.float32), np.arange(32, dtype=np.float32).reshape(8, 4)]
    att = [np.zeros(0), np.ones(1), np.arange(8.0)]
    r = tokenset.prune(x, 100, method="fastv", attention=att)
    assert r.lengths.tolist() == [0, 1, 8]
    r = tokenset.prune(x, 3, method="visionzip", attention=att, keys=x, contextual=1)
    assert r.lengths.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(r.indices[2, :2], [0, 7])  # [CLS] and the top token, then one contextual target
    r = tokenset.prune(x[1:], 2, method="hiprune", object_attention=att[1:], deep_attention=att[1:],
                       grid=[(1, 1), (2, 4)])
    assert r.lengths.tolist() == [1, 2]


def test_visionzip_keys_are_read_where_the_tokens_were():
    """Padded tokens with a mask: the [B, N, d] keys are gathered at the mask's positions, like the attention."""
    rng = np.random.default_rng(5)
    n, width = 14, 20
    tokens = rng.standard_normal((1, width, 6)).astype(np.float32)
    keys = rng.standard_normal((1, width, 4)).astype(np.float32)
    attention = rng.random((1, width))
    mask = np.zeros((1, width), bool)
    mask[0, rng.choice(width, n, replace=False)] = True
    mask[0, 0] = True  # [CLS] first
    n = int(mask.sum())
    got = tokenset.prune(tokens, 8, method="visionzip", attention=attention, keys=keys, contextual=3, mask=mask)
    want = tokenset.prune([tokens[0, mask[0]]], 8, method="visionzip", attention=[attention[0, mask[0]]],
                          keys=[keys[0, mask[0]]], contextual=3)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.sizes, want.sizes)
    np.testing.assert_array_equal(got.tokens.values, want.tokens.values)
