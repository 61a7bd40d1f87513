"""Which frames of a video make a clip.

:func:`clip_indices` reproduces the clip samplers of the reference code:

- ``"random"``: a random window anywhere in the video (EchoNet-Dynamic ``echo.py``, SimLVSeg SSL masking).
- ``"start"``: the window at the start of the video (deterministic evaluation of whole-video tasks).
- ``"center"``: the window centred on a frame, shifted at the borders so that it stays inside the video
  (SimLVSeg ``utils.get_optimum_set_of_frame_indexes``, used for validation and test).
- ``"contains"``: a uniformly random window among those that hold a frame on their grid (SimLVSeg
  ``Seg3DDataset`` training: draw a start, keep it if the traced frame is one of the sampled frames).
- ``"all"``: every ``period``-th frame of the video (EchoNet ``length=None``); ``num_frames`` is ignored.

A window of ``num_frames`` frames with period ``p`` spans ``(num_frames - 1) * p + 1`` frames. Like the
reference code, a video shorter than ``num_frames * p`` frames is treated as if zero frames were appended up
to that length; the positions that fall on such frames get index ``-1`` (``pad_mode="zeros"``, the loader
fills them with zero frames) or the last real frame (``pad_mode="repeat"``, VideoMAE's behaviour).
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_indices", "CLIP_MODES", "PAD_MODES"]

CLIP_MODES = ("random", "start", "center", "contains", "all")
PAD_MODES = ("zeros", "repeat")


def _randint(rng: np.random.RandomState | np.random.Generator | None, high: int) -> int:
    """One integer uniformly in ``[0, high)`` from MONAI's ``RandomState``, a ``Generator`` or numpy's global state."""
    if rng is None:
        return int(np.random.randint(high))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(high))
    return int(rng.randint(high))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _center_start(frame: int, num_frames: int, period: int, padded_len: int) -> int:
    """Start of SimLVSeg's ``get_optimum_set_of_frame_indexes`` window, in closed form.

    The reference grows the window around ``frame`` alternately to the left and to the right (so the frame
    sits at position ``ceil((num_frames - 1) / 2)``), drops candidates past the (zero-padded) end and extends
    the left side instead, then replaces negative candidates by extending the right side. Every step keeps the
    grid ``frame + k * period``; the result is the grid window closest to centred that fits.
    """
    left = num_frames // 2  # the reference inserts on the left first, so the left side gets the extra frame
    span = (num_frames - 1) * period
    start = frame - left * period
    last_start = padded_len - 1 - span  # the latest start whose window ends inside the (padded) video
    if start > last_start:
        start -= _ceil_div(start - last_start, period) * period  # shift left by whole periods
    if start < 0:
        start += _ceil_div(-start, period) * period  # shift right by whole periods: the smallest start >= 0
    return start


def clip_indices(
    num_video_frames: int,
    num_frames: int,
    period: int = 1,
    mode: str = "random",
    frame: int | None = None,
    rng: np.random.RandomState | np.random.Generator | None = None,
    pad_mode: str = "zeros",
) -> tuple[np.ndarray, int | None]:
    """Frame indices of one clip and the position of ``frame`` in it.

    Args:
        num_video_frames: frames in the video (> 0).
        num_frames: frames in the clip (> 0); ignored for ``mode="all"``.
        period: sampling stride (1 = consecutive frames).
        mode: one of :data:`CLIP_MODES` (see the module docstring).
        frame: the frame of interest (e.g. a traced frame); required by ``"center"`` and ``"contains"``.
        rng: random state (MONAI ``Randomizable.R``, a numpy ``Generator``, or ``None`` for numpy's global state).
        pad_mode: ``"zeros"`` marks positions past the end of the video with ``-1``; ``"repeat"`` clamps them
            to the last frame.

    Returns:
        ``(indices, target_pos)``: an ``int64`` array of clip frame indices (``-1`` = zero frame) and the position
        of ``frame`` in the clip (``indices[target_pos] == frame``), or ``None`` when no ``frame`` was given or
        it is not in the clip (possible only for ``"random"``, ``"start"`` and ``"all"``).

    Raises:
        ValueError: bad arguments, or ``frame`` outside the video.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be positive, got {num_video_frames}")
    if period < 1:
        raise ValueError(f"period must be positive, got {period}")
    if mode not in CLIP_MODES:
        raise ValueError(f"mode must be one of {CLIP_MODES}, got {mode!r}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if mode != "all" and num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if frame is not None:
        frame = int(frame)
        if not 0 <= frame < num_video_frames:
            raise ValueError(f"frame {frame} is outside the video's {num_video_frames} frames")
    elif mode in ("center", "contains"):
        raise ValueError(f"mode {mode!r} needs the frame of interest (frame=None given)")

    if mode == "all":
        indices = np.arange(0, num_video_frames, period, dtype=np.int64)
    else:
        span = (num_frames - 1) * period
        # EchoNet and SimLVSeg append zero frames up to num_frames * period before choosing a window
        padded_len = max(num_video_frames, num_frames * period)
        if mode == "start":
            start = 0
        elif mode == "random":
            start = _randint(rng, padded_len - span)
        elif mode == "center":
            start = _center_start(frame, num_frames, period, padded_len)
        else:  # "contains": the starts frame - k * period (k = clip position) whose window fits
            ks = np.arange(num_frames)
            starts = frame - ks * period
            starts = starts[(starts >= 0) & (starts + span <= padded_len - 1)]
            start = int(starts[_randint(rng, len(starts))])
        indices = start + period * np.arange(num_frames, dtype=np.int64)

    target_pos = None
    if frame is not None:
        hits = np.flatnonzero(indices == frame)
        target_pos = int(hits[0]) if len(hits) else None
    beyond = indices >= num_video_frames
    indices[beyond] = num_video_frames - 1 if pad_mode == "repeat" else -1
    return indices, target_pos
