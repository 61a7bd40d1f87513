"""Ready-made transform chains reproducing SimLVSeg's pipelines (UniLVSeg bundles reference these from YAML).

SimLVSeg (``simlvseg/augmentation.py``) trains with, all frames and the tracing mask sharing one draw::

    A.ColorJitter(0.2, 0.2, 0.2, 0.2, p=0.5)
    A.CLAHE(p=0.5)
    A.Rotate(20, interpolation=INTER_LINEAR, border_mode=BORDER_CONSTANT, value=0, p=1)
    A.PadIfNeeded(124, 124, border_mode=BORDER_CONSTANT, value=0)
    A.RandomCrop(112, 112)

and evaluates on a window centred on the traced frame with no augmentation. With ``augment_on="device"`` the
training chains only load (window, mask, optional resize) and leave the augmentation, pad and crop to
:class:`~medssl_monai.transforms.device.DeviceAugmentation` on the batch in ``prepare_batch``. The chains below end
with the image still ``uint8`` ``C x T x H x W``: normalisation
(:func:`~medssl_monai.transforms.intensity.normalize_clip` with ``ECHONET_MEAN``/``ECHONET_STD``) happens on the
batch, on the device, in ``prepare_batch``.

Example (bundle YAML)::

    train#preprocessing:
      _target_: medssl_monai.transforms.presets.unilvseg_train_transforms
      num_frames: 32
      cache_dir: "$@bundle_root + '/cache'"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import Compose, Lambda, RandRotated, RandSpatialCropd, Resized, ResizeWithPadOrCropd, SpatialPadd

from medssl_monai.data.cache import ClipCache
from medssl_monai.transforms.intensity import RandClipCLAHEd, RandClipColorJitterd
from medssl_monai.transforms.io import LoadClipd, LoadSeriesd, LoadTracingMaskd
from medssl_monai.transforms.spatial import ClipConsistentd

__all__ = [
    "unilvseg_train_transforms",
    "unilvseg_eval_transforms",
    "ssl_clip_transforms",
    "simlvseg_augmentation",
    "video_transforms",
    "drop_none_fields",
    "embedding_clip_loader",
]


def _resize(keys: list[str], spatial_size: int | Sequence[int], time_keys: tuple[str, ...]) -> ClipConsistentd:
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    modes = ["area" if k in time_keys else "nearest" for k in keys]  # area keeps speckle statistics when shrinking
    return ClipConsistentd(Resized(keys=keys, spatial_size=size, mode=modes), keys=keys, time_keys=time_keys)


def _center_pad_or_crop(keys: list[str], crop: int, time_keys: tuple[str, ...]) -> ClipConsistentd:
    # the deterministic counterpart of pad + random crop: same output size, same pixel scale
    return ClipConsistentd(ResizeWithPadOrCropd(keys=keys, spatial_size=(crop, crop)), keys=keys, time_keys=time_keys)


def _check_augment_on(augment_on: str) -> bool:
    """``True`` when the augmentation runs in the workers (``"workers"``), ``False`` for ``"device"``."""
    if augment_on not in ("workers", "device"):
        raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
    return augment_on == "workers"


def simlvseg_augmentation(
    image_key: str = "image",
    label_key: str | None = "label",
    rotate_degrees: float = 20.0,
    pad: int | None = None,
    crop: int = 112,
    jitter_prob: float = 0.5,
    clahe_prob: float = 0.5,
) -> list:
    """SimLVSeg's augmentation as clip-consistent MONAI transforms (``label_key=None``: image only).

    Returns the list of transforms (colour jitter, CLAHE, then one folded rotate + pad + crop). ``pad=None``
    pads to ``crop + 12`` (SimLVSeg's 124 for its 112 crop), so smaller crops keep the same margin.
    """
    pad = crop + 12 if pad is None else pad
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    spatial = Compose(
        [
            RandRotated(
                keys=keys,
                range_x=float(np.deg2rad(rotate_degrees)),
                prob=1.0,
                keep_size=True,
                mode=modes,
                padding_mode="zeros",
            ),
            SpatialPadd(keys=keys, spatial_size=(pad, pad), mode="constant"),
            RandSpatialCropd(keys=keys, roi_size=(crop, crop), random_size=False),
        ]
    )
    return [
        RandClipColorJitterd(keys=image_key, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, prob=jitter_prob),
        RandClipCLAHEd(keys=image_key, clip_limit=4.0, prob=clahe_prob),
        ClipConsistentd(spatial, keys=keys, time_keys=(image_key,)),
    ]


def unilvseg_train_transforms(
    num_frames: int = 32,
    period: int = 1,
    rotate_degrees: float = 20.0,
    pad: int | None = None,
    crop: int = 112,
    image_key: str = "image",
    label_key: str = "label",
    frame_key: str = "frame_index",
    label_value: int = 1,
    cache: ClipCache | bool | None = None,
    cache_dir: str | Path | None = None,
    channels: int | None = 3,
    pad_mode: str = "zeros",
    jitter_prob: float = 0.5,
    clahe_prob: float = 0.5,
    spatial_size: int | Sequence[int] | None = None,
    augment: bool = True,
    augment_on: str = "workers",
) -> Compose:
    """Weakly supervised training on traced items (SimLVSeg ``Seg3DDataset`` with ``test=False``).

    A random window that holds the traced frame on its grid, the tracing mask, then SimLVSeg's augmentation.
    Outputs ``image`` (``uint8`` ``C x T x crop x crop``), ``label`` (``uint8`` ``1 x crop x crop``) and
    ``target_index`` (the traced frame's clip position, where the loss looks).

    Args:
        num_frames, period: the clip window (``num_frames`` frames, stride ``period``).
        rotate_degrees, pad, crop: rotation range (+-degrees), pad-if-needed size (``None``: ``crop + 12``,
            SimLVSeg's 124 at crop 112) and random-crop size.
        image_key, label_key, frame_key: item keys of the video, the tracing (or mask file) and the traced frame.
        label_value: the LV label in mask files (CAMUS: 1).
        cache, cache_dir: decoded-clip cache (see :class:`~medssl_monai.transforms.io.LoadClipd`).
        channels: clip channels (3: SimLVSeg's RGB input; 1: grey).
        pad_mode: short-video padding (``"zeros"``, EchoNet's).
        jitter_prob, clahe_prob: probabilities of colour jitter and CLAHE.
        spatial_size: resize frames and mask to this size right after loading (non-112 sources such as CAMUS).
        augment: ``False`` replaces the augmentation by a centre pad-or-crop to ``crop`` (ablations).
        augment_on: ``"workers"`` augments here; ``"device"`` stops after loading (frames and mask at their loaded
            size) for :class:`~medssl_monai.transforms.device.DeviceAugmentation` in ``prepare_batch``.
    """
    in_workers = _check_augment_on(augment_on)
    ts: list = [
        LoadClipd(
            keys=image_key,
            num_frames=num_frames,
            period=period,
            mode="contains",
            frame_key=frame_key,
            cache=cache,
            cache_dir=cache_dir,
            channels=channels,
            pad_mode=pad_mode,
        ),
        LoadTracingMaskd(keys=label_key, ref_key=image_key, label_value=label_value),
    ]
    keys = [image_key, label_key]
    if spatial_size is not None:
        ts.append(_resize(keys, spatial_size, (image_key,)))
    if augment and in_workers:
        ts += simlvseg_augmentation(image_key, label_key, rotate_degrees, pad, crop, jitter_prob, clahe_prob)
    elif not augment:
        ts.append(_center_pad_or_crop(keys, crop, (image_key,)))
    return Compose(ts)


def unilvseg_eval_transforms(
    num_frames: int = 32,
    period: int = 1,
    crop: int | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
    frame_key: str = "frame_index",
    label_value: int = 1,
    cache: ClipCache | bool | None = None,
    cache_dir: str | Path | None = None,
    channels: int | None = 3,
    pad_mode: str = "zeros",
    spatial_size: int | Sequence[int] | None = None,
) -> Compose:
    """Validation / test on traced items: the window centred on the traced frame, no augmentation.

    SimLVSeg's ``get_optimum_set_of_frame_indexes`` window (shifted at the video borders). ``crop`` centre-pads
    or -crops frames and mask to the training crop size (a no-op when the frames already have it, as EchoNet's
    112 x 112 do); ``None`` keeps the loaded size. ``label_key=None`` loads no mask (inference).
    """
    ts: list = [
        LoadClipd(
            keys=image_key,
            num_frames=num_frames,
            period=period,
            mode="center",
            frame_key=frame_key,
            cache=cache,
            cache_dir=cache_dir,
            channels=channels,
            pad_mode=pad_mode,
        )
    ]
    keys = [image_key]
    if label_key is not None:
        ts.append(LoadTracingMaskd(keys=label_key, ref_key=image_key, label_value=label_value))
        keys.append(label_key)
    if spatial_size is not None:
        ts.append(_resize(keys, spatial_size, (image_key,)))
    if crop is not None:
        ts.append(_center_pad_or_crop(keys, crop, (image_key,)))
    return Compose(ts)


def ssl_clip_transforms(
    num_frames: int = 32,
    period: int = 1,
    rotate_degrees: float = 20.0,
    pad: int | None = None,
    crop: int = 112,
    image_key: str = "image",
    mode: str = "random",
    cache: ClipCache | bool | None = None,
    cache_dir: str | Path | None = None,
    channels: int | None = 3,
    pad_mode: str = "zeros",
    jitter_prob: float = 0.5,
    clahe_prob: float = 0.5,
    spatial_size: int | Sequence[int] | None = None,
    augment: bool = True,
    augment_on: str = "workers",
    min_frames: int = 1,
) -> Compose:
    """Self-supervised pretraining clips (SimLVSeg ``Seg3DSSLMaskingDataset``): a random window, the same
    augmentation as :func:`unilvseg_train_transforms`, no mask. Temporal masking follows separately (on the
    device, before normalisation).

    ``augment=False`` (validation) replaces the augmentation by a centre pad-or-crop to ``crop``; ``mode="start"``
    makes the window deterministic too. ``augment_on="device"`` stops after loading (and resizing): the
    augmentation then runs in ``prepare_batch`` (:class:`~medssl_monai.transforms.device.DeviceAugmentation`).
    A video with fewer than ``min_frames`` frames is an error naming it (shorter ones are padded, ``pad_mode``).
    """
    in_workers = _check_augment_on(augment_on)
    ts: list = [
        LoadClipd(
            keys=image_key,
            num_frames=num_frames,
            period=period,
            mode=mode,
            cache=cache,
            cache_dir=cache_dir,
            channels=channels,
            pad_mode=pad_mode,
            min_frames=min_frames,
        )
    ]
    if spatial_size is not None:
        ts.append(_resize([image_key], spatial_size, (image_key,)))
    if augment and in_workers:
        ts += simlvseg_augmentation(image_key, None, rotate_degrees, pad, crop, jitter_prob, clahe_prob)
    elif not augment:
        ts.append(_center_pad_or_crop([image_key], crop, (image_key,)))
    return Compose(ts)


def video_transforms(
    image_key: str = "image",
    cache: ClipCache | bool | None = None,
    cache_dir: str | Path | None = None,
    channels: int | None = 3,
    spatial_size: int | Sequence[int] | None = None,
    min_frames: int = 1,
) -> Compose:
    """Whole-video inference: every frame (``C x T x H x W`` uint8), optionally resized to the training size.

    Used with :class:`~medssl_monai.engines.inferers.VideoSlidingWindowInferer` (UniLVSeg inference and the
    EF-from-masks evaluation), which slides the training window over the whole video. Item fields that are
    ``None`` (e.g. ``traced_frames`` of an untraced video) are dropped so that such videos collate. A video with
    fewer than ``min_frames`` frames is an error naming it.
    """
    ts: list = [
        Lambda(func=drop_none_fields),
        LoadClipd(
            keys=image_key, mode="all", cache=cache, cache_dir=cache_dir, channels=channels, min_frames=min_frames
        ),
    ]
    if spatial_size is not None:
        ts.append(_resize([image_key], spatial_size, (image_key,)))
    return Compose(ts)


def drop_none_fields(item: dict) -> dict:
    """The item without its ``None`` fields (PyTorch's collate cannot batch ``None``)."""
    return {k: v for k, v in item.items() if v is not None}


def embedding_clip_loader(
    source: str = "video",
    num_frames: int = 16,
    period: int = 1,
    cache_dir: str | Path | None = None,
    pad_mode: str = "repeat",
    min_frames: int = 1,
) -> LoadClipd | LoadSeriesd:
    """A deterministic clip for embedding views (TensorBoard projector, frozen features): no augmentation.

    ``source="video"``: ``num_frames`` frames every ``period`` from the first frame of a video, frame folder or
    ``.npy`` (8-bit ``C x T x H x W``); ``source="series"``: the last ``num_frames`` visits of a timed series with
    their ``times`` and ``frame_mask`` (TVRL's longitudinal setting). Frame size and normalisation are left to the
    encoder (:class:`~medssl_monai.encoders.ClipEncoder`). A video with fewer than ``min_frames`` frames is an error
    naming it (shorter ones are padded as ``pad_mode`` says).
    """
    if source == "series":
        return LoadSeriesd(keys="image", num_frames=num_frames)
    if source != "video":
        raise ValueError(f"source must be 'video' or 'series', got {source!r}")
    return LoadClipd(
        keys="image",
        num_frames=num_frames,
        period=period,
        mode="start",
        cache_dir=cache_dir,
        pad_mode=pad_mode,
        min_frames=min_frames,
    )
