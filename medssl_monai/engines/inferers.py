"""Inferers for clips: the traced-frame inferer (sparse supervision) and whole-video sliding windows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from medssl_monai.evaluation.sliding import sliding_window_video
from medssl_monai.losses.dice import select_frames

__all__ = ["TracedFrameInferer", "VideoSlidingWindowInferer"]


class TracedFrameInferer(Inferer):
    """Run the network on a clip and keep only the traced frame of each sample.

    With the prediction reduced to ``B x C x H x W`` at the traced position, any MONAI 2D loss or metric on
    ``(pred, mask)`` *is* UniLVSeg's sparse supervision (methods.md section 2): the untraced frames get no
    gradient because they never reach the loss.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, index=None, **kwargs):
        pred = network(inputs, *args, **kwargs)
        if index is None:
            return pred
        return select_frames(pred, index)


class VideoSlidingWindowInferer(Inferer):
    """Whole-video prediction with overlapping windows along time, blended (``gaussian`` or ``constant``)."""

    def __init__(self, window: int = 32, overlap: float = 0.5, mode: str = "gaussian", sw_batch_size: int = 4) -> None:
        self.window = window
        self.overlap = overlap
        self.mode = mode
        self.sw_batch_size = sw_batch_size

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        return sliding_window_video(
            inputs, network, window=self.window, overlap=self.overlap, mode=self.mode, sw_batch_size=self.sw_batch_size
        )
