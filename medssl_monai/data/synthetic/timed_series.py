"""Synthetic irregularly timed image series: a growing retinal lesion seen at irregular visits (TVRL's OCT setting).

Each subject has OCT-like B-scans (retinal layers over the choroid) at 3-6 visits with irregular gaps. A lesion
like complete RPE and outer retinal atrophy (cRORA) grows linearly: its width ``s(t) = s_last + r (t - t_last)``
(mm) at a subject-specific rate ``r``. In the image it is RPE loss, outer-retina thinning and choroidal
hypertransmission over ``s(t)`` mm. The label is 1 iff the lesion reaches ``threshold`` mm within ``horizon`` years
after the last visit: ``s_last + r * horizon >= threshold`` (``s_last < threshold`` always).

Why the time intervals matter: the images show only sizes; the rate is only recoverable as (size change) /
(time interval). Visit cadences differ ~6-fold between subjects, and a ``twin_fraction`` of the subjects come in
pairs that share byte-identical images but have their visit times stretched by a factor ``k`` (0.3-0.55 or
1.8-3.3): the twin's rate is ``r / k``, and with ``s_last`` and ``r`` drawn around the decision boundary the two
labels differ in a large fraction of pairs. A model that ignores time cannot separate them (TVRL's time-encoding
claim); twins are kept in the same split so that no image crosses splits.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.synthetic._common import (
    _blur,
    _cv2,
    assign_splits,
    complex_speckle,
    item_rng,
    parallel_map,
    smooth_noise,
    speckle_amplitude,
    write_dataset,
)

__all__ = ["FIELD_OF_VIEW_MM", "make_timed_series", "render_oct", "sample_subject"]

FIELD_OF_VIEW_MM = 3.0  # the B-scan width; the lesion width in pixels is size_mm * image_size / 3

# Layer stack below the inner limiting membrane at 64 px: (thickness px, echogenicity); the choroid and sclera
# follow the RPE. RNFL, GCL+IPL, INL, OPL, ONL, ellipsoid zone, RPE.
_LAYERS = ((3.0, 0.75), (6.0, 0.45), (3.0, 0.2), (2.0, 0.55), (7.0, 0.12), (1.5, 0.7), (2.5, 1.0))
_CHOROID, _SCLERA = (12.0, 0.38), 0.18


def sample_subject(
    rng: np.random.Generator, threshold: float, horizon: float, min_visits: int, max_visits: int
) -> dict:
    """Visit times (years from the first visit), lesion sizes (mm), growth rate and label of one subject."""
    n = int(rng.integers(min_visits, max_visits + 1))
    cadence = float(np.exp(rng.uniform(np.log(0.25), np.log(1.5))))  # mean gap, years
    gaps = np.maximum(cadence * rng.gamma(2.0, 0.5, n - 1), 1.0 / 12.0)  # irregular, at least a month
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    size_last = float(rng.uniform(0.35, 0.85) * threshold)
    needed = (threshold - size_last) / horizon  # the rate that just reaches the threshold at the horizon
    rate = float(needed * np.exp(rng.uniform(-1.1, 1.1)))
    sizes = np.maximum(size_last - rate * (times[-1] - times), 0.0)  # 0 = not yet visible
    return {
        "times": times,
        "sizes": sizes,
        "rate": rate,
        "size_last": size_last,
        "label": _label(size_last, rate, threshold, horizon),
    }


def _label(size_last: float, rate: float, threshold: float, horizon: float) -> int:
    return int(size_last + rate * horizon >= threshold)


class _Anatomy:
    """One eye: layer boundary geometry, lesion position and a choroidal texture, fixed across visits."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = size
        scale = size / 64.0
        x = np.arange(size, dtype=np.float32)
        centre = (size - 1) / 2.0
        curvature, tilt = rng.uniform(-0.08, 0.12) * scale, rng.uniform(-0.12, 0.12)
        # A shallow foveal-like dip plus curvature and tilt of the inner retinal surface.
        self.ilm = (
            0.22 * size
            + curvature * ((x - centre) / (0.5 * size)) ** 2 * 10
            + tilt * (x - centre)
            + 2.0 * scale * np.exp(-0.5 * ((x - centre) / (0.12 * size)) ** 2)
        ).astype(np.float32)
        self.thickness = [t * scale * rng.uniform(0.85, 1.15) for t, _ in _LAYERS]
        self.choroid = _CHOROID[0] * scale * rng.uniform(0.85, 1.15)
        self.lesion_x = float(rng.uniform(0.4, 0.6) * size)
        self.texture = 1.0 + 0.35 * smooth_noise(rng, (size, size), 1.5 * scale)


def render_oct(anatomy: _Anatomy, size_mm: float, rng: np.random.Generator) -> np.ndarray:
    """One visit's B-scan (``H x W`` ``uint8``) with a lesion of width ``size_mm`` (fresh speckle per visit)."""
    n = anatomy.size
    scale = n / 64.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    half = 0.5 * size_mm * n / FIELD_OF_VIEW_MM
    lesion = np.clip(half + 0.75 - np.abs(np.arange(n, dtype=np.float32) - anatomy.lesion_x), 0.0, 1.0)
    shift = rng.uniform(-1.0, 1.0) * scale  # registration jitter between visits
    top = anatomy.ilm + shift
    echo = np.full((n, n), 0.03, dtype=np.float32)  # vitreous
    boundary = top.copy()
    for k, ((_, value), thick) in enumerate(zip(_LAYERS, anatomy.thickness)):
        if k == 4:  # outer nuclear layer thins over the atrophy
            thick = thick - 3.0 * scale * lesion
        if k in (5, 6):  # ellipsoid zone and RPE are lost over the atrophy
            value = value * (1.0 - 0.8 * lesion)
        lower = boundary + thick
        inside = (yy >= boundary[None, :]) & (yy < lower[None, :])
        echo = np.where(inside, np.broadcast_to(np.asarray(value, dtype=np.float32), (n,))[None, :], echo)
        boundary = lower
    rpe = boundary
    # Hypertransmission: with the RPE gone, light reaches the choroid and sclera, which brighten.
    boost = 1.0 + 1.4 * lesion[None, :]
    choroid = (yy >= rpe[None, :]) & (yy < (rpe + anatomy.choroid)[None, :])
    echo = np.where(choroid, _CHOROID[1] * anatomy.texture * boost, echo)
    echo = np.where(yy >= (rpe + anatomy.choroid)[None, :], _SCLERA * boost, echo)
    echo = _blur(echo.astype(np.float32), (0.6 * scale, 0.8 * scale))
    speckle = speckle_amplitude(complex_speckle(rng, (n, n), (0.5 * scale, 1.0 * scale)))
    gain = rng.uniform(0.92, 1.08)
    image = 255.0 * np.clip(gain * echo * (0.6 + 0.4 * speckle), 0.0, 1.0) ** 0.8
    return np.rint(image).astype(np.uint8)


def _write_group(
    item: tuple[int, list[str], str],
    out: Path,
    seed: int,
    threshold: float,
    horizon: float,
    image_size: int,
    min_visits: int,
    max_visits: int,
    num_pairs: int,
) -> tuple[list[dict], list[dict]]:
    """Render and write group ``g`` of :func:`make_timed_series` (a subject or a twin pair); its CSV rows."""
    cv2 = _cv2()
    g, member_ids, split = item
    series: list[dict] = []
    truth: list[dict] = []
    rng = item_rng(seed, "timed", g)
    subject = sample_subject(rng, threshold, horizon, min_visits, max_visits)
    anatomy = _Anatomy(rng, image_size)
    images = [render_oct(anatomy, s, rng) for s in subject["sizes"]]
    members = [(1.0, subject["rate"], subject["label"])]
    if g < num_pairs:
        # The twin: same images, visit gaps stretched by k, so its growth rate is r / k.
        k = float(np.exp(rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)))
        rate = subject["rate"] / k
        members.append((k, rate, _label(subject["size_last"], rate, threshold, horizon)))
    for m, (k, rate, label) in enumerate(members):
        sid = member_ids[m]
        start = float(rng.uniform(2008.0, 2016.0))
        folder = out / "images" / sid
        folder.mkdir(parents=True)
        for v, (image, size) in enumerate(zip(images, subject["sizes"])):
            rel = f"images/{sid}/{v}.png"
            if m == 0:
                if not cv2.imwrite(str(out / rel), image):
                    raise OSError(f"{out / rel}: OpenCV could not write the PNG")
            else:
                shutil.copyfile(out / f"images/{member_ids[0]}/{v}.png", out / rel)
            time = start + k * float(subject["times"][v])
            series.append({"subject_id": sid, "image_path": rel, "time": time, "label": label, "split": split})
            truth.append(
                {
                    "subject_id": sid,
                    "image_path": rel,
                    "time": time,
                    "lesion_size_mm": float(size),
                    "growth_rate_mm_per_year": rate,
                    "label": label,
                    "twin_of": member_ids[1 - m] if len(members) == 2 else "",
                }
            )
    return series, truth


def make_timed_series(
    root: str | Path,
    num_subjects: int = 60,
    seed: int = 0,
    horizon: float = 2.0,
    threshold: float = 1.0,
    image_size: int = 64,
    min_visits: int = 3,
    max_visits: int = 6,
    twin_fraction: float = 0.5,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    num_workers: int = 1,
) -> Path:
    """Write a synthetic irregularly timed image-series dataset to ``root``; skipped if already there.

    Files: ``images/<subject>/<visit>.png`` (``uint8`` grey, ``visit`` from 0), ``series.csv`` with one row per image
    (``subject_id,image_path,time,label,split``; ``time`` in calendar years, ``image_path`` relative to ``root``)
    and ``SyntheticTruth.csv`` (per image: lesion width in mm, subject growth rate in mm / year, twin partner).

    Args:
        horizon: years after the last visit within which crossing ``threshold`` makes the label 1.
        threshold: lesion width (mm) that defines conversion.
        twin_fraction: share of subjects that come in time-stretched pairs with identical images.
        num_workers: processes rendering the series (the files are the same for any number).
    """
    if num_subjects < 1 or not 2 <= min_visits <= max_visits:
        raise ValueError(
            f"need num_subjects >= 1 and 2 <= min_visits <= max_visits, got {num_subjects}, {min_visits}, {max_visits}"
        )
    if horizon <= 0 or threshold <= 0 or not 0.0 <= twin_fraction <= 1.0:
        raise ValueError(
            f"need horizon > 0, threshold > 0, 0 <= twin_fraction <= 1, got {horizon}, {threshold}, {twin_fraction}"
        )
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    params = {
        "num_subjects": num_subjects,
        "seed": seed,
        "horizon": horizon,
        "threshold": threshold,
        "image_size": image_size,
        "min_visits": min_visits,
        "max_visits": max_visits,
        "twin_fraction": twin_fraction,
        "split_fractions": list(split_fractions),
    }

    def writer(out: Path) -> None:
        meta = item_rng(seed, "timed-meta", 0)
        num_pairs = int(twin_fraction * num_subjects) // 2
        num_groups = num_subjects - num_pairs  # a group is one subject or one twin pair
        ids = [f"S{int(i):05d}" for i in meta.choice(100000, num_subjects, replace=False)]
        group_splits = assign_splits(meta, num_groups, split_fractions)
        # group g holds subject ids[offset:offset + 1 or 2]: the first num_pairs groups are twin pairs
        items = [
            (g, ids[g + min(g, num_pairs) : g + min(g, num_pairs) + (2 if g < num_pairs else 1)], group_splits[g])
            for g in range(num_groups)
        ]
        item = partial(
            _write_group,
            out=out,
            seed=seed,
            threshold=threshold,
            horizon=horizon,
            image_size=image_size,
            min_visits=min_visits,
            max_visits=max_visits,
            num_pairs=num_pairs,
        )
        rows = parallel_map(item, items, num_groups, "timed series", num_workers)
        series = [r for group in rows for r in group[0]]
        truth = [r for group in rows for r in group[1]]
        pd.DataFrame(series).to_csv(out / "series.csv", index=False)
        pd.DataFrame(truth).to_csv(out / "SyntheticTruth.csv", index=False)

    return write_dataset(root, "timed_series", params, writer)
