"""TVRL's strong augmentation on the device: rotation, RandomResizedCrop, flips, brightness and contrast,
Gaussian blur, with one draw per clip (:func:`sample_tvrl_params`, :class:`TVRLDeviceAugmentation`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medssl_monai.transforms.device.color_jitter import color_jitter
from medssl_monai.transforms.device.common import SeededStream, _PerClipParams, _to_device, _uniform
from medssl_monai.transforms.device.geometry import flip, resized_crop, rotate, sample_resized_crop_boxes

__all__ = ["TVRLParams", "sample_tvrl_params", "gaussian_blur", "TVRLDeviceAugmentation"]


@dataclass
class TVRLParams(_PerClipParams):
    """Per-clip parameters of TVRL's strong augmentation for one batch (host tensors, leading dimension ``B``).

    Attributes:
        angle: rotation in radians (``float64``), MONAI ``Rotate``'s convention; 0 = none.
        box: ``B x 4`` resized-crop box ``(top, left, height, width)`` in the rotated frame (``int64``).
        hflip, vflip: flip the columns / rows (``bool``).
        jitter, brightness, contrast, saturation, hue, order: colour jitter as :class:`AugmentParams` (grey
            clips: saturation and hue are identities).
        blur: apply the Gaussian blur (``bool``); sigma: its standard deviation in pixels (``float64``).
    """

    angle: torch.Tensor
    box: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor


def sample_tvrl_params(
    batch_size: int,
    frame_size: tuple[int, int],
    generator: torch.Generator,
    rotate_degrees: float = 15.0,
    crop_scale: tuple[float, float] | None = (0.08, 1.0),
    hflip_prob: float = 0.5,
    vflip_prob: float = 0.5,
    brightness: tuple[float, float] = (0.2, 1.8),
    contrast: tuple[float, float] = (0.2, 1.8),
    jitter_prob: float = 0.8,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> TVRLParams:
    """Draw one batch of TVRL augmentation parameters from ``generator`` (a CPU generator).

    The distributions are those of :func:`~medssl_monai.transforms.tvrl.tvrl_strong_augmentation`'s worker
    transforms (``RandRotated``, ``RandClipResizedCropd`` with square boxes, ``RandFlipd`` x 2,
    ``RandClipColorJitterd`` with brightness and contrast only, ``RandClipGaussianBlurd``); only the random
    stream differs. ``crop_scale=None``: the whole frame (VideoMAE's view, resized only).
    """
    n, g = int(batch_size), generator
    half = math.radians(rotate_degrees)
    if crop_scale is None:
        box = torch.tensor([[0, 0, int(frame_size[0]), int(frame_size[1])]]).expand(n, 4).clone()
    else:
        box = sample_resized_crop_boxes(n, frame_size, g, (float(crop_scale[0]), float(crop_scale[1])))
    return TVRLParams(
        angle=_uniform(n, -half, half, g),
        box=box,
        hflip=torch.rand(n, generator=g, dtype=torch.float64) < hflip_prob,
        vflip=torch.rand(n, generator=g, dtype=torch.float64) < vflip_prob,
        jitter=torch.rand(n, generator=g, dtype=torch.float64) < jitter_prob,
        brightness=_uniform(n, *brightness, g),
        contrast=_uniform(n, *contrast, g),
        saturation=torch.ones(n, dtype=torch.float64),
        hue=torch.zeros(n, dtype=torch.float64),
        order=torch.argsort(torch.rand(n, 4, generator=g), dim=1),
        blur=torch.rand(n, generator=g, dtype=torch.float64) < blur_prob,
        sigma=_uniform(n, *blur_sigma, g),
    )


def _gaussian_taps_fixed_point(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``B x K`` ``int32`` taps of OpenCV's bit-exact 8-bit Gaussian kernel (8 fraction bits, summing to 256).

    ``getGaussianKernel``'s values, quantised from the outside in with the rounding error carried to the next
    tap (``cvRound``, half to even) and the centre tap taking the rest, as OpenCV's fixed-point kernels.
    """
    n2 = kernel_size // 2
    x = torch.arange(-n2, 0, dtype=torch.float64)  # the outer half, left to right
    vals = torch.exp(-(x[None] ** 2) / (2 * sigma.double()[:, None] ** 2))
    k = vals / (2 * vals.sum(1, keepdim=True) + 1)
    taps, err = [], torch.zeros_like(sigma, dtype=torch.float64)
    for i in range(n2):
        adj = k[:, i] * 256 + err
        v = adj.round()
        err = adj - v
        taps.append(v)
    half = torch.stack(taps, 1) if taps else torch.zeros(len(sigma), 0, dtype=torch.float64)
    centre = 256 - 2 * half.sum(1, keepdim=True)
    return torch.cat([half, centre, half.flip(1)], 1).to(torch.int32)


def gaussian_blur(x: torch.Tensor, blur: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """OpenCV ``GaussianBlur`` (reflect-101 borders) with one sigma per clip on the flagged ``uint8`` clips.

    OpenCV blurs ``uint8`` bit-exactly in fixed point: an 8-bit-fraction kernel, the row pass kept exactly, the
    column pass rounded half up from 16 fraction bits. Done here in ``int32``, so it equals
    :class:`~medssl_monai.transforms.intensity.RandClipGaussianBlurd` exactly.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"gaussian_blur needs a uint8 batch, got {x.dtype}")
    flags = torch.as_tensor(blur).cpu()
    idx_host = torch.nonzero(flags).reshape(-1)
    if idx_host.numel() == 0:
        return x
    idx = _to_device(idx_host, x.device)
    taps = _gaussian_taps_fixed_point(torch.as_tensor(sigma, dtype=torch.float64).cpu()[idx_host], kernel_size)
    k = _to_device(taps, x.device)
    r = kernel_size // 2
    sub = x.index_select(0, idx)
    b, h, w = sub.shape[0], sub.shape[-2], sub.shape[-1]
    kv = k.reshape(b, 1, 1, 1, -1)
    # reflect padding runs on floats; the values are integers below 2**24, exact in float32
    pad = F.pad(sub.float().reshape(b, -1, h, w), (r, r, 0, 0), mode="reflect").to(torch.int32)
    rows = sum(kv[..., i] * pad[..., i : i + w] for i in range(kernel_size))
    pad = F.pad(rows.float(), (0, 0, r, r), mode="reflect").to(torch.int32)
    cols = sum(kv[..., i] * pad[..., i : i + h, :] for i in range(kernel_size))
    out = ((cols + (1 << 15)) >> 16).clamp(0, 255).to(torch.uint8).reshape(sub.shape)
    return x.index_copy(0, idx, out)


class TVRLDeviceAugmentation(SeededStream):
    """TVRL's SSL augmentation of one view (rotate, resized crop, flips, jitter, blur) on a device batch.

    The device counterpart of :func:`~medssl_monai.transforms.tvrl.tvrl_strong_augmentation` (and, with
    ``crop_scale=None`` and every other op off, of VideoMAE's flip-only view): one draw per clip for all its
    frames, every clip of the batch drawn independently (a two-view batch is augmented as ``2B`` clips). The
    stream is a :class:`SeededStream`, as :class:`DeviceAugmentation`'s.

    Args:
        spatial_size: output frame size.
        rotate_degrees: rotation range (+-degrees; 0: none).
        crop_scale: resized-crop area range (square boxes); ``None``: the frames are already at ``spatial_size``.
        hflip_prob, vflip_prob: flip probabilities.
        brightness, contrast: albumentations ``ColorJitter`` values (factors ``max(0, 1 - v) .. 1 + v``).
        jitter_prob: probability of the jitter.
        blur_prob, blur_sigma: probability and sigma range of the 3 x 3 Gaussian blur.
        seed: the run's seed.
    """

    def __init__(
        self,
        spatial_size: int = 128,
        rotate_degrees: float = 15.0,
        crop_scale: Sequence[float] | None = (0.08, 1.0),
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        brightness: float = 0.8,
        contrast: float = 0.8,
        jitter_prob: float = 0.8,
        blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        seed: int = 0,
    ) -> None:
        from medssl_monai.transforms.intensity import _factor_range

        inf = float("inf")
        self.spatial_size = int(spatial_size)
        self.kwargs: dict[str, Any] = {
            "rotate_degrees": float(rotate_degrees),
            "crop_scale": None if crop_scale is None else (float(crop_scale[0]), float(crop_scale[1])),
            "hflip_prob": float(hflip_prob),
            "vflip_prob": float(vflip_prob),
            "brightness": _factor_range(brightness, "brightness", 1.0, (0.0, inf)),
            "contrast": _factor_range(contrast, "contrast", 1.0, (0.0, inf)),
            "jitter_prob": float(jitter_prob),
            "blur_prob": float(blur_prob),
            "blur_sigma": (float(blur_sigma[0]), float(blur_sigma[1])),
        }
        super().__init__(seed)

    def sample(self, batch_size: int, frame_size: tuple[int, int]) -> TVRLParams:
        """Draw the next batch's parameters (advances the step counter)."""
        return sample_tvrl_params(batch_size, frame_size, self.next_generator(), **self.kwargs)

    def apply(self, image: torch.Tensor, params: TVRLParams) -> torch.Tensor:
        """Augment ``image`` (``uint8`` grey ``B x C x T x H x W``) with ``params``, in the worker path's order."""
        if self.kwargs["rotate_degrees"] > 0:
            image = rotate(image, params.angle)
        size = (self.spatial_size, self.spatial_size)
        if self.kwargs["crop_scale"] is not None or tuple(image.shape[-2:]) != size:
            image = resized_crop(image, params.box, size)
        image = flip(image, params.hflip, params.vflip)
        image = color_jitter(image, params, grey=True)
        return gaussian_blur(image, params.blur, params.sigma)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Draw and apply one batch's augmentation."""
        if image.dtype != torch.uint8:
            raise TypeError(f"TVRLDeviceAugmentation needs the uint8 batch (before normalisation), got {image.dtype}")
        return self.apply(image, self.sample(image.shape[0], tuple(image.shape[-2:])))
