from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_monai.evaluation.segmentation import frame_dice, frame_overlap, pooled_dice


def test_frame_overlap_hand_counts() -> None:
    pred = np.zeros((3, 4, 4), dtype=bool)
    true = np.zeros((3, 4, 4), dtype=bool)
    pred[0, :2, :2] = True  # 4 px
    true[0, :2, :3] = True  # 6 px, overlap 4
    pred[1, 0, 0] = True  # 1 px, no overlap with an empty reference
    # frame 2: both empty
    inter, ps, ts = frame_overlap(pred, true)
    np.testing.assert_array_equal(inter, [4, 0, 0])
    np.testing.assert_array_equal(ps, [4, 1, 0])
    np.testing.assert_array_equal(ts, [6, 0, 0])
    np.testing.assert_allclose(frame_dice(inter, ps, ts), [0.8, 0.0, 1.0])
    # pooled: 2 * 4 / (5 + 6)
    assert pooled_dice(inter, ps, ts) == pytest.approx(8 / 11)
    # the reference's 2 * sum(inter) / (sum(union) + sum(inter)): union = [6, 1, 0]
    assert pooled_dice(inter, ps, ts) == pytest.approx(2 * 4 / ((6 + 1 + 0) + 4))


def test_logits_and_torch_inputs() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])  # > 0 -> [[1, 0], [1, 0]]
    true = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.uint8)
    inter, ps, ts = frame_overlap(logits, true)
    assert (inter.tolist(), ps.tolist(), ts.tolist()) == ([1], [2], [2])
    probs = torch.sigmoid(logits)
    assert frame_overlap(probs, true, threshold=0.5)[0].tolist() == [1]


def test_pooled_dice_keeps_leading_axes() -> None:
    inter = np.array([[1, 2], [0, 0]])
    ps = np.array([[2, 2], [0, 0]])
    ts = np.array([[1, 3], [0, 0]])
    np.testing.assert_allclose(pooled_dice(inter, ps, ts, axis=1), [6 / 8, 1.0])


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        frame_overlap(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))
