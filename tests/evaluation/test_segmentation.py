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


def test_pooled_dice_is_monai_global_f1_on_random_masks() -> None:
    """Pooled Dice (ours, from per-frame counts and the ignite metric) == MONAI's global F1 on the same masks."""
    from monai.metrics import ConfusionMatrixMetric

    from medssl_monai.engines.metrics import PooledDice

    g = torch.Generator().manual_seed(0)
    monai_f1 = ConfusionMatrixMetric(metric_name="f1 score", compute_sample=False, reduction="sum")
    ignite_dice = PooledDice()
    counts = []
    for batch in range(4):  # B x 1 x T x H x W logits and {0, 1} labels of varying density, one empty batch
        density = 0.0 if batch == 3 else 0.2 + 0.2 * batch
        logits = torch.randn(3, 1, 5, 7, 6, generator=g) + (density - 0.5) * 4
        label = (torch.rand(3, 1, 5, 7, 6, generator=g) < density).float()
        monai_f1(y_pred=(logits > 0).float(), y=label)
        ignite_dice.update((logits, label))
        counts.append(frame_overlap(logits.flatten(0, 2), label.flatten(0, 2)))
    inter, ps, ts = (np.concatenate(c) for c in zip(*counts))
    tp, fp, _, fn = monai_f1.get_buffer().sum(dim=(0, 1)).tolist()  # the same integer counts
    assert (tp, tp + fp, tp + fn) == (inter.sum(), ps.sum(), ts.sum())
    expected = float(monai_f1.aggregate()[0])  # float32 in MONAI
    assert pooled_dice(inter, ps, ts) == pytest.approx(expected, rel=1e-6)
    assert ignite_dice.compute() == pytest.approx(pooled_dice(inter, ps, ts), abs=1e-12)


def test_pooled_dice_both_masks_empty_is_one_where_monai_gives_nan() -> None:
    from medssl_monai.engines.metrics import PooledDice

    m = PooledDice()
    m.update((torch.full((2, 1, 4, 4), -1.0), torch.zeros(2, 1, 4, 4)))
    assert m.compute() == 1.0 and pooled_dice([0], [0], [0]) == 1.0
