"""tokenset.maxsim inside a torch training step: gradients flow to each query token's best document token."""
from __future__ import annotations

import numpy as np
import pytest

import tokenset

from conftest import requires_torch

pytestmark = requires_torch


def torch_reference(q_list, d_list):
    """Differentiable float64 MaxSim with -inf padding (the semantics tokenset implements)."""
    import torch

    rows = []
    for q in q_list:
        row = []
        for d in d_list:
            row.append(torch.tensor(float("-inf"), dtype=q.dtype) if d.shape[0] == 0 else (q @ d.T).max(1).values.sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_gradients_match_torch_reference(device):
    import torch

    gen = torch.Generator().manual_seed(0)
    q_list = [torch.randn(n, 16, generator=gen, dtype=torch.float64) for n in (5, 9)]
    d_list = [torch.randn(n, 16, generator=gen, dtype=torch.float64) for n in (7, 1, 12, 0)]
    weights = torch.randn(2, 4, generator=gen, dtype=torch.float64)

    q32 = [q.float().to(device).requires_grad_() for q in q_list]
    d32 = [d.float().to(device).requires_grad_() for d in d_list]
    scores = tokenset.maxsim(q32, d32)
    assert scores.requires_grad
    finite = torch.isfinite(scores.detach().cpu())
    loss = (scores.cpu()[finite] * weights.float()[finite]).sum()
    loss.backward()

    q64 = [q.float().double().requires_grad_() for q in q_list]
    d64 = [d.float().double().requires_grad_() for d in d_list]
    want = torch_reference(q64, d64)
    (want[finite] * weights[finite]).sum().backward()
    np.testing.assert_allclose(scores.detach().cpu().numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    for got_t, want_t in zip(q32 + d32, q64 + d64):
        want_grad = want_t.grad.numpy() if want_t.grad is not None else np.zeros(tuple(want_t.shape))  # empty doc
        np.testing.assert_allclose(got_t.grad.cpu().numpy(), want_grad, rtol=1e-5, atol=1e-5)


def test_padded_batch_training_step():
    import torch

    torch.manual_seed(1)
    q = torch.randn(4, 6, 32, requires_grad=True)
    docs = torch.randn(8, 20, 32, requires_grad=True)
    lengths = torch.tensor([20, 3, 7, 20, 1, 15, 9, 11])
    scores = tokenset.maxsim(q, tokenset.ragged(docs, lengths=lengths))
    labels = torch.arange(4)
    loss = torch.nn.functional.cross_entropy(scores, labels)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # padded document tokens never get a gradient
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(docs.grad[i, n:] == 0)
    assert docs.grad.abs().sum() > 0


def test_half_precision_gradients_keep_dtype():
    import torch

    q = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    d = torch.randn(5, 8, dtype=torch.bfloat16, requires_grad=True)
    tokenset.maxsim(q, d).sum().backward()
    assert q.grad.dtype == torch.bfloat16 and d.grad.dtype == torch.bfloat16


def test_no_grad_skips_autograd():
    import torch

    q = torch.randn(3, 8, requires_grad=True)
    with torch.no_grad():
        s = tokenset.maxsim(q, torch.randn(4, 8))
    assert not s.requires_grad


def test_return_argmax_with_grad():
    import torch

    q = torch.randn(3, 8, requires_grad=True)
    d = torch.randn(6, 8)
    s, a = tokenset.maxsim(q, d, return_argmax=True)
    assert a.shape == (1, 1, 3) and not a.requires_grad
    s.sum().backward()
    np.testing.assert_allclose(q.grad.numpy(), d[a[0, 0].long()].numpy(), rtol=1e-6)


def test_gapped_batches_take_gradients_of_their_own_rows_only():
    """A Ragged starting past row 0: gradients reach exactly its sets' rows of the caller's tensor."""
    import torch

    v = torch.randn(10, 4, dtype=torch.float32, requires_grad=True)
    d = [torch.randn(3, 4)]
    scores = tokenset.maxsim(tokenset.Ragged(v, [2, 5]), d)
    scores.sum().backward()
    want = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        want.copy_(v[2:5])
    tokenset.maxsim([want], d).sum().backward()
    assert torch.equal(v.grad[2:5], want.grad) and not v.grad[:2].any() and not v.grad[5:].any()
