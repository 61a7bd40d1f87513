"""TVRL two-view sampling (videos and timed series), time steps, random resized crop, probe pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_monai.transforms.tvrl import (
    ClipTimesd,
    RandClipResizedCropd,
    RelativeTimesd,
    TwoClipsd,
    TwoSeriesWindowsd,
    tvrl_mae_augmentation,
    tvrl_probe_transforms,
    tvrl_ssl_transforms,
)


def _series(n: int = 5) -> dict:
    img = torch.arange(n, dtype=torch.uint8).reshape(1, n, 1, 1).expand(1, n, 4, 4).contiguous()
    return {
        "image": img,
        "times": torch.tensor([2.0, 2.5, 4.0, 7.0, 7.2][:n]),
        "frame_mask": torch.ones(n, dtype=torch.bool),
    }


def test_series_windows_keep_real_relative_times():
    t = TwoSeriesWindowsd(num_frames=3, identical=False)
    t.set_random_state(0)
    d = t(_series())
    for suffix in ("", "_2"):
        first = int(d[f"image{suffix}"][0, 0, 0, 0])
        visits = [first, first + 1, first + 2]
        assert d[f"image{suffix}"][0, :, 0, 0].tolist() == visits
    origin = [2.0, 2.5, 4.0, 7.0, 7.2][int(d["image"][0, 0, 0, 0])]
    expected = [
        [2.0, 2.5, 4.0, 7.0, 7.2][v] - origin
        for v in range(int(d["image_2"][0, 0, 0, 0]), int(d["image_2"][0, 0, 0, 0]) + 3)
    ]
    np.testing.assert_allclose(d["times_2"].numpy(), expected, rtol=1e-6)


def test_short_series_are_left_padded_and_masked():
    d = TwoSeriesWindowsd(num_frames=4, identical=True)(_series(2))
    assert d["frame_mask"].tolist() == [False, False, True, True]
    assert d["image"][0, :, 0, 0].tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(d["times"].numpy()[2:], [0.0, 0.5])
    assert torch.equal(d["image"], d["image_2"])


def test_series_views_of_fewer_visits_than_slots_with_their_own_time_origin():
    times = [2.0, 2.5, 4.0, 7.0, 7.2]
    t = TwoSeriesWindowsd(num_frames=4, identical=False, window="random", visits=2, view_origin=True)
    t.set_random_state(0)
    starts = set()
    for _ in range(8):
        d = t(_series())
        for suffix in ("", "_2"):
            # 2 consecutive visits left-padded to 4 slots; times in years since the view's own first visit
            assert d[f"frame_mask{suffix}"].tolist() == [False, False, True, True]
            first = int(d[f"image{suffix}"][0, 2, 0, 0])
            assert d[f"image{suffix}"][0, :, 0, 0].tolist() == [0, 0, first, first + 1]
            np.testing.assert_allclose(
                d[f"times{suffix}"].numpy(), [0.0, 0.0, 0.0, times[first + 1] - times[first]], rtol=1e-5, atol=1e-6
            )
            starts.add(first)
    assert starts == {0, 1, 2, 3}  # every start of a 2-visit window of 5 visits is drawn
    # without view_origin the second view keeps its offset from the first view's first visit
    t = TwoSeriesWindowsd(num_frames=4, identical=False, window="random", visits=2)
    t.set_random_state(1)
    d = t(_series())
    a, b = int(d["image"][0, 2, 0, 0]), int(d["image_2"][0, 2, 0, 0])
    np.testing.assert_allclose(d["times_2"].numpy()[2:], [times[b] - times[a], times[b + 1] - times[a]], atol=1e-6)
    with pytest.raises(ValueError, match="visits must be in 1..num_frames"):
        TwoSeriesWindowsd(num_frames=4, visits=5)


def test_two_clips_from_a_video(tmp_path):
    frames = (
        np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    )
    np.save(tmp_path / "v.npy", frames)  # T x H x W x C
    same = TwoClipsd(num_frames=3, period=2, identical=True, cache_dir=tmp_path / "c")
    same.set_random_state(1)
    d = same({"image": str(tmp_path / "v.npy")})
    assert d["image"].shape == (1, 3, 4, 4) and torch.equal(d["image"], d["image_2"])
    assert d["times"].tolist() == [0.0, 2.0, 4.0]
    diff = TwoClipsd(num_frames=3, period=2, identical=False, cache_dir=tmp_path / "c")
    diff.set_random_state(3)
    d = diff({"image": str(tmp_path / "v.npy")})
    start0, start1 = int(d["image"][0, 0, 0, 0]), int(d["image_2"][0, 0, 0, 0])
    assert start0 != start1
    assert d["times_2"].tolist() == [start1 - start0 + 2.0 * k for k in range(3)]  # the offset between views is kept


def test_clip_times_and_relative_times():
    d = ClipTimesd(period=2)({"clip_indices": np.array([10, 12, -1])})
    assert d["times"].tolist() == [0.0, 2.0, 4.0] and d["frame_mask"].tolist() == [True, True, False]
    r = RelativeTimesd()({"times": torch.tensor([0.0, 3.0, 4.5]), "frame_mask": torch.tensor([False, True, True])})
    assert r["times"].tolist() == [0.0, 0.0, 1.5]


def test_random_resized_crop_one_draw_for_all_frames() -> None:
    """One box per clip: identical frames stay identical, frames offset by a constant stay offset by it (within the
    uint8 rounding), the box honours the scale range, and two draws crop different boxes."""
    image = torch.randint(0, 200, (1, 1, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    same = image.expand(1, 5, 20, 20).contiguous()  # C x T x H x W: five copies of one frame
    shifted = same + (10 * torch.arange(5, dtype=torch.uint8)).reshape(1, 5, 1, 1)  # frame t = frame 0 + 10 t
    t = RandClipResizedCropd(keys=["image", "shifted"], spatial_size=8, scale=(0.2, 0.5))
    t.set_random_state(0)
    d = t({"image": same, "shifted": shifted})
    out, box = d["image"], t.box
    top, left, h, w = box
    assert out.shape == (1, 5, 8, 8) and out.dtype == torch.uint8 and h == w and 0.2 * 400 <= h * w <= 0.5 * 400 + 40
    for k in range(1, 5):
        assert torch.equal(out[:, k], out[:, 0])  # a different box per frame would change the content
        diff = d["shifted"][:, k].int() - d["shifted"][:, 0].int()
        assert diff.min() >= 10 * k - 1 and diff.max() <= 10 * k + 1
    assert torch.equal(d["shifted"][:, 0], out[:, 0])  # the second key got the same box as the first
    # the box was really cropped: not the whole frame resized
    whole = RandClipResizedCropd(spatial_size=8, prob=0.0)({"image": same})["image"]
    assert not torch.equal(out, whole)
    # a second draw crops another box, again one for all frames
    out2 = t({"image": same, "shifted": shifted})["image"]
    assert t.box != box and not torch.equal(out2, out)
    assert all(torch.equal(out2[:, k], out2[:, 0]) for k in range(5))


def test_pipelines_on_tiny_data(tiny_data, tmp_path):
    from medssl_monai.data.timed_series import load_timed_series_datalist

    item = load_timed_series_datalist(tiny_data["timed_series"] / "series.csv", split="TRAIN")[0]
    d = tvrl_ssl_transforms("series", num_frames=4, identical=False, spatial_size=16)(item)
    assert d["image"].shape == (1, 4, 16, 16) and d["image_2"].shape == (1, 4, 16, 16)
    assert d["image"].dtype == torch.uint8 and d["times"].dtype == torch.float32
    p = tvrl_probe_transforms("series", "eval", num_frames=4, spatial_size=16)(item)
    assert p["image"].shape == (1, 4, 16, 16) and p["frame_mask"].sum() == len(item["times"][-4:])


def test_mae_view_is_one_lightly_augmented_clip(tiny_data):
    # the reference's cardiac_aug_mae: Resize + RandomHorizontalFlip(0.5); one clip, no second view
    from medssl_monai.data.timed_series import load_timed_series_datalist

    names = [type(t).__name__ for t in tvrl_mae_augmentation("image", 16)]
    assert names == ["ClipConsistentd", "ClipConsistentd"]
    item = load_timed_series_datalist(tiny_data["timed_series"] / "series.csv", split="TRAIN")[0]
    tf = tvrl_ssl_transforms("series", num_frames=4, spatial_size=16, augmentation="mae", num_views=1)
    d = tf(item)
    assert d["image"].shape == (1, 4, 16, 16) and "image_2" not in d and "times_2" not in d
    # no crop, rotation or intensity change: each frame is the resized image or its mirror
    plain = tvrl_ssl_transforms("series", num_frames=4, spatial_size=16, augment=False, num_views=1)(item)["image"]
    assert torch.equal(d["image"], plain) or torch.equal(d["image"], plain.flip(-1))
