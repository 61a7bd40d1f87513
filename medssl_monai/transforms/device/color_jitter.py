"""albumentations' ``ColorJitter`` on a device batch, one draw per clip (SimLVSeg's and TVRL's augmentations).

Matches :class:`~medssl_monai.transforms.intensity.RandClipColorJitterd` for the same factors and order: exactly
for grey clips (echo: channel 0 is the grey value, so saturation and hue are identities and the whole jitter is one
lookup table per frame), to within rounding for true colour (OpenCV's fixed-point 8-bit HSV, its ``addWeighted``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch

from medssl_monai.opencv import import_cv2
from medssl_monai.transforms.device.common import _get, _PerClipParams, _to_device

__all__ = ["color_jitter"]


_JITTER_KEYS = ("jitter", "brightness", "contrast", "saturation", "hue", "order")


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
    tables), the way back in ``float32``, then rounded or truncated to 8 bits pixel by pixel as the installed
    OpenCV does for a frame of this size (:func:`_hsv2rgb_rounding`).
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
    # OpenCV's HSV2RGB (8-bit): floats on [0, 1], hue sector 0..5, back to 8 bits as OpenCV rounds them
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
    rounds = _hsv2rgb_rounding(tuple(x.shape[-2:]), x.device)
    return torch.where(rounds, rgb.round(), rgb.floor()).clamp(0, 255)


@functools.lru_cache(maxsize=16)
def _hsv2rgb_rounding(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``H x W`` bool: the pixels that the installed OpenCV's 8-bit ``HSV2RGB`` rounds (the others it truncates).

    OpenCV truncates in its SIMD loop and rounds in the scalar loop that finishes each row, so which pixels round
    depends on the frame width, the OpenCV version and the CPU's vector width (measured with 32-pixel rows on an
    AVX-512 host: 4.10-4.13 and 5.0 truncate every pixel, 4.14 and 5.1 round every pixel; 112-pixel rows mix both).
    One probe frame of this size, converted by OpenCV itself, gives the pattern.
    """
    cv2 = import_cv2()
    probe = np.empty((*size, 3), np.uint8)
    probe[...] = (10, 255, 200)  # G = 200 * (1 - (1 - 1/3)) = 66.67: 67 rounded, 66 truncated
    rounds = torch.from_numpy(cv2.cvtColor(probe, cv2.COLOR_HSV2RGB)[..., 1] == 67)
    return _to_device(rounds, device)


def color_jitter(
    x: torch.Tensor, params: _PerClipParams | Mapping[str, torch.Tensor], grey: bool = True
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
