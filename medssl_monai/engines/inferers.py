"""Inferers for clips: the traced-frame inferer (sparse supervision) and whole-video sliding windows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from medssl_monai.evaluation.sliding import sliding_window_video
from medssl_monai.losses.dice import select_frames
from medssl_monai.losses.temporal_bounds import TracedPrediction
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD, normalize_clip

__all__ = ["TracedFrameInferer", "VideoSlidingWindowInferer"]


class TracedFrameInferer(Inferer):
    """Run the network on a clip and keep only the traced frame of each sample.

    With the prediction reduced to ``B x C x H x W`` at the traced position, any MONAI 2D loss or metric on
    ``(pred, mask)`` *is* UniLVSeg's sparse supervision (SimLVSeg, arXiv 2310.00454): the untraced frames get no
    gradient because they never reach the loss.
    """

    def __init__(self, keep_clip: bool = False) -> None:
        """``keep_clip``: return a :class:`~medssl_monai.losses.temporal_bounds.TracedPrediction` (the traced slice,
        the whole clip and the index) for a loss that also looks at the untraced frames (the bound term of
        :class:`~medssl_monai.losses.temporal_bounds.TracedClipLoss`)."""
        self.keep_clip = bool(keep_clip)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, index=None, **kwargs):
        pred = network(inputs, *args, **kwargs)
        if index is None:
            return pred
        traced = select_frames(pred, index)
        if self.keep_clip:
            return TracedPrediction(traced, pred, torch.as_tensor(index, device=pred.device))
        return traced


class VideoSlidingWindowInferer(Inferer):
    """Whole-video prediction with overlapping windows along time, blended (``gaussian`` or ``constant``).

    Args:
        window: frames per window (the training clip length).
        overlap: fraction of a window shared with the next one.
        mode: blending of overlapping windows.
        sw_batch_size: windows per network call.
        period: the training clips' frame stride (interleaved sequences, see
            :func:`~medssl_monai.evaluation.sliding.sliding_window_video`).
        mean, std: the normalisation of the video (as :class:`~medssl_monai.engines.prepare.ClipPrepareBatch`):
            a video shorter than the window is padded with black frames, ``-mean/std`` after normalisation, which is
            what training pads.
        channels_last: give every window to the network in ``channels_last_3d`` memory format, the format the
            network was trained in when its bundle sets ``channels_last``.
        pad_value: the padding in normalised units instead of black (one value or one per channel); SimLVSeg's
            CAMUS test pads with 0, the normalised mean.
    """

    def __init__(
        self,
        window: int = 32,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sw_batch_size: int = 4,
        period: int = 1,
        mean: Sequence[float] | float = ECHONET_MEAN,
        std: Sequence[float] | float = ECHONET_STD,
        channels_last: bool = False,
        pad_value: float | Sequence[float] | None = None,
    ) -> None:
        self.window = window
        self.overlap = overlap
        self.mode = mode
        self.sw_batch_size = sw_batch_size
        self.period = period
        self.mean = mean
        self.std = std
        self.channels_last = channels_last
        self.pad_value = pad_value

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        c = inputs.shape[1]
        if self.pad_value is not None:
            pad_value = self.pad_value
        else:  # a black uint8 frame through the video's normalisation (ClipPrepareBatch slices to C channels)
            mean = self.mean[:c] if isinstance(self.mean, Sequence) else self.mean
            std = self.std[:c] if isinstance(self.std, Sequence) else self.std
            pad_value = normalize_clip(torch.zeros(1, c, 1, 1, 1), mean, std).reshape(-1)

        def predictor(x: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            return network(x, *args, **kwargs)

        return sliding_window_video(
            inputs,
            predictor,
            window=self.window,
            overlap=self.overlap,
            mode=self.mode,
            sw_batch_size=self.sw_batch_size,
            pad_value=pad_value,
            period=self.period,
        )
