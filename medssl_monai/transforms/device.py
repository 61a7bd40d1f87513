"""SimLVSeg's training augmentation, batched on the device (``prepare_batch``), with explicit random draws.

The worker-side chain (:func:`~medssl_monai.transforms.presets.simlvseg_augmentation`: colour jitter, CLAHE,
rotation, pad, random crop; one draw per clip for all frames and the mask) costs most of a DataLoader worker's time
per sample. Here the same operations run on a ``uint8`` batch ``B x C x T x H x W`` already on the device, after the
host-to-device copy and before normalisation:

- :func:`sample_params` draws every random quantity of a batch from a CPU ``torch.Generator`` with the
  distributions of the worker transforms (apply with probability ``p``; factors uniform in their ranges; a random
  order of the four jitter operations; a CLAHE clip limit uniform in ``[1, 4]``; an angle uniform in
  ``+-rotate_degrees``; crop offsets uniform over the padded frame);
- :func:`color_jitter`, :func:`clahe` and :func:`rotate_pad_crop` apply explicitly given per-sample parameters, so
  each can be checked against the worker path with the same draw;
- :class:`DeviceAugmentation` chains them and owns the generator; its ``state_dict`` goes into ``resume.pt``.

TVRL's strong augmentation (rotation, RandomResizedCrop, flips, brightness and contrast, Gaussian blur) has the
same three parts: :func:`sample_tvrl_params`, the ops :func:`rotate`, :func:`resized_crop`, :func:`flip`,
:func:`color_jitter` and :func:`gaussian_blur`, and :class:`TVRLDeviceAugmentation`. UCL's random crop of every
frame: :func:`sample_crop_offsets`, :func:`crop_frames` and :class:`FrameCropDeviceAugmentation`; its POCUS
preset's RandomResizedCrop and flip of every frame: :func:`sample_resized_crop_params`, :func:`resized_crop` (each
frame a one-frame clip) and :class:`FrameResizedCropDeviceAugmentation`. The classes share their trainer-owned stream,
:class:`SeededStream`.

Nothing here reads a device value on the host: the draws are made on the host, copied once per batch
(``non_blocking``), and the subset of clips that gets CLAHE is selected with host-side indices.

Grey frames: echo clips are grey stored as RGB (equal channels). With ``grey=True`` (the default) channel 0 is
taken as the grey value, so saturation and hue are identities (as in the worker path for grey clips) and CLAHE
works on OpenCV's LAB lightness of the grey value through two exact lookup tables. ``grey=False`` jitters true
colour clips (saturation and hue approximate OpenCV's 8-bit HSV to within a few grey levels); CLAHE then needs
1-channel clips.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medssl_monai.opencv import import_cv2

__all__ = [
    "AugmentParams",
    "sample_params",
    "color_jitter",
    "clahe",
    "rotate_pad_crop",
    "pad_crop_geometry",
    "DeviceAugmentation",
    "TVRLParams",
    "sample_resized_crop_boxes",
    "sample_tvrl_params",
    "rotate",
    "resized_crop",
    "flip",
    "gaussian_blur",
    "TVRLDeviceAugmentation",
    "SeededStream",
    "sample_crop_offsets",
    "crop_frames",
    "FrameCropDeviceAugmentation",
    "ResizedCropParams",
    "sample_resized_crop_params",
    "FrameResizedCropDeviceAugmentation",
]


class _PerClipParams:
    """A dataclass of per-clip parameter tensors, the clip on the first axis of every field."""

    def __len__(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])

    def select(self, index: Sequence[int] | torch.Tensor):
        """The parameters of the clips ``index`` (tests compare one clip at a time)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return type(self)(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


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


def pad_crop_geometry(size: int, crop: int, pad: int) -> tuple[int, int]:
    """``(pad_before, max_offset)`` of MONAI's ``SpatialPad`` to ``pad`` then ``RandSpatialCrop`` to ``crop``.

    ``SpatialPad`` pads symmetrically (the extra pixel after) only when ``size < pad``; the crop start is then
    uniform over ``0..max_offset``.
    """
    padded = max(size, pad)
    if padded < crop:
        raise ValueError(f"frame size {size} padded to {padded} is smaller than the crop {crop}")
    return (padded - size) // 2, padded - crop


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


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


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a host-device sync (pinned, asynchronous copy on CUDA)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------- colour jitter


def _gray_u8(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``RGB2GRAY`` of ``... x 3 x H x W`` integer values (fixed point, rounded), as ``int32``."""
    r, g, b = (x[..., i, :, :].to(torch.int32) for i in range(3))
    return (r * 4899 + g * 9617 + b * 1868 + 8192) >> 14


def _grey_jitter_luts(x0: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The composed per-frame lookup table of the jitter of grey frames ``x0`` (``B x T x H x W``).

    Brightness and contrast are lookup tables of the current value (contrast's needs the frame mean, which the
    frame histogram gives for any earlier table), saturation and hue leave grey unchanged, so the whole jitter is
    one table per frame, computed in ``float64`` like albumentations' numpy tables.
    """
    b, t = x0.shape[:2]
    hist = torch.zeros(b * t, 256, dtype=torch.float64, device=x0.device)
    ones = torch.ones(1, dtype=torch.float64, device=x0.device).expand(b * t, x0[0, 0].numel())
    hist.scatter_add_(1, x0.reshape(b * t, -1).long(), ones)
    hist = hist.reshape(b, t, 256)
    npix = float(x0[0, 0].numel())
    lut = torch.arange(256, dtype=torch.float64, device=x0.device).expand(b, t, 256)
    fb, fc = p["brightness"][:, None, None], p["contrast"][:, None, None]
    for step in range(4):
        op = p["order"][:, step][:, None, None]
        bright = (lut * fb).clamp(0, 255).trunc()
        mean = (hist * lut).sum(-1, keepdim=True) / npix
        contr = (lut * fc + mean * (1 - fc)).clamp(0, 255).trunc()
        lut = torch.where(op == 0, bright, torch.where(op == 1, contr, lut))
    return lut


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``cv2.addWeighted(frame, f, gray, 1 - f, 0)`` on ``B x 3 x T x H x W`` floats holding integers."""
    gray = _gray_u8(x.transpose(1, 2))[:, None].float()  # B x 1 x T x H x W, rounded to uint8 as OpenCV
    alpha, beta = f.float(), (1 - f).float()  # OpenCV takes both weights as doubles, converts each to float
    # one fused multiply-add over the float32 product of the grey term, as OpenCV's SIMD loop
    return (x.double() * alpha.double() + (gray * beta).double()).float().round().clamp(0, 255)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of the circle) on ``B x 3 x T x H x W`` floats holding integers.

    OpenCV's 8-bit HSV: hue quantised to 180 steps and saturation to 256 before the shift (its fixed-point
    tables), the way back in ``float32``, then rounded or truncated to 8 bits as the installed OpenCV does
    (4.x and 5.1 round, 5.0 truncated: :func:`_hsv2rgb_rounds`).
    """
    xi = x.to(torch.int64)
    r, g, b = xi[:, 0], xi[:, 1], xi[:, 2]
    v, vmin = xi.max(1).values, xi.min(1).values
    diff = v - vmin
    # OpenCV's fixed-point RGB2HSV (8-bit): reciprocal tables scaled by 2**12, rounded
    i = torch.arange(256, dtype=torch.float64, device=x.device).clamp(min=1)
    sdiv = torch.where(i > 0, (255 * 4096 / i).round(), i).long()
    hdiv = (180 * 4096 / (6 * i)).round().long()
    sdiv[0], hdiv[0] = 0, 0
    s = (diff * sdiv[v] + 2048) >> 12
    num = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (num * hdiv[diff] + 2048) >> 12
    h = torch.where(h < 0, h + 180, h).float()
    h = (h + (180 * shift.float())[:, None, None, None]).floor() % 180  # albumentations' uint8 hue table
    # OpenCV's HSV2RGB (8-bit): floats on [0, 1], hue sector 0..5, truncated back to 8 bits
    v, s = v.float() * (1.0 / 255), s.float() * (1.0 / 255)
    hh = h * (6.0 / 180)
    i = hh.floor()
    fr = hh - i
    p_ = v * (1 - s)
    q = v * (1 - s * fr)
    t = v * (1 - s * (1 - fr))
    i = i.long() % 6
    out_r = torch.stack([v, q, p_, p_, t, v], 0).gather(0, i[None]).squeeze(0)
    out_g = torch.stack([t, v, v, q, p_, p_], 0).gather(0, i[None]).squeeze(0)
    out_b = torch.stack([p_, p_, t, v, v, q], 0).gather(0, i[None]).squeeze(0)
    rgb = torch.stack([out_r, out_g, out_b], 1) * 255
    return (rgb.round() if _hsv2rgb_rounds() else rgb.floor()).clamp(0, 255)


@functools.lru_cache(maxsize=1)
def _hsv2rgb_rounds() -> bool:
    """Whether the installed OpenCV rounds 8-bit ``HSV2RGB`` (else it truncates): one probe pixel."""
    cv2 = import_cv2()
    probe = np.array([[[10, 255, 200]]], np.uint8)  # G = 200 * (1 - (1 - 1/3)) = 66.67: 67 rounded, 66 truncated
    return int(cv2.cvtColor(probe, cv2.COLOR_HSV2RGB)[0, 0, 1]) == 67


def color_jitter(
    x: torch.Tensor, params: AugmentParams | Mapping[str, torch.Tensor], grey: bool = True
) -> torch.Tensor:
    """albumentations ``ColorJitter`` with one draw per clip, on a ``uint8`` batch ``B x C x T x H x W``.

    Matches :class:`~medssl_monai.transforms.intensity.RandClipColorJitterd` for the same factors and order:
    exactly for grey clips (``grey=True``: channel 0 is the grey value; 1-channel clips, or RGB with equal
    channels), to within rounding for true colour (``grey=False``, 3 channels).

    Args:
        x: the batch on any device.
        params: ``jitter``, ``brightness``, ``contrast``, ``saturation``, ``hue``, ``order`` (host or ``x``'s device).
        grey: whether the clips are grey.
    """
    flags = torch.as_tensor(_get(params, "jitter")).cpu()
    idx_host = torch.nonzero(flags).reshape(-1)
    if idx_host.numel() == 0:
        return x
    c = x.shape[1]
    if not grey and c != 3:
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {c}")
    # only the jittered clips are computed, picked with host-side indices (no device read)
    p = {k: _to_device(torch.as_tensor(_get(params, k)).cpu()[idx_host], x.device) for k in _JITTER_KEYS[1:]}
    idx = _to_device(idx_host, x.device)
    sub = x.index_select(0, idx)
    b, _, t, h, w = sub.shape
    if grey or c == 1:  # one table per frame, looked up once and shared by the (equal) channels
        lut = _grey_jitter_luts(sub[:, 0], p).to(torch.uint8)
        out = torch.gather(lut, 2, sub[:, 0].reshape(b, t, h * w).long()).reshape(b, 1, t, h, w)
        return x.index_copy(0, idx, out.expand(b, c, t, h, w).contiguous())
    out = sub.float()
    fb, fc = (p[k][:, None, None, None, None] for k in ("brightness", "contrast"))
    fs, fh = p["saturation"][:, None, None, None, None], p["hue"][:, None, None, None, None]
    for step in range(4):
        op = p["order"][:, step][:, None, None, None, None]
        bright = (out.double() * fb).clamp(0, 255).trunc().float()
        mean = _gray_u8(out.transpose(1, 2).to(torch.int32)).double().mean((-2, -1))[:, None, :, None, None]
        contr = (out.double() * fc + mean * (1 - fc)).clamp(0, 255).trunc().float()
        # albumentations skips the neutral factors (its round trips are not exact identities)
        sat = torch.where(fs == 1, out, _saturation(out, fs))
        hue = torch.where(fh == 0, out, _hue(out, p["hue"]))
        out = torch.where(op == 0, bright, torch.where(op == 1, contr, torch.where(op == 2, sat, hue)))
    return x.index_copy(0, idx, out.to(torch.uint8))


_JITTER_KEYS = ("jitter", "brightness", "contrast", "saturation", "hue", "order")


def _get(params: AugmentParams | Mapping[str, torch.Tensor], key: str) -> Any:
    return params[key] if isinstance(params, Mapping) else getattr(params, key)


# ------------------------------------------------------------------------------------------------------ CLAHE


@functools.lru_cache(maxsize=1)
def _grey_lab_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit LAB lightness of each grey value (``256``) and the RGB of each neutral lightness (``256 x 3``)."""
    from medssl_monai.transforms.intensity import _grey_lab_luts

    luts = _grey_lab_luts()
    if luts is None:  # an OpenCV whose LAB keeps grey off-neutral: fall back to the identity round trip
        ident = np.arange(256, dtype=np.uint8)
        return torch.from_numpy(ident), torch.from_numpy(np.repeat(ident[:, None], 3, 1))
    to_l, from_l = luts
    return torch.from_numpy(to_l.astype(np.uint8)), torch.from_numpy(np.ascontiguousarray(from_l))


@functools.lru_cache(maxsize=8)
def _residual_table(device: torch.device) -> torch.Tensor:
    """``256 x 256`` ``int32``: row ``r`` has a 1 at the bins where OpenCV's CLAHE puts ``r`` remaining counts."""
    r = torch.arange(256, dtype=torch.int32)[:, None]
    i = torch.arange(256, dtype=torch.int32)[None, :]
    step = (256 // r.clamp(min=1)).clamp(min=1)
    table = ((i % step == 0) & (i // step < r)).to(torch.int32)
    return _to_device(table, device)


def _clahe_frames(frames: torch.Tensor, limits: torch.Tensor, tiles: tuple[int, int]) -> torch.Tensor:
    """OpenCV ``CLAHE.apply`` on ``N x H x W`` integer frames, each with its own integer histogram clip limit.

    ``limits`` are clip limits as given to ``cv2.createCLAHE`` (``N``, ``float64``). OpenCV's algorithm: frames
    whose size is not a multiple of the tile grid are extended (reflect-101, bottom and right) for the
    histograms; per tile a 256-bin histogram, clipped at ``max(int(limit * tile_area / 256), 1)``, the clipped
    count spread evenly with the remainder on every ``256 // remainder``-th bin, its cumulative sum scaled by
    ``255 / tile_area`` and rounded; each pixel interpolates bilinearly between the tables of its four nearest
    tile centres (in ``float32``, as OpenCV).
    """
    n, h, w = frames.shape
    ty_n, tx_n = tiles
    dev = frames.device
    src = frames.long()
    if h % ty_n or w % tx_n:
        ext = F.pad(src[:, None].float(), (0, tx_n - w % tx_n, 0, ty_n - h % ty_n), mode="reflect")[:, 0].long()
    else:
        ext = src
    th, tw = ext.shape[1] // ty_n, ext.shape[2] // tx_n
    ext = ext[:, : th * ty_n, : tw * tx_n]
    area = th * tw
    # histograms: one scatter-add over every pixel into N x tiles x 256 bins
    tile_row = (torch.arange(th * ty_n, device=dev) // th)[:, None]
    tile_col = (torch.arange(tw * tx_n, device=dev) // tw)[None, :]
    bins = ((tile_row * tx_n + tile_col) * 256)[None] + ext
    hist = torch.zeros(n, ty_n * tx_n * 256, dtype=torch.int32, device=dev)
    hist.scatter_add_(1, bins.reshape(n, -1), torch.ones(1, dtype=torch.int32, device=dev).expand(n, bins[0].numel()))
    hist = hist.reshape(n, ty_n * tx_n, 256)
    # clip and redistribute (integer arithmetic as OpenCV)
    limit = (limits * area / 256).to(torch.int64).clamp(min=1).to(torch.int32)[:, None, None]
    clipped = (hist - limit).clamp(min=0).sum(-1, dtype=torch.int32)
    # the remainder's bins (every 256 // r-th, r of them) as one table row per remainder r
    hist = hist.clamp(max=limit) + (clipped // 256)[..., None] + _residual_table(dev)[clipped % 256]
    scale = float(np.float32(255) / np.float32(area))  # OpenCV's float lutScale, as a Python number: no copy
    lut = (hist.cumsum(-1).float() * scale).round().clamp(0, 255).reshape(n, -1)
    # bilinear interpolation between the four nearest tile tables (float32, OpenCV's expressions)

    def axis(size: int, tile: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inv = float(np.float32(1) / np.float32(tile))
        pos = torch.arange(size, dtype=torch.float32, device=dev) * inv - 0.5
        lo = pos.floor()
        frac = pos - lo
        lo = lo.long()
        return lo.clamp(min=0), (lo + 1).clamp(max=count - 1), frac

    y1, y2, ya = axis(h, th, ty_n)
    x1, x2, xa = axis(w, tw, tx_n)
    ya, xa = ya[:, None], xa[None, :]
    ya1, xa1 = 1.0 - ya, 1.0 - xa
    v = src.reshape(n, h, w)

    def look(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        idx = ((ty[:, None] * tx_n + tx[None, :]) * 256)[None] + v
        return torch.gather(lut, 1, idx.reshape(n, -1)).reshape(n, h, w)

    res = (look(y1, x1) * xa1 + look(y1, x2) * xa) * ya1 + (look(y2, x1) * xa1 + look(y2, x2) * xa) * ya
    return res.round().clamp(0, 255).to(torch.uint8)


def clahe(
    x: torch.Tensor,
    params: AugmentParams | Mapping[str, torch.Tensor],
    tile_grid_size: tuple[int, int] = (8, 8),
    grey: bool = True,
) -> torch.Tensor:
    """albumentations ``CLAHE`` with one clip limit per clip on the clips whose ``clahe`` flag is set.

    Matches :class:`~medssl_monai.transforms.intensity.RandClipCLAHEd` (OpenCV CLAHE on every frame; RGB: on the
    LAB lightness) to within a grey level at a few pixels. Only the flagged clips are computed; the flags must be
    a host tensor (they pick the clips without reading the device).

    Args:
        x: ``uint8`` batch ``B x C x T x H x W``, ``C`` 1, or 3 with equal channels (``grey``).
        params: ``clahe`` (host ``bool``) and ``clip_limit``.
        tile_grid_size: tiles ``(rows, cols)``.
        grey: 3-channel clips are grey stored as RGB (required for ``C == 3``).
    """
    flags = torch.as_tensor(_get(params, "clahe")).cpu()
    idx_host = torch.nonzero(flags).reshape(-1)
    if idx_host.numel() == 0:
        return x
    c = x.shape[1]
    if c == 3 and not grey:
        raise NotImplementedError("CLAHE on the device needs grey clips (1 channel, or 3 equal channels)")
    if c not in (1, 3):
        raise ValueError(f"CLAHE needs 1 or 3 channels, got {c}")
    idx = _to_device(idx_host, x.device)
    limits = _to_device(torch.as_tensor(_get(params, "clip_limit"), dtype=torch.float64).cpu()[idx_host], x.device)
    sub = x.index_select(0, idx)
    b, _, t, h, w = sub.shape
    frames = sub[:, 0].reshape(b * t, h, w)
    if c == 3:  # grey stored as RGB: CLAHE on OpenCV's LAB lightness, exact through two tables
        to_l, from_l = (_to_device(tab, x.device) for tab in _grey_lab_tables())
        frames = to_l[frames.long()]
    out = _clahe_frames(frames, limits.repeat_interleave(t), tuple(tile_grid_size))
    if c == 3:  # LAB -> RGB of a grey lightness is not always exactly grey: one table per channel
        out = from_l[out.long()].reshape(b, t, h, w, 3).permute(0, 4, 1, 2, 3)
    else:
        out = out.reshape(b, 1, t, h, w)
    return x.index_copy(0, idx, out.contiguous())


# ---------------------------------------------------------------------------------- rotation, pad, random crop


def rotate_pad_crop(
    x: torch.Tensor,
    params: AugmentParams | Mapping[str, torch.Tensor],
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


# ------------------------------------------------------------------------------------------- the trainer part


def _stream_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)]).generate_state(1)[0])


class SeededStream:
    """The trainer-owned random stream of a device augmentation: one CPU generator, reseeded for every batch.

    Batch ``step`` draws from a generator seeded with ``(seed, step, rank)``, so the state is the step counter:
    :meth:`state_dict` goes into ``resume.pt``, and a resumed run (every DDP rank with its own stream) continues
    with the uninterrupted run's draws, whatever the DataLoader workers did.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.step = 0
        self.generator = torch.Generator()

    def next_generator(self) -> torch.Generator:
        """The generator seeded for the next batch (advances the step counter)."""
        from medssl_monai.distributed import rank

        self.generator.manual_seed(_stream_seed(self.seed, self.step, rank()))
        self.step += 1
        return self.generator

    def state_dict(self) -> dict[str, int]:
        """``seed`` and ``step``: the generator's stream is a function of them (and the rank)."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream at the saved step (the configured seed is kept)."""
        self.step = int(state["step"])


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


# ------------------------------------------------------------------------ TVRL: rotate, resized crop, flips, blur


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


def rotate(x: torch.Tensor, angle: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """MONAI ``RandRotated`` (keep size, zero fill) of square ``B x C [x T] x S x S`` frames by ``angle`` (radians).

    :func:`rotate_pad_crop` with no padding and the whole frame as the crop.
    """
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"rotation on the device needs square frames, got {h} x {w}")
    params = {"angle": angle, "offset": torch.zeros(x.shape[0], 2, dtype=torch.int64)}
    return rotate_pad_crop(x, params, crop=int(h), pad=int(h), mode=mode)


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


# ---------------------------------------------------------------------- UCL: a random crop of every frame


def sample_crop_offsets(max_offset: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``N x 2`` crop starts (row, column), each uniform over ``0..max_offset`` (``N x 2`` integers).

    The distribution of :class:`~medssl_monai.transforms.frames.FrameResizeCropd`'s random crop (``randint(0, h - s
    + 1)``, then ``randint(0, w - s + 1)``, for each frame); only the random stream differs. The uniforms come from
    ``generator`` (CPU); the offsets are on ``max_offset``'s device, checked (frame >= crop) only on the host.
    """
    bound = torch.as_tensor(max_offset, dtype=torch.int64)
    if bound.device.type == "cpu" and bound.numel() and int(bound.min()) < 0:  # a host read, no device sync
        raise ValueError(f"a frame is smaller than the crop (largest offsets {bound.tolist()})")
    u = _to_device(torch.rand(bound.shape, generator=generator, dtype=torch.float64), bound.device)
    # floor(u * (b + 1)) is uniform over 0..b; the minimum guards the rounding of u * (b + 1) up to b + 1
    return (u * (bound + 1)).floor().long().minimum(bound)


def crop_frames(x: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size x size`` window at ``offset`` (``N x 2`` row, column) of each frame of ``N x C x H x W``.

    An exact copy (one gather of rows and columns) in ``x``'s dtype on ``x``'s device; ``offset`` may be a host
    tensor (copied without a sync).
    """
    dev = x.device
    off = _to_device(torch.as_tensor(offset, dtype=torch.int64), dev)
    steps = torch.arange(size, device=dev)
    rows = (off[:, 0, None] + steps)[:, :, None]  # N x s x 1
    cols = (off[:, 1, None] + steps)[:, None, :]  # N x 1 x s
    frame = torch.arange(x.shape[0], device=dev)[:, None, None]
    # channels last, so the three broadcast indices give N x s x s x C in one gather
    return x.permute(0, 2, 3, 1)[frame, rows, cols].permute(0, 3, 1, 2).contiguous()


class FrameCropDeviceAugmentation(SeededStream):
    """UCL's ``RandomCrop(spatial_size)`` of every frame (after the shorter-side resize) on a device batch.

    The device counterpart of :class:`~medssl_monai.transforms.frames.FrameResizeCropd` with ``random_crop``: with
    ``augment_on="device"`` the workers only resize, this crops. As in the worker path every frame gets its own
    offset (UCL's anchor, positive and negatives are transformed separately), uniform over the crop's positions
    inside that frame's resized size. The stream is a :class:`SeededStream`, as :class:`DeviceAugmentation`'s.

    Args:
        spatial_size: the crop size.
        seed: the run's seed.
    """

    def __init__(self, spatial_size: int = 224, seed: int = 0) -> None:
        self.spatial_size = int(spatial_size)
        super().__init__(seed)

    def max_offsets(self, shape: Sequence[int], sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``N x 2`` largest offsets of the ``N`` frames of a ``B x [K x] C x H x W`` batch of ``shape``.

        ``sizes``: each sample's ``(h, w)`` before padding (``B x 2``; on the host, as the DataLoader gives it, the
        offsets are drawn and checked there); ``None``: every frame is ``H x W``.
        """
        b, per_sample = int(shape[0]), math.prod(int(n) for n in shape[1:-3])
        if sizes is None:
            sizes = torch.tensor([[int(shape[-2]), int(shape[-1])]]).expand(b, 2)
        bound = torch.as_tensor(sizes, dtype=torch.int64).reshape(b, 2) - self.spatial_size
        return bound[:, None].expand(b, per_sample, 2).reshape(-1, 2)  # a stack's frames share their sample's size

    def sample(self, max_offset: torch.Tensor) -> torch.Tensor:
        """Draw the next batch's ``N x 2`` offsets (advances the step counter)."""
        return sample_crop_offsets(max_offset, self.next_generator())

    def apply(self, image: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Crop ``image`` (``B x [K x] C x H x W``) at the frames' ``offset`` (``N x 2``, frames in batch order)."""
        frames = crop_frames(image.reshape(-1, *image.shape[-3:]), offset, self.spatial_size)
        return frames.reshape(*image.shape[:-2], self.spatial_size, self.spatial_size)

    def __call__(self, image: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Draw and apply one batch's crops.

        Args:
            image: the ``uint8`` frames ``B x [K x] C x H x W`` on the device, zero-padded to the batch's largest
                frame where sizes differ (:func:`~medssl_monai.transforms.frames.pad_frames_collate`).
            sizes: each sample's frame size before padding, ``B x 2`` on the host; ``None``: ``H x W``.
        """
        if image.dtype != torch.uint8:
            raise TypeError(
                f"FrameCropDeviceAugmentation needs the uint8 batch (before normalising), got {image.dtype}"
            )
        return self.apply(image, self.sample(self.max_offsets(image.shape, sizes)))


# ------------------------------------------------ UCL's POCUS preset: RandomResizedCrop and a flip of every frame


@dataclass
class ResizedCropParams(_PerClipParams):
    """Per-frame parameters of the POCUS preset's augmentation (host tensors, leading dimension ``N`` frames).

    Attributes:
        box: ``N x 4`` crop box ``(top, left, height, width)`` (``int64``).
        hflip: flip the columns after the resize (``bool``).
    """

    box: torch.Tensor
    hflip: torch.Tensor


def sample_resized_crop_params(
    num_frames: int,
    frame_size: tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.8, 1.25),
    flip_prob: float = 0.5,
) -> ResizedCropParams:
    """Draw every frame's box and flip from ``generator`` (a CPU generator).

    The distributions of :class:`~medssl_monai.transforms.frames.FrameResizedCropd`'s random path: the box by its
    rule (:func:`sample_resized_crop_boxes`: ten tries of area ``U(scale)`` and log-uniform aspect ratio, the
    first that fits, else the whole frame clamped to the ratio range; top and left uniform), the flip with
    probability ``flip_prob``; only the random stream differs.
    """
    n = int(num_frames)
    box = sample_resized_crop_boxes(n, tuple(frame_size), generator, tuple(scale), tuple(ratio))
    return ResizedCropParams(box=box, hflip=torch.rand(n, generator=generator, dtype=torch.float64) < flip_prob)


class FrameResizedCropDeviceAugmentation(SeededStream):
    """The POCUS preset's ``RandomResizedCrop`` and horizontal flip of every frame, on a device batch.

    The device counterpart of :class:`~medssl_monai.transforms.frames.FrameResizedCropd` with ``random``: with
    ``augment_on="device"`` the workers only resize every frame to ``spatial_size x spatial_size``; this draws each
    frame's box (:func:`sample_resized_crop_params`: torchvision's ten tries of area and log-uniform aspect ratio,
    else the whole frame clamped to the ratio range, the worker's rule) and flip, resizes the box to
    ``spatial_size`` (:func:`resized_crop`, the antialiased bilinear weights of the worker's resize, one box per
    frame) and flips. Every frame gets its own draw, as in the workers.
    The stream is a :class:`SeededStream`, as :class:`FrameCropDeviceAugmentation`'s.

    Args:
        spatial_size: output frame size.
        scale: range of the box area as a fraction of the frame.
        ratio: range of the box aspect ratio (width / height).
        flip_prob: probability of the horizontal flip.
        seed: the run's seed.
    """

    def __init__(
        self,
        spatial_size: int = 224,
        scale: Sequence[float] = (0.8, 1.0),
        ratio: Sequence[float] = (0.8, 1.25),
        flip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.spatial_size = int(spatial_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = float(flip_prob)
        super().__init__(seed)

    def sample(self, num_frames: int, frame_size: tuple[int, int]) -> ResizedCropParams:
        """Draw the next batch's boxes and flips for ``num_frames`` frames (advances the step counter)."""
        return sample_resized_crop_params(
            num_frames, frame_size, self.next_generator(), self.scale, self.ratio, self.flip_prob
        )

    def apply(self, image: torch.Tensor, params: ResizedCropParams) -> torch.Tensor:
        """Crop, resize and flip ``image`` (``B x [K x] C x H x W``) with ``params`` (frames in batch order)."""
        frames = image.reshape(-1, *image.shape[-3:])
        size = (self.spatial_size, self.spatial_size)
        out = resized_crop(frames[:, :, None], params.box, size)[:, :, 0]  # each frame a one-frame clip
        out = flip(out, params.hflip, torch.zeros_like(params.hflip))
        return out.reshape(*image.shape[:-2], *size)

    def __call__(self, image: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Draw and apply one batch's augmentation.

        Args:
            image: the ``uint8`` frames ``B x [K x] C x H x W`` on the device, all of one size (the workers resize
                every frame to ``spatial_size x spatial_size``).
            sizes: each sample's frame size (``B x 2``) where the collate passes it; host sizes must be ``H x W``.
        """
        if image.dtype != torch.uint8:
            raise TypeError(
                f"FrameResizedCropDeviceAugmentation needs the uint8 batch (before normalising), got {image.dtype}"
            )
        h, w = (int(s) for s in image.shape[-2:])
        given = None if sizes is None else torch.as_tensor(sizes)
        # the boxes are drawn inside H x W: frames padded to one batch would let a box reach into the padding
        if given is not None and given.device.type == "cpu" and (given.reshape(-1, 2) != torch.tensor([h, w])).any():
            raise ValueError(f"frames of different sizes {given.tolist()} in one batch; expected {h} x {w}")
        return self.apply(image, self.sample(math.prod(image.shape[:-3]), (h, w)))
