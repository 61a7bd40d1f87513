"""SimLVSeg's (UniLVSeg's) training augmentation on the device: colour jitter, CLAHE, rotation, pad, random crop.

The worker-side chain (:func:`~medssl_monai.transforms.presets.simlvseg_augmentation`; one draw per clip for all
frames and the mask) costs most of a DataLoader worker's time per sample. Here it runs on the ``uint8`` batch
already on the device, after the host-to-device copy and before normalisation: :func:`sample_params` draws every
random quantity with the worker transforms' distributions, the ops apply explicitly given parameters, and
:class:`DeviceAugmentation` chains them and owns the generator (its ``state_dict`` goes into ``resume.pt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medssl_monai.transforms.device.clahe import clahe
from medssl_monai.transforms.device.color_jitter import color_jitter
from medssl_monai.transforms.device.common import SeededStream, _PerClipParams, _uniform
from medssl_monai.transforms.device.geometry import pad_crop_geometry, rotate_pad_crop

__all__ = ["AugmentParams", "sample_params", "DeviceAugmentation"]


@dataclass
class AugmentParams(_PerClipParams):
    """Per-sample parameters of one batch (host tensors, leading dimension ``B``).

    Attributes:
        jitter: apply colour jitter (``bool``).
        brightness, contrast, saturation: multiplicative factors (``float64``).
        hue: hue shift as a fraction of the circle (``float64``).
        order: ``B x 4`` permutation of brightness, contrast, saturation, hue (``int64``).
        clahe: apply CLAHE (``bool``).
        clip_limit: CLAHE clip limit (``float64``).
        angle: rotation angle in radians (``float64``), MONAI ``Rotate``'s sign convention.
        offset: ``B x 2`` crop start (row, column) in the padded frame (``int64``).
    """

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    clahe: torch.Tensor
    clip_limit: torch.Tensor
    angle: torch.Tensor
    offset: torch.Tensor


def sample_params(
    batch_size: int,
    frame_size: tuple[int, int],
    generator: torch.Generator,
    crop: int = 112,
    pad: int | None = None,
    rotate_degrees: float = 20.0,
    brightness: tuple[float, float] = (0.8, 1.2),
    contrast: tuple[float, float] = (0.8, 1.2),
    saturation: tuple[float, float] = (0.8, 1.2),
    hue: tuple[float, float] = (-0.2, 0.2),
    jitter_prob: float = 0.5,
    clip_limit: tuple[float, float] = (1.0, 4.0),
    clahe_prob: float = 0.5,
) -> AugmentParams:
    """Draw one batch of augmentation parameters from ``generator`` (a CPU generator).

    The distributions are those of the worker transforms (``RandClipColorJitterd``, ``RandClipCLAHEd``,
    ``RandRotated``, ``SpatialPadd`` + ``RandSpatialCropd``); only the random stream differs.

    Args:
        batch_size: number of clips.
        frame_size: ``(H, W)`` of the frames before augmentation.
        generator: the source of randomness.
        crop, pad: output size, and the size frames are padded to first (``None``: ``crop + 12``).
        rotate_degrees: angles are uniform in ``+-rotate_degrees``.
        brightness, contrast, saturation, hue: ``(min, max)`` of the uniform jitter factors.
        jitter_prob, clahe_prob: probabilities of jitter and CLAHE.
        clip_limit: ``(min, max)`` of the uniform CLAHE clip limit.
    """
    n, g = int(batch_size), generator
    pad = crop + 12 if pad is None else pad
    before_h, max_h = pad_crop_geometry(frame_size[0], crop, pad)
    before_w, max_w = pad_crop_geometry(frame_size[1], crop, pad)
    half = math.radians(rotate_degrees)
    return AugmentParams(
        jitter=torch.rand(n, generator=g, dtype=torch.float64) < jitter_prob,
        brightness=_uniform(n, *brightness, g),
        contrast=_uniform(n, *contrast, g),
        saturation=_uniform(n, *saturation, g),
        hue=_uniform(n, *hue, g),
        order=torch.argsort(torch.rand(n, 4, generator=g), dim=1),
        clahe=torch.rand(n, generator=g, dtype=torch.float64) < clahe_prob,
        clip_limit=_uniform(n, *clip_limit, g),
        angle=_uniform(n, -half, half, g),
        offset=torch.stack(
            [torch.randint(0, max_h + 1, (n,), generator=g), torch.randint(0, max_w + 1, (n,), generator=g)], 1
        ),
    )


class DeviceAugmentation(SeededStream):
    """SimLVSeg's augmentation (colour jitter, CLAHE, rotation, pad, random crop) on a device batch.

    Call it on the ``uint8`` batch after the host-to-device copy and before normalisation (a ``prepare_batch``
    with ``augment`` set does). Every frame of a clip and its mask share one draw. The draws come from the
    :class:`SeededStream` this object is, whose step counter goes into ``resume.pt``.

    Args:
        crop, pad: output size and pad-if-needed size (``None``: ``crop + 12``, SimLVSeg's 124 at 112).
        rotate_degrees: rotation range (+-degrees).
        brightness, contrast, saturation, hue: albumentations ``ColorJitter`` values (factors ``1 +- v``; hue
            ``+- v``).
        jitter_prob: probability of colour jitter.
        clip_limit: CLAHE clip limit upper bound (drawn uniformly in ``[1, clip_limit]``).
        tile_grid_size: CLAHE tiles.
        clahe_prob: probability of CLAHE.
        seed: the run's seed.
        grey: clips are grey (1 channel, or RGB with equal channels: echo).
    """

    def __init__(
        self,
        crop: int = 112,
        pad: int | None = None,
        rotate_degrees: float = 20.0,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.2,
        jitter_prob: float = 0.5,
        clip_limit: float = 4.0,
        tile_grid_size: Sequence[int] = (8, 8),
        clahe_prob: float = 0.5,
        seed: int = 0,
        grey: bool = True,
    ) -> None:
        from medssl_monai.transforms.intensity import _factor_range

        inf = float("inf")
        self.crop = int(crop)
        self.pad = self.crop + 12 if pad is None else int(pad)
        self.ranges = {
            "brightness": _factor_range(brightness, "brightness", 1.0, (0.0, inf)),
            "contrast": _factor_range(contrast, "contrast", 1.0, (0.0, inf)),
            "saturation": _factor_range(saturation, "saturation", 1.0, (0.0, inf)),
            "hue": _factor_range(hue, "hue", 0.0, (-0.5, 0.5)),
            "clip_limit": (1.0, float(clip_limit)),
        }
        self.rotate_degrees = float(rotate_degrees)
        self.jitter_prob = float(jitter_prob)
        self.clahe_prob = float(clahe_prob)
        self.tile_grid_size = tuple(int(s) for s in tile_grid_size)
        self.grey = bool(grey)
        super().__init__(seed)

    def sample(self, batch_size: int, frame_size: tuple[int, int]) -> AugmentParams:
        """Draw the next batch's parameters (advances the step counter)."""
        return sample_params(
            batch_size,
            frame_size,
            self.next_generator(),
            crop=self.crop,
            pad=self.pad,
            rotate_degrees=self.rotate_degrees,
            jitter_prob=self.jitter_prob,
            clahe_prob=self.clahe_prob,
            **self.ranges,
        )

    def apply(
        self, image: torch.Tensor, label: torch.Tensor | None, params: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``image`` (``uint8`` ``B x C x T x H x W``) and ``label`` (``B x 1 x H x W``) with ``params``."""
        image = color_jitter(image, params, grey=self.grey)
        image = clahe(image, params, self.tile_grid_size, grey=self.grey)
        image = rotate_pad_crop(image, params, self.crop, self.pad, "bilinear")
        if label is not None:
            label = rotate_pad_crop(label, params, self.crop, self.pad, "nearest")
        return image, label

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw and apply one batch's augmentation."""
        if image.dtype != torch.uint8:
            raise TypeError(f"DeviceAugmentation needs the uint8 batch (before normalisation), got {image.dtype}")
        return self.apply(image, label, self.sample(image.shape[0], tuple(image.shape[-2:])))
