"""Synthetic abdominal ultrasound sweeps as frame folders (the UCL / GBUSV layout: ``Video_k/00000.jpg``).

Each video is a convex-probe sweep across one patient's anatomy. The anatomy is a wide "beam-space" panorama
(rows = depth along the beam, columns = lateral position): skin, subcutaneous fat, a fascia line, textured
parenchyma with vessels and a gallbladder (anechoic, bright wall, posterior enhancement), and, by class:

- ``lesion``: a bright mass (a stone or polyp) with an acoustic shadow behind it, placed so that the sweep passes
  over it in the middle of the video only (frames near the ends do not show it);
- ``artefact``: a bright reflector with vertical B-lines / comet tails (narrow bright streaks with reverberation
  banding, running to the bottom of the image) at several lateral positions.

A frame is the panorama window under the probe, scan-converted to the fan (beam-space columns become angles, so
shadows and B-lines run radially as in real images), with persistent speckle that moves with the tissue, 20 %
fresh speckle per frame, depth attenuation and a per-video gain. The probe moves smoothly across about two image
widths, so neighbouring frames are near-duplicates and distant frames show different anatomy: the structure
UCL's temporal hard-negative sampling relies on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.synthetic._common import (
    _cv2,
    complex_speckle,
    item_rng,
    parallel_map,
    sector_geometry,
    smooth_noise,
    speckle_amplitude,
    write_dataset,
)

__all__ = ["DEFAULT_CLASSES", "make_frame_folders", "synthesize_sweep"]

DEFAULT_CLASSES = ("normal", "lesion", "artefact")


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return np.hypot((xx - cx) / rx, (yy - cy) / ry)


def _panorama(
    rng: np.random.Generator, extra: np.random.Generator, height: int, width: int, view: int, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity of the anatomy in beam space (``height x width``) and an additive, speckle-free artefact layer.

    ``view`` is the probe's lateral extent in columns. The class content is drawn from its own generator ``extra``,
    so a video's anatomy, probe path and speckle do not depend on its class.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    h = float(height)
    texture = smooth_noise(rng, (height, width), 3.0 * h / 128.0)
    echo = 0.36 * (1.0 + 0.18 * texture)
    artefact = np.zeros_like(echo)
    fat_line = 0.16 * h + 0.03 * h * np.sin(2 * np.pi * xx / rng.uniform(0.8, 1.6) / width + rng.uniform(0, 6.3))
    echo = np.where(yy < fat_line, 0.22 * (1.0 + 0.4 * np.sin(yy * 1.7 + 0.3 * texture)), echo)
    echo = np.where(np.abs(yy - fat_line) < 0.012 * h + 0.6, 0.85, echo)  # fascia
    echo = np.where(yy < 0.035 * h, 0.9, echo)  # skin line under the probe
    for _ in range(int(rng.integers(3, 7))):  # vessels: anechoic with a bright wall
        cx, cy = rng.uniform(0, width), rng.uniform(0.3, 0.9) * h
        r = rng.uniform(0.025, 0.06) * h
        rho = _ellipse(xx, yy, cx, cy, r * rng.uniform(1.0, 1.8), r)
        echo = np.where(rho < 1.25, 0.7, echo)
        echo = np.where(rho < 1.0, 0.03, echo)
    # Gallbladder: anechoic, bright wall, posterior acoustic enhancement below it.
    gx, gy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.42, 0.52) * h
    grx, gry = rng.uniform(0.18, 0.26) * view, rng.uniform(0.1, 0.14) * h
    rho = _ellipse(xx, yy, gx, gy, grx, gry)
    echo = np.where((yy > gy) & (np.abs(xx - gx) < grx) & (rho >= 1.1), echo * 1.35, echo)
    echo = np.where(rho < 1.1, 0.8, echo)
    echo = np.where(rho < 1.0, 0.025, echo)
    if kind == "lesion":
        # A bright mass the sweep passes mid-video; the tissue behind it is shadowed (soft-edged columns).
        lx = 0.5 * view + extra.uniform(0.45, 0.55) * (width - view)
        ly = extra.uniform(0.35, 0.6) * h
        lr = extra.uniform(0.05, 0.08) * h
        rho = _ellipse(xx, yy, lx, ly, lr * extra.uniform(1.0, 1.5), lr)
        half = lr * 1.1
        shadow = np.clip((half - np.abs(xx - lx)) / (0.3 * half), 0.0, 1.0) * (yy > ly)
        echo = echo * (1.0 - 0.88 * shadow)
        echo = np.where(rho < 1.0, 1.0 + 0.15 * texture, echo)
    elif kind == "artefact":
        # A bright reflector with B-lines: laser-like streaks down to the bottom, banded by reverberation. They
        # are reverberation, not tissue, so they are added after the speckle (homogeneous, as in real images).
        py = extra.uniform(0.25, 0.35) * h
        echo = np.where(np.abs(yy - py) < 0.012 * h + 0.6, 0.95, echo)
        n_lines = int(extra.integers(4, 8))
        for bx in extra.uniform(0.5 * view, width - 0.5 * view, n_lines):
            bw = extra.uniform(1.6, 2.6) * h / 128.0
            band = 0.75 + 0.25 * np.cos(2 * np.pi * (yy - py) / (0.03 * h))
            streak = np.exp(-0.5 * ((xx - bx) / bw) ** 2) * (yy > py) * np.exp(-(yy - py) / (2.5 * h))
            artefact = np.maximum(artefact, 0.7 * band * streak)
    elif kind != "normal":
        raise ValueError(f"unknown ultrasound content kind {kind!r}; expected normal, lesion or artefact")
    return np.clip(echo, 0.0, None).astype(np.float32), artefact.astype(np.float32)


def _content_kind(label_name: str) -> str:
    """Map a class name onto the content that is drawn: lesion-like, artefact-like or plain."""
    name = label_name.lower()
    if any(k in name for k in ("lesion", "mass", "malignant", "stone", "polyp", "tumou", "tumor")):
        return "lesion"
    if any(k in name for k in ("artefact", "artifact", "b-line", "bline", "comet")):
        return "artefact"
    return "normal"


def synthesize_sweep(seed: int, index: int, label_name: str, num_frames: int, image_size: int = 128) -> np.ndarray:
    """Render video ``index`` of :func:`make_frame_folders`: ``T x H x W`` ``uint8`` grey frames."""
    cv2 = _cv2()
    rng = item_rng(seed, "ultrasound", index)
    size = int(image_size)
    travel = rng.uniform(1.3, 1.7) * size  # lateral probe travel over the video, in beam-space columns
    pad = 4
    pano_w = int(math.ceil(size + travel)) + 2 * pad
    extra = item_rng(seed, "ultrasound-content", index)
    echo, artefact = _panorama(rng, extra, size, pano_w, size, _content_kind(label_name))
    sigma = (0.9 * size / 128.0, 1.8 * size / 128.0)
    field = complex_speckle(rng, (size, pano_w), sigma)
    fresh_bank = complex_speckle(rng, (size + size // 2, size + size // 2), sigma)
    # Convex probe: virtual apex above the image; beam space rows = depth, columns = angle.
    apex_y, half_angle = -0.5 * size, 28.0
    r0, r1 = 0.5 * size + 2.0, 1.5 * size
    fan, _ = sector_geometry((size, size), half_angle, (apex_y, (size - 1) / 2.0), r1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(xx - (size - 1) / 2.0, yy - apex_y)
    theta = np.degrees(np.arctan2(xx - (size - 1) / 2.0, yy - apex_y))
    fan &= radius >= r0
    beam_row = ((radius - r0) / (r1 - r0) * (size - 1)).astype(np.float32)
    beam_col = ((theta / half_angle + 1.0) * 0.5 * (size - 1)).astype(np.float32)
    attenuation = np.exp(-0.9 * (radius - r0) / (r1 - r0)).astype(np.float32)
    gain = rng.uniform(0.8, 1.2)
    wobble_amp, wobble_freq, wobble_phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    frames = np.zeros((num_frames, size, size), dtype=np.uint8)
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        # Smooth, slightly uneven probe motion plus a small breathing bob in depth.
        offset = pad + travel * (0.75 * u + 0.25 * (0.5 - 0.5 * np.cos(np.pi * u)))
        bob = wobble_amp * np.sin(2 * np.pi * wobble_freq * u + wobble_phase)
        mx, my = beam_col + np.float32(offset), beam_row + np.float32(bob)
        e = cv2.remap(echo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        a = cv2.remap(artefact, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        f = np.stack([cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for c in field])
        oy, ox = rng.integers(0, size // 2 + 1, 2)
        f = np.float32(np.sqrt(1 - 0.2**2)) * f + np.float32(0.2) * fresh_bank[:, oy : oy + size, ox : ox + size]
        img = 255.0 * np.clip(gain * attenuation * (e * speckle_amplitude(f) + a), 0.0, 1.0) ** 0.8
        img[~fan] = 0.0
        frames[t] = np.rint(img).astype(np.uint8)
    return frames


def _write_sweep(item: tuple[int, str, int, int], out: Path, seed: int, image_size: int) -> dict:
    """Render and write video ``k`` of :func:`make_frame_folders` as JPEG frames; its ``labels.csv`` row."""
    cv2 = _cv2()
    k, label_name, label, length = item
    name = f"Video_{k + 1}"
    frames = synthesize_sweep(seed, k, label_name, length, image_size)
    folder = out / name
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        rgb = np.repeat(frame[..., None], 3, axis=-1)
        if not cv2.imwrite(str(folder / f"{t:05d}.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"{folder / f'{t:05d}.jpg'}: OpenCV could not write the JPEG")
    return {"video": name, "label": label, "label_name": label_name}


def make_frame_folders(
    root: str | Path,
    num_videos: int = 24,
    seed: int = 0,
    num_frames: tuple[int, int] = (40, 80),
    image_size: int = 128,
    classes: Sequence[str] = DEFAULT_CLASSES,
    num_workers: int = 1,
) -> Path:
    """Write synthetic ultrasound sweeps as frame folders to ``root``; skipped if already there.

    Files: ``Video_<k>/00000.jpg, 00001.jpg, ...`` (``k`` from 1; 3-channel grey JPEG, quality 90) and
    ``labels.csv`` with ``video,label,label_name`` (``label`` indexes ``classes``). Classes are balanced (counts
    differ by at most one). A class whose name mentions a lesion / mass / stone shows a bright mass with acoustic
    shadow, one that mentions an artefact / B-line shows B-lines, any other class is plain anatomy.

    Args:
        num_frames: inclusive range of frames per video.
        num_workers: processes rendering the videos (the files are the same for any number).
    """
    classes = [str(c) for c in classes]
    if num_videos < 1 or not classes:
        raise ValueError(f"need num_videos >= 1 and at least one class, got {num_videos}, {classes}")
    lo, hi = (int(v) for v in num_frames)
    if not 2 <= lo <= hi:
        raise ValueError(f"num_frames must be a range (lo, hi) with 2 <= lo <= hi, got {num_frames}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    params = {"num_videos": num_videos, "seed": seed, "num_frames": [lo, hi], "image_size": image_size}
    params["classes"] = classes

    def writer(out: Path) -> None:
        meta = item_rng(seed, "ultrasound-meta", 0)
        labels = meta.permutation(np.arange(num_videos) % len(classes))
        lengths = meta.integers(lo, hi + 1, num_videos)
        items = [(k, classes[int(labels[k])], int(labels[k]), int(lengths[k])) for k in range(num_videos)]
        item = partial(_write_sweep, out=out, seed=seed, image_size=image_size)
        rows = parallel_map(item, items, num_videos, "ultrasound", num_workers)
        pd.DataFrame(rows, columns=["video", "label", "label_name"]).to_csv(out / "labels.csv", index=False)

    return write_dataset(root, "frame_folders", params, writer)
