"""Probe clips for the representation benchmark: every video decoded once, clips cut in each encoder's layout.

The benchmark embeds about a thousand videos with a dozen rows (encoders and controls). Decoding each video
once per row would cost more than the embedding, so :func:`load_frame_store` decodes every video once (through
the shared :class:`~medssl_monai.data.cache.ClipCache`, which the pretraining runs fill too), converts it to grey
and area-resizes it to one probe size; :func:`layout_indices` then cuts, per row, ``clips`` evenly spaced clips of
``num_frames`` frames every ``period`` frames (the layout the encoder was pretrained on, spanning at least one
beat) and :func:`embed_videos` averages a video's clip features (test-time averaging over clips, as VideoMAE and
DISCOVR evaluate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medssl_monai.evaluation.multiclip import spaced_starts

__all__ = ["layout_indices", "load_frame_store", "video_clips", "embed_videos", "load_series"]


def layout_indices(num_video_frames: int, num_frames: int, period: int, clips: int) -> np.ndarray:
    """``clips x num_frames`` frame indices: evenly spaced windows (:func:`~.multiclip.spaced_starts`), the first
    from frame 0, the last ending at the last frame; past the end of a short video the last frame repeats."""
    if num_video_frames < 1 or num_frames < 1 or period < 1 or clips < 1:
        raise ValueError(f"need positive sizes, got {num_video_frames}, {num_frames}, {period}, {clips}")
    starts = np.asarray(spaced_starts(num_video_frames, num_frames, period, clips), dtype=np.int64)
    idx = starts[:, None] + period * np.arange(num_frames, dtype=np.int64)[None, :]
    return np.minimum(idx, num_video_frames - 1)


def _to_grey_resized(frames: np.ndarray, size: int) -> np.ndarray:
    """``T x H x W x C`` uint8 -> ``T x size x size`` uint8 grey (channel mean, OpenCV area interpolation)."""
    from medssl_monai.opencv import import_cv2

    cv2 = import_cv2()
    grey = frames.mean(axis=-1) if frames.ndim == 4 else frames
    grey = np.rint(grey).astype(np.uint8)
    if grey.shape[1:] == (size, size):
        return np.ascontiguousarray(grey)
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in grey])


def load_frame_store(
    items: Sequence[Mapping],
    size: int,
    cache_dir: str | Path | None = None,
    image_key: str = "image",
    id_key: str = "video_id",
) -> dict[str, np.ndarray]:
    """Every item's whole video as ``T x size x size`` grey ``uint8``, keyed by ``item[id_key]``.

    Frames come from a :class:`~medssl_monai.data.cache.ClipCache` in ``cache_dir`` (decoded once, shared with the
    pretraining runs that use the same ``cache_dir``).
    """
    from medssl_monai.data.cache import ClipCache

    cache = ClipCache(cache_dir)
    return {str(it[id_key]): _to_grey_resized(np.asarray(cache.frames(it[image_key])), size) for it in items}


def video_clips(frames: np.ndarray, num_frames: int, period: int, clips: int) -> tuple[np.ndarray, np.ndarray]:
    """``(clips x 1 x T x S x S uint8, clips x T indices)`` of one video (``T x S x S`` grey frames)."""
    idx = layout_indices(len(frames), num_frames, period, clips)
    return frames[idx][:, None], idx


@torch.no_grad()
def embed_videos(
    fn: Callable[[torch.Tensor], torch.Tensor],
    store: Mapping[str, np.ndarray],
    ids: Sequence[str],
    num_frames: int,
    period: int,
    clips: int = 1,
    batch_size: int = 16,
) -> np.ndarray:
    """``len(ids) x D`` features: ``fn`` on every video's ``clips`` clips (8-bit ``B x 1 x T x S x S``), averaged
    per video."""
    out: list[np.ndarray] = []
    buf: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.concatenate(buf))
        f = fn(x).float().cpu().numpy()
        out.append(f.reshape(-1, clips, f.shape[-1]).mean(axis=1))
        buf.clear()

    per_batch = max(1, batch_size // clips)
    for i, vid in enumerate(ids):
        buf.append(video_clips(store[str(vid)], num_frames, period, clips)[0])
        if len(buf) == per_batch or i == len(ids) - 1:
            flush()
    return np.concatenate(out) if out else np.zeros((0, 0))


def load_series(items: Sequence[Mapping], num_frames: int) -> dict[str, torch.Tensor]:
    """The last ``num_frames`` visits of every timed series: ``{"image": N x C x T x H x W uint8, "times": N x T,
    "frame_mask": N x T}`` (:class:`~medssl_monai.transforms.io.LoadSeriesd`, zero-padded on the left)."""
    from medssl_monai.transforms.io import LoadSeriesd

    load = LoadSeriesd(keys="image", num_frames=num_frames)
    loaded = [load(dict(it)) for it in items]
    return {
        "image": torch.stack([torch.as_tensor(d["image"]) for d in loaded]),
        "times": torch.stack([torch.as_tensor(d["times"], dtype=torch.float32) for d in loaded]),
        "frame_mask": torch.stack([torch.as_tensor(d["frame_mask"], dtype=torch.bool) for d in loaded]),
    }
