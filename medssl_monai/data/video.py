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
from medssl_monai.opencv import import_cv2

__all__ = ["read_video", "write_video", "video_info", "to_clip", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".wmv")


def video_info(path: str | Path) -> dict:
    """Frame count, size and frame rate from the container header (no decoding).

    Raises:
        VideoReadError: the file is missing or cannot be opened as a video.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(path, _unopenable(path))
        return {
            "num_frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
        }
    finally:
        cap.release()


# leading bytes of the containers in VIDEO_EXTENSIONS (offset, magic, name)
_CONTAINER_MAGIC = (
    (0, b"RIFF", "AVI"),
    (4, b"ftyp", "MP4/MOV"),
    (4, b"moov", "MOV"),
    (4, b"mdat", "MOV"),
    (4, b"wide", "MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska"),
    (0, b"\x30\x26\xb2\x75", "ASF/WMV"),
)


def _container(head: bytes) -> str | None:
    """The container named by a file's first bytes, or ``None``."""
    for offset, magic, name in _CONTAINER_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _truncation(path: Path, head: bytes) -> str | None:
    """``"truncated: ..."`` when an AVI's RIFF header announces more bytes than the file holds, else ``None``."""
    if _container(head) != "AVI" or len(head) < 8:
        return None
    announced, size = int.from_bytes(head[4:8], "little") + 8, path.stat().st_size
    if size >= announced:  # OpenDML AVIs over 1 GB continue past the first RIFF chunk: only a shortfall counts
        return None
    return f"truncated: the AVI header announces {announced} bytes but the file has {size}"


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _unopenable(path: Path) -> str:
    """Why OpenCV could not open ``path``: not a video at all, cut short, or a container it cannot read."""
    head = _head(path)
    name = _container(head)
    if name is None:
        return f"not a video: no known video container header (the file starts with {head[:12]!r})"
    return _truncation(path, head) or f"unreadable {name} container: its header cannot be parsed (corrupt)"


def _fourcc(code: float) -> str:
    """OpenCV's ``CAP_PROP_FOURCC`` as text (``"MJPG"``), ``""`` when unknown."""
    value = int(code)
    text = "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4))
    return text if value > 0 and text.isprintable() else ""


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
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(path, _unopenable(path))
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fourcc = _fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames or (strict and expected > 0 and len(frames) < expected):
        truncated = _truncation(path, _head(path))  # the byte count says it for sure where the frame count cannot
        if truncated:
            raise VideoReadError(path, f"{truncated} ({len(frames)} of {expected} frames decode)")
    if not frames:
        codec = f"codec {fourcc!r}" if fourcc else "its codec"
        problem = f"the header announces {expected} frames but" if expected > 0 else "the container opens but"
        raise VideoReadError(path, f"unreadable: {problem} no frame decodes ({codec} unsupported or corrupt data)")
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
    cv2 = import_cv2()
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
