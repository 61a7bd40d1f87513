"""Transforms that let the UniLVSeg segmentation bundle work on MONAI Label's NIfTI volumes.

MONAI Label hands a bundle one image file per request (``{"image": path}``) and, for training, lists of
``{"image": path, "label": path}`` dicts from its datastore. For echo clips these are NIfTI volumes stored
``H x W x T`` (one frame per slice along the last axis); a label volume holds a mask for every frame, or
for some frames only (the others all zero), like the ED/ES tracings of EchoNet.

- :class:`VolumeToClipd` turns an ``H x W x T`` volume into the bundle's ``uint8`` ``C x T x H x W`` clip;
  :class:`ClipToVolumed` turns the ``1 x T x h x w`` prediction back into ``1 x H x W x T`` (the input's size
  and axis order), so MONAI Label writes a mask NIfTI of the image's shape.
- :class:`LabelledFrameClipd` picks a labelled frame of an image/label pair and the window around it: the
  traced-frame sample of :func:`~medssl_monai.transforms.presets.unilvseg_train_transforms` (the loss sees
  only that frame, as SimLVSeg's sparse supervision), so the bundle's traced-frame trainer runs unchanged.
- :func:`monailabel_train_transforms`, :func:`monailabel_eval_transforms`, :func:`monailabel_infer_transforms`
  and :func:`monailabel_post_transforms` are the chains the bundle's own configs use for MONAI Label:
  ``configs/inference.yaml`` names the inference ones ``pre_transforms`` / ``post_transforms`` (the keys MONAI
  Label prefers over ``preprocessing`` / ``postprocessing``), and :class:`TracedOrDatastore` lets
  ``configs/train.yaml`` take EchoNet items and MONAI Label's datastore pairs with one ``preprocessing``.

Example (bundle YAML)::

    train:
      preprocessing:
        _target_: medssl_monai.transforms.monailabel.TracedOrDatastore
        traced: {_target_: medssl_monai.transforms.presets.unilvseg_train_transforms, num_frames: "@num_frames"}
        datastore: {_target_: medssl_monai.transforms.monailabel.monailabel_train_transforms, num_frames: "@num_frames"}
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    CastToTyped,
    Compose,
    LoadImaged,
    MapTransform,
    Randomizable,
    Resize,
    Resized,
    ResizeWithPadOrCropd,
    Transform,
)
from monai.utils import MAX_SEED

from medssl_monai.data.sources import is_nifti
from medssl_monai.errors import DataError
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD, NormalizeClipd
from medssl_monai.transforms.io import convert_channels, gather_frames, meta_key
from medssl_monai.transforms.presets import simlvseg_augmentation
from medssl_monai.transforms.sampling import clip_indices
from medssl_monai.transforms.spatial import ClipConsistentd

__all__ = [
    "datastore_datalist",
    "volume_to_frames",
    "VolumeToClipd",
    "ClipToVolumed",
    "LabelledFrameClipd",
    "TracedOrDatastore",
    "monailabel_train_transforms",
    "monailabel_eval_transforms",
    "monailabel_infer_transforms",
    "monailabel_post_transforms",
]


def datastore_datalist(
    studies_dir: str | Path | None,
    split: str = "train",
    val_fraction: float = 0.2,
    seed: int = 0,
    label_tag: str = "final",
) -> list[dict[str, str]]:
    """``{"image", "label"}`` pairs of a MONAI Label local datastore, split into ``"train"``/``"val"``/``"all"``.

    The local datastore keeps images in ``studies_dir`` and saved labels under ``labels/<label_tag>/`` with the
    image's file name; unlabelled images are left out (what MONAI Label's trainer passes). The split is a
    seeded shuffle with ``round(val_fraction * n)`` validation pairs (at least one when ``0 < val_fraction``
    and there are two or more pairs). ``studies_dir=None`` gives ``[]``: MONAI Label sets the data itself.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if studies_dir is None:
        return []
    root = Path(studies_dir)
    labels = root / "labels" / label_tag
    pairs = [
        {"image": str(p), "label": str(labels / p.name)}
        for p in sorted(root.iterdir())
        if p.is_file() and is_nifti(p) and (labels / p.name).is_file()
    ]
    if split == "all":
        return pairs
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = int(round(val_fraction * len(pairs)))
    if val_fraction > 0 and len(pairs) >= 2:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    val = {int(i) for i in order[:n_val]}
    return [p for i, p in enumerate(pairs) if (i in val) == (split == "val")]


def _source(d: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file an item came from (for error messages): MetaTensor meta, the meta dict, or the key."""
    x = d.get(key)
    meta = x.meta if isinstance(x, MetaTensor) else (d.get(meta_key(key)) or {})
    return str(meta.get("filename_or_obj") or key)


def volume_to_frames(volume: Any, source: str = "<volume>") -> np.ndarray:
    """An ``H x W x T`` (or channel-first ``C x H x W x T``, ``C`` in 1 or 3) volume as ``T x H x W x C`` uint8.

    Intensities must already be 8-bit (0..255, any dtype, rounded): echo clips are, and a silent rescale
    would hide a wrong file.

    Raises:
        DataError: a volume of another rank or channel count, or intensities outside 0..255.
    """
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] not in (1, 3):
        raise DataError(source, f"expected an H x W x T volume (or C x H x W x T, C in 1, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(source, f"intensities outside 0..255 ({lo}..{hi}); expected 8-bit frames")
        arr = np.rint(arr).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(3, 1, 2, 0))  # C x H x W x T -> T x H x W x C


def _frames_to_clip(frames: np.ndarray, channels: int | None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(convert_channels(frames, channels).transpose(3, 0, 1, 2)))


def _keep_meta(d: dict, key: Hashable) -> None:
    # the clip leaves as a plain tensor; MONAI Label's Restored and writer read the input's affine and
    # spatial_shape from "<key>_meta_dict" when the image is not a MetaTensor
    if isinstance(d[key], MetaTensor) and meta_key(key) not in d:
        d[meta_key(key)] = dict(d[key].meta)


class VolumeToClipd(MapTransform):
    """``H x W x T`` volume (as MONAI's ``LoadImaged`` reads a NIfTI echo clip) -> ``uint8`` ``C x T x H x W`` clip.

    Every frame is kept, in order (whole-clip inference slides the training window over time). The input's
    ``(H, W, T)`` goes to ``d[shape_key]`` for :class:`ClipToVolumed`, and its metadata stays in
    ``d["<key>_meta_dict"]``.

    Args:
        keys: keys of the volumes.
        channels: clip channels (3: the bundle's RGB input; grey frames are repeated).
        shape_key: where the volume's ``(H, W, T)`` is written (of the first key).
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        channels: int | None = 3,
        shape_key: str = "volume_shape",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.shape_key = shape_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            frames = volume_to_frames(d[key], _source(d, key))
            _keep_meta(d, key)
            if i == 0:
                t, h, w = frames.shape[:3]
                d[self.shape_key] = (h, w, t)
            d[key] = _frames_to_clip(frames, self.channels)
        return d


class ClipToVolumed(MapTransform):
    """``C x T x h x w`` clip prediction -> ``C x H x W x T`` volume of the input's size and axis order.

    The inverse of :class:`VolumeToClipd` (plus the resize to the training size): frames are resized back to
    ``(H, W)`` from ``d[shape_key]`` (``mode="bilinear"`` on probabilities, then threshold; ``"nearest"`` on
    labels) and time moves to the last axis, so a mask NIfTI written from it overlays the image voxel for voxel.

    Args:
        keys: keys of the predictions.
        shape_key: the ``(H, W, T)`` written by :class:`VolumeToClipd`.
        mode: interpolation mode of MONAI's ``Resize``.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: a prediction whose frame count differs from the volume's.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        shape_key: str = "volume_shape",
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.shape_key = shape_key
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        h, w, t = (int(s) for s in d[self.shape_key])
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key].as_tensor() if isinstance(d[key], MetaTensor) else d[key])
            if x.ndim != 4 or x.shape[1] != t:
                raise ValueError(f"{key!r}: expected a C x {t} x h x w prediction, got shape {tuple(x.shape)}")
            c = x.shape[0]
            if tuple(x.shape[-2:]) != (h, w):
                # frames (and channels) as the channel axis of one 2D resize: the same resize for every frame
                folded = x.reshape(c * t, *x.shape[-2:])
                folded = Resize(spatial_size=(h, w), mode=self.mode)(folded)
                x = torch.as_tensor(folded).reshape(c, t, h, w)
            d[key] = x.permute(0, 2, 3, 1).contiguous()
        return d


class LabelledFrameClipd(MapTransform, Randomizable):
    """A labelled frame of an ``H x W x T`` image/label pair and the clip window around it (UniLVSeg sample).

    A frame counts as labelled when its label slice holds ``label_value`` anywhere (the LV is in every
    frame of an apical-4-chamber clip, so an empty slice means "not traced"). ``frame_mode="random"`` draws
    one labelled frame per call (training); ``"all"`` returns one sample per labelled frame (validation,
    like EchoNet's ED and ES samples; MONAI's ``DataLoader`` flattens the list). The window comes from
    :func:`~medssl_monai.transforms.sampling.clip_indices` (``mode="contains"``: a random window that holds
    the frame, ``"center"``: the window centred on it), exactly as for EchoNet's traced frames.

    Outputs ``d[image_key]`` (``uint8`` ``channels x num_frames x H x W``), ``d[label_key]`` (``uint8``
    ``1 x H x W``, the chosen frame's mask), ``d[target_key]`` (its position in the clip, where the
    traced-frame inferer and the loss look) and ``d[frame_key]`` (its index in the volume).

    Args:
        image_key, label_key: keys of the image and label volumes (``H x W x T`` or ``C x H x W x T``).
        num_frames, period: the clip window.
        mode: ``"contains"`` or ``"center"`` (see above).
        frame_mode: ``"random"`` or ``"all"``.
        label_value: the LV label in the label volume (MONAI Label writes label index 1 for the first label).
        channels: clip channels.
        pad_mode: ``"zeros"`` (EchoNet's zero frames past the end of a short clip) or ``"repeat"``.
        frame_key, target_key: where the frame index and its clip position are written.
        max_samples: with ``frame_mode="all"``, at most this many samples, at evenly spaced labelled frames.

    Raises:
        DataError: image and label of different sizes, or a label volume with no labelled frame.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        num_frames: int = 32,
        period: int = 1,
        mode: str = "contains",
        frame_mode: str = "random",
        label_value: int = 1,
        channels: int | None = 3,
        pad_mode: str = "zeros",
        frame_key: str = "frame_index",
        target_key: str = "target_index",
        max_samples: int | None = None,
    ) -> None:
        super().__init__([image_key, label_key])
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be positive or None, got {max_samples}")
        if mode not in ("contains", "center"):
            raise ValueError(f"mode must be 'contains' or 'center', got {mode!r}")
        if frame_mode not in ("random", "all"):
            raise ValueError(f"frame_mode must be 'random' or 'all', got {frame_mode!r}")
        clip_indices(max(num_frames, 1), max(num_frames, 1), period, "start", None, None, pad_mode)  # validate now
        self.image_key, self.label_key = image_key, label_key
        self.num_frames, self.period, self.mode, self.frame_mode = num_frames, period, mode, frame_mode
        self.label_value, self.channels, self.pad_mode = label_value, channels, pad_mode
        self.frame_key, self.target_key = frame_key, target_key
        self.max_samples = max_samples
        self._frame: int | None = None

    def randomize(self, labelled: np.ndarray) -> None:
        self._frame = int(labelled[self.R.randint(len(labelled))])

    def _sample(self, d: dict, frames: np.ndarray, masks: np.ndarray, frame: int) -> dict[Hashable, Any]:
        indices, target = clip_indices(
            len(frames), self.num_frames, self.period, self.mode, frame, self.R, self.pad_mode
        )
        out = dict(d)
        out[self.image_key] = _frames_to_clip(gather_frames(frames, indices), self.channels)
        out[self.label_key] = torch.from_numpy(np.ascontiguousarray(masks[frame][None]))
        out[self.target_key] = int(target)
        out[self.frame_key] = frame
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any] | list[dict[Hashable, Any]]:
        d = dict(data)
        src = _source(d, self.label_key)
        frames = volume_to_frames(d[self.image_key], _source(d, self.image_key))
        label = d[self.label_key]
        label = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        if label.ndim == 4 and label.shape[0] == 1:
            label = label[0]
        image_shape = frames.shape[1:3] + (len(frames),)
        if label.shape != image_shape:
            raise DataError(src, f"label volume has shape {label.shape}, the image {image_shape}")
        masks = np.ascontiguousarray((label == self.label_value).astype(np.uint8).transpose(2, 0, 1))  # T x H x W
        labelled = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
        if len(labelled) == 0:
            raise DataError(src, f"no frame of the label volume holds label {self.label_value}")
        for key in (self.image_key, self.label_key):
            _keep_meta(d, key)
        if self.frame_mode == "all":
            if self.max_samples is not None and len(labelled) > self.max_samples:
                # evenly spaced over the labelled frames (a fully labelled clip would give T samples)
                labelled = labelled[np.linspace(0, len(labelled) - 1, self.max_samples).round().astype(int)]
            return [self._sample(d, frames, masks, int(f)) for f in labelled]
        self.randomize(labelled)
        return self._sample(d, frames, masks, self._frame)


class TracedOrDatastore(Randomizable, Transform):
    """The item pipeline of a segmentation config that both EchoNet and MONAI Label feed.

    MONAI Label trains a bundle by replacing ``train#dataset#data`` / ``validate#dataset#data`` with its datastore's
    ``{"image", "label"}`` NIfTI pairs and leaves every other key as written, so the bundle's own ``preprocessing``
    must take both kinds of item. EchoNet's traced items always carry ``frame_key`` (the traced frame); datastore
    pairs never do (their labelled frames are found in the label volume), which picks the chain per item.

    Args:
        traced: the chain for traced items (e.g. :func:`~medssl_monai.transforms.presets.unilvseg_train_transforms`).
        datastore: the chain for image/label volume pairs (e.g. :func:`monailabel_train_transforms`).
        frame_key: the key only traced items have.
    """

    def __init__(self, traced: Callable, datastore: Callable, frame_key: str = "frame_index") -> None:
        self.traced = traced
        self.datastore = datastore
        self.frame_key = frame_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> TracedOrDatastore:
        """Seed both chains from ``seed``: a ``Dataset`` wraps this in a ``Compose``, which reseeds only
        ``Randomizable`` children, so per-sample seeding (``SeededSamples``) reaches the chains through here."""
        super().set_random_state(seed, state)
        for chain in (self.traced, self.datastore):
            if isinstance(chain, Randomizable):
                chain.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw here: the chains draw their own."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        return (self.traced if self.frame_key in data else self.datastore)(data)


def _resize(keys: list[str], spatial_size: int | Sequence[int], image_key: str) -> ClipConsistentd:
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    modes = ["area" if k == image_key else "nearest" for k in keys]  # as presets: area keeps speckle statistics
    return ClipConsistentd(Resized(keys=keys, spatial_size=size, mode=modes), keys=keys, time_keys=(image_key,))


def _load(keys: list[str]) -> LoadImaged:
    # NibabelReader: the array exactly as stored (H x W x T); dtype=None keeps uint8. MONAI Label swaps
    # LoadImaged for its own LoadImageTensord, which keeps this reader.
    return LoadImaged(keys=keys, reader="NibabelReader", dtype=None, image_only=True)


def monailabel_train_transforms(
    num_frames: int = 32,
    period: int = 1,
    crop: int = 112,
    spatial_size: int | Sequence[int] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    label_value: int = 1,
    channels: int | None = 3,
    augment: bool = True,
    jitter_prob: float = 0.5,
    clahe_prob: float = 0.5,
    augment_on: str = "workers",
) -> Compose:
    """Training on MONAI Label's ``{"image", "label"}`` NIfTI pairs: the UniLVSeg traced-frame sample.

    Loads both volumes, draws a labelled frame and a window holding it (:class:`LabelledFrameClipd`), resizes
    to ``spatial_size`` (the bundle's ``resize_to``) and applies SimLVSeg's augmentation as
    :func:`~medssl_monai.transforms.presets.unilvseg_train_transforms` does. Outputs what the bundle's
    ``train#prepare_batch`` expects: ``uint8`` clip, ``1 x crop x crop`` mask and ``target_index``.
    ``augment_on="device"`` leaves the augmentation, pad and crop to the trainer's ``prepare_batch``.
    """
    if augment_on not in ("workers", "device"):
        raise ValueError(f"augment_on must be 'workers' or 'device', got {augment_on!r}")
    keys = [image_key, label_key]
    ts: list = [
        _load(keys),
        LabelledFrameClipd(image_key, label_key, num_frames, period, "contains", "random", label_value, channels),
    ]
    if spatial_size is not None:
        ts.append(_resize(keys, spatial_size, image_key))
    if augment and augment_on == "workers":
        ts += simlvseg_augmentation(image_key, label_key, crop=crop, jitter_prob=jitter_prob, clahe_prob=clahe_prob)
    elif not augment:
        ts.append(ClipConsistentd(ResizeWithPadOrCropd(keys=keys, spatial_size=(crop, crop)), keys, (image_key,)))
    return Compose(ts)


def monailabel_eval_transforms(
    num_frames: int = 32,
    period: int = 1,
    crop: int | None = None,
    spatial_size: int | Sequence[int] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    label_value: int = 1,
    channels: int | None = 3,
    max_samples: int | None = 4,
) -> Compose:
    """Validation on MONAI Label's NIfTI pairs: one sample per labelled frame (at most ``max_samples``, evenly
    spaced: a fully labelled clip would give one per frame), the window centred on it."""
    keys = [image_key, label_key]
    ts: list = [
        _load(keys),
        LabelledFrameClipd(
            image_key, label_key, num_frames, period, "center", "all", label_value, channels, max_samples=max_samples
        ),
    ]
    if spatial_size is not None:
        ts.append(_resize(keys, spatial_size, image_key))
    if crop is not None:
        ts.append(ClipConsistentd(ResizeWithPadOrCropd(keys=keys, spatial_size=(crop, crop)), keys, (image_key,)))
    return Compose(ts)


def monailabel_infer_transforms(
    spatial_size: int | Sequence[int] | None = None,
    image_key: str = "image",
    channels: int | None = 3,
    mean: Sequence[float] = ECHONET_MEAN,
    std: Sequence[float] = ECHONET_STD,
) -> Compose:
    """MONAI Label inference preprocessing: NIfTI ``H x W x T`` -> normalised ``float32`` ``C x T x h x w`` clip.

    MONAI Label calls the inferer on the preprocessed image directly (there is no ``prepare_batch``), so the
    normalisation the bundle does on the device happens here instead (same EchoNet mean/std).
    """
    ts: list = [_load([image_key]), VolumeToClipd(keys=image_key, channels=channels)]
    if spatial_size is not None:
        ts.append(_resize([image_key], spatial_size, image_key))
    ts.append(NormalizeClipd(keys=image_key, mean=mean, std=std))
    return Compose(ts)


def monailabel_post_transforms(pred_key: str = "pred", threshold: float = 0.5) -> Compose:
    """LV logits ``1 x T x h x w`` -> ``uint8`` mask ``1 x H x W x T`` (sigmoid, resize back, threshold).

    Resizing probabilities (bilinear) before thresholding gives smoother outlines than resizing the mask.
    """
    return Compose(
        [
            Activationsd(keys=pred_key, sigmoid=True),
            ClipToVolumed(keys=pred_key, mode="bilinear"),
            AsDiscreted(keys=pred_key, threshold=threshold),
            CastToTyped(keys=pred_key, dtype=torch.uint8),
        ]
    )
