"""Shared pieces of the synthetic generators: seeding, speckle, probe geometry, splits and atomic writes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medssl_monai.errors import DataError

__all__ = [
    "progress",
    "MARKER_NAME",
    "FORMAT_VERSION",
    "item_rng",
    "smooth_noise",
    "complex_speckle",
    "speckle_amplitude",
    "sector_geometry",
    "assign_splits",
    "parallel_map",
    "write_dataset",
]

logger = logging.getLogger(__name__)

MARKER_NAME = ".synthetic.json"
# Bump when a generator's output changes for the same parameters, so old datasets are rebuilt, not reused.
FORMAT_VERSION = 1

# Mean of a unit-power Rayleigh amplitude (sqrt(pi)/2): dividing by it makes speckle multiplicative with mean 1.
_RAYLEIGH_MEAN = float(np.sqrt(np.pi) / 2.0)

_T = TypeVar("_T")


def _cv2():
    # one OpenCV thread per process (generators run in several), set once per process tree
    from medssl_monai.opencv import import_cv2

    return import_cv2()


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, dataset stream, item): item ``k`` is the same whatever the item count."""
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode()), int(index)])


def _blur(field: np.ndarray, sigma_yx: tuple[float, float]) -> np.ndarray:
    cv2 = _cv2()
    sy, sx = (max(float(s), 1e-3) for s in sigma_yx)
    return cv2.GaussianBlur(field, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)


def _blur_gain(shape: tuple[int, int], sigma_yx: tuple[float, float]) -> float:
    """Standard deviation of unit white noise after :func:`_blur` (the exact discrete kernel energy)."""
    cv2 = _cv2()
    energy = 1.0
    for s in sigma_yx:
        s = max(float(s), 1e-3)
        ksize = int(round(s * 8 + 1)) | 1  # OpenCV's own kernel size for float images when ksize=(0, 0)
        k = cv2.getGaussianKernel(ksize, s, cv2.CV_64F)
        energy *= float(np.sum(k**2))
    return float(np.sqrt(energy))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance, spatially correlated Gaussian noise (low-frequency texture, gain maps)."""
    field = _blur(rng.standard_normal(shape, dtype=np.float32), (sigma, sigma))
    return field / max(float(field.std()), 1e-6)


def complex_speckle(rng: np.random.Generator, shape: tuple[int, int], sigma_yx: tuple[float, float]) -> np.ndarray:
    """A ``2 x H x W`` complex Gaussian scattering field (real, imaginary) with unit expected power.

    Fully developed speckle is the magnitude of a sum of many random phasors: a circular complex Gaussian
    field, correlated over the resolution cell (``sigma_yx`` = axial, lateral correlation in pixels; lateral is
    longer, as for a focused beam). Its magnitude (:func:`speckle_amplitude`) is Rayleigh distributed.
    """
    gain = _blur_gain(shape, sigma_yx)
    noise = rng.standard_normal((2, *shape), dtype=np.float32)
    return np.stack([_blur(n, sigma_yx) for n in noise]) / np.float32(gain * np.sqrt(2.0))


def speckle_amplitude(field: np.ndarray) -> np.ndarray:
    """Rayleigh amplitude with mean 1 of a ``2 x H x W`` field from :func:`complex_speckle`."""
    return np.hypot(field[0], field[1]) / np.float32(_RAYLEIGH_MEAN)


def sector_geometry(
    shape: tuple[int, int],
    half_angle_deg: float = 37.5,
    apex_yx: tuple[float, float] | None = None,
    depth: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The fan-shaped field of view of a phased-array (or, with the apex above the image, convex) probe.

    Args:
        shape: ``(H, W)`` of the image.
        half_angle_deg: half the opening angle (75 degrees in all for a cardiac phased array).
        apex_yx: the virtual apex in pixels; default top centre.
        depth: radius of the bottom arc in pixels from the apex; default reaches the bottom row.

    Returns:
        ``mask`` (``H x W`` bool, inside the fan) and ``radius`` (``H x W`` float32 distance to the apex / depth,
        used for depth attenuation).
    """
    h, w = shape
    ay, ax = apex_yx if apex_yx is not None else (0.0, (w - 1) / 2.0)
    depth = float(depth) if depth is not None else float(h - ay)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - ay, xx - ax
    radius = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(dx, np.maximum(dy, 1e-6)))
    mask = (np.abs(angle) <= half_angle_deg) & (radius <= depth) & (dy > 0)
    return mask, (radius / depth).astype(np.float32)


def assign_splits(
    rng: np.random.Generator, n: int, fractions: Sequence[float], names: Sequence[str] = ("TRAIN", "VAL", "TEST")
) -> list[str]:
    """Exact-count random split: ``round(f * n)`` items per split (the remainder to the last one).

    Every split with a positive fraction gets at least one item when ``n`` allows it, so tiny datasets still have
    a validation and a test item.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if len(fractions) != len(names) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(f"split fractions must be {len(names)} non-negative numbers, got {list(fractions)}")
    fractions = fractions / fractions.sum()
    counts = np.floor(fractions * n + 0.5).astype(int)
    counts[-1] = n - counts[:-1].sum()
    if counts[-1] < 0:  # rounding pushed the first splits over n
        counts[int(np.argmax(counts[:-1]))] += counts[-1]
        counts[-1] = 0
    for i in range(len(counts)):
        if fractions[i] > 0 and counts[i] == 0 and n >= int(np.count_nonzero(fractions)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    labels = np.repeat(np.arange(len(names)), counts)
    return [names[i] for i in rng.permutation(labels)]


def _normalise_spec(spec: dict) -> dict:
    return json.loads(json.dumps(spec, sort_keys=True))  # tuples -> lists, so a spec compares equal to its file


def write_dataset(root: str | Path, generator: str, params: dict, writer: Callable[[Path], None]) -> Path:
    """Write a dataset atomically and only once.

    If ``root`` holds a marker (``.synthetic.json``) with the same generator, version and parameters, nothing is
    done. Otherwise ``writer`` fills a fresh temporary sibling folder, the marker is written there LAST, and the
    folder is renamed into place; a crash therefore never leaves a half dataset that looks complete.

    Raises:
        DataError: ``root`` exists, is not empty and is not a synthetic dataset (we never delete user data).
    """
    root = Path(root)
    spec = _normalise_spec({"generator": generator, "version": FORMAT_VERSION, "params": params})
    marker = root / MARKER_NAME
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == spec:
            logger.info("%s: synthetic %s dataset with these parameters already there; not rewritten", root, generator)
            return root
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            root,
            f"exists, is not empty and holds no {MARKER_NAME} marker; refusing to overwrite it with synthetic data",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        writer(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        if root.exists():
            old = root.parent / f".{root.name}.old-{tag}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("%s: wrote synthetic %s dataset", root, generator)
    return root


def progress(iterable, total: int, desc: str):
    """A tqdm progress bar over a generator's items (shown on terminals only, so logs and CI stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, disable=None)


def parallel_map(
    fn: Callable[[Any], _T], items: Iterable[Any], total: int, desc: str, num_workers: int = 1
) -> list[_T]:
    """``[fn(item) for item in items]``, in order, over ``num_workers`` processes (1: in this process).

    Each item draws from its own :func:`item_rng` stream and writes only its own files, so the output is
    byte-identical whatever ``num_workers`` is. ``fn`` must be picklable (a module-level function or a
    ``functools.partial`` of one).
    """
    num_workers = max(1, min(int(num_workers), int(total)))
    if num_workers == 1:
        return [fn(item) for item in progress(items, total, desc)]
    from concurrent.futures import ProcessPoolExecutor

    # the platform's default start method (fork on Linux), as DataLoader workers: the children only run numpy and
    # OpenCV, never CUDA, and start in milliseconds. Chunks of a few items amortise the round trips.
    chunksize = max(1, min(16, int(total) // (4 * num_workers)))
    with ProcessPoolExecutor(num_workers) as pool:
        return list(progress(pool.map(fn, items, chunksize=chunksize), total, desc))
