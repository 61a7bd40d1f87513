from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_monai.transforms.masking import RandTemporalMaskd, mask_frames, num_masked_frames, temporal_mask_indices


@pytest.mark.parametrize("t, expected", [(32, 19), (16, 10), (10, 6), (5, 3), (4, 2), (1, 1), (3, 2)])
def test_reference_rounding(t: int, expected: int) -> None:
    # int(T * 0.6 + 0.5): 19.7 -> 19, 10.1 -> 10, 6.5 -> 6, 3.5 -> 3, 2.9 -> 2, 1.1 -> 1, 2.3 -> 2
    assert num_masked_frames(t, 0.6) == expected
    idx = temporal_mask_indices(t, 0.6, np.random.default_rng(t))
    assert len(idx) == expected
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < t


def test_bad_ratio_raises() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        temporal_mask_indices(8, 1.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        RandTemporalMaskd(keys="image", mask_ratio=-0.1)


@pytest.mark.parametrize("t", [4, 16, 32])
def test_dict_transform_masks_whole_frames(t: int) -> None:
    rng = np.random.default_rng(0)
    clip = rng.integers(1, 256, size=(3, t, 6, 5), dtype=np.uint8)  # no zeros, so masked frames are detectable
    tr = RandTemporalMaskd(keys="image", mask_ratio=0.6)
    tr.set_random_state(seed=t)
    out = tr({"image": clip})
    mask = out["frame_mask"]
    assert mask.dtype == torch.bool and mask.shape == (t,)
    assert int(mask.sum()) == int(t * 0.6 + 0.5)
    img, m = out["image"], mask.numpy()
    assert img.dtype == np.uint8
    assert np.all(img[:, m] == 0)
    np.testing.assert_array_equal(img[:, ~m], clip[:, ~m])
    np.testing.assert_array_equal(out["target"], clip)  # unmasked target
    assert out["target"].dtype == np.uint8
    assert np.all(clip > 0)  # the input was not modified in place


def test_dict_transform_torch_and_reproducible() -> None:
    clip = torch.ones(1, 10, 2, 2, dtype=torch.uint8)
    a = RandTemporalMaskd(keys=["image", "aux"], target_key=None, mask_key="m").set_random_state(seed=3)
    b = RandTemporalMaskd(keys=["image", "aux"], target_key=None, mask_key="m").set_random_state(seed=3)
    oa = a({"image": clip, "aux": clip * 2})
    ob = b({"image": clip, "aux": clip * 2})
    torch.testing.assert_close(oa["m"], ob["m"])
    # both keys share the masked frames
    assert torch.equal(oa["image"][0, :, 0, 0] == 0, oa["m"]) and torch.equal(oa["aux"][0, :, 0, 0] == 0, oa["m"])
    assert "target" not in oa


def test_dict_transform_bad_shape() -> None:
    with pytest.raises(ValueError, match="C x T x H x W"):
        RandTemporalMaskd(keys="image")({"image": np.zeros((4, 4, 4), np.uint8)})


def test_mask_frames_batched() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 32, 3, 3) + 1.0
    masked, fm = mask_frames(x, 0.6, generator=g)
    assert fm.shape == (4, 32) and fm.dtype == torch.bool
    assert torch.all(fm.sum(1) == 19)
    assert torch.all(masked.permute(0, 2, 1, 3, 4)[fm] == 0)
    torch.testing.assert_close(masked.permute(0, 2, 1, 3, 4)[~fm], x.permute(0, 2, 1, 3, 4)[~fm])
    assert len({tuple(r.tolist()) for r in fm}) > 1  # independent draws per sample
    # per-channel fill, e.g. -mean/std for already normalised clips
    fill = torch.tensor([-1.0, -2.0])
    masked2, fm2 = mask_frames(x, 0.5, generator=torch.Generator().manual_seed(1), fill_value=fill)
    assert torch.all(masked2[:, 0][fm2] == -1.0)
    assert torch.all(masked2[:, 1][fm2] == -2.0)
    with pytest.raises(ValueError, match="B x C x T x H x W"):
        mask_frames(torch.zeros(2, 3, 4))
