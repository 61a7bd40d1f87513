"""Weak supervision of the untraced frames of a clip: the traced mask bounds the left ventricle of every frame.

SimLVSeg's sparse loss (:mod:`medssl_monai.losses.dice`) sees only the traced ED or ES frame of each clip. Both
are turning points of the cardiac cycle (the cavity is largest or smallest and momentarily still), so nothing in
training ever asks for a mask on a frame in motion, and a large 3D network can give anything there: a recipe model
trained on one H100 segmented the traced frames with Dice 0.98 and the others with 0.21, predicting the left
ventricle over almost the whole frame, so the EF from its whole-video masks came out near 99 %.

Within a clip the cavity never moves far from where it is at the traced frame: every frame's cavity contains the
traced mask eroded by a margin (the core) and lies inside the traced mask dilated by that margin (the reach). On the
built-in synthetic data both hold exactly for a margin of 8 % of the frame width over any 32-frame window around a
traced frame (3 % leaves 2.7 % of the cavity outside). :class:`TemporalBoundLoss` is a binary cross-entropy on the
untraced frames towards background outside the reach and towards the ventricle inside the core; the band between
them, where the wall moves, is left free. This is an addition to the paper (off with ``bound_weight: 0``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TracedPrediction", "margin_pixels", "mask_bounds", "TemporalBoundLoss", "TracedClipLoss"]


class TracedPrediction(NamedTuple):
    """What :class:`~medssl_monai.engines.inferers.TracedFrameInferer` returns with ``keep_clip``.

    Attributes:
        traced: ``B x C x H x W``, the prediction at each clip's traced frame.
        clip: ``B x C x T x H x W``, the whole prediction.
        index: ``B``, the traced frame's position in each clip.
    """

    traced: torch.Tensor
    clip: torch.Tensor
    index: torch.Tensor


def margin_pixels(margin: float, width: int) -> int:
    """The margin in pixels: a fraction of the frame width, at least one pixel."""
    return max(1, int(round(float(margin) * int(width))))


def mask_bounds(mask: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(core, reach)``: the erosion and the dilation of binary ``B x 1 x H x W`` masks by ``radius`` pixels.

    A square structuring element (max pooling); outside the frame counts as background for the erosion.
    """
    m = (mask > 0.5).float()
    k = 2 * int(radius) + 1
    reach = F.max_pool2d(m, k, stride=1, padding=int(radius))
    # erosion = not (dilation of the background); the padded border is background, so it erodes the mask edge
    background = F.pad(1 - m, [int(radius)] * 4, value=1.0)
    core = 1 - F.max_pool2d(background, k, stride=1)
    return core, reach


class TemporalBoundLoss(nn.Module):
    """Binary cross-entropy on the untraced frames: background outside the reach, ventricle inside the core.

    Args:
        margin: the bound's margin as a fraction of the frame width (0.1: 11 pixels at 112).
    """

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        if not 0 < margin < 1:
            raise ValueError(f"margin is a fraction of the frame width in (0, 1), got {margin}")
        self.margin = float(margin)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Mean over the constrained voxels of every frame but the traced one (0 when there are none).

        Args:
            clip: ``B x 1 x T x H x W`` logits (one channel: the ventricle).
            mask: ``B x 1 x H x W`` (or ``B x H x W``) traced mask.
            index: ``B`` traced-frame positions.
        """
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if clip.ndim != 5 or clip.shape[1] != 1 or mask.shape != (clip.shape[0], 1, *clip.shape[-2:]):
            raise ValueError(
                f"TemporalBoundLoss: needs B x 1 x T x H x W logits and B x 1 x H x W masks, got clip "
                f"{tuple(clip.shape)} and mask {tuple(mask.shape)}"
            )
        core, reach = mask_bounds(mask.float(), margin_pixels(self.margin, clip.shape[-1]))
        b, _, t = clip.shape[:3]
        index = torch.as_tensor(index, device=clip.device).long().reshape(b, 1)
        untraced = (torch.arange(t, device=clip.device)[None, :] != index).float().reshape(b, 1, t, 1, 1)
        z = clip.float()
        to_background = (1 - reach).unsqueeze(2) * untraced
        to_ventricle = core.unsqueeze(2) * untraced
        # softplus(z) = BCE towards 0, softplus(-z) = BCE towards 1
        total = (F.softplus(z) * to_background).sum() + (F.softplus(-z) * to_ventricle).sum()
        return total / (to_background.sum() + to_ventricle.sum()).clamp(min=1.0)  # no host read of the count


class TracedClipLoss(nn.Module):
    """UniLVSeg's loss on the traced frame, plus ``bound_weight`` times :class:`TemporalBoundLoss` on the others.

    ``pred`` is a :class:`TracedPrediction` (``TracedFrameInferer(keep_clip=True)``) or the traced slice alone
    (then only ``traced_loss``, SimLVSeg's sparse supervision).

    Args:
        traced_loss: the loss of the traced slice against the mask (the bundles: MONAI ``DiceLoss``, sigmoid,
            pooled over the batch).
        bound_weight: weight of the bound term (0: the paper).
        margin: :class:`TemporalBoundLoss`'s margin.
    """

    def __init__(self, traced_loss: nn.Module, bound_weight: float = 0.0, margin: float = 0.1) -> None:
        super().__init__()
        if bound_weight < 0:
            raise ValueError(f"bound_weight must be >= 0, got {bound_weight}")
        self.traced_loss = traced_loss
        self.bound_weight = float(bound_weight)
        self.bound = TemporalBoundLoss(margin)

    def forward(self, pred: TracedPrediction | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The traced-frame loss (+ the weighted bound term when ``pred`` carries the clip)."""
        if not isinstance(pred, TracedPrediction):
            return self.traced_loss(pred, target)
        loss = self.traced_loss(pred.traced, target)
        if self.bound_weight > 0:
            loss = loss + self.bound_weight * self.bound(pred.clip, target, pred.index)
        return loss
