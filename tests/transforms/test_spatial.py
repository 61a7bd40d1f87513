"""ClipConsistentd: one spatial draw for every frame and the mask; the SimLVSeg presets end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd, RandRotated, RandSpatialCropd, RandZoomd, SpatialPadd

from medssl_monai.transforms.presets import ssl_clip_transforms, unilvseg_eval_transforms, unilvseg_train_transforms
from medssl_monai.transforms.spatial import ClipConsistentd, fold_time, unfold_time


def _square_clip(c: int = 3, t: int = 6, h: int = 40, w: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame: background 0, a square of a frame-specific intensity at rows 10..21, cols 14..29."""
    clip = torch.zeros(c, t, h, w, dtype=torch.uint8)
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    for i in range(t):
        clip[:, i, 10:22, 14:30] = 100 + 20 * i
    mask[0, 10:22, 14:30] = 1
    return clip, mask


def _spatial(keys, modes, pad, crop, degrees=30.0):
    return Compose(
        [
            RandRotated(keys=keys, range_x=np.deg2rad(degrees), prob=1.0, mode=modes, padding_mode="zeros"),
            SpatialPadd(keys=keys, spatial_size=(pad, pad)),
            RandSpatialCropd(keys=keys, roi_size=(crop, crop), random_size=False),
        ]
    )


def test_fold_unfold_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    f = fold_time(x)
    assert tuple(f.shape) == (6, 4, 5)
    assert torch.equal(f[1 * 3 + 2], x[1, 2])  # channel c, frame t at c*T + t
    assert torch.equal(unfold_time(f, 2), x)
    with pytest.raises(ValueError):
        unfold_time(f, 4)


def test_one_draw_for_all_frames_and_the_mask():
    clip, mask = _square_clip()
    t = ClipConsistentd(_spatial(["image", "label"], ["nearest", "nearest"], pad=48, crop=36), time_keys="image")
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"image": clip, "label": mask})
        img, lab = out["image"], out["label"]
        assert img.dtype == torch.uint8 and lab.dtype == torch.uint8
        assert tuple(img.shape) == (3, 6, 36, 36) and tuple(lab.shape) == (1, 36, 36)
        assert lab.sum() > 0
        for i in range(6):
            for c in range(3):
                # the square moved exactly with the mask, and kept its own frame's intensity
                assert torch.equal((img[c, i] > 0).to(torch.uint8), lab[0]), (seed, i, c)
                assert set(img[c, i].unique().tolist()) == {0, 100 + 20 * i}


def test_bilinear_image_stays_uint8_and_on_the_mask():
    clip, mask = _square_clip(t=3)
    t = ClipConsistentd(_spatial(["image", "label"], ["bilinear", "nearest"], pad=44, crop=40))
    t.set_random_state(1)
    out = t({"image": clip, "label": mask})
    img, lab = out["image"], out["label"].bool()
    assert img.dtype == torch.uint8 and img.is_contiguous() and not hasattr(img, "meta")
    for i in range(3):
        bright = img[0, i] >= (100 + 20 * i) / 2
        iou = (bright & lab[0]).sum() / (bright | lab[0]).sum()
        assert iou > 0.85
    # identical channels stay identical: the same resampling for every folded channel
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_other_monai_transforms_flip_and_zoom():
    clip, mask = _square_clip(t=2)
    t = ClipConsistentd(
        Compose(
            [
                RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=1),
                RandZoomd(keys=["image", "label"], prob=1.0, min_zoom=1.2, max_zoom=1.2, mode="nearest"),
            ]
        )
    )
    assert t.keys == ("image", "label")  # collected from the Compose's children
    out = t({"image": clip, "label": mask})
    for i in range(2):
        assert torch.equal((out["image"][0, i] > 0).to(torch.uint8), out["label"][0])
    assert not torch.equal(out["label"], mask)  # the off-centre square moved


def test_set_random_state_reproducible():
    clip, mask = _square_clip(t=2)
    t = ClipConsistentd(_spatial(["image", "label"], ["bilinear", "nearest"], pad=44, crop=30))
    a = t.set_random_state(11)({"image": clip, "label": mask})
    b = t.set_random_state(11)({"image": clip, "label": mask})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_float_input_stays_float():
    clip, mask = _square_clip(t=2)
    t = ClipConsistentd(SpatialPadd(keys=["image", "label"], spatial_size=(50, 50)))
    out = t({"image": clip.float(), "label": mask})
    assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (3, 2, 50, 50)
    assert out["label"].dtype == torch.uint8


# ---------------------------------------------------------------------------------------------------- presets


def _item(tmp_path, n_frames: int = 20, size: int = 40):
    # grey frames stored as RGB; a bright square in EVERY frame exactly where the (square) tracing is
    frames = np.full((n_frames, size, size, 3), 30, np.uint8)
    frames[:, 12:25, 10:27] = 220
    path = tmp_path / "0X1.npy"
    np.save(path, frames)
    # a rectangle as a tracing: long axis, then chords at rows 12..24 from x=10 to x=26
    rows = [[18.0, 12.0, 18.0, 24.0]] + [[10.0, float(y), 26.0, float(y)] for y in range(12, 25)]
    return {"image": str(path), "frame_index": 13, "label": rows, "video_id": "0X1"}


def test_train_preset_consistency_and_dtype(tmp_path):
    item = _item(tmp_path)
    tr = unilvseg_train_transforms(num_frames=8, crop=32, cache_dir=tmp_path / "cache")
    for seed in range(3):
        tr.set_random_state(seed)
        d = tr(item)
        img, lab = d["image"], d["label"]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 8, 32, 32)
        assert lab.dtype == torch.uint8 and tuple(lab.shape) == (1, 32, 32)
        assert d["clip_indices"][d["target_index"]] == 13
        for i in range(8):  # every frame was identical, so every frame must still be identical
            assert torch.equal(img[:, i], img[:, 0])
        bright = img[0, 0] > 120
        m = lab[0].bool()
        assert ((bright & m).sum() / (bright | m).sum()) > 0.8, seed


def test_train_preset_reproducible(tmp_path):
    item = _item(tmp_path)
    tr = unilvseg_train_transforms(num_frames=4, crop=32, cache_dir=tmp_path / "cache")
    a = tr.set_random_state(5)(item)
    b = tr.set_random_state(5)(item)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert np.array_equal(a["clip_indices"], b["clip_indices"])


def test_eval_preset_centre_window_no_augmentation(tmp_path):
    item = _item(tmp_path)
    d = unilvseg_eval_transforms(num_frames=8, crop=40, cache=False)(item)
    assert d["clip_indices"].tolist() == list(range(9, 17)) and d["target_index"] == 4
    frames = np.load(item["image"])
    np.testing.assert_array_equal(d["image"].numpy(), frames[9:17].transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(d["label"][0].numpy(), (frames[0, ..., 0] == 220).astype(np.uint8))
    d = unilvseg_eval_transforms(num_frames=8, crop=32, cache=False)(item)  # centre crop, same pixels
    np.testing.assert_array_equal(d["label"][0].numpy(), (frames[0, 4:36, 4:36, 0] == 220).astype(np.uint8))


def test_ssl_preset(tmp_path):
    item = {"image": _item(tmp_path)["image"]}
    d = ssl_clip_transforms(num_frames=6, crop=32, cache=False).set_random_state(0)(item)
    assert d["image"].dtype == torch.uint8 and tuple(d["image"].shape) == (3, 6, 32, 32)
    assert "label" not in d
    d = ssl_clip_transforms(num_frames=6, crop=32, cache=False, augment=False, mode="start")(item)
    assert d["clip_indices"].tolist() == list(range(6))
    frames = np.load(item["image"])
    np.testing.assert_array_equal(d["image"].numpy(), frames[:6, 4:36, 4:36].transpose(3, 0, 1, 2))


def test_eval_preset_resizes_frames_and_mask_together(tmp_path):
    item = _item(tmp_path)  # 40 x 40, square rows 12..24, cols 10..26
    d = unilvseg_eval_transforms(num_frames=4, spatial_size=20, cache=False)(item)
    assert tuple(d["image"].shape) == (3, 4, 20, 20) and d["image"].dtype == torch.uint8
    assert tuple(d["label"].shape) == (1, 20, 20) and d["label"].dtype == torch.uint8
    bright = d["image"][0, 0] > 125  # area averages 2 x 2 blocks: the square's half-covered border blocks
    m = d["label"][0].bool()
    assert ((bright & m).sum() / (bright | m).sum()) > 0.75
