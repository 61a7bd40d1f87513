"""UCL loss on hand-made embeddings: the formula, the mixed negative as a weighted sum, the own-video mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl_monai.losses.ucl import UCLLoss, mixed_negative, ucl_logits


def test_mixed_negative_is_the_softmax_weighted_topk_sum():
    q = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    # similarities 1, 0.6, 0, -1 -> top-2: rows 0 and 1, weights softmax([1, 0.6] / 0.5)
    w0 = math.exp(2.0) / (math.exp(2.0) + math.exp(1.2))
    expected = w0 * bank[0] + (1 - w0) * bank[1]
    torch.testing.assert_close(mixed_negative(q, bank, support_size=2, temperature=0.5)[0], expected)
    # excluding row 0 (the anchor's own video) moves the support to rows 1 and 2
    excl = torch.tensor([[True, False, False, False]])
    w1 = math.exp(1.2) / (math.exp(1.2) + math.exp(0.0))
    torch.testing.assert_close(mixed_negative(q, bank, 2, 0.5, exclude=excl)[0], w1 * bank[1] + (1 - w1) * bank[2])
    # support larger than the eligible bank: clamped
    assert mixed_negative(q, bank, 10, 0.5).shape == (1, 2)
    with pytest.raises(ValueError, match="cross-video"):
        mixed_negative(q, bank, 2, 0.5, exclude=torch.ones(1, 4, dtype=torch.bool))


def test_loss_equals_the_formula():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    negs = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.6, 0.8]]])
    mixed = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    t = 0.1
    # sample 0 logits: [0.8, 0, -1, 0.6]; sample 1: [1, 0, 0.8, 0.6]
    l0 = -0.8 / t + math.log(sum(math.exp(v / t) for v in (0.8, 0.0, -1.0, 0.6)))
    l1 = -1.0 / t + math.log(sum(math.exp(v / t) for v in (1.0, 0.0, 0.8, 0.6)))
    loss = UCLLoss(t)(q, p, negs, mixed)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # warm-up logits [p, n^] only
    w0 = -0.8 / t + math.log(math.exp(0.8 / t) + math.exp(0.6 / t))
    w1 = -1.0 / t + math.log(math.exp(1.0 / t) + math.exp(0.6 / t))
    assert UCLLoss(t)(q, p, None, mixed).item() == pytest.approx((w0 + w1) / 2, rel=1e-5)


def test_plain_moco_logits_mask_own_video():
    q = F.normalize(torch.randn(2, 4), dim=1)
    p = F.normalize(torch.randn(2, 4), dim=1)
    bank = F.normalize(torch.randn(4, 4), dim=1)
    excl = torch.tensor([[True, True, False, False], [False, False, True, True]])
    logits = ucl_logits(q, p, extra_negatives=bank, extra_exclude=excl)
    assert logits.shape == (2, 5)
    assert torch.isinf(logits[0, 1:3]).all() and torch.isfinite(logits[0, 3:]).all()
    loss = UCLLoss(1.0)(q, p, extra_negatives=bank, extra_exclude=excl)
    ref = F.cross_entropy(torch.stack([logits[0, [0, 3, 4]], logits[1, [0, 1, 2]]]), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(loss, ref)
