"""Ejection fraction from a per-frame LV mask sequence (single-plane apical view).

The LV area curve gives the cardiac phases: end-diastole (ED) is the largest and end-systole (ES) the smallest LV
of each beat. Beats are found as in EchoNet-Dynamic's beat-to-beat evaluation (``echonet/utils/video.py``:
``scipy.signal.find_peaks`` on the segmentation size with a minimum distance and a prominence): here peaks of the
smoothed area are ED frames and troughs ES frames; each ED is paired with the next ES before the following ED, the
EF of every beat is reported and their mean is the clip's EF.

Volumes use a single-plane method (Lang et al., ASE/EACVI chamber quantification 2015):

* ``"area_length"``: ``V = 8 A^2 / (3 pi L)``, A the mask area and L its long-axis length, taken as the extent of
  the mask along its principal axis. For an ellipse with semi-axes a >= b (the long-axis section of a prolate
  spheroid) ``A = pi a b`` and ``L = 2 a``, so V equals the spheroid volume ``4/3 pi a b^2`` exactly.
* ``"discs"``: the method of discs (Simpson's rule) on the mask: ``num_discs`` slabs of height ``h = L / num_discs``
  perpendicular to the long axis; each slab's diameter is its mask area divided by h, and
  ``V = sum(pi / 4 * d_i^2 * h)``.

Before areas and axes are measured, each frame's mask keeps only its largest connected component and has its holes
filled (:func:`clean_lv_masks`, MONAI ``KeepLargestConnectedComponent`` and ``FillHoles``): a few false-positive pixels
far from the LV would otherwise stretch the principal-axis length L and corrupt every area-length volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from monai.transforms import FillHoles, KeepLargestConnectedComponent
from scipy.ndimage import uniform_filter1d
from scipy.signal import find_peaks

__all__ = [
    "Beat",
    "EFResult",
    "clean_lv_masks",
    "mask_area",
    "long_axis",
    "area_length_volume",
    "disc_volume_from_mask",
    "mask_volume",
    "ef_from_masks",
    "implausible_masks",
]

VolumeMethod = Literal["area_length", "discs"]


def _spacing(pixel_spacing: float | Sequence[float]) -> tuple[float, float]:
    sp = np.broadcast_to(np.asarray(pixel_spacing, dtype=np.float64), (2,))
    if np.any(sp <= 0):
        raise ValueError(f"pixel_spacing must be positive, got {pixel_spacing}.")
    return float(sp[0]), float(sp[1])


def _as_masks(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks)
    return m if m.dtype == bool else m > 0


def clean_lv_masks(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per frame of ``T x H x W`` (or one ``H x W``) masks: the largest 8-connected component, holes filled.

    Holes are background regions not 4-connected to the image border (the topological partner of 8-connected
    foreground). Frames are processed independently; an empty frame stays empty.
    """
    m = _as_masks(masks)
    single = m.ndim == 2
    frames = m[None] if single else m
    if frames.ndim != 3:
        raise ValueError(f"clean_lv_masks expects H x W or T x H x W masks, got shape {m.shape}.")
    if frames.shape[0] == 0:
        return m
    # the frames as one-hot channels; FillHoles treats channel 0 as background, so a blank channel goes first
    onehot = torch.as_tensor(np.concatenate([np.zeros_like(frames[:1]), frames]))
    labels = list(range(1, onehot.shape[0]))
    onehot = KeepLargestConnectedComponent(applied_labels=labels, is_onehot=True, connectivity=2)(onehot)
    onehot = FillHoles(applied_labels=labels, connectivity=1)(onehot)
    out = np.asarray(onehot[1:]).astype(bool)
    return out[0] if single else out


def mask_area(masks: np.ndarray | torch.Tensor, pixel_spacing: float | Sequence[float] = 1.0) -> np.ndarray | float:
    """Area of ``H x W`` or ``T x H x W`` masks (foreground ``> 0``) in units of ``pixel_spacing`` squared."""
    m = _as_masks(masks)
    dy, dx = _spacing(pixel_spacing)
    area = m.sum(axis=(-2, -1)) * dy * dx
    return float(area) if np.ndim(area) == 0 else area.astype(np.float64)


def long_axis(
    mask: np.ndarray | torch.Tensor, pixel_spacing: float | Sequence[float] = 1.0
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Principal (long) axis of one ``H x W`` mask in physical units.

    Returns:
        ``(length, direction, along, across)``: the extent of the mask along its principal axis (the pixel squares'
        union, i.e. centre extent plus one pixel's projected width), the unit direction ``(dy, dx)``, and every
        foreground pixel centre's coordinate along and across the axis.
    """
    m = _as_masks(mask)
    if m.ndim != 2:
        raise ValueError(f"long_axis expects one H x W mask, got shape {m.shape}.")
    dy, dx = _spacing(pixel_spacing)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return 0.0, np.array([1.0, 0.0]), np.zeros(0), np.zeros(0)
    pts = np.stack([ys * dy, xs * dx], axis=1)
    pts -= pts.mean(axis=0)
    # eigenvector of the largest eigenvalue of the 2 x 2 covariance = principal axis
    _, vecs = np.linalg.eigh(pts.T @ pts)
    u = vecs[:, -1]
    v = np.array([-u[1], u[0]])
    along, across = pts @ u, pts @ v
    footprint = abs(u[0]) * dy + abs(u[1]) * dx  # width of one pixel square projected on the axis
    return float(along.max() - along.min() + footprint), u, along, across


def area_length_volume(mask: np.ndarray | torch.Tensor, pixel_spacing: float | Sequence[float] = 1.0) -> float:
    """Single-plane area-length volume ``8 A^2 / (3 pi L)`` of one ``H x W`` mask (0 for an empty mask)."""
    area = mask_area(mask, pixel_spacing)
    length = long_axis(mask, pixel_spacing)[0]
    return 0.0 if length == 0 else 8.0 * area**2 / (3.0 * np.pi * length)


def disc_volume_from_mask(
    mask: np.ndarray | torch.Tensor, pixel_spacing: float | Sequence[float] = 1.0, num_discs: int = 20
) -> float:
    """Single-plane method-of-discs volume of one ``H x W`` mask: ``num_discs`` slabs perpendicular to the long axis,
    each of diameter (slab area / slab height)."""
    if num_discs < 1:
        raise ValueError(f"num_discs must be positive, got {num_discs}.")
    dy, dx = _spacing(pixel_spacing)
    length, _, along, _ = long_axis(mask, pixel_spacing)
    if length == 0:
        return 0.0
    h = length / num_discs
    # assign each pixel centre to a slab along the axis; the pixel-union extent starts half a footprint earlier
    start = along.min() - (length - (along.max() - along.min())) / 2.0
    slab = np.clip(((along - start) / h).astype(np.int64), 0, num_discs - 1)
    slab_area = np.bincount(slab, minlength=num_discs) * dy * dx
    diameters = slab_area / h
    return float(np.sum(np.pi / 4.0 * diameters**2 * h))


def mask_volume(
    masks: np.ndarray | torch.Tensor,
    pixel_spacing: float | Sequence[float] = 1.0,
    method: VolumeMethod = "area_length",
    num_discs: int = 20,
) -> np.ndarray:
    """Per-frame volumes of ``T x H x W`` masks by ``method`` (``"area_length"`` or ``"discs"``)."""
    m = _as_masks(masks)
    if m.ndim != 3:
        raise ValueError(f"mask_volume expects T x H x W masks, got shape {m.shape}.")
    if method == "area_length":
        return np.array([area_length_volume(f, pixel_spacing) for f in m], dtype=np.float64)
    if method == "discs":
        return np.array([disc_volume_from_mask(f, pixel_spacing, num_discs) for f in m], dtype=np.float64)
    raise ValueError(f"unknown volume method {method!r}; use 'area_length' or 'discs'.")


@dataclass(frozen=True)
class Beat:
    """One cardiac cycle: ED and ES frame indices, their areas and volumes, and the EF in percent."""

    ed_frame: int
    es_frame: int
    edv: float
    esv: float
    ef: float
    ed_area: float = float("nan")
    es_area: float = float("nan")


@dataclass(frozen=True)
class EFResult:
    """EF of a mask sequence.

    Attributes:
        ef: mean EF over the beats, in percent.
        beats: the beats found (one global ED/ES pair when no complete beat was detected).
        area: per-frame LV area (pixel_spacing units squared) of the cleaned masks.
        volume: per-frame LV volume (pixel_spacing units cubed; mL for cm spacing) of the cleaned masks.
        method: the volume method used.
        curve: the smoothed area curve the ED/ES frames were picked on.
    """

    ef: float
    beats: list[Beat]
    area: np.ndarray = field(repr=False)
    volume: np.ndarray = field(repr=False)
    method: str = "area_length"
    curve: np.ndarray | None = field(default=None, repr=False)

    @property
    def ed_frames(self) -> list[int]:
        """ED frame of every beat."""
        return [b.ed_frame for b in self.beats]

    @property
    def es_frames(self) -> list[int]:
        """ES frame of every beat."""
        return [b.es_frame for b in self.beats]


def ef_from_masks(
    masks: np.ndarray | torch.Tensor,
    pixel_spacing: float | Sequence[float] = 1.0,
    method: VolumeMethod = "area_length",
    min_distance: int = 20,
    smooth: int = 5,
    prominence: float | None = None,
    num_discs: int = 20,
    clean: bool = True,
) -> EFResult:
    """EF (percent) from a ``T x H x W`` LV mask sequence, beat by beat.

    Args:
        masks: per-frame LV masks (foreground ``> 0``; logits thresholded at 0 work as is).
        pixel_spacing: ``(dy, dx)`` or one value, in the unit of the reported areas / volumes (cm gives mL).
        method: ``"area_length"`` or ``"discs"`` (see the module docstring).
        min_distance: minimum frames between two ED (or two ES) frames, as EchoNet's ``distance=20`` at 50 fps.
        smooth: width in frames of the moving average applied to the area curve before peak finding (1 = none).
        prominence: minimum peak prominence of the smoothed area; default a quarter of its 5th-95th percentile range.
        num_discs: discs for ``method="discs"``.
        clean: keep each frame's largest connected component and fill its holes first (:func:`clean_lv_masks`).

    Returns:
        An :class:`EFResult`; ED/ES frames are picked on the area curve, EF uses the volumes at those frames.
    """
    m = _as_masks(masks)
    if m.ndim != 3 or m.shape[0] < 2:
        raise ValueError(f"ef_from_masks expects T x H x W masks with T >= 2, got shape {m.shape}.")
    if clean:
        m = clean_lv_masks(m)
    area = np.asarray(mask_area(m, pixel_spacing), dtype=np.float64)
    if not np.any(area > 0):
        raise ValueError("ef_from_masks: every mask is empty; no LV to measure.")
    volume = mask_volume(m, pixel_spacing, method, num_discs)

    curve = uniform_filter1d(area, size=max(1, int(smooth)), mode="nearest") if smooth > 1 else area
    if prominence is None:
        p5, p95 = np.percentile(curve, [5, 95])
        prominence = max((p95 - p5) / 4.0, 1e-12)
    ed_peaks, _ = find_peaks(curve, distance=max(1, int(min_distance)), prominence=prominence)
    es_peaks, _ = find_peaks(-curve, distance=max(1, int(min_distance)), prominence=prominence)

    beats: list[Beat] = []
    for k, ed in enumerate(ed_peaks):
        nxt = ed_peaks[k + 1] if k + 1 < len(ed_peaks) else len(curve)
        following = es_peaks[(es_peaks > ed) & (es_peaks < nxt)]
        if following.size == 0:
            continue
        # refine on the raw area within a smoothing half-width: the smoothed peak may sit a frame off
        ed_f = _refine(area, int(ed), smooth, np.argmax)
        es_f = _refine(area, int(following[0]), smooth, np.argmin)
        beats.append(_beat(ed_f, es_f, area, volume))
    if not beats:
        # no complete beat detected (e.g. a clip shorter than one cycle): one global ED/ES pair by area
        beats.append(_beat(int(np.argmax(area)), int(np.argmin(area)), area, volume))
    return EFResult(
        ef=float(np.mean([b.ef for b in beats])), beats=beats, area=area, volume=volume, method=str(method), curve=curve
    )


def _refine(area: np.ndarray, centre: int, smooth: int, pick: Callable[[np.ndarray], np.intp]) -> int:
    half = max(0, int(smooth) // 2)
    lo, hi = max(0, centre - half), min(len(area), centre + half + 1)
    return lo + int(pick(area[lo:hi]))


def _beat(ed: int, es: int, area: np.ndarray, volume: np.ndarray) -> Beat:
    edv, esv = float(volume[ed]), float(volume[es])
    if edv <= 0:
        raise ValueError(f"ef_from_masks: the ED frame {ed} has an empty mask; cannot compute an EF.")
    return Beat(
        ed_frame=ed,
        es_frame=es,
        edv=edv,
        esv=esv,
        ef=100.0 * (edv - esv) / edv,
        ed_area=float(area[ed]),
        es_area=float(area[es]),
    )


def implausible_masks(result: EFResult, frame_pixels: int, max_cover: float = 0.5, min_area_ratio: float = 0.2) -> str:
    """Why the masks behind an EF cannot be a left ventricle ("" when nothing is wrong), for the EF reports.

    Two checks that no heart passes: a mask covering more than ``max_cover`` of the frame (the LV of an apical view
    covers about 5-25 % of it), and a beat whose ES area is under ``min_area_ratio`` of its ED area (an area-length EF
    above about 95 %). Both are what a model that segments only frames like its traced training frames gives on the
    others: whole-frame masks taken as ED (``unilvseg_echo_lv_segmentation/docs/README.md``, "EF at the recipe
    settings").

    Args:
        result: :func:`ef_from_masks`'s result; ``area`` in pixels (``pixel_spacing`` 1).
        frame_pixels: ``H * W`` of the frames.
        max_cover, min_area_ratio: the two limits.
    """
    reasons = []
    area = np.asarray(result.area, dtype=np.float64)
    if area.size and frame_pixels > 0:
        worst = int(np.argmax(area))
        cover = float(area[worst]) / float(frame_pixels)
        if cover > max_cover:
            n = int(np.sum(area > max_cover * frame_pixels))
            reasons.append(
                f"the mask covers {cover:.0%} of the frame at frame {worst} ({n} of {area.size} frames over "
                f"{max_cover:.0%})"
            )
    ratios = [b.es_area / b.ed_area for b in result.beats if b.ed_area > 0 and np.isfinite(b.es_area)]
    if ratios and min(ratios) < min_area_ratio:
        reasons.append(f"an ES area is {min(ratios):.0%} of its ED area (under {min_area_ratio:.0%})")
    return "; ".join(reasons)
