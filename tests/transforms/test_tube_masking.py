"""Tube masks: exact ratio per frame slot, the same spatial mask in every temporal slot, independent views."""

from __future__ import annotations

import pytest
import torch

from medssl_monai.transforms.tube_masking import (
    MultiLocalTubeMaskGenerator,
    multi_local_tube_masks,
    num_masked_patches,
    tube_mask,
)


def test_ratio_and_tube_structure():
    g = torch.Generator().manual_seed(0)
    m = tube_mask(8, (32, 7, 7), 0.9, generator=g)
    assert m.shape == (8, 32 * 49) and m.dtype == torch.bool
    per_slot = m.reshape(8, 32, 49)
    assert (per_slot.sum(-1) == 44).all()  # int(49 * 0.9) = 44, as the reference
    assert (per_slot == per_slot[:, :1]).all()  # a tube: the same patches in every temporal slot
    assert not (per_slot[0, 0] == per_slot[1, 0]).all()  # samples differ


def test_num_masked_patches():
    assert num_masked_patches(49, 0.9) == 44
    assert num_masked_patches(16, 0.9) == 14
    with pytest.raises(ValueError):
        num_masked_patches(16, 1.0)


def test_multi_local_views_and_seeded_generator():
    glob, local = multi_local_tube_masks(2, (4, 4, 4), 0.75, 0.5, num_local_views=3)
    assert glob.shape == (2, 64) and local.shape == (3, 2, 64)
    assert (glob.reshape(2, 4, 16).sum(-1) == 12).all()
    assert (local.reshape(3, 2, 4, 16).sum(-1) == 8).all()
    a = MultiLocalTubeMaskGenerator((2, 3, 3), seed=1)(4)
    b = MultiLocalTubeMaskGenerator((2, 3, 3), seed=1)(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
