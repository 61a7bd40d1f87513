"""Geometric device ops shared by the methods' augmentations: MONAI's rotation + pad + random crop in one
``grid_sample``, torchvision's ``RandomResizedCrop`` box rule with an antialiased resize, and flips.

Each takes explicit per-clip parameters, so it can be checked against the worker-side transform with the same draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from medssl_monai.transforms.device.common import _get, _PerClipParams, _to_device, _uniform

__all__ = ["pad_crop_geometry", "rotate_pad_crop", "rotate", "sample_resized_crop_boxes", "resized_crop", "flip"]


def pad_crop_geometry(size: int, crop: int, pad: int) -> tuple[int, int]:
    """``(pad_before, max_offset)`` of MONAI's ``SpatialPad`` to ``pad`` then ``RandSpatialCrop`` to ``crop``.

    ``SpatialPad`` pads symmetrically (the extra pixel after) only when ``size < pad``; the crop start is then
    uniform over ``0..max_offset``.
    """
    padded = max(size, pad)
    if padded < crop:
        raise ValueError(f"frame size {size} padded to {padded} is smaller than the crop {crop}")
    return (padded - size) // 2, padded - crop


def rotate_pad_crop(
    x: torch.Tensor,
    params: _PerClipParams | Mapping[str, torch.Tensor],
    crop: int,
    pad: int | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """MONAI ``RandRotated`` (keep size, zero fill) + ``SpatialPadd`` to ``pad`` + ``RandSpatialCropd`` to ``crop``.

    One ``grid_sample`` per call: each output pixel of the crop is traced back through the crop offset and the
    padding to the rotated frame (zero outside it, as the padding), then through the rotation about the frame
    centre ``(size - 1) / 2`` (MONAI ``Rotate``'s convention, ``align_corners=False``) into the input.

    Args:
        x: ``B x C x T x H x W`` clips or ``B x C x H x W`` masks, ``uint8`` or float, on any device.
        params: ``angle`` (radians) and ``offset`` (``B x 2`` row, column in the padded frame).
        crop: output size; ``pad``: padded size (``None``: ``crop + 12``).
        mode: ``"bilinear"`` (frames) or ``"nearest"`` (masks).

    Returns:
        ``B x C [x T] x crop x crop`` in ``x``'s dtype (``uint8``: rounded and clipped, as the worker path).
    """
    pad = crop + 12 if pad is None else pad
    shape = x.shape
    b, h, w = shape[0], shape[-2], shape[-1]
    before_h, _ = pad_crop_geometry(h, crop, pad)
    before_w, _ = pad_crop_geometry(w, crop, pad)
    dev = x.device
    angle = _to_device(torch.as_tensor(_get(params, "angle"), dtype=torch.float64), dev).float()
    offset = _to_device(torch.as_tensor(_get(params, "offset"), dtype=torch.int64), dev)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    # crop pixel -> rotated-frame pixel (row q_r, column q_c)
    q_r = (torch.arange(crop, device=dev)[None, :, None] + offset[:, 0, None, None] - before_h).float()
    q_c = (torch.arange(crop, device=dev)[None, None, :] + offset[:, 1, None, None] - before_w).float()
    inside = (q_r >= 0) & (q_r <= h - 1) & (q_c >= 0) & (q_c <= w - 1)
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    dr, dc = q_r - cr, q_c - cc
    # MONAI Rotate samples input (row, col) = R(angle) @ output offset from the centre, R = [[cos, -sin], [sin, cos]]
    row_in = cos * dr - sin * dc + cr
    col_in = sin * dr + cos * dc + cc
    gx = (2 * col_in + 1) / w - 1
    gy = (2 * row_in + 1) / h - 1
    far = torch.full_like(gx, -4.0)  # outside the rotated frame: the zero padding
    grid = torch.stack([torch.where(inside, gx, far), torch.where(inside, gy, far)], -1)
    flat = x.reshape(b, -1, h, w)
    src = flat if flat.is_floating_point() else flat.float()
    out = F.grid_sample(src, grid.to(src.dtype), mode=mode, padding_mode="zeros", align_corners=False)
    out = out.reshape(*shape[:-2], crop, crop)
    if x.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(x.dtype)


def rotate(x: torch.Tensor, angle: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """MONAI ``RandRotated`` (keep size, zero fill) of square ``B x C [x T] x S x S`` frames by ``angle`` (radians).

    :func:`rotate_pad_crop` with no padding and the whole frame as the crop.
    """
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"rotation on the device needs square frames, got {h} x {w}")
    params = {"angle": angle, "offset": torch.zeros(x.shape[0], 2, dtype=torch.int64)}
    return rotate_pad_crop(x, params, crop=int(h), pad=int(h), mode=mode)


def sample_resized_crop_boxes(
    n: int,
    frame_size: tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """``n x 4`` boxes ``(top, left, h, w)`` drawn as torchvision ``RandomResizedCrop.get_params``.

    Ten tries of area ``U(scale) * H * W`` and log-uniform aspect, the first that fits (rounded half to even as
    Python's ``round``); the centre crop of the clamped aspect when none fits; top and left uniform.
    """
    height, width = frame_size
    g = generator
    area = _uniform(n * 10, *scale, g).reshape(n, 10) * (height * width)
    aspect = torch.exp(_uniform(n * 10, math.log(ratio[0]), math.log(ratio[1]), g).reshape(n, 10))
    w = torch.sqrt(area * aspect).round().long()
    h = torch.sqrt(area / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1)  # the first try that fits (0 when none: replaced below)
    bh, bw = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fh, fw = int(round(width / ratio[0])), width
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fh, fw = height, width
    ok = fits.any(1)
    bh, bw = torch.where(ok, bh, fh), torch.where(ok, bw, fw)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    top = torch.where(ok, (u[:, 0] * (height - bh + 1)).floor().long(), (height - fh) // 2)
    left = torch.where(ok, (u[:, 1] * (width - bw + 1)).floor().long(), (width - fw) // 2)
    return torch.stack([top, left, bh, bw], 1)


def _aa_weights(box_start: torch.Tensor, box_size: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """``B x out x in`` weights of torch's antialiased bilinear resize of ``[start, start + size)`` to ``out``.

    ``F.interpolate(..., mode="bilinear", antialias=True, align_corners=False)`` on the cropped box: a triangle
    filter widened by the scale when shrinking, over the box's pixels only, normalised per output pixel.
    """
    dev = box_start.device
    size = box_size.double()[:, None, None]
    scale = size / out_size
    support = scale.clamp(min=1.0)
    invscale = 1.0 / support
    center = scale * (torch.arange(out_size, dtype=torch.float64, device=dev)[None, :, None] + 0.5)
    j = torch.arange(in_size, dtype=torch.float64, device=dev)[None, None, :] - box_start.double()[:, None, None]
    wgt = (1 - ((j + 0.5 - center) * invscale).abs()).clamp(min=0)
    wgt = torch.where((j >= 0) & (j < size), wgt, torch.zeros_like(wgt))
    return (wgt / wgt.sum(-1, keepdim=True)).float()


def resized_crop(x: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:class:`~medssl_monai.transforms.tvrl.RandClipResizedCropd` with a box per clip, on ``B x C x T x H x W``.

    Each clip's box ``(top, left, h, w)`` is resized to ``size`` by two per-clip weight matrices (rows, columns):
    the antialiased bilinear resize of the worker path, batched over clips with different boxes.
    """
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    box = _to_device(torch.as_tensor(box, dtype=torch.int64), x.device)
    wy = _aa_weights(box[:, 0], box[:, 2], h, size[0])
    wx = _aa_weights(box[:, 1], box[:, 3], w, size[1])
    src = x.float().reshape(b, -1, h, w)
    out = torch.matmul(torch.matmul(wy[:, None], src), wx.transpose(1, 2)[:, None])
    out = out.reshape(*x.shape[:-2], *size)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out.to(x.dtype)


def flip(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Flip the columns (``hflip``) and rows (``vflip``) of the flagged clips of ``B x ... x H x W``."""
    view = (-1,) + (1,) * (x.ndim - 1)
    h = _to_device(torch.as_tensor(hflip, dtype=torch.bool), x.device).reshape(view)
    v = _to_device(torch.as_tensor(vflip, dtype=torch.bool), x.device).reshape(view)
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)
