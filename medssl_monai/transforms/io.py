"""Loading transforms: clips from videos, timed image series and tracing masks, as MONAI dictionary transforms.

Everything here returns ``uint8`` tensors (``C x T x H x W`` clips, ``1 x H x W`` masks): conversion to float
and normalisation happen later (:mod:`medssl_monai.transforms.intensity`), on the GPU where there is one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medssl_monai.data.cache import ClipCache
from medssl_monai.data.sources import is_medical_image, read_medical_image
from medssl_monai.data.tracings import MIN_TRACING_ROWS, tracing_mask
from medssl_monai.errors import DataError, TracingError, VideoReadError
from medssl_monai.opencv import import_cv2
from medssl_monai.transforms.sampling import clip_indices

__all__ = ["LoadClipd", "LoadSeriesd", "LoadTracingMaskd", "convert_channels", "gather_frames", "meta_key"]


def meta_key(key: Hashable) -> str:
    """The MONAI-style meta-dictionary key (``"image_meta_dict"``) where the loaders record the source path."""
    return f"{key}_meta_dict"


def convert_channels(frames: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert ``... x C`` ``uint8`` frames to ``channels`` channels (``None`` keeps them).

    RGB -> grey takes channel 0 when the three channels are equal (echo videos are grey stored as RGB, so this
    is exact and free), else ITU-R BT.601 luminance (OpenCV ``COLOR_RGB2GRAY``, rounded). Grey -> RGB repeats.
    """
    c = frames.shape[-1]
    if channels is None or channels == c:
        return frames
    if channels == 1 and c == 3:
        if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]):
            return frames[..., :1]
        cv2 = import_cv2()

        flat = np.ascontiguousarray(frames.reshape(-1, frames.shape[-2], 3))
        return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(frames.shape[:-1] + (1,))
    if channels == 3 and c == 1:
        return np.repeat(frames, 3, axis=-1)
    raise ValueError(f"cannot convert {c}-channel frames to {channels} channels (supported: 1 <-> 3)")


def gather_frames(frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``frames[indices]`` as a new ``T x H x W x C`` array, zero frames where the index is ``-1``.

    On a memory-mapped ``frames`` only the selected frames are read from disk.
    """
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(indices),) + frames.shape[1:], dtype=frames.dtype)
    valid = indices >= 0
    if valid.any():
        out[valid] = frames[indices[valid]]
    return out


def _as_cache(cache: ClipCache | bool | None, cache_dir: str | Path | None) -> ClipCache:
    if isinstance(cache, ClipCache):
        return cache
    if cache is False:
        return ClipCache(cache_dir, enabled=False)
    if cache is None or cache is True:
        return ClipCache(cache_dir)
    raise TypeError(f"cache must be a ClipCache, True, False or None, got {type(cache).__name__}")


class LoadClipd(MapTransform, Randomizable):
    """Load a clip of ``num_frames`` frames from a video, frame folder, ``.npy``, NIfTI or MetaImage sequence.

    Frames come from a :class:`~medssl_monai.data.cache.ClipCache` (decoded once, then memory-mapped; the
    memmap is opened per call, so the transform pickles into DataLoader workers), the window from
    :func:`~medssl_monai.transforms.sampling.clip_indices`. The clip replaces ``d[key]`` as a contiguous
    ``torch.uint8`` ``C x T x H x W`` tensor; ``d[target_key]`` gets the clip position of ``d[frame_key]``
    (``-1`` if absent), ``d[indices_key]`` the frame indices (``-1`` = zero frame) and ``d["<key>_meta_dict"]``
    the source path and frame count.

    Args:
        keys: keys of the clip sources. Several keys share one draw (aligned videos with the same frame count).
        num_frames: frames per clip (ignored for ``mode="all"``).
        period: sampling stride.
        mode: ``"random"``, ``"start"``, ``"center"``, ``"contains"`` or ``"all"`` (every ``period``-th frame).
        frame_key: key of the frame of interest (e.g. ``"frame_index"`` of a traced item); needed by
            ``"center"`` and ``"contains"``.
        cache: a :class:`ClipCache`; ``None``/``True``: a cache in ``cache_dir`` (``None``: the default cache
            directory); ``False``: no cache, decode every call (the reference behaviour).
        cache_dir: cache directory used when ``cache`` is not a :class:`ClipCache`.
        channels: ``None`` keeps the source's channels, ``1`` converts to grey, ``3`` to RGB.
        pad_mode: ``"zeros"`` (EchoNet: zero frames past the end of a short video) or ``"repeat"`` (last frame).
        target_key: where the clip position of the frame of interest is written.
        indices_key: where the sampled frame indices are written.
        min_frames: a source with fewer frames is an error (``VideoReadError``, "too few frames"); the default 1
            pads any shorter video as ``pad_mode`` says.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        DataError: an unreadable source (``VideoReadError`` naming the problem: truncated, empty, not a video,
            undecodable codec, too few frames), a frame of interest outside the video, or aligned sources whose
            frame counts differ.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        num_frames: int = 32,
        period: int = 1,
        mode: str = "random",
        frame_key: str | None = None,
        cache: ClipCache | bool | None = None,
        cache_dir: str | Path | None = None,
        channels: int | None = None,
        pad_mode: str = "zeros",
        target_key: str = "target_index",
        indices_key: str = "clip_indices",
        min_frames: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels}")
        # validate mode/pad_mode/period now rather than in the first DataLoader worker
        clip_indices(max(num_frames, 1), max(num_frames, 1), period, "start", None, None, pad_mode)
        if mode not in ("random", "start", "center", "contains", "all"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode in ("center", "contains") and frame_key is None:
            raise ValueError(f"mode {mode!r} needs frame_key (the key of the frame of interest)")
        self.num_frames = num_frames
        self.period = period
        self.mode = mode
        self.frame_key = frame_key
        self.cache = _as_cache(cache, cache_dir)
        self.channels = channels
        self.pad_mode = pad_mode
        self.target_key = target_key
        self.indices_key = indices_key
        self.min_frames = min_frames
        self._indices: np.ndarray | None = None
        self._target: int | None = None

    def randomize(self, num_video_frames: int, frame: int | None = None) -> None:
        self._indices, self._target = clip_indices(
            num_video_frames, self.num_frames, self.period, self.mode, frame, self.R, self.pad_mode
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        frame = None
        if self.frame_key is not None and self.frame_key in d and d[self.frame_key] is not None:
            frame = int(d[self.frame_key])
        first_len = None
        for i, key in enumerate(keys):
            path = Path(d[key])
            frames = self.cache.frames(path)  # memmap: nothing is read until frames are indexed
            if frames.ndim != 4:
                raise DataError(path, f"decoded frames have shape {frames.shape}, expected T x H x W x C")
            if len(frames) < self.min_frames:
                raise VideoReadError(path, f"too few frames: {len(frames)} decoded, at least {self.min_frames} needed")
            if i == 0:
                first_len = len(frames)
                try:
                    self.randomize(first_len, frame)
                except ValueError as e:  # a frame of interest outside the video is a data problem
                    raise DataError(path, str(e)) from e
            elif len(frames) != first_len:
                raise DataError(path, f"has {len(frames)} frames but {keys[0]!r} has {first_len}; cannot share a clip")
            clip = convert_channels(gather_frames(frames, self._indices), self.channels)
            d[key] = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))
            d[meta_key(key)] = {"filename_or_obj": str(path), "num_video_frames": len(frames)}
        d[self.target_key] = -1 if self._target is None else self._target
        d[self.indices_key] = self._indices
        return d


def _read_image_file(path: Path) -> np.ndarray:
    """One 2D image (PNG/JPEG/..., or ``.npy`` ``H x W [x C]``) as ``H x W x C`` ``uint8`` (RGB order)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix.lower() == ".npy":
        try:
            img = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(path, f"cannot be read as a .npy array ({e})") from e
    else:
        cv2 = import_cv2()

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(path, "cannot be decoded as an image (corrupt or unsupported)")
        if img.ndim == 3:
            img = img[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    if img.dtype != np.uint8:
        raise DataError(path, f"expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise DataError(path, f"expected an H x W (x 1 or 3) image, got shape {img.shape}")
    return np.ascontiguousarray(img)


class LoadSeriesd(MapTransform):
    """Load an irregularly timed image series (one image per visit) as a clip plus its acquisition times.

    ``d[key]`` (a list of image paths, one per visit) becomes a ``uint8`` ``C x T x H x W`` tensor, ordered by
    time; ``d[times_key]`` a ``float32`` tensor of the ``T`` times and ``d["frame_mask"]`` a ``bool`` tensor
    (``True`` = a real visit). With ``num_frames`` set, the last ``num_frames`` visits are kept and shorter
    series are left-padded with zero images at time 0 and ``False`` in the mask: TVRL's key-padding mask for
    the temporal transformer. Grey and RGB images in one series are all promoted to RGB.

    Args:
        keys: keys of the image-path lists.
        times_key: key of the acquisition times (``None``: visit numbers 0, 1, ...).
        num_frames: fixed series length, or ``None`` to keep every visit.
        size: ``(H, W)`` (or one int) to resize every image to (OpenCV area interpolation); needed when the
            images of a series differ in size.
        mask_key: where the visit mask is written.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        DataError: an unreadable image, times that do not match the images, or images of different sizes.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        times_key: str | None = "times",
        num_frames: int | None = None,
        size: int | Sequence[int] | None = None,
        mask_key: str = "frame_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be positive or None, got {num_frames}")
        self.times_key = times_key
        self.num_frames = num_frames
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self.mask_key = mask_key

    def _load(self, paths: Sequence[str | Path]) -> np.ndarray:
        images = [_read_image_file(Path(p)) for p in paths]
        if self.size is not None:
            cv2 = import_cv2()

            h, w = self.size
            images = [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1) for im in images]
        if len({im.shape[-1] for im in images}) > 1:
            images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in images]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataError(Path(paths[0]).parent, f"series images differ in size {sorted(shapes)}; set size=(H, W)")
        return np.stack(images)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = [d[key]] if isinstance(d[key], (str, Path)) else list(d[key])
            if not paths:
                raise DataError(str(key), "empty image series")
            if self.times_key is None:
                times = np.arange(len(paths), dtype=np.float64)
            else:
                if self.times_key not in d:
                    raise KeyError(f"LoadSeriesd: item has no {self.times_key!r} (acquisition times)")
                times = np.asarray(d[self.times_key], dtype=np.float64).reshape(-1)
                if len(times) != len(paths):
                    raise DataError(paths[0], f"{len(paths)} images but {len(times)} times in {self.times_key!r}")
                if not np.isfinite(times).all():
                    raise DataError(paths[0], f"non-finite acquisition times {times.tolist()}")
            order = np.argsort(times, kind="stable")  # readers list visits by time; sort in case they did not
            paths, times = [paths[i] for i in order], times[order]
            if self.num_frames is not None:
                paths, times = paths[-self.num_frames :], times[-self.num_frames :]
            series = self._load(paths)
            mask = np.ones(len(paths), dtype=bool)
            if self.num_frames is not None and len(paths) < self.num_frames:
                n_pad = self.num_frames - len(paths)
                series = np.concatenate([np.zeros((n_pad,) + series.shape[1:], np.uint8), series])
                times = np.concatenate([np.zeros(n_pad), times])
                mask = np.concatenate([np.zeros(n_pad, dtype=bool), mask])
            d[key] = torch.from_numpy(np.ascontiguousarray(series.transpose(3, 0, 1, 2)))
            # one string and one int, not the path list: series of different lengths must still collate
            d[meta_key(key)] = {"filename_or_obj": str(Path(paths[-1]).parent), "num_visits": int(mask.sum())}
            if self.times_key is not None:
                d[self.times_key] = torch.as_tensor(times, dtype=torch.float32)
            d[self.mask_key] = torch.from_numpy(mask)
        return d


class LoadTracingMaskd(MapTransform):
    """Turn a label into a binary ``1 x H x W`` ``uint8`` mask tensor.

    Two label forms:

    - EchoNet tracing rows ``[[x1, y1, x2, y2], ...]`` (row 0 the long axis): rasterised with
      :func:`~medssl_monai.data.tracings.tracing_mask` (the EchoNet / SimLVSeg polygon rule) on the ``H x W``
      of the clip already loaded in ``d[ref_key]`` (``C x T x H x W``);
    - a mask file: NIfTI or MetaImage (``.mhd``) stored ``W x H`` (CAMUS; read as ``H x W``) or an image (PNG,
      ...), binarised as ``== label_value`` (CAMUS: 1 = LV endocardium).

    Args:
        keys: keys of the labels.
        ref_key: key of the loaded clip that fixes the mask size (and is checked against mask files).
        label_value: the label of the structure in mask files.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        TracingError: a tracing with too few rows or not 4 columns.
        DataError: an unreadable mask file, or one whose size differs from the clip's.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        ref_key: str = "image",
        label_value: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.label_value = label_value

    def _ref_shape(self, d: Mapping[Hashable, Any]) -> tuple[int, int] | None:
        ref = d.get(self.ref_key)
        if ref is None or isinstance(ref, (str, Path)) or not hasattr(ref, "shape"):
            return None
        return tuple(int(s) for s in ref.shape[-2:])

    def _source(self, d: Mapping[Hashable, Any]) -> str:
        meta = d.get(meta_key(self.ref_key)) or {}
        src = meta.get("filename_or_obj") or d.get("video_id") or "<item>"
        if "frame_index" in d:
            src = f"{src} (frame {d['frame_index']})"
        return str(src)

    def _read_mask_file(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise DataError(path, "mask file not found")
        if is_medical_image(path):
            arr = np.squeeze(read_medical_image(path))  # H x W from NIfTI and MetaImage alike
            if arr.ndim != 2:
                raise DataError(path, f"expected a 2D W x H mask, got shape {arr.shape[::-1]} (W first)")
            return arr
        cv2 = import_cv2()

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(path, "cannot be decoded as an image (corrupt or unsupported)")
        if arr.ndim == 3:
            arr = arr[..., 0]  # label images are grey; colour-saved ones repeat the label in every channel
        return arr

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shape = self._ref_shape(d)
        for key in self.key_iterator(d):
            label = d[key]
            if isinstance(label, (str, Path)):
                path = Path(label)
                mask = (self._read_mask_file(path) == self.label_value).astype(np.uint8)
                if shape is not None and mask.shape != shape:
                    h, w = mask.shape
                    raise DataError(path, f"mask is {h} x {w} but the clip is {shape[0]} x {shape[1]}")
            else:
                rows = np.asarray(label, dtype=np.float64)
                src = self._source(d)
                if rows.ndim != 2 or rows.shape[1] != 4:
                    raise TracingError(src, f"tracing must be rows of [x1, y1, x2, y2], got shape {rows.shape}")
                if len(rows) < MIN_TRACING_ROWS:
                    raise TracingError(
                        src, f"tracing has {len(rows)} rows, at least {MIN_TRACING_ROWS} needed (long axis + 3 chords)"
                    )
                if shape is None:
                    raise KeyError(f"LoadTracingMaskd: {self.ref_key!r} must hold the loaded clip to size the mask")
                mask = tracing_mask(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], shape)
            d[key] = torch.from_numpy(np.ascontiguousarray(mask[None]))
        return d
