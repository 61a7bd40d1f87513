from __future__ import annotations

import pytest
import torch

from medssl_monai.losses.dice import SparseDiceLoss, select_frames
from medssl_monai.transforms.superimage import tile_super_image

BIG = 100.0  # sigmoid(100) == 1 and sigmoid(-100) == 0 to float precision; sigmoid(0) == 0.5 exactly


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 4, 2, 2)
    pred[0, 0, 1] = torch.tensor([[BIG, 0.0], [-BIG, -BIG]])  # p = [1, .5, 0, 0]
    pred[1, 0, 3] = torch.tensor([[0.0, 0.0], [0.0, BIG]])  # p = [.5, .5, .5, 1]
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    return pred, target, torch.tensor([1, 3])


def test_select_frames() -> None:
    pred, _, index = _example()
    sel = select_frames(pred, index)
    assert sel.shape == (2, 1, 2, 2)
    torch.testing.assert_close(sel[0], pred[0, :, 1])
    torch.testing.assert_close(sel[1], pred[1, :, 3])
    with pytest.raises(ValueError, match="one frame index per sample"):
        select_frames(pred, torch.tensor([0]))


def test_hand_computed_batch_and_per_sample() -> None:
    pred, target, index = _example()
    # batch: inter = 1.5 + 1.5 = 3, |p| + |t| = (1.5 + 2) + (2.5 + 2) = 8 -> Dice 6/8, loss 1/4
    loss = SparseDiceLoss(batch=True, smooth_nr=0.0, smooth_dr=1e-12)(pred, target, index)
    torch.testing.assert_close(loss, torch.tensor(0.25))
    # per sample: 1 - 3/3.5 = 1/7 and 1 - 3/4.5 = 1/3 -> mean 5/21
    loss = SparseDiceLoss(batch=False, smooth_nr=0.0, smooth_dr=1e-12)(pred, target, index)
    torch.testing.assert_close(loss, torch.tensor(5.0 / 21.0))
    # the target may come without its channel axis
    loss = SparseDiceLoss(smooth_nr=0.0, smooth_dr=1e-12)(pred, target[:, 0], index)
    torch.testing.assert_close(loss, torch.tensor(0.25))


def test_gradient_only_on_traced_slice() -> None:
    pred, target, index = _example()
    pred = torch.randn_like(pred).requires_grad_(True)
    SparseDiceLoss()(pred, target, index).backward()
    grad = pred.grad
    traced = torch.zeros(2, 4, dtype=torch.bool)
    traced[0, 1] = traced[1, 3] = True
    assert torch.all(grad.permute(0, 2, 1, 3, 4)[~traced] == 0)
    assert torch.all(grad.permute(0, 2, 1, 3, 4)[traced].abs() > 0)


def test_super_image_path_matches_3d() -> None:
    pred, target, index = _example()
    loss_fn = SparseDiceLoss(smooth_nr=0.0, smooth_dr=1e-12)
    si = tile_super_image(pred)  # B x 1 x 4 x 4: a 2 x 2 grid of 2 x 2 frames
    assert si.shape == (2, 1, 4, 4)
    torch.testing.assert_close(loss_fn(si, target, index), torch.tensor(0.25))


def test_bad_shapes() -> None:
    pred, target, index = _example()
    with pytest.raises(ValueError, match="differ"):
        SparseDiceLoss()(pred, torch.zeros(2, 1, 3, 3), index)
    with pytest.raises(ValueError, match="pred must be"):
        SparseDiceLoss()(torch.zeros(2, 1, 4), target, index)
