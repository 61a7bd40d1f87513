from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from medssl_monai.evaluation.ef import (
    area_length_volume,
    clean_lv_masks,
    disc_volume_from_mask,
    ef_from_masks,
    implausible_masks,
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


def test_clean_lv_masks_keeps_largest_component_and_fills_holes() -> None:
    m = np.zeros((2, 20, 20), dtype=bool)
    m[0, 5:15, 5:15] = True
    m[0, 8:10, 8:10] = False  # an enclosed 2 x 2 hole
    m[0, 0, 19] = True  # a stray pixel
    m[1, 2:6, 2:6] = True  # a 16-pixel blob beside the 64-pixel LV
    m[1, 10:18, 10:18] = True
    cleaned = clean_lv_masks(m)
    expected0 = np.zeros((20, 20), dtype=bool)
    expected0[5:15, 5:15] = True
    np.testing.assert_array_equal(cleaned[0], expected0)
    np.testing.assert_array_equal(cleaned[1], np.pad(np.ones((8, 8), bool), ((10, 2), (10, 2))))
    # a notch open to the outside is not a hole; an empty frame stays empty; one H x W mask works too
    notch = np.zeros((12, 12), dtype=bool)
    notch[2:10, 2:10] = True
    notch[5:7, 2:6] = False
    np.testing.assert_array_equal(clean_lv_masks(notch), notch)
    assert not clean_lv_masks(np.zeros((3, 8, 8), bool)).any()


@pytest.mark.parametrize("method", ["area_length", "discs"])
def test_stray_pixels_leave_the_ef_unchanged(method: str) -> None:
    t = np.arange(100)
    phase = (1 + np.cos(2 * np.pi * t / 40)) / 2
    masks = np.stack([_ellipse(32 + 8 * p, 14 + 6 * p) for p in phase])
    clean_ef = ef_from_masks(masks, method=method)
    noisy = masks.copy()
    noisy[:, 2, 2] = True  # false positives far from the LV in every frame (the ES ones decide the EF)
    noisy[::3, 108, 100:103] = True
    noisy[:, 56, 56] = False  # and a hole inside the LV
    assert ef_from_masks(noisy, method=method).ef == pytest.approx(clean_ef.ef, abs=1e-9)
    if method == "area_length":  # without the clean-up the stray pixels stretch L and move the EF by points
        raw = ef_from_masks(noisy, method=method, clean=False)
        assert abs(raw.ef - clean_ef.ef) > 3.0


def test_beats_carry_areas() -> None:
    t = np.arange(100)
    phase = (1 + np.cos(2 * np.pi * t / 40)) / 2
    masks = np.stack([_ellipse(32 + 8 * p, 14 + 6 * p) for p in phase])
    res = ef_from_masks(masks)
    for b in res.beats:
        assert b.ed_area == res.area[b.ed_frame] == masks[b.ed_frame].sum()
        assert b.es_area == res.area[b.es_frame] == masks[b.es_frame].sum()
    assert res.curve is not None and res.curve.shape == res.area.shape


def test_implausible_masks_names_whole_frame_masks_and_impossible_beats() -> None:
    t = np.arange(100)
    phase = (1 + np.cos(2 * np.pi * t / 40)) / 2
    beating = np.stack([_ellipse(32 + 8 * p, 14 + 6 * p) for p in phase])  # EF 61, up to 20 % of the frame
    assert implausible_masks(ef_from_masks(beating), SIZE * SIZE) == ""
    broken = beating.copy()
    broken[[10, 11, 50]] = True  # three whole frames
    msg = implausible_masks(ef_from_masks(broken), SIZE * SIZE)
    assert msg.startswith("the mask covers 100% of the frame at frame 10 (3 of 100 frames over 50%)")
    tiny = np.stack([_ellipse(32 + 8 * p, 14 + 6 * p) if p > 0.1 else _ellipse(8, 4) for p in phase])
    res = ef_from_masks(tiny)
    ratio = min(b.es_area / b.ed_area for b in res.beats)
    assert ratio < 0.2
    assert implausible_masks(res, SIZE * SIZE) == f"an ES area is {ratio:.0%} of its ED area (under 20%)"
    assert implausible_masks(res, SIZE * SIZE, min_area_ratio=0.01) == ""
