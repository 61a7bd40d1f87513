"""Frame-level loading and per-frame augmentation: the image-encoder (UCL) side of the clip pipeline.

:class:`LoadFramesd` reads selected frames of a video, frame folder, ``.npy`` or NIfTI sequence through the
decoded-clip cache as ``uint8`` ``K x C x H x W`` (or one ``C x H x W`` frame); :class:`FrameResizeCropd` is the
reference's only augmentation, ``Resize(size)`` (shorter side) + ``RandomCrop(size)`` for training and
``CenterCrop`` for evaluation, drawn independently for every frame (each UCL frame gets its own transform call).
:class:`FrameResizedCropd` is the POCUS evaluation's (``scripts/eval_ucl_pocus.py``): ``Resize((s, s))``, then for
training ``RandomResizedCrop(s, scale=(0.8, 1), ratio=(0.8, 1.25))`` and ``RandomHorizontalFlip``. With
``augment_on="device"`` both leave the random part to the trainer's ``prepare_batch``
(:mod:`medssl_monai.transforms.device`): the workers only resize.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medssl_monai.data.cache import ClipCache
from medssl_monai.errors import DataError
from medssl_monai.transforms.io import _as_cache, convert_channels, meta_key

__all__ = [
    "LoadFramesd",
    "FrameResizeCropd",
    "FrameResizedCropd",
    "pad_frames_collate",
    "resize_shorter_side",
    "resize_to",
    "expand_frames",
]


class LoadFramesd(MapTransform):
    """Load the frames ``d[indices_key]`` of the source ``d[key]`` as a ``uint8`` tensor.

    A list of indices gives ``K x C x H x W``; a single int gives ``C x H x W``. Frames come from a
    :class:`~medssl_monai.data.cache.ClipCache` (decoded once, memory-mapped after; only the selected frames are
    read), so AVI videos and ``Video_k/00000.jpg`` folders behave the same.

    Args:
        keys: keys of the clip sources.
        indices_key: key of the frame index or indices.
        cache: a :class:`ClipCache`, ``None``/``True`` (a cache in ``cache_dir``) or ``False`` (decode every call).
        cache_dir: cache directory when ``cache`` is not a :class:`ClipCache`.
        channels: ``None`` keeps the source's channels, ``1`` grey, ``3`` RGB (the reference loads RGB).
        allow_missing_keys: skip absent keys.

    Raises:
        DataError: an index outside the video.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        indices_key: str = "frame_indices",
        cache: ClipCache | bool | None = None,
        cache_dir: str | Path | None = None,
        channels: int | None = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels}")
        self.indices_key = indices_key
        self.cache = _as_cache(cache, cache_dir)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        raw = d[self.indices_key]
        single = np.ndim(raw) == 0
        idx = np.atleast_1d(np.asarray(raw, dtype=np.int64))
        for key in self.key_iterator(d):
            path = Path(d[key])
            frames = self.cache.frames(path)
            n = len(frames)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(path, f"frame indices {idx.tolist()} outside the video's {n} frames")
            stack = convert_channels(np.asarray(frames[idx]), self.channels)
            out = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2)))
            d[key] = out[0] if single else out
            d[meta_key(key)] = {"filename_or_obj": str(path), "num_video_frames": n}
        return d


def resize_shorter_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[K x] C x H x W`` so the shorter side is ``size`` (torchvision ``Resize(int)``; bilinear, antialiased).

    ``uint8`` in gives ``uint8`` out (rounded), so frames stay 8-bit until normalisation.
    """
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        nh, nw = size, max(1, int(size * w / h))
    else:
        nh, nw = max(1, int(size * h / w)), size
    batch = x.reshape(-1, *x.shape[-3:]).float()
    out = F.interpolate(batch, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(*x.shape[:-2], nh, nw)
    return out.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)


class FrameResizeCropd(Randomizable, MapTransform):
    """``Resize(resize_to)`` (shorter side) then a ``spatial_size`` square crop: random per frame or centred.

    The UCL reference's augmentation (``Resize(224) + RandomCrop(224)`` for pretraining and fine-tuning,
    ``CenterCrop`` for validation). On ``K x C x H x W`` stacks every frame gets its own crop, as the reference
    transforms the anchor, the positive and each negative separately.

    With ``augment_on="device"`` the random crop is left to
    :class:`~medssl_monai.transforms.device.FrameCropDeviceAugmentation` in the trainer's ``prepare_batch``: the
    frames are only resized, and their size goes in ``f"{key}_size"`` (``[h, w]``) for the crop's range (and
    :func:`pad_frames_collate`, which pads frames of different aspect ratios to one batch).

    Args:
        keys: keys of ``C x H x W`` frames or ``K x C x H x W`` stacks.
        spatial_size: the crop size.
        resize_to: shorter-side size before cropping (``None``: ``spatial_size``).
        random_crop: random crop (training) or centre crop (evaluation).
        augment_on: ``"workers"`` (the random crop here) or ``"device"`` (resize only); no effect on the centre crop.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: int = 224,
        resize_to: int | None = None,
        random_crop: bool = True,
        allow_missing_keys: bool = False,
        augment_on: str = "workers",
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if augment_on not in ("workers", "device"):
            raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
        self.spatial_size = int(spatial_size)
        self.resize_to = int(resize_to) if resize_to is not None else self.spatial_size
        if self.resize_to < self.spatial_size:
            raise ValueError(f"resize_to ({self.resize_to}) must be >= spatial_size ({self.spatial_size})")
        self.random_crop = random_crop
        self.augment_on = augment_on

    def randomize(self, data: Any = None) -> None:
        pass

    def _offsets(self, h: int, w: int) -> tuple[int, int]:
        s = self.spatial_size
        if self.random_crop:
            return int(self.R.randint(0, h - s + 1)), int(self.R.randint(0, w - s + 1))
        return int(round((h - s) / 2.0)), int(round((w - s) / 2.0))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        s = self.spatial_size
        for key in self.key_iterator(d):
            x = resize_shorter_side(torch.as_tensor(d[key]), self.resize_to)
            h, w = x.shape[-2:]
            if self.random_crop and self.augment_on == "device":
                d[key], d[f"{key}_size"] = x, torch.tensor([h, w])
            elif x.ndim == 3:
                top, left = self._offsets(h, w)
                d[key] = x[:, top : top + s, left : left + s].contiguous()
            else:
                crops = []
                for frame in x:
                    top, left = self._offsets(h, w)
                    crops.append(frame[:, top : top + s, left : left + s])
                d[key] = torch.stack(crops).contiguous()
        return d


def _pad_bottom_right(x: Any, h: int, w: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def pad_frames_collate(batch: Sequence[Mapping[Hashable, Any]], keys: Sequence[str] = ("image",)) -> Any:
    """MONAI's ``list_data_collate`` after zero-padding the frames ``keys`` (bottom, right) to the batch's largest.

    Frames resized to one shorter side keep their aspect ratio, so the longer side can differ between videos (or
    images); the crop on the device reads each sample's own size (``f"{key}_size"``, from :class:`FrameResizeCropd`
    with ``augment_on="device"``) and never reaches into the padding. Batches of one size collate unchanged.
    """
    from monai.data import list_data_collate

    for key in keys:
        shapes = [tuple(d[key].shape[-2:]) for d in batch if key in d]
        if len(set(shapes)) > 1:
            h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
            batch = [{**d, key: _pad_bottom_right(d[key], h, w)} if key in d else d for d in batch]
    return list_data_collate(batch)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[K x] C x H x W`` to exactly ``size`` (torchvision ``Resize((h, w))``; bilinear, antialiased)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batch = x.reshape(-1, *x.shape[-3:]).float()
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(*x.shape[:-2], *size)
    return out.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)


class FrameResizedCropd(Randomizable, MapTransform):
    """``Resize((s, s))``, then (``random``) ``RandomResizedCrop(s, scale, ratio)`` and a horizontal flip.

    The POCUS evaluation's augmentation (``scripts/eval_ucl_pocus.py`` of gbc-iitd/US_UCL, from USCL): training
    ``Resize((224, 224))`` + ``RandomResizedCrop(224, scale=(0.8, 1.0), ratio=(0.8, 1.25))`` +
    ``RandomHorizontalFlip()``, evaluation ``Resize((224, 224))`` only. The crop box is drawn as torchvision draws
    it (10 tries of area and log-uniform aspect ratio, else the whole image, clamped to the ratio range).

    With ``augment_on="device"`` the crop and flip are left to
    :class:`~medssl_monai.transforms.device.FrameResizedCropDeviceAugmentation` in the trainer's ``prepare_batch``:
    the frames are only resized to ``(s, s)``, as for evaluation.

    Args:
        keys: keys of ``C x H x W`` frames or ``K x C x H x W`` stacks (every frame gets its own draw).
        spatial_size: ``s``.
        scale: range of the crop area as a fraction of the image.
        ratio: range of the crop aspect ratio (width / height).
        flip_prob: probability of the horizontal flip.
        random: training (crop and flip) or evaluation (resize only).
        augment_on: ``"workers"`` (the crop and flip here) or ``"device"`` (resize only); no effect on evaluation.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: int = 224,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (0.8, 1.25),
        flip_prob: float = 0.5,
        random: bool = True,
        allow_missing_keys: bool = False,
        augment_on: str = "workers",
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if augment_on not in ("workers", "device"):
            raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
        self.size = (int(spatial_size), int(spatial_size))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = float(flip_prob)
        self.random = random
        self.augment_on = augment_on

    def randomize(self, data: Any = None) -> None:
        pass

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (np.log(self.ratio[0]), np.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            r = float(np.exp(self.R.uniform(*log_r)))
            cw, ch = int(round(np.sqrt(target * r))), int(round(np.sqrt(target / r)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(self.R.randint(0, h - ch + 1)), int(self.R.randint(0, w - cw + 1)), ch, cw
        r_in = w / h  # fallback: the whole image, clamped to the ratio range (torchvision's rule)
        if r_in < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif r_in > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _frame(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_to(x, self.size)
        if not self.random or self.augment_on == "device":  # nothing drawn here: the trainer crops and flips
            return x
        top, left, ch, cw = self._box(*x.shape[-2:])
        x = resize_to(x[:, top : top + ch, left : left + cw], self.size)
        return x.flip(-1) if self.R.rand() < self.flip_prob else x

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            d[key] = (self._frame(x) if x.ndim == 3 else torch.stack([self._frame(f) for f in x])).contiguous()
        return d


def expand_frames(
    datalist: list[dict], frame_stride: int = 1, max_frames_per_video: int | None = None, index_key: str = "frame_index"
) -> list[dict]:
    """One item per frame of every video item (``num_frames`` needed), ``d[index_key]`` the frame number.

    The classification unit of UCL's downstream task is an image (GBCU); on videos we classify frames and keep
    ``video_id`` so frame predictions can be averaged per video. ``frame_stride`` thins near-duplicate frames;
    ``max_frames_per_video`` keeps that many evenly spaced frames.
    """
    out = []
    for d in datalist:
        n = int(d["num_frames"])
        idx = np.arange(0, n, max(1, int(frame_stride)))
        if max_frames_per_video is not None and len(idx) > max_frames_per_video:
            idx = idx[np.linspace(0, len(idx) - 1, int(max_frames_per_video)).round().astype(int)]
        out.extend({**d, index_key: int(t)} for t in idx)
    return out
