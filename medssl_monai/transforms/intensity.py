"""Clip-consistent intensity augmentation and late normalisation.

MONAI has no colour jitter with albumentations' semantics and no CLAHE, so these are written here, each with
ONE random draw per clip applied to every frame (SimLVSeg's ``VideoAlbumentations`` behaviour). The per-frame
operations follow albumentations 1.2.1 (``ColorJitter``, ``CLAHE``) exactly on ``uint8`` frames, including
OpenCV's rounding and LUT truncation, so augmented clips match the reference pipeline.

dtype behaviour: clips are ``C x T x H x W`` tensors (or arrays) with ``C`` 1 or 3. ``uint8`` in gives
``uint8`` out. Float clips are taken to be on the same ``0..255`` scale (the project's contract: pixel values keep
their 8-bit scale until normalisation; albumentations would assume ``[0, 1]`` for floats), are clipped to it and
come back ``float32``; CLAHE accepts ``uint8`` only. Normalisation (:func:`normalize_clip`) is meant to run last,
on the batch, on the GPU where there is one.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from medssl_monai.opencv import import_cv2
from medssl_monai.transforms.device.common import device_constant

__all__ = [
    "ECHONET_MEAN",
    "ECHONET_STD",
    "normalize_clip",
    "NormalizeClipd",
    "RandClipColorJitterd",
    "RandClipCLAHEd",
    "RandClipGaussianBlurd",
    "color_jitter_frames",
    "clahe_frames",
]

# SimLVSeg's EchoNet-Dynamic statistics on the [0, 1] scale (RGB), from its training scripts
ECHONET_MEAN = (0.12741163, 0.1279413, 0.12912785)
ECHONET_STD = (0.19557191, 0.19562256, 0.1965878)


def normalize_clip(
    x: torch.Tensor,
    mean: Sequence[float] | float = ECHONET_MEAN,
    std: Sequence[float] | float = ECHONET_STD,
    scale: float = 1.0 / 255.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x * scale - mean) / std`` per channel, for a ``[B x] C x T x H x W`` clip on any device.

    Args:
        x: the clip or batch; the channel axis is ``-4`` in both layouts.
        mean: per-channel mean (or one value for all channels) on the scaled range.
        std: per-channel standard deviation, same form.
        scale: factor applied first (``1/255``: pixel values on the 8-bit scale, ``uint8`` or float; pass ``1.0``
            for float clips already on ``[0, 1]``).
        dtype: the floating output dtype.

    Returns:
        A new ``dtype`` tensor on ``x``'s device.
    """
    x = torch.as_tensor(x)
    if x.ndim < 4:
        raise ValueError(f"expected a C x T x H x W clip or B x C x T x H x W batch, got shape {tuple(x.shape)}")
    c = x.shape[-4]
    # checked in numpy: a tensor comparison read back in `if` counts as a device read for a sync check
    mean_np = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_np = np.asarray(std, dtype=np.float64).reshape(-1)
    for name, t in (("mean", mean_np), ("std", std_np)):
        if t.size not in (1, c):
            raise ValueError(f"{name} has {t.size} values but the clip has {c} channels")
    if (std_np <= 0).any():
        raise ValueError(f"std must be positive, got {std_np.tolist()}")
    # one fused multiply-add on the device: x * (scale / std) + (-mean / std), constants folded in float64 and
    # kept on the device (a copy per call would synchronise the step)
    a = np.broadcast_to(scale / std_np, (c,))
    b = np.broadcast_to(-mean_np / std_np, (c,))
    a_t, b_t = (device_constant(tuple(v.tolist()), (c, 1, 1, 1), dtype, x.device) for v in (a, b))
    return torch.addcmul(b_t, x.to(dtype), a_t)


class NormalizeClipd(MapTransform):
    """Dictionary wrapper of :func:`normalize_clip` (SimLVSeg: ``A.Normalize(mean, std, max_pixel_value=255)``).

    Prefer normalising the batch on the device (``prepare_batch``) so that loaders move ``uint8``; this
    transform is for CPU-only pipelines and inference preprocessing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mean: Sequence[float] | float = ECHONET_MEAN,
        std: Sequence[float] | float = ECHONET_STD,
        scale: float = 1.0 / 255.0,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mean, self.std, self.scale, self.dtype = mean, std, scale, dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_clip(torch.as_tensor(d[key]), self.mean, self.std, self.scale, self.dtype)
        return d


# --------------------------------------------------------------------------- per-frame helpers (T x H x W x C)

_FLOAT_MAX = 255.0  # float clips keep the 8-bit scale until normalisation


def _to_frames(x: Any) -> np.ndarray:
    """``C x T x H x W`` tensor/array -> contiguous ``T x H x W x C`` numpy (``uint8`` or ``float32``)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 4 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected a C x T x H x W clip with C in (1, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32, copy=False)
    return np.ascontiguousarray(arr.transpose(1, 2, 3, 0))


def _from_frames(frames: np.ndarray, like: Any) -> Any:
    clip = np.ascontiguousarray(frames.transpose(3, 0, 1, 2))
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(clip).to(like.device)
    return clip


def _gray(frame: np.ndarray) -> np.ndarray:
    cv2 = import_cv2()

    return frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _brightness(frames: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return frames
    if frames.dtype == np.uint8:
        lut = np.clip(np.arange(256) * factor, 0, 255).astype(np.uint8)
        return lut[frames]
    return np.clip(frames * factor, 0, _FLOAT_MAX).astype(np.float32)


def _contrast(frames: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return frames
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        mean = float(_gray(frame).mean())  # per frame, as albumentations applies it image by image
        if frames.dtype == np.uint8:
            lut = np.clip(np.arange(256) * factor + mean * (1 - factor), 0, 255).astype(np.uint8)
            out[t] = lut[frame]
        else:
            out[t] = np.clip(frame * factor + mean * (1 - factor), 0, _FLOAT_MAX)
    return out


def _saturation(frames: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1 or frames.shape[-1] == 1:  # a grey image has no saturation to change
        return frames
    cv2 = import_cv2()

    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        gray = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        res = cv2.addWeighted(frame, factor, gray, 1 - factor, 0)  # saturating, rounded for uint8
        out[t] = res if frames.dtype == np.uint8 else np.clip(res, 0, _FLOAT_MAX)
    return out


def _hue(frames: np.ndarray, factor: float) -> np.ndarray:
    if factor == 0 or frames.shape[-1] == 1:
        return frames
    cv2 = import_cv2()

    out = np.empty_like(frames)
    if frames.dtype == np.uint8:
        lut = np.mod(np.arange(256, dtype=np.int16) + 180 * factor, 180).astype(np.uint8)  # OpenCV hue is 0..179
    for t, frame in enumerate(frames):
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
        if frames.dtype == np.uint8:
            hsv[..., 0] = lut[hsv[..., 0]]
        else:
            hsv[..., 0] = np.mod(hsv[..., 0] + factor * 360, 360)
        out[t] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def color_jitter_frames(
    frames: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float, order: Sequence[int]
) -> np.ndarray:
    """Apply one set of jitter factors to ``T x H x W x C`` frames (albumentations ``ColorJitter.apply``).

    ``order`` is a permutation of ``(0, 1, 2, 3)`` = brightness, contrast, saturation, hue.
    """
    ops = (
        lambda f: _brightness(f, brightness),
        lambda f: _contrast(f, contrast),
        lambda f: _saturation(f, saturation),
        lambda f: _hue(f, hue),
    )
    for i in order:
        frames = ops[i](frames)
    return frames


def _channels_equal(frames: np.ndarray) -> bool:
    return bool(np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]))


@functools.lru_cache(maxsize=1)
def _grey_lab_luts() -> tuple[np.ndarray, np.ndarray] | None:
    """OpenCV's 8-bit ``RGB2LAB`` L of each grey value, and ``LAB2RGB`` of ``(L, 128, 128)`` for each L."""
    cv2 = import_cv2()

    g = np.arange(256, dtype=np.uint8)
    lab = cv2.cvtColor(np.repeat(g[None, :, None], 3, axis=2), cv2.COLOR_RGB2LAB)[0]
    if not ((lab[:, 1] == 128).all() and (lab[:, 2] == 128).all()):  # another OpenCV LAB: no shortcut
        return None
    neutral = np.full(256, 128, np.uint8)
    rgb = cv2.cvtColor(np.stack([g, neutral, neutral], -1)[None], cv2.COLOR_LAB2RGB)[0]
    return lab[:, 0].copy(), rgb.copy()


def clahe_frames(frames: np.ndarray, clip_limit: float, tile_grid_size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """OpenCV CLAHE with one clip limit on every ``uint8`` frame (RGB: on the L channel of LAB, as albumentations)."""
    cv2 = import_cv2()

    if frames.dtype != np.uint8:
        raise TypeError(f"CLAHE needs uint8 frames, got {frames.dtype}; apply it before conversion to float")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=tuple(int(s) for s in tile_grid_size))
    out = np.empty_like(frames)
    luts = _grey_lab_luts() if frames.shape[-1] == 3 and _channels_equal(frames) else None
    if luts is not None:
        # grey stored as RGB (echo videos): RGB->LAB and LAB->RGB are per-pixel maps of the grey value and of L
        # (a = b = 128 for grey), so two lookup tables give exactly the LAB round trip at a third of the cost
        to_l, from_l = luts
        lum = to_l[frames[..., 0]]
        for t in range(len(frames)):
            out[t] = from_l[clahe.apply(lum[t])]
        return out
    for t, frame in enumerate(frames):
        if frame.shape[-1] == 1:
            out[t, ..., 0] = clahe.apply(np.ascontiguousarray(frame[..., 0]))
        else:
            lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
            lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
            out[t] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return out


def _factor_range(value: float | Sequence[float], name: str, center: float, bound: tuple[float, float]) -> tuple:
    """albumentations ``ColorJitter.__check_values``: ``v`` -> ``(center - v, center + v)`` clipped to ``bound``."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        lo, hi = center - value, center + value
        lo = max(lo, bound[0])
    else:
        lo, hi = (float(v) for v in value)
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name} range {(lo, hi)} must lie in {bound}")
    return lo, hi


class RandClipColorJitterd(RandomizableTransform, MapTransform):
    """Random brightness, contrast, saturation and hue with one draw per clip (albumentations ``ColorJitter``).

    Factors are drawn as albumentations does: brightness, contrast and saturation uniformly in
    ``[max(0, 1 - v), 1 + v]``, hue in ``[-v, v]`` (fraction of the hue circle), and the four operations run in
    a random order. SimLVSeg uses ``ColorJitter(0.2, 0.2, 0.2, 0.2, p=0.5)``, the defaults here. Grey
    (1-channel, or RGB with equal channels) clips are unchanged by saturation and hue.

    Args:
        keys: clip keys (``C x T x H x W``, ``uint8`` or float on ``0..255``); all share one draw.
        brightness, contrast, saturation: ``v`` or an explicit ``(min, max)`` factor range.
        hue: ``v`` in ``[0, 0.5]`` or a ``(min, max)`` range in ``[-0.5, 0.5]``.
        prob: probability of jittering a clip.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        brightness: float | Sequence[float] = 0.2,
        contrast: float | Sequence[float] = 0.2,
        saturation: float | Sequence[float] = 0.2,
        hue: float | Sequence[float] = 0.2,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        inf = float("inf")
        self.brightness = _factor_range(brightness, "brightness", 1.0, (0.0, inf))
        self.contrast = _factor_range(contrast, "contrast", 1.0, (0.0, inf))
        self.saturation = _factor_range(saturation, "saturation", 1.0, (0.0, inf))
        self.hue = _factor_range(hue, "hue", 0.0, (-0.5, 0.5))
        self.params: dict[str, Any] = {}

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self.params = {
            "brightness": float(self.R.uniform(*self.brightness)),
            "contrast": float(self.R.uniform(*self.contrast)),
            "saturation": float(self.R.uniform(*self.saturation)),
            "hue": float(self.R.uniform(*self.hue)),
            "order": [int(i) for i in self.R.permutation(4)],
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = _from_frames(color_jitter_frames(_to_frames(d[key]), **self.params), d[key])
        return d


class RandClipCLAHEd(RandomizableTransform, MapTransform):
    """CLAHE with one random clip limit per clip, applied to every frame (albumentations ``CLAHE``).

    The clip limit is drawn uniformly in ``[1, clip_limit]`` (or an explicit ``(min, max)``); SimLVSeg uses
    ``A.CLAHE(p=0.5)``: limit up to 4, 8 x 8 tiles, the defaults here. ``uint8`` clips only.

    Args:
        keys: clip keys (``C x T x H x W`` ``uint8``, ``C`` 1 or 3); all share one draw.
        clip_limit: upper limit, or a ``(min, max)`` range.
        tile_grid_size: CLAHE tiles ``(rows, cols)``.
        prob: probability of applying it to a clip.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        clip_limit: float | Sequence[float] = 4.0,
        tile_grid_size: Sequence[int] = (8, 8),
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        lo, hi = (1.0, float(clip_limit)) if isinstance(clip_limit, (int, float)) else map(float, clip_limit)
        if not 0 < lo <= hi:
            raise ValueError(f"clip_limit range must satisfy 0 < min <= max, got {(lo, hi)}")
        self.clip_limit = (lo, hi)
        self.tile_grid_size = tuple(int(s) for s in tile_grid_size)
        self.limit = lo

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.limit = float(self.R.uniform(*self.clip_limit))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = _from_frames(clahe_frames(_to_frames(d[key]), self.limit, self.tile_grid_size), d[key])
        return d


class RandClipGaussianBlurd(RandomizableTransform, MapTransform):
    """Gaussian blur with one random sigma per clip (torchvision ``GaussianBlur(3, (0.1, 2.0))``, TVRL's SSL aug).

    OpenCV's ``GaussianBlur`` per frame, with reflect-101 borders like torchvision's ``reflect`` padding.

    Args:
        keys: clip keys (``C x T x H x W``, ``uint8`` or float); all share one draw.
        kernel_size: odd kernel size.
        sigma: ``(min, max)`` of the uniformly drawn standard deviation (pixels).
        prob: probability of blurring a clip.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        kernel_size: int = 3,
        sigma: Sequence[float] = (0.1, 2.0),
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        lo, hi = (float(s) for s in sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"sigma range must satisfy 0 < min <= max, got {(lo, hi)}")
        self.kernel_size = kernel_size
        self.sigma_range = (lo, hi)
        self.sigma = lo

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        cv2 = import_cv2()

        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        k = (self.kernel_size, self.kernel_size)
        for key in self.key_iterator(d):
            frames = _to_frames(d[key])
            out = np.empty_like(frames)
            for t, frame in enumerate(frames):
                out[t] = cv2.GaussianBlur(frame, k, sigmaX=self.sigma, sigmaY=self.sigma).reshape(frame.shape)
            d[key] = _from_frames(out, d[key])
        return d
