from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_monai.transforms.masking import num_masked_frames
from medssl_monai.transforms.superimage import (
    TileSuperImaged,
    grid_size,
    reference_si_masked_fraction,
    select_super_image_cells,
    super_image_target_slice,
    tile_super_image,
    untile_super_image,
)


def test_tile_layout_row_major() -> None:
    # 4 frames of 2 x 3, frame i filled with i -> [[0, 1], [2, 3]] blocks
    clip = torch.arange(4).view(1, 4, 1, 1).expand(1, 4, 2, 3)
    si = tile_super_image(clip)
    assert si.shape == (1, 4, 6)
    expected = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2)
    torch.testing.assert_close(si[0], expected)


def test_matches_einops_pattern_numpy_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, size=(3, 9, 4, 5), dtype=np.uint8)
    si = tile_super_image(clip)
    assert si.shape == (3, 12, 15)
    # einops '(nh nw) c h w -> c (nh h) (nw w)' written out by hand
    for i in range(9):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(si[:, r * 4 : (r + 1) * 4, c * 5 : (c + 1) * 5], clip[:, i])
        rows, cols = super_image_target_slice(i, 3, 4, 5)
        np.testing.assert_array_equal(si[:, rows, cols], clip[:, i])
    np.testing.assert_array_equal(untile_super_image(si, 9), clip)
    batch = torch.from_numpy(np.stack([clip, clip[::-1].copy()]))
    torch.testing.assert_close(untile_super_image(tile_super_image(batch), 9), batch)


def test_select_cells_gathers_and_is_differentiable() -> None:
    clip = torch.randn(2, 1, 4, 3, 3, requires_grad=True)
    si = tile_super_image(clip)
    cells = select_super_image_cells(si, torch.tensor([3, 1]), 3, 3)
    torch.testing.assert_close(cells, torch.stack([clip[0, :, 3], clip[1, :, 1]]))
    cells.sum().backward()
    assert clip.grad[0, :, 3].abs().sum() > 0 and clip.grad[0, :, :3].abs().sum() == 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="perfect-square"):
        tile_super_image(np.zeros((3, 8, 4, 4)))
    with pytest.raises(ValueError, match="perfect-square"):
        grid_size(0)
    with pytest.raises(ValueError, match="outside"):
        super_image_target_slice(9, 3, 4, 4)
    with pytest.raises(ValueError, match="C x L x H x W"):
        TileSuperImaged(keys="image")({"image": np.zeros((4, 4, 4))})


def test_dict_transform() -> None:
    out = TileSuperImaged(keys=["image"])({"image": np.zeros((3, 16, 7, 7), np.uint8), "label": 1})
    assert out["image"].shape == (3, 28, 28) and out["label"] == 1


@pytest.mark.parametrize("length, ratio", [(16, 0.5), (16, 0.6), (9, 0.75), (25, 0.3)])
def test_reference_si_inversion(length: int, ratio: float) -> None:
    # the reference SI masker zeroes L - int(L * ratio + 0.5) frames
    assert num_masked_frames(length, reference_si_masked_fraction(length, ratio)) == length - int(length * ratio + 0.5)
