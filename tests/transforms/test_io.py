"""LoadClipd, LoadSeriesd, LoadTracingMaskd on tiny hand-made sources."""

from __future__ import annotations

import pickle

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from medssl_monai.data.cache import ClipCache
from medssl_monai.data.video import read_video, write_video
from medssl_monai.errors import DataError, TracingError
from medssl_monai.transforms.io import LoadClipd, LoadSeriesd, LoadTracingMaskd


def _rgb_frames(t: int = 12, h: int = 16, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture
def npy_video(tmp_path):
    frames = _rgb_frames()
    path = tmp_path / "123.npy"
    np.save(path, frames)
    return path, frames


def test_loadclipd_shape_dtype_and_frames_at_indices(npy_video, tmp_path):
    path, frames = npy_video
    t = LoadClipd(num_frames=5, period=2, mode="random", cache_dir=tmp_path / "cache")
    t.set_random_state(3)
    d = t({"image": str(path)})
    clip, idx = d["image"], d["clip_indices"]
    assert isinstance(clip, torch.Tensor) and clip.dtype == torch.uint8 and clip.is_contiguous()
    assert tuple(clip.shape) == (3, 5, 16, 20)
    assert np.all(np.diff(idx) == 2) and (idx >= 0).all()
    np.testing.assert_array_equal(clip.numpy(), frames[idx].transpose(3, 0, 1, 2))
    assert d["target_index"] == -1
    assert d["image_meta_dict"]["num_video_frames"] == 12


def test_loadclipd_cached_and_uncached_identical(npy_video, tmp_path):
    path, _ = npy_video
    cached = LoadClipd(num_frames=6, mode="random", cache_dir=tmp_path / "cache")
    uncached = LoadClipd(num_frames=6, mode="random", cache=ClipCache(enabled=False))
    for seed in range(3):
        a = cached.set_random_state(seed)({"image": path})
        b = uncached.set_random_state(seed)({"image": path})
        assert np.array_equal(a["clip_indices"], b["clip_indices"])
        assert torch.equal(a["image"], b["image"])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # one decoded entry


def test_loadclipd_avi_matches_direct_decode(tmp_path):
    path = write_video(tmp_path / "0X1.avi", _rgb_frames(t=10, h=16, w=16))
    decoded = read_video(path)
    t = LoadClipd(num_frames=4, mode="contains", frame_key="frame_index", cache_dir=tmp_path / "c")
    t.set_random_state(0)
    d = t({"image": str(path), "frame_index": 7})
    idx = d["clip_indices"]
    assert idx[d["target_index"]] == 7
    np.testing.assert_array_equal(d["image"].numpy(), decoded[idx].transpose(3, 0, 1, 2))


def test_loadclipd_short_video_zero_frames_and_repeat(npy_video):
    path, frames = npy_video  # 12 frames
    d = LoadClipd(num_frames=16, mode="start", cache=False)({"image": path})
    assert d["clip_indices"].tolist() == list(range(12)) + [-1] * 4
    assert d["image"][:, 12:].sum() == 0
    np.testing.assert_array_equal(d["image"][:, :12].numpy(), frames.transpose(3, 0, 1, 2))
    d = LoadClipd(num_frames=16, mode="start", cache=False, pad_mode="repeat")({"image": path})
    np.testing.assert_array_equal(d["image"][:, 15].numpy(), frames[11].transpose(2, 0, 1))


def test_loadclipd_center_and_all(npy_video):
    path, frames = npy_video
    d = LoadClipd(num_frames=4, mode="center", frame_key="frame_index", cache=False)({"image": path, "frame_index": 11})
    assert d["clip_indices"].tolist() == [8, 9, 10, 11] and d["target_index"] == 3
    d = LoadClipd(mode="all", cache=False)({"image": path})
    assert d["image"].shape[1] == 12


def test_loadclipd_channels(tmp_path):
    rgb = _rgb_frames(t=3, h=4, w=5)
    np.save(tmp_path / "rgb.npy", rgb)
    grey = np.repeat(rgb[..., :1], 3, axis=-1)  # grey stored as RGB: channel 0 is exact
    np.save(tmp_path / "grey.npy", grey)
    d = LoadClipd(num_frames=3, mode="start", channels=1, cache=False)({"image": tmp_path / "grey.npy"})
    np.testing.assert_array_equal(d["image"][0].numpy(), rgb[..., 0])
    d = LoadClipd(num_frames=3, mode="start", channels=1, cache=False)({"image": tmp_path / "rgb.npy"})
    lum = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    assert np.abs(d["image"][0].numpy().astype(float) - lum).max() <= 1  # OpenCV fixed-point rounding
    np.save(tmp_path / "one.npy", rgb[..., 0])
    d = LoadClipd(num_frames=3, mode="start", channels=3, cache=False)({"image": tmp_path / "one.npy"})
    assert d["image"].shape[0] == 3 and torch.equal(d["image"][0], d["image"][2])


def test_loadclipd_frame_folder(tmp_path):
    frames = _rgb_frames(t=4, h=8, w=8)
    folder = tmp_path / "Video_3"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), f[..., ::-1])
    d = LoadClipd(num_frames=2, mode="start", cache=False)({"image": folder, "label": 2})
    np.testing.assert_array_equal(d["image"].numpy(), frames[:2].transpose(3, 0, 1, 2))
    assert d["label"] == 2


def test_loadclipd_reproducible_with_set_random_state(npy_video):
    path, _ = npy_video
    t = LoadClipd(num_frames=3, mode="random", cache=False)
    a = [t.set_random_state(7)({"image": path})["clip_indices"].tolist() for _ in range(2)]
    assert a[0] == a[1]
    draws = {tuple(t({"image": path})["clip_indices"]) for _ in range(20)}
    assert len(draws) > 1


def test_loadclipd_errors_name_the_file(npy_video, tmp_path):
    path, _ = npy_video
    t = LoadClipd(num_frames=4, mode="center", frame_key="frame_index", cache=False)
    with pytest.raises(DataError, match="123.npy.*outside"):
        t({"image": path, "frame_index": 12})
    with pytest.raises(DataError, match="missing.avi"):
        LoadClipd(cache_dir=tmp_path / "c")({"image": tmp_path / "missing.avi"})
    with pytest.raises(ValueError, match="frame_key"):
        LoadClipd(mode="contains")


def test_loadclipd_pickles_and_runs_in_workers(npy_video, tmp_path):
    path, frames = npy_video
    t = LoadClipd(num_frames=4, mode="start", cache_dir=tmp_path / "cache")
    t2 = pickle.loads(pickle.dumps(t))
    assert torch.equal(t2({"image": path})["image"], t({"image": path})["image"])
    loader = DataLoader(Dataset([{"image": str(path)}] * 2, transform=t), batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (2, 3, 4, 16, 20) and batch["image"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["image"][1].numpy(), frames[:4].transpose(3, 0, 1, 2))


# ---------------------------------------------------------------------------------------------- tracing masks


def _diamond_rows(cx: float, cy: float, r: float) -> list[list[float]]:
    # long axis, then three chords: the apex (degenerate), the widest chord, the base (degenerate)
    return [[cx, cy - r, cx, cy + r], [cx, cy - r, cx, cy - r], [cx - r, cy, cx + r, cy], [cx, cy + r, cx, cy + r]]


def test_tracing_mask_is_the_diamond():
    clip = torch.zeros(3, 2, 20, 24, dtype=torch.uint8)
    d = LoadTracingMaskd()({"image": clip, "label": _diamond_rows(15, 8, 4)})
    mask = d["label"]
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == (1, 20, 24)
    yy, xx = np.mgrid[:20, :24]
    expected = (np.abs(xx - 15) + np.abs(yy - 8) <= 4).astype(np.uint8)  # x is the column, y the row
    np.testing.assert_array_equal(mask[0].numpy(), expected)
    assert int(mask.sum()) == 41  # 1 + 3 + 5 + 7 + 9 + 7 + 5 + 3 + 1


def test_tracing_with_too_few_rows():
    clip = torch.zeros(3, 2, 20, 24, dtype=torch.uint8)
    item = {"image": clip, "label": _diamond_rows(15, 8, 4)[:3], "image_meta_dict": {"filename_or_obj": "/d/0X1.avi"}}
    with pytest.raises(TracingError, match="0X1.avi.*3 rows"):
        LoadTracingMaskd()(item)


def test_mask_from_camus_nifti_is_transposed_and_binarised(tmp_path):
    h, w = 6, 9
    labels = np.zeros((h, w), np.uint8)
    labels[1:3, 2:7] = 1  # LV
    labels[3:5, 2:7] = 2  # myocardium
    nib.save(nib.Nifti1Image(labels.T.copy(), np.eye(4)), tmp_path / "p_4CH_ED_gt.nii.gz")  # stored W x H
    clip = torch.zeros(1, 2, h, w, dtype=torch.uint8)
    d = LoadTracingMaskd()({"image": clip, "label": str(tmp_path / "p_4CH_ED_gt.nii.gz")})
    np.testing.assert_array_equal(d["label"][0].numpy(), (labels == 1).astype(np.uint8))
    d = LoadTracingMaskd(label_value=2)({"image": clip, "label": str(tmp_path / "p_4CH_ED_gt.nii.gz")})
    assert int(d["label"].sum()) == 10


def test_camus_sequence_and_mask_align(tmp_path):
    # a bright patch in a W x H x T CAMUS-style sequence must land where the W x H ground truth says
    h, w, t = 10, 14, 5
    seq = np.zeros((w, h, t), np.uint8)
    seq[3:6, 2:4, :] = 200  # x 3..5, y 2..3
    gt = np.zeros((w, h), np.uint8)
    gt[3:6, 2:4] = 1
    nib.save(nib.Nifti1Image(seq, np.eye(4)), tmp_path / "p_half_sequence.nii.gz")
    nib.save(nib.Nifti1Image(gt, np.eye(4)), tmp_path / "p_ED_gt.nii.gz")
    item = {"image": str(tmp_path / "p_half_sequence.nii.gz"), "label": str(tmp_path / "p_ED_gt.nii.gz")}
    item["frame_index"] = 0
    d = LoadClipd(num_frames=3, mode="center", frame_key="frame_index", cache=False)(item)
    d = LoadTracingMaskd()(d)
    assert tuple(d["image"].shape) == (1, 3, h, w)
    np.testing.assert_array_equal((d["image"][0, 0] > 0).numpy().astype(np.uint8), d["label"][0].numpy())


def test_mask_from_png_and_errors(tmp_path):
    m = np.zeros((5, 7), np.uint8)
    m[2, 3] = 1
    cv2.imwrite(str(tmp_path / "m.png"), m)
    clip = torch.zeros(3, 1, 5, 7, dtype=torch.uint8)
    d = LoadTracingMaskd()({"image": clip, "label": str(tmp_path / "m.png")})
    np.testing.assert_array_equal(d["label"][0].numpy(), m)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        LoadTracingMaskd()({"image": clip, "label": str(tmp_path / "bad.png")})
    with pytest.raises(DataError, match="m.png.*5 x 7 but the clip is 4 x 7"):
        LoadTracingMaskd()({"image": clip[..., :4, :], "label": str(tmp_path / "m.png")})


# ------------------------------------------------------------------------------------------------ timed series


@pytest.fixture
def series(tmp_path):
    paths = []
    for i, v in enumerate((10, 20, 30)):
        p = tmp_path / f"visit{i}.png"
        cv2.imwrite(str(p), np.full((4, 6), v, np.uint8))
        paths.append(str(p))
    return paths


def test_loadseriesd_orders_by_time(series):
    d = LoadSeriesd()({"image": series, "times": [2.1, 0.0, 0.7], "label": 1})
    img = d["image"]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (1, 3, 4, 6)
    assert img[0, :, 0, 0].tolist() == [20, 30, 10]
    assert d["times"].dtype == torch.float32 and d["times"].tolist() == pytest.approx([0.0, 0.7, 2.1])
    assert d["frame_mask"].tolist() == [True, True, True]


def test_loadseriesd_left_pads_and_truncates(series):
    d = LoadSeriesd(num_frames=5)({"image": series, "times": [0.0, 0.7, 2.1]})
    assert d["image"][0, :, 0, 0].tolist() == [0, 0, 10, 20, 30]
    assert d["times"].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.7, 2.1])
    assert d["frame_mask"].tolist() == [False, False, True, True, True]
    d = LoadSeriesd(num_frames=2)({"image": series, "times": [0.0, 0.7, 2.1]})
    assert d["image"][0, :, 0, 0].tolist() == [20, 30]  # the last visits
    assert d["frame_mask"].tolist() == [True, True]


def test_loadseriesd_batches_series_of_different_lengths(series):
    items = [{"image": series[:k], "times": [0.0, 0.7, 2.1][:k], "label": k % 2} for k in (1, 3)]
    batch = next(iter(DataLoader(Dataset(items, transform=LoadSeriesd(num_frames=4)), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 1, 4, 4, 6)
    assert batch["frame_mask"].tolist() == [[False, False, False, True], [False, True, True, True]]
    assert batch["image_meta_dict"]["num_visits"].tolist() == [1, 3]


def test_loadseriesd_sizes_and_errors(series, tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.full((8, 12), 40, np.uint8))
    with pytest.raises(DataError, match="differ in size"):
        LoadSeriesd()({"image": series + [str(big)], "times": [0, 1, 2, 3]})
    d = LoadSeriesd(size=(4, 6))({"image": series + [str(big)], "times": [0, 1, 2, 3]})
    assert d["image"][0, 3].unique().tolist() == [40]
    with pytest.raises(DataError, match="3 images but 2 times"):
        LoadSeriesd()({"image": series, "times": [0, 1]})
    with pytest.raises(DataError, match="missing.png"):
        LoadSeriesd()({"image": [str(tmp_path / "missing.png")], "times": [0]})
