"""Whole-video inference with temporal sliding windows (UniLVSeg/SimLVSeg segmentation of every frame).

The reference ``scripts/seg_3d/seg_3d_inference.py`` (BioMedIA-MBZUAI/SimLVSeg) tiles a video into 32-frame windows,
the last one aligned to the end, and lets later windows overwrite the overlap. Here the windows run along time only
(``roi_size = (window, H, W)``) through :class:`monai.inferers.SlidingWindowInferer`, which blends overlapping
windows by a weighted average ("constant": plain mean, "gaussian": centre frames weigh more) instead of overwriting,
pads videos shorter than the window and crops the result back, so every frame gets exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import BlendMode

__all__ = ["sliding_window_video"]


def sliding_window_video(
    video: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    window: int = 32,
    overlap: float = 0.5,
    mode: BlendMode | str = "gaussian",
    sw_batch_size: int = 4,
    sigma_scale: float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predict every frame of ``B x C x T x H x W`` videos with a clip model that takes ``window`` frames.

    Args:
        video: input videos ``B x C x T x H x W`` (already normalised as the predictor expects).
        predictor: maps ``b x C x window x H x W`` to ``b x C' x window x H x W`` (e.g. a :class:`UniLVSegUNet`).
        window: frames per window (the training clip length, 32 in the reference).
        overlap: fraction of a window shared with the next one along time, in [0, 1).
        mode: how overlapping windows are blended: "constant" (mean) or "gaussian".
        sw_batch_size: windows per predictor call.
        sigma_scale: Gaussian sigma as a fraction of the window (MONAI's default).
        padding_mode: padding of videos shorter than the window ("constant": zeros, i.e. the normalised mean, as the
            reference's zero-padding of short clips).
        cval: fill value for constant padding.
        sw_device: device the windows are run on (default: the video's).
        device: device the output is stitched on (default: the video's).

    Returns:
        ``B x C' x T x H x W`` predictions (logits for a segmentation network), one per input frame.
    """
    if video.ndim != 5:
        raise ValueError(f"sliding_window_video expects B x C x T x H x W, got shape {tuple(video.shape)}.")
    if window < 1:
        raise ValueError(f"window must be positive, got {window}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    h, w = video.shape[-2:]
    inferer = SlidingWindowInferer(
        roi_size=(window, h, w),
        sw_batch_size=sw_batch_size,
        # spatially the window is the whole frame, so only the time overlap matters
        overlap=(overlap, 0.0, 0.0),
        mode=mode,
        sigma_scale=sigma_scale,
        padding_mode=padding_mode,
        cval=cval,
        sw_device=sw_device,
        device=device,
    )
    out = inferer(video, predictor)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the predictor must return one tensor per window, got {type(out).__name__}.")
    return out
