"""Test-time averaging over several clips per video (VideoMAE/DISCOVR ``final_test`` + ``merge``).

The reference's test set (``VideoClsDataset(mode="test")``) takes ``test_num_segment`` clips per video at evenly
spaced starts, ``int(k * (L - clip_len) / (test_num_segment - 1))`` for ``k = 0 .. n - 1``, and ``merge``
averages the per-clip softmax outputs of a video. Here:

- :func:`multi_clip_datalist` repeats every datalist item ``num_clips`` times with its clip number;
- :class:`LoadSpacedClipd` loads clip ``k`` of ``num_clips`` evenly spaced windows over the decoded video (the
  first window starts at frame 0, the last ends at the last frame; short videos pad as ``pad_mode`` says);
- :func:`with_spaced_clips` swaps the loader of an existing (deterministic) clip pipeline for it;
- :func:`group_mean` averages per-clip values (features, probabilities) over the clips of each video.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import Compose

from medssl_monai.transforms.io import LoadClipd

__all__ = ["multi_clip_datalist", "LoadSpacedClipd", "with_spaced_clips", "group_mean", "spaced_starts"]


def multi_clip_datalist(datalist: Sequence[Mapping], num_clips: int = 3, clip_key: str = "clip_index") -> list[dict]:
    """Each item ``num_clips`` times, in order, with ``item[clip_key] = 0 .. num_clips - 1``."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    return [{**item, clip_key: k} for item in datalist for k in range(num_clips)]


def spaced_starts(num_video_frames: int, num_frames: int, period: int, num_clips: int) -> list[int]:
    """The start frames of ``num_clips`` evenly spaced windows of ``num_frames`` frames every ``period``.

    ``int(k * (L - span) / (num_clips - 1))`` with ``span`` the window's extent (the reference's
    ``temporal_step``); all 0 when the video is shorter than one window.
    """
    span = (num_frames - 1) * period + 1
    room = max(num_video_frames - span, 0)
    if num_clips <= 1:
        return [0]
    return [int(k * room / (num_clips - 1)) for k in range(num_clips)]


class LoadSpacedClipd(LoadClipd):
    """:class:`LoadClipd` loading clip ``d[clip_key]`` of ``num_clips`` evenly spaced windows (:func:`spaced_starts`).

    Args:
        num_clips: windows per video.
        clip_key: the item key holding the clip number (from :func:`multi_clip_datalist`); missing: clip 0.
        kwargs: :class:`LoadClipd` arguments except ``mode`` and ``frame_key``.
    """

    def __init__(self, num_clips: int = 3, clip_key: str = "clip_index", **kwargs: Any) -> None:
        kwargs.pop("mode", None)
        kwargs.pop("frame_key", None)
        super().__init__(mode="start", **kwargs)
        self.num_clips = int(num_clips)
        self.clip_key = clip_key
        self._clip = 0

    def randomize(self, num_video_frames: int, frame: int | None = None) -> None:
        start = spaced_starts(num_video_frames, self.num_frames, self.period, self.num_clips)[self._clip]
        indices = start + self.period * np.arange(self.num_frames, dtype=np.int64)
        beyond = indices >= num_video_frames
        indices[beyond] = num_video_frames - 1 if self.pad_mode == "repeat" else -1
        self._indices, self._target = indices, None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        clip = int(data.get(self.clip_key, 0) or 0)
        if not 0 <= clip < self.num_clips:
            raise ValueError(f"{self.clip_key}={clip} outside 0..{self.num_clips - 1}")
        self._clip = clip
        return super().__call__(data)


def with_spaced_clips(transforms: Compose, num_clips: int = 3, clip_key: str = "clip_index") -> Compose:
    """A copy of ``transforms`` whose first transform, a :class:`LoadClipd`, loads spaced clips instead."""
    first, rest = transforms.transforms[0], transforms.transforms[1:]
    if not isinstance(first, LoadClipd):
        raise TypeError(f"the first transform must be LoadClipd, got {type(first).__name__}")
    load = LoadSpacedClipd(
        num_clips=num_clips,
        clip_key=clip_key,
        keys=first.keys,
        num_frames=first.num_frames,
        period=first.period,
        cache=first.cache,
        channels=first.channels,
        pad_mode=first.pad_mode,
        target_key=first.target_key,
        indices_key=first.indices_key,
        min_frames=first.min_frames,
    )
    return Compose([load, *rest])


def group_mean(values: np.ndarray, ids: Sequence[Hashable]) -> tuple[np.ndarray, list[int]]:
    """Mean of ``values`` rows per id (first-seen order) and the index of each id's first row."""
    values = np.asarray(values)
    first: dict[Hashable, int] = {}
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(ids):
        first.setdefault(key, i)
        groups.setdefault(key, []).append(i)
    means = np.stack([values[idx].mean(axis=0) for idx in groups.values()])
    return means, list(first.values())
