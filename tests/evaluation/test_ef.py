from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from medssl_monai.evaluation.ef import (
    area_length_volume,
    disc_volume_from_mask,
    ef_from_masks,
    long_axis,
    mask_area,
    mask_volume,
)

SIZE = 112


def _ellipse(a: float, b: float, rotation: float = 0.3) -> np.ndarray:
    """Rasterised ellipse, long semi-axis ``a`` (rows before rotation), short semi-axis ``b``."""
    m = np.zeros((SIZE, SIZE), dtype=bool)
    r, c = ellipse(SIZE / 2, SIZE / 2, a, b, shape=m.shape, rotation=rotation)
    m[r, c] = True
    return m


def _spheroid(a: float, b: float) -> float:
    return 4.0 / 3.0 * np.pi * a * b * b


def test_single_ellipse_volumes() -> None:
    m = _ellipse(40, 20)
    length, direction, _, _ = long_axis(m)
    assert length == pytest.approx(80, abs=1.5)
    # principal axis = skimage's rotated row axis, (dy, dx) = +-(cos 0.3, sin 0.3)
    assert abs(direction @ np.array([np.cos(0.3), np.sin(0.3)])) == pytest.approx(1.0, abs=1e-3)
    assert mask_area(m) == pytest.approx(np.pi * 40 * 20, rel=0.01)
    assert area_length_volume(m) == pytest.approx(_spheroid(40, 20), rel=0.02)
    assert disc_volume_from_mask(m) == pytest.approx(_spheroid(40, 20), rel=0.02)
    # anisotropic spacing: a 0.1 cm pixel gives mL (cm^3) = px^3 / 1000
    assert area_length_volume(m, pixel_spacing=0.1) == pytest.approx(area_length_volume(m) / 1000)


def test_empty_mask_volume_is_zero() -> None:
    empty = np.zeros((4, 8, 8), dtype=bool)
    np.testing.assert_array_equal(mask_volume(empty), 0.0)
    np.testing.assert_array_equal(mask_volume(empty, method="discs"), 0.0)


@pytest.mark.parametrize("method", ["area_length", "discs"])
def test_ef_from_beating_ellipses_matches_analytic(method: str) -> None:
    # 2.5 cycles of 40 frames: ED (a=40, b=20) at frames 0, 40, 80; ES (a=32, b=14) at 20, 60
    t = np.arange(100)
    phase = (1 + np.cos(2 * np.pi * t / 40)) / 2
    masks = np.stack([_ellipse(32 + 8 * p, 14 + 6 * p) for p in phase])
    analytic = 100 * (1 - _spheroid(32, 14) / _spheroid(40, 20))  # 60.8
    res = ef_from_masks(masks, method=method, min_distance=20)
    assert res.beats and res.ed_frames == [40] and res.es_frames == [60]
    assert res.ef == pytest.approx(analytic, abs=2.0)
    assert res.area.shape == res.volume.shape == (100,)


def test_two_beats_and_fallback() -> None:
    # 3 full cycles starting mid-systole -> peaks at 10, 50, 90 (ED), troughs at 30, 70, 110
    t = np.arange(120)
    phase = (1 + np.cos(2 * np.pi * (t - 10) / 40)) / 2
    masks = np.stack([_ellipse(30 + 10 * p, 14 + 6 * p, rotation=0.0) for p in phase])
    res = ef_from_masks(masks)
    assert res.ed_frames == [10, 50, 90] and res.es_frames == [30, 70, 110]
    assert res.ef == pytest.approx(np.mean([b.ef for b in res.beats]))
    assert res.ef == pytest.approx(100 * (1 - _spheroid(30, 14) / _spheroid(40, 20)), abs=2.0)
    # a half cycle has no complete detected beat: the global largest / smallest frames are used
    short = ef_from_masks(masks[10:31])
    assert short.ed_frames == [0] and short.es_frames == [20]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="every mask is empty"):
        ef_from_masks(np.zeros((5, 8, 8)))
    with pytest.raises(ValueError, match="T x H x W"):
        ef_from_masks(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="unknown volume method"):
        mask_volume(np.ones((2, 4, 4)), method="simpson")
