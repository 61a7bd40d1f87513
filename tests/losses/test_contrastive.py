"""NT-Xent and negative cosine against hand-computed values."""

from __future__ import annotations

import math

import torch

from medssl_monai.losses.contrastive import NTXentLoss, negative_cosine_similarity, nt_xent


def test_nt_xent_hand_computed_two_samples():
    # unit vectors: z0 = [e1, e2], z1 = [e1, -e2]; t = 1
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # anchor z0_0: positive z1_0 (cos 1); negatives z1_1 (0), z0_1 (0)  -> -log(e / (e + 2))
    # anchor z0_1: positive z1_1 (-1); negatives z1_0 (0), z0_0 (0)    -> -log(e^-1 / (e^-1 + 2))
    # anchors of view 1 mirror these (z1_0 vs z0_0 = 1, negatives z0_1, z1_1 both 0; z1_1 vs z0_1 = -1)
    a = -math.log(math.e / (math.e + 2))
    b = -math.log(math.exp(-1) / (math.exp(-1) + 2))
    expected = (a + b + a + b) / 4
    assert math.isclose(nt_xent(z0, z1, temperature=1.0).item(), expected, rel_tol=1e-6)
    # cosine: the scale of the embeddings does not matter
    assert math.isclose(NTXentLoss(1.0)(3 * z0, 0.5 * z1).item(), expected, rel_tol=1e-6)


def test_nt_xent_temperature_and_perfect_views():
    z = torch.eye(4)
    # identical views, orthogonal samples: -log(e^(1/t) / (e^(1/t) + 6)) for every anchor
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 6))
    assert math.isclose(nt_xent(z, z, t).item(), expected, rel_tol=1e-5)


def test_nt_xent_has_gradients():
    z0 = torch.randn(5, 8, requires_grad=True)
    z1 = torch.randn(5, 8)
    nt_xent(z0, z1).backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all()


def test_negative_cosine_masked_mean():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, -2.0]]])
    mask = torch.tensor([[True, True, False]])
    expected = -(1.0 + 1 / math.sqrt(2)) / 2
    assert math.isclose(negative_cosine_similarity(pred, target, mask).item(), expected, rel_tol=1e-6)
    assert math.isclose(
        negative_cosine_similarity(pred, target).item(), -(1.0 + 1 / math.sqrt(2) - 1.0) / 3, rel_tol=1e-6
    )
    empty = negative_cosine_similarity(pred.requires_grad_(), target, torch.zeros(1, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
