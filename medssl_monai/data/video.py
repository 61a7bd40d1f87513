"""Video decoding and encoding.

OpenCV (headless) is the decoder: on EchoNet-style 112x112 MJPG AVIs it measured faster than PyAV
(``scripts/benchmark_data.py``). Frames come back as ``T x H x W x C`` ``uint8`` RGB, the layout the
decoded-clip cache stores; :func:`to_clip` turns them into the ``C x T x H x W`` clip contract.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from medssl_monai.errors import VideoReadError

__all__ = ["read_video", "write_video", "video_info", "to_clip", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".wmv")


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # decoding runs inside DataLoader workers; one thread each avoids oversubscription
    return cv2


def video_info(path: str | Path) -> dict:
    """Frame count, size and frame rate from the container header (no decoding).

    Raises:
        VideoReadError: the file is missing or cannot be opened as a video.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(path, "cannot be opened as a video (corrupt or unsupported container)")
        return {
            "num_frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
        }
    finally:
        cap.release()


def read_video(path: str | Path, strict: bool = True, min_frames: int = 1) -> np.ndarray:
    """Decode a whole video to ``T x H x W x 3`` ``uint8`` RGB.

    Args:
        path: the video file.
        strict: raise when fewer frames decode than the header announces (a truncated file);
            otherwise keep what decoded.
        min_frames: fewer decoded frames than this is an error.

    Raises:
        VideoReadError: missing, unopenable, empty, truncated or too short.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(path, "cannot be opened as a video (corrupt or unsupported container)")
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise VideoReadError(path, "no frame could be decoded (corrupt or empty video)")
    if strict and expected > 0 and len(frames) < expected:
        raise VideoReadError(path, f"truncated: the header announces {expected} frames but only {len(frames)} decode")
    if len(frames) < min_frames:
        raise VideoReadError(path, f"too few frames: {len(frames)} decoded, at least {min_frames} needed")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(path, f"frames change shape within the video: {sorted(shapes)}")
    video = np.stack(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise VideoReadError(path, f"unexpected decoded shape {video.shape}, expected T x H x W x 3")
    return video[..., ::-1].copy()  # OpenCV decodes BGR


def write_video(path: str | Path, frames: np.ndarray, fps: float = 50.0, fourcc: str = "MJPG") -> Path:
    """Encode ``T x H x W`` or ``T x H x W x 3`` ``uint8`` frames (RGB) to an AVI, atomically.

    The file appears under its final name only once it is complete, so a reader never sees half of it.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be T x H x W (x 3) with T > 0, got {frames.shape}")
    cv2 = _cv2()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open a {fourcc} writer")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path


def to_clip(frames: np.ndarray) -> np.ndarray:
    """``T x H x W x C`` (or ``T x H x W``) frames to a ``C x T x H x W`` clip (a view, no copy)."""
    if frames.ndim == 3:
        return frames[None]
    return np.moveaxis(frames, -1, 0)
