"""Per-frame overlap counts and pooled Dice, as UniLVSeg/SimLVSeg and EchoNet-Dynamic report segmentation.

Reference: ``evaluate_bootstrap.py`` (BioMedIA-MBZUAI/SimLVSeg): per traced frame it stores the pixel intersection and
union of prediction (``> 0``) and tracing, and reports the pooled Dice ``2 * sum(inter) / (sum(union) + sum(inter))``
over all frames, the ED ("large") frames and the ES ("small") frames. Since ``union + inter = |pred| + |true|``,
that equals ``2 * sum(inter) / (sum(|pred|) + sum(|true|))``, which is what :func:`pooled_dice` computes.

That is MONAI's global F1 (``ConfusionMatrixMetric("f1 score", compute_sample=False, reduction="sum")``, tested
equal); the counts stay per frame here because the bootstrap resamples frames (``R x N`` count arrays), which
MONAI's metric, aggregating its whole buffer once, cannot do.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["frame_overlap", "pooled_dice", "frame_dice"]

ArrayLike = np.ndarray | torch.Tensor


def _to_bool(x: ArrayLike, threshold: float) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.dtype == bool else x > threshold


def frame_overlap(
    pred: ArrayLike, target: ArrayLike, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame intersection and mask sizes of binary masks ``N x H x W`` (any trailing shape per frame).

    Args:
        pred: predicted masks (bool, or values where ``> threshold`` is foreground: logits with the default 0, as the
            reference, or probabilities with ``threshold=0.5``).
        target: reference masks of the same shape, thresholded the same way ({0, 1} or {0, 255} masks work with
            the default).
        threshold: foreground threshold for non-bool inputs.

    Returns:
        ``(inter, pred_sum, true_sum)``, three ``int64`` arrays of length N.
    """
    p = _to_bool(pred, threshold)
    t = _to_bool(target, threshold)
    if p.shape != t.shape:
        raise ValueError(f"frame_overlap: prediction {p.shape} and target {t.shape} differ in shape.")
    if p.ndim < 2:
        raise ValueError(f"frame_overlap expects N x H x W masks, got shape {p.shape}.")
    axes = tuple(range(1, p.ndim))
    inter = np.logical_and(p, t).sum(axis=axes, dtype=np.int64)
    return inter, p.sum(axis=axes, dtype=np.int64), t.sum(axis=axes, dtype=np.int64)


def pooled_dice(inter: ArrayLike, pred_sum: ArrayLike, true_sum: ArrayLike, axis: int = -1) -> float | np.ndarray:
    """Pooled Dice ``2 * sum(inter) / (sum(pred_sum) + sum(true_sum))`` over ``axis`` (1.0 when both are empty).

    Leading axes are kept, so ``R x N`` resampled counts give ``R`` Dice values (used by the bootstrap).
    """
    i = np.asarray(inter, dtype=np.float64).sum(axis=axis)
    den = np.asarray(pred_sum, dtype=np.float64).sum(axis=axis) + np.asarray(true_sum, dtype=np.float64).sum(axis=axis)
    out = np.divide(2.0 * i, den, out=np.ones_like(den), where=den > 0)
    return float(out) if out.ndim == 0 else out


def frame_dice(inter: ArrayLike, pred_sum: ArrayLike, true_sum: ArrayLike) -> np.ndarray:
    """Per-frame Dice ``2 * inter / (pred_sum + true_sum)``; a frame where both masks are empty scores 1.0."""
    i = np.asarray(inter, dtype=np.float64)
    den = np.asarray(pred_sum, dtype=np.float64) + np.asarray(true_sum, dtype=np.float64)
    return np.divide(2.0 * i, den, out=np.ones_like(den), where=den > 0)
