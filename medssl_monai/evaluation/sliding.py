"""Whole-video inference with temporal sliding windows (UniLVSeg/SimLVSeg segmentation of every frame).

The reference ``scripts/seg_3d/seg_3d_inference.py`` (BioMedIA-MBZUAI/SimLVSeg) tiles a video into 32-frame windows,
the last one aligned to the end, and lets later windows overwrite the overlap. Here the windows run along time only
(``roi_size = (window, H, W)``) through :class:`monai.inferers.SlidingWindowInferer`, which blends overlapping
windows by a weighted average ("constant": plain mean, "gaussian": centre frames weigh more) instead of overwriting,
so every frame gets exactly one prediction.

Two details follow the reference and the training pipeline:

* A video shorter than the window is padded at its end with black frames, as training pads short clips (``uint8``
  0 before normalisation, i.e. ``-mean/std`` after; ``pad_value``). The reference's comment calls the padding "the
  mean colour", but it pads the raw video, so its padding is black too. The padded frames' predictions are dropped.
* ``period > 1`` (training clips of ``window`` frames taken every ``period`` frames): the video is split into
  ``period`` interleaved sequences (frames ``r, r + period, r + 2 period, ...``), each one is segmented with
  windows of ``window`` of its frames, and the predictions are interleaved back, which is what the reference's
  window list with ``start = pointer + i`` for ``i < period`` computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import BlendMode

__all__ = ["sliding_window_video"]


def _pad_end(video: torch.Tensor, frames: int, pad_value: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Append ``frames`` constant frames (one value per channel or one for all) along time."""
    b, c, _, h, w = video.shape
    fill = torch.as_tensor(pad_value, dtype=video.dtype, device=video.device).reshape(-1)
    if fill.numel() not in (1, c):
        raise ValueError(f"pad_value needs 1 or {c} (one per channel) values, got {fill.numel()}.")
    pad = fill.view(1, -1, 1, 1, 1).expand(b, c, frames, h, w)
    return torch.cat([video, pad], dim=2)


def sliding_window_video(
    video: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    window: int = 32,
    overlap: float = 0.5,
    mode: BlendMode | str = "gaussian",
    sw_batch_size: int = 4,
    sigma_scale: float = 0.125,
    pad_value: float | Sequence[float] | torch.Tensor = 0.0,
    period: int = 1,
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
        pad_value: value of the frames appended to a sequence shorter than the window, one for all channels or one
            per channel, in the predictor's (normalised) units: ``-mean/std`` is a black frame, what training pads.
        period: frame stride of the training clips; ``period > 1`` segments the ``period`` interleaved sequences
            separately (see the module docstring).
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
    if period < 1:
        raise ValueError(f"period must be positive, got {period}.")
    h, w = video.shape[-2:]
    inferer = SlidingWindowInferer(
        roi_size=(window, h, w),
        sw_batch_size=sw_batch_size,
        # spatially the window is the whole frame, so only the time overlap matters
        overlap=(overlap, 0.0, 0.0),
        mode=mode,
        sigma_scale=sigma_scale,
        sw_device=sw_device,
        device=device,
    )

    def run(seq: torch.Tensor) -> torch.Tensor:
        t = seq.shape[2]
        if t < window:
            seq = _pad_end(seq, window - t, pad_value)
        out = inferer(seq, predictor)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the predictor must return one tensor per window, got {type(out).__name__}.")
        return out[:, :, :t]

    if period == 1:
        return run(video)
    phases = [run(video[:, :, r::period]) for r in range(min(period, video.shape[2]))]
    out = phases[0].new_empty((video.shape[0], phases[0].shape[1], *video.shape[2:]))
    for r, pred in enumerate(phases):
        out[:, :, r::period] = pred
    return out
