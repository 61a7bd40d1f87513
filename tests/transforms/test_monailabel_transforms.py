"""The NIfTI volume <-> clip transforms behind the MONAI Label integration (no monailabel needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medssl_monai.errors import DataError
from medssl_monai.transforms.monailabel import (
    ClipToVolumed,
    LabelledFrameClipd,
    VolumeToClipd,
    datastore_datalist,
    monailabel_eval_transforms,
    monailabel_infer_transforms,
    monailabel_post_transforms,
    monailabel_train_transforms,
    volume_to_frames,
)

H, W, T = 6, 5, 10


def _volume() -> np.ndarray:
    # value = 20 * h + 3 * w + t, unique per voxel and below 256
    h, w, t = np.meshgrid(np.arange(H), np.arange(W), np.arange(T), indexing="ij")
    return (20 * h + 3 * w + t).astype(np.uint8)


def _label(frames: list[int]) -> np.ndarray:
    lab = np.zeros((H, W, T), np.uint8)
    for f in frames:
        lab[1 : 3 + f % 3, 2:4, f] = 1  # a mask whose size tells the frame apart
    return lab


def test_volume_to_frames_moves_time_first_and_keeps_values():
    vol = _volume()
    frames = volume_to_frames(vol)
    assert frames.shape == (T, H, W, 1) and frames.dtype == np.uint8
    assert frames[7, 4, 2, 0] == 20 * 4 + 3 * 2 + 7
    # channel-first float input (what LoadImaged + EnsureChannelFirstd give) is rounded, not truncated
    f2 = volume_to_frames(torch.from_numpy(vol[None].astype(np.float32) + 0.4))
    np.testing.assert_array_equal(f2, frames)
    with pytest.raises(DataError, match="0..255"):
        volume_to_frames(vol.astype(np.float32) * 4.0)
    with pytest.raises(DataError, match="H x W x T"):
        volume_to_frames(np.zeros((2, H, W, T)))


def test_volume_to_clip_and_back_is_the_identity_on_masks():
    d = VolumeToClipd(keys="image", channels=3)({"image": _volume()})
    assert d["image"].shape == (3, T, H, W) and d["image"].dtype == torch.uint8
    assert d["volume_shape"] == (H, W, T)
    assert int(d["image"][2, 7, 4, 2]) == 20 * 4 + 3 * 2 + 7
    pred = (d["image"][:1] > 100).to(torch.uint8)  # 1 x T x H x W
    back = ClipToVolumed(keys="pred", mode="nearest")({"pred": pred, "volume_shape": d["volume_shape"]})["pred"]
    assert back.shape == (1, H, W, T)
    np.testing.assert_array_equal(back[0].numpy(), (_volume() > 100).astype(np.uint8))


def test_clip_to_volume_resizes_frames_back_to_the_input_size():
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 1, 0, 1] = 1.0  # frame 1, top-right pixel
    out = ClipToVolumed(keys="pred", mode="nearest")({"pred": pred, "volume_shape": (4, 4, 3)})["pred"]
    assert out.shape == (1, 4, 4, 3)
    expected = np.zeros((4, 4), np.float32)
    expected[:2, 2:] = 1.0  # nearest x2: the top-right 2 x 2 block
    np.testing.assert_array_equal(out[0, :, :, 1].numpy(), expected)
    assert out[0, :, :, 0].sum() == 0 and out[0, :, :, 2].sum() == 0
    with pytest.raises(ValueError, match="C x 3 x h x w"):
        ClipToVolumed(keys="pred")({"pred": torch.zeros(1, 2, 2, 2), "volume_shape": (2, 2, 3)})


def test_labelled_frame_centre_windows_hand_computed():
    t = LabelledFrameClipd(num_frames=4, mode="center", frame_mode="all", channels=1)
    out = t({"image": _volume(), "label": _label([0, 3, 9])})
    # centre windows (SimLVSeg rule, shifted at the borders): frame 0 -> [0..3] pos 0; 3 -> [1..4] pos 2;
    # 9 -> [6..9] pos 3
    assert [(o["frame_index"], o["target_index"]) for o in out] == [(0, 0), (3, 2), (9, 3)]
    for o in out:
        f, pos = o["frame_index"], o["target_index"]
        assert o["image"].shape == (1, 4, H, W)
        np.testing.assert_array_equal(o["image"][0, pos].numpy(), _volume()[:, :, f])
        np.testing.assert_array_equal(o["label"][0].numpy(), _label([f])[:, :, f])
        assert o["label"].shape == (1, H, W) and o["label"].dtype == torch.uint8
    capped = LabelledFrameClipd(num_frames=4, mode="center", frame_mode="all", max_samples=2)
    assert [o["frame_index"] for o in capped({"image": _volume(), "label": _label([0, 3, 9])})] == [0, 9]


def test_labelled_frame_random_draws_only_labelled_frames():
    t = LabelledFrameClipd(num_frames=4, mode="contains", frame_mode="random")
    t.set_random_state(0)
    seen = set()
    for _ in range(30):
        o = t({"image": _volume(), "label": _label([2, 7])})
        f, pos = o["frame_index"], o["target_index"]
        seen.add(f)
        np.testing.assert_array_equal(o["image"][0, pos].numpy(), _volume()[:, :, f])
    assert seen == {2, 7}


def test_labelled_frame_errors():
    t = LabelledFrameClipd(num_frames=4)
    with pytest.raises(DataError, match="no frame"):
        t({"image": _volume(), "label": np.zeros((H, W, T), np.uint8)})
    with pytest.raises(DataError, match="shape"):
        t({"image": _volume(), "label": np.ones((H, W, T + 1), np.uint8)})


def _save(path: Path, arr: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return str(path)


def test_datastore_datalist_pairs_and_split(tmp_path: Path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    for i in range(5):
        _save(tmp_path / f"c{i}.nii.gz", _volume())
        if i != 2:  # c2 is not labelled
            _save(tmp_path / "labels" / "final" / f"c{i}.nii.gz", _label([1]))
    every = datastore_datalist(tmp_path, "all")
    assert [Path(p["image"]).name for p in every] == ["c0.nii.gz", "c1.nii.gz", "c3.nii.gz", "c4.nii.gz"]
    assert all(Path(p["label"]).parent.name == "final" for p in every)
    train = datastore_datalist(tmp_path, "train", val_fraction=0.25, seed=3)
    val = datastore_datalist(tmp_path, "val", val_fraction=0.25, seed=3)
    assert len(val) == 1 and len(train) == 3
    assert sorted(p["image"] for p in train + val) == sorted(p["image"] for p in every)
    assert datastore_datalist(None) == []


def test_nifti_pipelines_end_to_end(tmp_path: Path):
    img = _save(tmp_path / "img.nii.gz", _volume())
    lab = _save(tmp_path / "lab.nii.gz", _label([4]))
    train = monailabel_train_transforms(num_frames=4, crop=4, spatial_size=8, jitter_prob=0.0, clahe_prob=0.0)
    o = train({"image": img, "label": lab})
    assert o["image"].shape == (3, 4, 4, 4) and o["label"].shape == (1, 4, 4) and o["frame_index"] == 4
    ev = monailabel_eval_transforms(num_frames=4, crop=8, spatial_size=8)({"image": img, "label": lab})
    assert len(ev) == 1 and ev[0]["image"].shape == (3, 4, 8, 8) and ev[0]["target_index"] == 2
    inf = monailabel_infer_transforms(spatial_size=8)({"image": img})
    assert inf["image"].shape == (3, T, 8, 8) and inf["image"].dtype == torch.float32
    assert inf["volume_shape"] == (H, W, T) and "image_meta_dict" in inf
    logits = torch.full((1, T, 8, 8), -5.0)
    logits[:, 3] = 5.0  # frame 3 all foreground
    post = monailabel_post_transforms()({"pred": logits, "volume_shape": inf["volume_shape"]})["pred"]
    assert post.shape == (1, H, W, T) and post.dtype == torch.uint8
    assert int(post.sum()) == H * W and int(post[0, :, :, 3].sum()) == H * W


def test_traced_or_datastore_dispatches_and_is_seeded_per_sample(tmp_path: Path):
    """Each item takes its chain (traced items carry ``frame_index``), and per-sample seeding reaches both chains
    through the ``Compose`` a MONAI ``Dataset`` wraps it in: the same (epoch, index) draws the same sample."""
    from monai.data import Dataset
    from monai.transforms import Compose, RandSpatialCropd

    from medssl_monai.data.seeded import SeededSamples
    from medssl_monai.transforms.monailabel import TracedOrDatastore

    img = _save(tmp_path / "img.nii.gz", _volume())
    lab = _save(tmp_path / "lab.nii.gz", _label(list(range(T))))  # every frame labelled: many possible draws
    traced = Compose([RandSpatialCropd(keys="image", roi_size=(2, 2), random_size=False)])
    datastore = monailabel_train_transforms(num_frames=4, crop=4, spatial_size=8, jitter_prob=0.0, clahe_prob=0.0)
    items = [{"image": np.arange(64.0).reshape(1, 8, 8), "frame_index": 0}, {"image": img, "label": lab}]
    ds = SeededSamples(Dataset(items, TracedOrDatastore(traced, datastore)), seed=3)

    def draw(epoch: int, index: int):
        ds.set_epoch(epoch)
        out = ds[index]
        return out["image"].flatten()[0].item() if index == 0 else out["frame_index"]

    assert ds[0]["image"].shape == (1, 2, 2) and ds[1]["image"].shape == (3, 4, 4, 4)  # each its own chain
    for index in (0, 1):
        first = [draw(e, index) for e in range(6)]
        assert [draw(e, index) for e in range(6)] == first  # reseeded, not a continuing stream
        assert len(set(first)) > 1  # and the epochs draw differently
