"""Clip-consistent spatial augmentation by folding time into channels.

SimLVSeg (``simlvseg/albumentations.py``, ``VideoAlbumentations``) registers every frame as an extra
albumentations target so that one random draw (angle, crop offset, ...) moves all frames and the tracing mask
together. MONAI dictionary transforms already draw once per call and apply the draw to every key and every
channel, so the same guarantee comes for free by folding a ``C x T x H x W`` clip into a ``(C*T) x H x W``
2D image, running any MONAI 2D dictionary transform (``RandRotated``, ``SpatialPadd``, ``RandSpatialCropd``,
``RandFlipd``, ``RandZoomd``, ``Resized``, or a ``Compose`` of them) and unfolding. Masks (``1 x H x W``) are
passed through unfolded and receive the same draw.

dtype: ``uint8`` inputs come back ``uint8`` (interpolated values rounded and clipped to 0..255, as OpenCV's
``warpAffine`` does in the reference), so frames stay ``uint8`` until normalisation; float inputs stay float.
Outputs are plain ``torch.Tensor``: metadata of the folded image would describe a ``(C*T)``-channel 2D image,
which is wrong for the clip, so it is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform

__all__ = ["ClipConsistentd", "fold_time", "unfold_time"]


def fold_time(clip: torch.Tensor) -> torch.Tensor:
    """``C x T x H x W`` -> ``(C*T) x H x W`` (channel-major: channel ``c`` frame ``t`` lands at ``c*T + t``)."""
    if clip.ndim != 4:
        raise ValueError(f"expected a C x T x H x W clip, got shape {tuple(clip.shape)}")
    return clip.reshape(clip.shape[0] * clip.shape[1], *clip.shape[2:])


def unfold_time(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``(C*T) x H x W`` -> ``C x T x H x W``, the inverse of :func:`fold_time`."""
    if image.ndim != 3 or image.shape[0] % channels:
        raise ValueError(f"cannot unfold shape {tuple(image.shape)} into {channels} channels")
    return image.reshape(channels, image.shape[0] // channels, *image.shape[1:])


def _plain(x: Any) -> Any:
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return x


def _restore_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype == dtype:
        return x
    if dtype == torch.uint8:
        return x.round().clamp_(0, 255).to(torch.uint8)
    if dtype == torch.bool:
        return x > 0.5
    if not dtype.is_floating_point:
        return x.round().to(dtype)
    return x.to(dtype)


def _inner_keys(transform: Callable) -> tuple[Hashable, ...]:
    keys = getattr(transform, "keys", None)
    if keys is not None:
        return tuple(keys)
    found: list[Hashable] = []
    for t in getattr(transform, "transforms", ()):  # a Compose: the union of its children's keys
        for k in _inner_keys(t):
            if k not in found:
                found.append(k)
    return tuple(found)


class ClipConsistentd(Randomizable, Transform):
    """Apply a MONAI 2D dictionary transform to clips with ONE random draw for all frames and the masks.

    Example (SimLVSeg's spatial augmentation)::

        ClipConsistentd(
            Compose([
                RandRotated(["image", "label"], range_x=np.deg2rad(20), prob=1.0, mode=["bilinear", "nearest"]),
                SpatialPadd(["image", "label"], spatial_size=(124, 124)),
                RandSpatialCropd(["image", "label"], roi_size=(112, 112), random_size=False),
            ]),
            time_keys=("image",),
        )

    Args:
        transform: a MONAI dictionary transform (or ``Compose`` of them) for 2D ``channel x H x W`` images.
        keys: the keys it touches, for dtype restoration and metadata stripping; ``None`` takes them from
            ``transform.keys`` (or the children of a ``Compose``).
        time_keys: the keys holding ``C x T x H x W`` clips, folded before and unfolded after; other keys
            (``1 x H x W`` masks) pass through as they are.
        preserve_dtype: cast each key back to its input dtype (``uint8``: rounded and clipped).
    """

    def __init__(
        self,
        transform: Callable[[Mapping[Hashable, Any]], Mapping[Hashable, Any]],
        keys: Sequence[Hashable] | Hashable | None = None,
        time_keys: Sequence[Hashable] | Hashable = ("image",),
        preserve_dtype: bool = True,
    ) -> None:
        self.transform = transform
        self.time_keys = (time_keys,) if isinstance(time_keys, (str, int)) else tuple(time_keys)
        if keys is None:
            keys = _inner_keys(transform) or self.time_keys
        self.keys = (keys,) if isinstance(keys, (str, int)) else tuple(keys)
        self.preserve_dtype = preserve_dtype

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> ClipConsistentd:
        """Seed the wrapped transform (it makes the draws)."""
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw here: the wrapped transform draws once per call."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        channels: dict[Hashable, int] = {}
        dtypes: dict[Hashable, torch.dtype] = {}
        for key in dict.fromkeys(self.keys + self.time_keys):
            if key not in d:
                continue
            d[key] = _plain(d[key])
            dtypes[key] = d[key].dtype
            if key in self.time_keys:
                channels[key] = int(d[key].shape[0])
                d[key] = fold_time(d[key])
        d = dict(self.transform(d))
        for key, dtype in dtypes.items():
            x = _plain(d[key])
            if key in channels:
                x = unfold_time(x, channels[key])
            if self.preserve_dtype:
                x = _restore_dtype(x, dtype)
            d[key] = x.contiguous()
        return d
