"""Whole-frame temporal masking for UniLVSeg/SimLVSeg self-supervised pretraining.

Reference: ``simlvseg/seg_3d_ssl_masking/dataset.py`` (BioMedIA-MBZUAI/SimLVSeg, arXiv 2310.00454): after augmentation,
``int(T * mask_ratio + 0.5)`` random whole frames (19 of 32 at 0.6) are set to zero *before* normalisation, so after
``(x - mean) / std`` they read ``-mean / std``; the network reconstructs the normalised unmasked clip with an MSE over
all voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

__all__ = ["num_masked_frames", "temporal_mask_indices", "RandTemporalMaskd", "mask_frames"]


def num_masked_frames(num_frames: int, mask_ratio: float) -> int:
    """Number of masked frames, rounded half up as the reference does: ``int(num_frames * mask_ratio + 0.5)``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}.")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}.")
    return int(num_frames * mask_ratio + 0.5)


def temporal_mask_indices(
    num_frames: int,
    mask_ratio: float = 0.6,
    rng: np.random.Generator | np.random.RandomState | None = None,
) -> np.ndarray:
    """Sorted indices of the frames to mask: exactly ``int(num_frames * mask_ratio + 0.5)`` distinct frames.

    Args:
        num_frames: clip length T.
        mask_ratio: fraction of frames masked.
        rng: a numpy ``Generator`` or ``RandomState`` (MONAI's ``Randomizable.R``); a fresh unseeded one if None.

    Returns:
        ``int64`` array of sorted frame indices, drawn uniformly without replacement.
    """
    k = num_masked_frames(num_frames, mask_ratio)
    rng = np.random.default_rng() if rng is None else rng
    return np.sort(np.asarray(rng.choice(num_frames, size=k, replace=False), dtype=np.int64))


class RandTemporalMaskd(Randomizable, MapTransform):
    """Zero ``int(T * mask_ratio + 0.5)`` random whole frames of ``C x T x H x W`` clips (UniLVSeg SSL pretraining).

    Apply it after augmentation and *before* intensity normalisation, as the reference does, so that masked
    frames become ``-mean / std`` once normalised. All ``keys`` of one sample share the same masked frames.

    Args:
        keys: clip keys to mask (``C x T x H x W``, numpy or torch, uint8 or float).
        mask_ratio: fraction of frames masked (the reference uses 0.6).
        target_key: key(s) that receive an unmasked copy of each clip in ``keys`` (one per key; ``None`` skips it).
            The reconstruction target is the normalised unmasked clip, so normalise this key too.
        mask_key: key of the ``T`` bool tensor of masked frames (True = masked); ``None`` skips it.
        fill_value: value written into masked frames (0, as the reference).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_ratio: float = 0.6,
        target_key: str | Sequence[str] | None = "target",
        mask_key: str | None = "frame_mask",
        fill_value: float = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        num_masked_frames(1, mask_ratio)  # validates the ratio up front
        self.mask_ratio = mask_ratio
        self.target_keys = ensure_tuple_rep(target_key, len(self.keys))
        self.mask_key = mask_key
        self.fill_value = fill_value
        self._indices = np.zeros(0, dtype=np.int64)

    def randomize(self, data: int) -> None:
        """Draw the masked frame indices for a clip of ``data`` frames."""
        self._indices = temporal_mask_indices(data, self.mask_ratio, self.R)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        num_frames: int | None = None
        for key, target_key in self.key_iterator(d, self.target_keys):
            clip = d[key]
            if clip.ndim != 4:
                raise ValueError(f"RandTemporalMaskd: '{key}' must be C x T x H x W, got shape {tuple(clip.shape)}.")
            if num_frames is None:
                num_frames = int(clip.shape[1])
                self.randomize(num_frames)
            elif clip.shape[1] != num_frames:
                raise ValueError(f"RandTemporalMaskd: '{key}' has {clip.shape[1]} frames, expected {num_frames}.")
            masked = clip.clone() if isinstance(clip, torch.Tensor) else np.array(clip, copy=True)
            if target_key is not None:
                d[target_key] = clip  # the input is left untouched, so the original serves as the target
            masked[:, self._indices] = self.fill_value
            d[key] = masked
        if num_frames is not None and self.mask_key is not None:
            frame_mask = torch.zeros(num_frames, dtype=torch.bool)
            frame_mask[torch.from_numpy(self._indices)] = True
            d[self.mask_key] = frame_mask
        return d


def mask_frames(
    x: torch.Tensor,
    mask_ratio: float = 0.6,
    generator: torch.Generator | None = None,
    fill_value: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched whole-frame masking on the tensor's device, one independent draw per sample, no host sync.

    Each sample gets exactly ``int(T * mask_ratio + 0.5)`` masked frames: the frames whose uniform noise ranks lowest.

    Args:
        x: clips ``B x C x T x H x W``.
        mask_ratio: fraction of frames masked.
        generator: a ``torch.Generator`` on ``x.device`` for reproducible draws.
        fill_value: value of masked frames; a scalar, or a length-C tensor (e.g. ``-mean / std`` to mask clips that
            are already normalised, which equals zeroing before normalisation as the reference does).

    Returns:
        ``(masked, frame_mask)``: the masked clips (a new tensor) and a ``B x T`` bool tensor, True = masked.
    """
    if x.ndim != 5:
        raise ValueError(f"mask_frames expects B x C x T x H x W, got shape {tuple(x.shape)}.")
    b, c, t = x.shape[:3]
    k = num_masked_frames(t, mask_ratio)
    noise = torch.rand(b, t, device=x.device, generator=generator)
    # rank of each frame's noise within its sample; the k lowest are masked -> exactly k per sample
    rank = noise.argsort(dim=1).argsort(dim=1)
    frame_mask = rank < k
    fill = torch.as_tensor(fill_value, dtype=x.dtype, device=x.device)
    if fill.ndim == 1:
        if fill.numel() != c:
            raise ValueError(f"fill_value has {fill.numel()} entries, expected one per channel ({c}).")
        fill = fill.view(1, c, 1, 1, 1)
    masked = torch.where(frame_mask[:, None, :, None, None], fill, x)
    return masked, frame_mask
