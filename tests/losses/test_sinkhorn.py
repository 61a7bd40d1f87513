"""Sinkhorn-Knopp codes and the swapped-prediction loss on hand-computed cases."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medssl_monai.losses.sinkhorn import Prototypes, sinkhorn_knopp, swapped_prediction_loss


def test_symmetric_matrix_is_already_balanced():
    # exp(S / eps) of [[1, 0], [0, 1]] with eps 0.5 is [[e^2, 1], [1, e^2]]: rows and columns already balanced,
    # so the codes are the row-normalised kernel, p = e^2 / (e^2 + 1)
    q = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=0.5, iterations=3)
    p = math.exp(2) / (math.exp(2) + 1)
    torch.testing.assert_close(q, torch.tensor([[p, 1 - p], [1 - p, p]]))


def test_doubly_stochastic_on_a_known_matrix():
    s = torch.tensor(
        [[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.7, 0.0, 0.3], [0.6, 0.5, 0.2], [0.9, 0.3, 0.1], [0.5, 0.4, 0.6]]
    )
    q = sinkhorn_knopp(s, epsilon=0.5, iterations=200)
    b, k = s.shape
    torch.testing.assert_close(q.sum(1), torch.ones(b))  # each code sums to 1
    torch.testing.assert_close(q.sum(0), torch.full((k,), b / k), rtol=1e-4, atol=1e-4)  # equipartition
    # the first prototype dominates the raw scores but the codes spread the samples over all prototypes
    assert (q.argmax(1) != 0).any()


def test_swapped_prediction_hard_codes():
    a = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    b = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    loss = swapped_prediction_loss(a, b, epsilon=0.05, iterations=10, temperature=1.0)
    # codes of b: argmax [1, 0]; of a: [0, 1]. CE(a, [1, 0]) = CE(b, [0, 1]) = log(1 + e^5) - 0
    expected = 2 * (math.log(1 + math.exp(5)))
    assert abs(loss.item() - expected) < 1e-4


def test_prototypes_unit_norm_and_detach():
    p = Prototypes(4, 3)
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(3))
    z = torch.randn(2, 4, requires_grad=True)
    p(z, detach=True).sum().backward()
    assert p.weight.grad is None and z.grad is not None
    torch.testing.assert_close(p(z).detach(), F.normalize(z.detach(), dim=1) @ p.weight.detach().t())


def test_prototype_scores_are_float32_under_bf16_autocast():
    # Sinkhorn divides by eps = 0.05 and takes an argmax: bf16 cosines would change the winning prototype
    p = Prototypes(16, 8)
    z = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = p(z.bfloat16())
        s_detached = p(z, detach=True)
    assert s.dtype == torch.float32 and s_detached.dtype == torch.float32
    torch.testing.assert_close(s, F.normalize(z.bfloat16().float(), dim=1) @ p.weight.detach().t())
