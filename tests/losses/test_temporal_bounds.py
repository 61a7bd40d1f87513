"""The untraced-frame bound term: hand-computed bounds and values, what it leaves free, and that it stops a model
trained on turning-point frames only from predicting the ventricle everywhere on the other frames."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceLoss

from medssl_monai.engines.inferers import TracedFrameInferer
from medssl_monai.losses.temporal_bounds import (
    TemporalBoundLoss,
    TracedClipLoss,
    TracedPrediction,
    margin_pixels,
    mask_bounds,
)


def _square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., top : top + side, left : left + side] = 1
    return m


def test_mask_bounds_of_a_square_and_at_the_frame_edge():
    core, reach = mask_bounds(_square(12, 3, 4, 5), radius=1)
    assert torch.equal(core, _square(12, 4, 5, 3))  # 5 x 5 eroded by 1: 3 x 3
    assert torch.equal(reach, _square(12, 2, 3, 7))  # dilated by 1: 7 x 7
    core, reach = mask_bounds(_square(8, 0, 0, 4), radius=1)  # touching the corner: outside counts as background
    assert torch.equal(core, _square(8, 1, 1, 2))
    assert torch.equal(reach, _square(8, 0, 0, 5))
    assert margin_pixels(0.1, 112) == 11 and margin_pixels(0.1, 64) == 6 and margin_pixels(0.01, 16) == 1


def test_bound_loss_hand_value_ignores_the_traced_frame_and_the_band():
    mask = _square(12, 3, 4, 5)  # core 3 x 3 = 9 px, reach 7 x 7 = 49 px, outside 144 - 49 = 95 px
    z = 0.7
    clip = torch.full((1, 1, 3, 12, 12), z)
    clip[:, :, 1] = 1e4  # the traced frame: whatever it holds, only the traced loss sees it
    loss = TemporalBoundLoss(margin=1 / 12)(clip, mask, torch.tensor([1]))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (95 * sp(z) + 9 * sp(-z)) / (95 + 9)  # per untraced frame, two of them: the same mean
    assert float(loss) == pytest.approx(expected, rel=1e-6)

    clip = torch.zeros(1, 1, 3, 12, 12, requires_grad=True)
    TemporalBoundLoss(margin=1 / 12)(clip, mask, torch.tensor([1])).backward()
    g = clip.grad[0, 0]
    assert torch.count_nonzero(g[1]) == 0  # traced frame: no gradient from the bound
    band = (_square(12, 2, 3, 7) - _square(12, 4, 5, 3))[0, 0].bool()
    assert torch.count_nonzero(g[0][band]) == 0  # the band where the wall moves is free
    assert (g[0][_square(12, 4, 5, 3)[0, 0].bool()] < 0).all()  # core: pushed towards the ventricle
    assert (g[0][~_square(12, 2, 3, 7)[0, 0].bool()] > 0).all()  # outside the reach: towards background


def test_bound_loss_is_zero_for_a_prediction_within_the_bounds_and_rejects_bad_shapes():
    mask = _square(16, 4, 4, 8)
    core, reach = mask_bounds(mask, 2)
    logits = (torch.where(core > 0, 50.0, torch.where(reach > 0, 0.0, -50.0))).unsqueeze(2).expand(1, 1, 4, 16, 16)
    assert float(TemporalBoundLoss(margin=2 / 16)(logits, mask, torch.tensor([0]))) < 1e-12
    with pytest.raises(ValueError, match="B x 1 x T x H x W"):
        TemporalBoundLoss()(torch.zeros(1, 2, 4, 16, 16), mask, torch.tensor([0]))
    with pytest.raises(ValueError, match="fraction"):
        TemporalBoundLoss(margin=3)


def test_traced_clip_loss_without_the_bound_is_the_papers_dice():
    torch.manual_seed(0)
    clip = torch.randn(2, 1, 4, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    index = torch.tensor([3, 1])
    dice = DiceLoss(sigmoid=True, batch=True)
    pred = TracedFrameInferer(keep_clip=True)(clip, lambda x: x, index=index)
    assert isinstance(pred, TracedPrediction) and torch.equal(pred.clip, clip)
    assert torch.equal(pred.traced, torch.stack([clip[0, :, 3], clip[1, :, 1]]))
    plain = TracedFrameInferer()(clip, lambda x: x, index=index)
    assert torch.equal(plain, pred.traced)
    assert torch.equal(TracedClipLoss(dice, bound_weight=0.0)(pred, mask), dice(plain, mask))
    assert torch.equal(TracedClipLoss(dice, bound_weight=0.5)(plain, mask), dice(plain, mask))
    bound = TemporalBoundLoss(0.1)(clip, mask, index)
    assert float(TracedClipLoss(dice, 0.5, 0.1)(pred, mask)) == pytest.approx(float(dice(plain, mask) + 0.5 * bound))


def _turning_point_clips(n: int = 8, t: int = 5, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A disk (the cavity) on every frame; the traced frame is a turning point (still, the disk at 1 on 0), the
    others are in motion, which shifts their intensities (disk 1.7 on 0.7): content training never sees."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) <= 16).float()
    clips = (disk + 0.7).expand(n, 1, t, size, size).clone()
    index = torch.arange(n) % t
    clips[torch.arange(n), 0, index] = disk
    return clips, disk.expand(n, 1, size, size), index


@pytest.mark.parametrize("bound_weight", [0.0, 1.0])
def test_the_bound_keeps_untraced_frames_from_turning_into_ventricle(bound_weight: float):
    """A per-voxel linear model trained on the traced frames: the paper's loss alone leaves its threshold where
    the untraced frames' background reads as ventricle (every pixel), the bound moves it above that background."""
    clips, masks, index = _turning_point_clips()
    net = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(4.0)
        net.bias.fill_(-2.0)  # threshold 0.5: segments the traced frames already
    loss_fn = TracedClipLoss(DiceLoss(sigmoid=True, batch=True), bound_weight=bound_weight, margin=0.125)
    inferer = TracedFrameInferer(keep_clip=True)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss_fn(inferer(clips, net, index=index), masks).backward()
        opt.step()
    with torch.no_grad():
        pred = net(clips) > 0
    untraced = torch.ones(clips.shape[0], clips.shape[2], dtype=torch.bool)
    untraced[torch.arange(clips.shape[0]), index] = False
    traced_pred = pred[torch.arange(clips.shape[0]), 0, index]
    assert torch.equal(traced_pred, masks[:, 0].bool())  # both segment the traced frames exactly
    area = pred[:, 0][untraced].float().mean((-2, -1))  # share of the frame called ventricle
    disk_share = float(masks[0].mean())
    if bound_weight == 0:
        assert (area == 1).all()  # the whole frame, the failure of the recipe model
    else:
        assert torch.allclose(area, torch.full_like(area, disk_share))  # exactly the cavity
