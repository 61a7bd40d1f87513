"""TVRL data pipelines: two views with their time steps, TVRL's strong augmentation, probe clips.

Shen et al., TVRL (MICCAI 2024), reference ``datamodule/``:

- clips of ``clip_frames`` = 8 frames with ``stride`` 2 from a random start; the time step of a frame is its
  index (videos) or its real acquisition time (timed series), optionally relative to the first frame
  (``relative_time``), optionally with Gaussian noise (``time_noise_std``, reference 0.01; the reference then
  casts to ``long``, truncating about half the noisy steps by one: here times stay float).
- ``identical=True`` (``make_clips_identical``, every SSL config of the reference: cSimCLR, cSimCLR-TE, TVRL):
  one clip duplicated into two views that differ only by augmentation. ``identical=False`` draws two clips at
  different times (CVRL, and LTN here so that its time offset is not always 0).
- strong augmentation, one draw per clip for all its frames (torchvision v2 on a video tensor), the two views
  drawn independently; ``augmentation`` picks the reference's recipe (``datamodule/transforms.py``):
  ``"strong"`` (``cardiac_aug_strong``): rotation +-15 degrees, RandomResizedCrop(scale 0.08-1, ratio 1), h-flip
  0.5, v-flip 0.5, colour jitter (brightness 0.8, contrast 0.8) with p 0.8, Gaussian blur (3, sigma 0.1-2) with
  p 0.5; ``"oct"`` (``oct_aug_strong``, the timed-series setting): rotation +-5 degrees, scale 0.10-1, no v-flip,
  brightness 0.6, blur sigma 0.1-1, the rest as ``"strong"``; ``"mae"`` (``cardiac_aug_mae``, VideoMAE's one
  view): resize and h-flip 0.5 only.
- timed series (``oct_datasets.py``): the view is the latest ``clip_frames`` visits (``sample_scan_history``),
  times in years with N(0, 0.1) noise per view; ``window="random"`` takes a random run of visits instead.
- probe (finetune) augmentation: RandomResizedCrop(scale 0.9-1), h-flip 0.3, colour jitter 0.2 / 0.2;
  validation and test frames are only resized.

Everything returns ``uint8`` clips ``C x T x H x W`` (normalised later on the device), ``float32`` ``T`` times and
``bool`` ``T`` frame masks (``False`` = padding). Second-view keys carry ``second_suffix`` (``image_2``, ...).
:func:`drop_unpadded_masks_collate` leaves a view's frame masks out of a batch in which no frame is padded.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import list_data_collate
from monai.transforms import (
    Compose,
    DeleteItemsd,
    MapTransform,
    RandFlipd,
    Randomizable,
    RandomizableTransform,
    RandRotated,
    Resized,
)
from torch.nn import functional as F

from medssl_monai.data.cache import ClipCache
from medssl_monai.transforms.device import TVRLDeviceAugmentation
from medssl_monai.transforms.intensity import RandClipColorJitterd, RandClipGaussianBlurd
from medssl_monai.transforms.io import LoadClipd, LoadSeriesd, convert_channels, gather_frames, meta_key
from medssl_monai.transforms.sampling import clip_indices
from medssl_monai.transforms.spatial import ClipConsistentd

__all__ = [
    "RandClipResizedCropd",
    "TwoClipsd",
    "TwoSeriesWindowsd",
    "ClipTimesd",
    "RelativeTimesd",
    "AUGMENTATIONS",
    "tvrl_strong_augmentation",
    "tvrl_mae_augmentation",
    "tvrl_probe_augmentation",
    "PROBE_AUGMENTATION",
    "tvrl_probe_device_augmentation",
    "tvrl_ssl_transforms",
    "tvrl_probe_transforms",
    "tvrl_device_augmentation",
    "drop_unpadded_masks_collate",
]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _resize_clip(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of a ``C x T x h x w`` clip to ``C x T x H x W``, dtype kept."""
    dtype = clip.dtype
    x = F.interpolate(clip.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp_(0, 255).to(dtype) if dtype == torch.uint8 else x.to(dtype)


class RandClipResizedCropd(RandomizableTransform, MapTransform):
    """torchvision ``RandomResizedCrop`` with one draw per clip: a box of random area and aspect, resized.

    The box is drawn as torchvision's ``get_params``: up to 10 tries of area ``U(scale) * H * W`` and
    log-uniform aspect ``ratio``; if none fits, the centre crop of the clamped aspect. Bilinear, antialiased.

    Args:
        keys: clip keys (``C x T x H x W``); all share one draw (they must have one size).
        spatial_size: output ``(H, W)`` or one int.
        scale: area fraction range (TVRL SSL: 0.08-1; probe: 0.9-1).
        ratio: aspect range (TVRL: 1, square boxes).
        prob: probability of cropping; otherwise the clip is only resized.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: int | Sequence[int] = 128,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (1.0, 1.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.spatial_size = _size2(spatial_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"bad scale {scale} or ratio {ratio}")
        self.box: tuple[int, int, int, int] | None = None

    def randomize_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` as torchvision ``RandomResizedCrop.get_params``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(None)
        h, w = (int(s) for s in d[keys[0]].shape[-2:])
        self.box = self.randomize_box(h, w) if self._do_transform else (0, 0, h, w)
        top, left, bh, bw = self.box
        for key in keys:
            clip = torch.as_tensor(d[key])
            d[key] = _resize_clip(clip[..., top : top + bh, left : left + bw], self.spatial_size).contiguous()
        return d


def _view_times(
    times: np.ndarray, valid: np.ndarray, origin: float, noise: float, rng: np.random.RandomState
) -> torch.Tensor:
    t = times.astype(np.float64) - origin
    if noise > 0:
        t = t + valid * rng.normal(0.0, noise, size=t.shape)
    return torch.as_tensor(t, dtype=torch.float32)


class TwoClipsd(Randomizable, MapTransform):
    """Two views of a video for contrastive pretraining: clips, frame-index time steps and frame masks.

    ``d[key]`` (a video path, frame folder, ``.npy``, ...) becomes the first clip; ``d[key + second_suffix]`` the
    second. With ``identical`` both come from one window (augmented independently later); otherwise each view
    has its own random window. ``times`` are frame indices (relative to the first frame of view 1 with
    ``relative_time``, so the offset between the views is kept); positions past the end of a short video are
    zero frames with ``frame_mask`` ``False``.

    Args:
        keys: the video key (one).
        num_frames: frames per clip (TVRL: 8).
        period: stride (TVRL: 2).
        identical: one window for both views (cSimCLR / TVRL) or two (CVRL / LTN).
        cache, cache_dir: the decoded-clip cache (a :class:`ClipCache`, or where to keep one).
        channels: ``1`` (TVRL's grey input), ``3`` or ``None`` (as stored).
        relative_time: subtract the first time step of view 1.
        time_noise_std: Gaussian noise on valid time steps (reference 0.01).
        second_suffix: suffix of the second view's keys.
        times_key, mask_key: where time steps and frame masks go.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        num_frames: int = 8,
        period: int = 2,
        identical: bool = True,
        cache: ClipCache | None = None,
        cache_dir: str | Path | None = None,
        channels: int | None = 1,
        relative_time: bool = True,
        time_noise_std: float = 0.0,
        second_suffix: str = "_2",
        times_key: str = "times",
        mask_key: str = "frame_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.num_frames, self.period, self.identical = num_frames, period, identical
        self.cache = cache if isinstance(cache, ClipCache) else ClipCache(cache_dir)
        self.channels = channels
        self.relative_time, self.time_noise_std = relative_time, time_noise_std
        self.second_suffix, self.times_key, self.mask_key = second_suffix, times_key, mask_key

    def randomize(self, num_video_frames: int) -> list[np.ndarray]:
        first, _ = clip_indices(num_video_frames, self.num_frames, self.period, "random", None, self.R)
        if self.identical:
            return [first, first.copy()]
        second, _ = clip_indices(num_video_frames, self.num_frames, self.period, "random", None, self.R)
        return [first, second]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            frames = self.cache.frames(path)
            views = self.randomize(len(frames))
            # the would-be index of every position (also past the end of a short video) is its time step
            starts = [int(v[0]) for v in views]
            origin = float(starts[0]) if self.relative_time else 0.0
            for i, idx in enumerate(views):
                suffix = "" if i == 0 else self.second_suffix
                clip = convert_channels(gather_frames(frames, idx), self.channels)
                d[f"{key}{suffix}"] = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))
                valid = idx >= 0
                grid = starts[i] + self.period * np.arange(len(idx))
                d[f"{self.times_key}{suffix}"] = _view_times(grid, valid, origin, self.time_noise_std, self.R)
                d[f"{self.mask_key}{suffix}"] = torch.from_numpy(valid)
            d[meta_key(key)] = {"filename_or_obj": str(path), "num_video_frames": len(frames)}
        return d


class TwoSeriesWindowsd(Randomizable, MapTransform):
    """Two views of a timed image series (loaded by :class:`LoadSeriesd` with ``num_frames=None``).

    A view is ``num_frames`` consecutive visits (the whole series, left-padded with zero images and
    ``frame_mask`` ``False``, when it is shorter), with the real acquisition times: the latest ones
    (``window="latest"``, the reference's ``sample_scan_history``) or from a random start (``"random"``).
    ``identical`` duplicates one window; otherwise the second view has a random window of its own. With ``visits``
    a view holds that many consecutive visits (fewer than ``num_frames``), left-padded to ``num_frames`` slots.

    Args:
        keys: the series key (one).
        num_frames: slots per view (visits per view unless ``visits`` is set).
        identical: one window for both views or two.
        window: ``"latest"`` or ``"random"`` (the first view's window).
        relative_time: subtract the first valid time of view 1 (years since that visit).
        time_noise_std: Gaussian noise on valid times.
        second_suffix, times_key, mask_key: as :class:`TwoClipsd`.
        visits: consecutive visits per view (``None``: ``num_frames``); at most ``num_frames``.
        view_origin: with ``relative_time``, each view's times start at its own first valid visit (years since
            that visit) instead of view 1's.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        num_frames: int = 4,
        identical: bool = True,
        relative_time: bool = True,
        time_noise_std: float = 0.0,
        second_suffix: str = "_2",
        times_key: str = "times",
        mask_key: str = "frame_mask",
        allow_missing_keys: bool = False,
        window: str = "latest",
        visits: int | None = None,
        view_origin: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if window not in ("latest", "random"):
            raise ValueError(f"window must be 'latest' or 'random', got {window!r}")
        if visits is not None and not 1 <= visits <= num_frames:
            raise ValueError(f"visits must be in 1..num_frames ({num_frames}), got {visits}")
        self.num_frames, self.identical, self.window = num_frames, identical, window
        self.visits, self.view_origin = (num_frames if visits is None else int(visits)), view_origin
        self.relative_time, self.time_noise_std = relative_time, time_noise_std
        self.second_suffix, self.times_key, self.mask_key = second_suffix, times_key, mask_key

    def randomize(self, length: int) -> list[int]:
        n_starts = max(1, length - self.visits + 1)
        first = n_starts - 1 if self.window == "latest" else int(self.R.randint(n_starts))
        return [first, first if self.identical else int(self.R.randint(n_starts))]

    def _window(
        self, series: torch.Tensor, times: np.ndarray, start: int
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        clip, t = series[:, start : start + self.visits], times[start : start + self.visits]
        valid = np.ones(len(t), dtype=bool)
        pad = self.num_frames - clip.shape[1]
        if pad > 0:
            clip = torch.cat([clip.new_zeros((clip.shape[0], pad, *clip.shape[2:])), clip], dim=1)
            t = np.concatenate([np.full(pad, t[0]), t])  # padding carries the first real time (masked anyway)
            valid = np.concatenate([np.zeros(pad, dtype=bool), valid])
        return clip, t, valid

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            series = torch.as_tensor(d[key])
            times = np.asarray(d[self.times_key], dtype=np.float64).reshape(-1)
            if self.mask_key in d:  # drop padding a loader may have added
                keep = np.asarray(d[self.mask_key], dtype=bool).reshape(-1)
                series, times = series[:, torch.from_numpy(keep)], times[keep]
            starts = self.randomize(series.shape[1])
            windows = [self._window(series, times, s) for s in starts]
            origin = float(windows[0][1][windows[0][2]][0]) if self.relative_time else 0.0
            for i, (clip, t, valid) in enumerate(windows):
                if self.relative_time and self.view_origin:
                    origin = float(t[valid][0])
                suffix = "" if i == 0 else self.second_suffix
                d[f"{key}{suffix}"] = clip.contiguous()
                d[f"{self.times_key}{suffix}"] = _view_times(t, valid, origin, self.time_noise_std, self.R)
                d[f"{self.mask_key}{suffix}"] = torch.from_numpy(valid)
        return d


class ClipTimesd(MapTransform):
    """Time steps and frame mask of a clip loaded by :class:`LoadClipd` (frame index as time).

    Reads ``d[indices_key]`` (``-1`` = zero frame past the end); writes ``d[times_key]`` (the frame index each
    position would have, minus the first with ``relative``) and ``d[mask_key]`` (``index >= 0``).
    """

    def __init__(
        self,
        keys: KeysCollection = "clip_indices",
        period: int = 2,
        relative: bool = True,
        times_key: str = "times",
        mask_key: str = "frame_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.period, self.relative, self.times_key, self.mask_key = period, relative, times_key, mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            idx = np.asarray(d[key], dtype=np.int64)
            start = 0 if self.relative else int(idx[0])
            d[self.times_key] = torch.as_tensor(start + self.period * np.arange(len(idx)), dtype=torch.float32)
            d[self.mask_key] = torch.from_numpy(idx >= 0)
        return d


class RelativeTimesd(MapTransform):
    """Times relative to the first valid visit (padding set to 0): ``d[key] -= d[key][first True of mask]``."""

    def __init__(self, keys: KeysCollection = "times", mask_key: str = "frame_mask", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            t = torch.as_tensor(d[key], dtype=torch.float32)
            valid = (
                torch.as_tensor(d[self.mask_key], dtype=torch.bool)
                if self.mask_key in d
                else torch.ones_like(t, dtype=torch.bool)
            )
            origin = t[valid][0] if valid.any() else t.new_zeros(())
            d[key] = torch.where(valid, t - origin, torch.zeros_like(t))
        return d


def tvrl_strong_augmentation(
    key: str = "image",
    spatial_size: int | Sequence[int] = 128,
    rotate_degrees: float = 15.0,
    crop_scale: Sequence[float] = (0.08, 1.0),
    hflip_prob: float = 0.5,
    vflip_prob: float = 0.5,
    brightness: float = 0.8,
    contrast: float = 0.8,
    jitter_prob: float = 0.8,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
) -> list:
    """TVRL's SSL augmentation of one view (rotate, RandomResizedCrop, flips, jitter, blur), one draw per clip.

    The defaults are the cardiac recipe (``cardiac_aug_strong``); ``AUGMENTATIONS["oct"]`` holds the timed-series one.
    """
    return [
        ClipConsistentd(
            RandRotated(keys=key, range_x=math.radians(rotate_degrees), prob=1.0, keep_size=True, padding_mode="zeros"),
            keys=key,
            time_keys=key,
        ),
        RandClipResizedCropd(keys=key, spatial_size=spatial_size, scale=crop_scale, ratio=(1.0, 1.0)),
        ClipConsistentd(
            Compose(
                [
                    RandFlipd(keys=key, prob=hflip_prob, spatial_axis=1),
                    RandFlipd(keys=key, prob=vflip_prob, spatial_axis=0),
                ]
            ),
            keys=key,
            time_keys=key,
        ),
        RandClipColorJitterd(
            keys=key, brightness=brightness, contrast=contrast, saturation=0.0, hue=0.0, prob=jitter_prob
        ),
        RandClipGaussianBlurd(keys=key, kernel_size=3, sigma=tuple(blur_sigma), prob=blur_prob),
    ]


def tvrl_mae_augmentation(key: str = "image", spatial_size: int | Sequence[int] = 128, hflip_prob: float = 0.5) -> list:
    """TVRL's VideoMAE augmentation (``cardiac_aug_mae``): resize, then a horizontal flip of the whole clip."""
    return [
        _resize(key, spatial_size),
        ClipConsistentd(RandFlipd(keys=key, prob=hflip_prob, spatial_axis=1), keys=key, time_keys=key),
    ]


# the reference's SSL augmentations by name (datamodule/transforms.py): keyword arguments of
# tvrl_strong_augmentation, or "mae" for tvrl_mae_augmentation
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "strong": {},  # cardiac_aug_strong
    "oct": {  # oct_aug_strong
        "rotate_degrees": 5.0,
        "crop_scale": (0.10, 1.0),
        "vflip_prob": 0.0,
        "brightness": 0.6,
        "blur_sigma": (0.1, 1.0),
    },
    "mae": {},  # cardiac_aug_mae
}


#: TVRL's finetune augmentation: RandomResizedCrop(scale 0.9-1, square), h-flip 0.3, colour jitter 0.2 / 0.2
PROBE_AUGMENTATION: dict[str, Any] = {
    "crop_scale": (0.9, 1.0),
    "hflip_prob": 0.3,
    "brightness": 0.2,
    "contrast": 0.2,
    "jitter_prob": 1.0,
}


def tvrl_probe_augmentation(key: str = "image", spatial_size: int | Sequence[int] = 128) -> list:
    """TVRL's finetune augmentation (:data:`PROBE_AUGMENTATION`), one draw per clip, in the workers."""
    a = PROBE_AUGMENTATION
    return [
        RandClipResizedCropd(keys=key, spatial_size=spatial_size, scale=a["crop_scale"], ratio=(1.0, 1.0)),
        ClipConsistentd(RandFlipd(keys=key, prob=a["hflip_prob"], spatial_axis=1), keys=key, time_keys=key),
        RandClipColorJitterd(
            keys=key, brightness=a["brightness"], contrast=a["contrast"], saturation=0.0, hue=0.0, prob=a["jitter_prob"]
        ),
    ]


def tvrl_probe_device_augmentation(spatial_size: int = 128, seed: int = 0) -> TVRLDeviceAugmentation:
    """The device counterpart of :func:`tvrl_probe_augmentation`: the same ops and ranges, no rotation, vertical
    flip or blur."""
    return TVRLDeviceAugmentation(
        spatial_size, rotate_degrees=0.0, vflip_prob=0.0, blur_prob=0.0, seed=seed, **PROBE_AUGMENTATION
    )


def _resize(key: str, spatial_size: int | Sequence[int]) -> ClipConsistentd:
    return ClipConsistentd(Resized(keys=key, spatial_size=_size2(spatial_size), mode="area"), keys=key, time_keys=key)


def tvrl_ssl_transforms(
    source: str = "video",
    num_frames: int = 8,
    period: int = 2,
    identical: bool = True,
    spatial_size: int | Sequence[int] = 128,
    image_key: str = "image",
    cache_dir: str | Path | None = None,
    channels: int | None = 1,
    relative_time: bool = True,
    time_noise_std: float = 0.0,
    augment: bool = True,
    second_suffix: str = "_2",
    augmentation: str = "strong",
    num_views: int = 2,
    window: str = "latest",
    augment_on: str = "workers",
    series_visits: int | None = None,
    view_origin: bool = False,
) -> Compose:
    """Augmented views with time steps and frame masks, for every TVRL framework.

    Args:
        source: ``"video"`` (EchoNet-style videos; frame index as time) or ``"series"`` (a datalist item from
            :func:`~medssl_monai.data.timed_series.load_timed_series_datalist`; real acquisition times).
        num_frames, period: clip length and stride (videos; series take consecutive visits).
        identical: one window for both views (cSimCLR, cSimCLR-TE, TVRL, MAE) or two (CVRL, LTN).
        spatial_size: output frame size (TVRL: 128).
        augment: ``False`` resizes only (validation).
        augmentation: a key of :data:`AUGMENTATIONS`: ``"strong"`` (cardiac), ``"oct"`` (timed series) or
            ``"mae"`` (resize + h-flip, VideoMAE).
        num_views: 2, or 1 for VideoMAE (the second view's keys are dropped).
        window: series only: the first view's visits, ``"latest"`` (the reference) or ``"random"``.
        augment_on: ``"workers"`` (here, per sample) or ``"device"``: the views stay ``uint8`` at their stored
            size (VideoMAE's: resized) for :func:`tvrl_device_augmentation` in ``prepare_batch``.
        series_visits, view_origin: series only: ``visits`` and ``view_origin`` of :class:`TwoSeriesWindowsd`.
        Others: see :class:`TwoClipsd`.
    """
    if augment_on not in ("workers", "device"):
        raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {tuple(AUGMENTATIONS)}, got {augmentation!r}")
    if num_views not in (1, 2):
        raise ValueError(f"num_views must be 1 or 2, got {num_views}")
    second = f"{image_key}{second_suffix}"
    if source == "video":
        ts: list = [
            TwoClipsd(
                image_key,
                num_frames,
                period,
                identical,
                cache_dir=cache_dir,
                channels=channels,
                relative_time=relative_time,
                time_noise_std=time_noise_std,
                second_suffix=second_suffix,
            )
        ]
    elif source == "series":
        ts = [
            LoadSeriesd(keys=image_key, times_key="times", num_frames=None),
            TwoSeriesWindowsd(
                image_key,
                num_frames,
                identical,
                relative_time,
                time_noise_std,
                second_suffix,
                window=window,
                visits=series_visits,
                view_origin=view_origin,
            ),
        ]
    else:
        raise ValueError(f"source must be 'video' or 'series', got {source!r}")
    keys = [image_key, second]
    if num_views == 1:
        ts.append(DeleteItemsd(keys=[second, f"times{second_suffix}", f"frame_mask{second_suffix}"]))
        keys = [image_key]
    for key in keys:
        if augment and augment_on == "device":
            # the device rotates and crops the stored frames; VideoMAE's view is only resized, here
            ts += [_resize(key, spatial_size)] if augmentation == "mae" else []
        elif not augment:
            ts.append(_resize(key, spatial_size))
        elif augmentation == "mae":
            ts += tvrl_mae_augmentation(key, spatial_size)
        else:
            ts += tvrl_strong_augmentation(key, spatial_size, **AUGMENTATIONS[augmentation])
    return Compose(ts)


def tvrl_probe_transforms(
    source: str = "video",
    stage: str = "train",
    num_frames: int = 8,
    period: int = 2,
    spatial_size: int | Sequence[int] = 128,
    image_key: str = "image",
    cache_dir: str | Path | None = None,
    channels: int | None = 1,
    relative_time: bool = True,
    augment_on: str = "workers",
    min_frames: int = 1,
) -> Compose:
    """Probe clips: ``stage="train"`` a random window + TVRL's finetune augmentation; ``"eval"`` the whole video
    (every frame, for :class:`~medssl_monai.evaluation.probe.DenseClipInferer`) or the last ``num_frames``
    visits of a series, resized only. Writes ``times`` and ``frame_mask`` as the encoder expects. A video with
    fewer than ``min_frames`` frames is an error naming it.

    ``augment_on="device"`` leaves the training augmentation (and its resize) to
    :func:`tvrl_probe_device_augmentation` in the trainer's ``prepare_batch``: the workers only load the window.
    """
    if stage not in ("train", "eval"):
        raise ValueError(f"stage must be 'train' or 'eval', got {stage!r}")
    if augment_on not in ("workers", "device"):
        raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
    train = stage == "train"
    if source == "video":
        ts: list = [
            LoadClipd(
                keys=image_key,
                num_frames=num_frames,
                period=period if train else 1,
                mode="random" if train else "all",
                cache_dir=cache_dir,
                channels=channels,
                min_frames=min_frames,
            )
        ]
        if train:
            ts.append(ClipTimesd(period=period, relative=relative_time))
    elif source == "series":
        ts = [LoadSeriesd(keys=image_key, times_key="times", num_frames=num_frames)]
        if relative_time:
            ts.append(RelativeTimesd("times"))
    else:
        raise ValueError(f"source must be 'video' or 'series', got {source!r}")
    if not train:
        ts.append(_resize(image_key, spatial_size))
    elif augment_on == "workers":
        ts += tvrl_probe_augmentation(image_key, spatial_size)
    return Compose(ts)


def tvrl_device_augmentation(
    augmentation: str = "strong", spatial_size: int = 128, seed: int = 0
) -> TVRLDeviceAugmentation:
    """The device counterpart of one view's worker augmentation in :func:`tvrl_ssl_transforms` (``AUGMENTATIONS``).

    ``"strong"`` / ``"oct"``: :func:`tvrl_strong_augmentation`'s ops and ranges; ``"mae"``: the horizontal flip
    only (the workers resize).
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {tuple(AUGMENTATIONS)}, got {augmentation!r}")
    if augmentation == "mae":
        off = {"rotate_degrees": 0.0, "crop_scale": None, "vflip_prob": 0.0, "jitter_prob": 0.0, "blur_prob": 0.0}
        return TVRLDeviceAugmentation(spatial_size, hflip_prob=0.5, seed=seed, **off)
    defaults = inspect.signature(tvrl_strong_augmentation).parameters
    kwargs = {k: p.default for k, p in defaults.items() if k not in ("key", "spatial_size")}
    kwargs.update(AUGMENTATIONS[augmentation])
    return TVRLDeviceAugmentation(spatial_size, seed=seed, **kwargs)


def drop_unpadded_masks_collate(
    batch: Sequence[Mapping[Hashable, Any]], mask_keys: Sequence[str] = ("frame_mask", "frame_mask_2")
) -> Any:
    """MONAI's ``list_data_collate``, then every frame mask of ``mask_keys`` without a padded frame is left out.

    A batch without a view's ``frame_mask`` means "no frame padded": the model attends without a key-padding mask,
    so ``scaled_dot_product_attention`` may pick its flash kernel on a GPU (any boolean mask rules it out; an
    all-``True`` one gives the same output). The check reads the mask here, in the loader on the host before the
    copy, so the training step reads no mask value. Masks with padding stay as they are.
    """
    out = list_data_collate(batch)
    if isinstance(out, dict):
        for key in mask_keys:
            mask = out.get(key)
            if isinstance(mask, torch.Tensor) and bool(mask.all()):
                del out[key]
    return out
