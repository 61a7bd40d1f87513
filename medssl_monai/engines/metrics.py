"""Ignite metrics the methods report, computed with MONAI's confusion-matrix functions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

__all__ = ["PooledDice"]


class PooledDice(Metric):
    """Pooled (dataset-level) Dice: ``2 * sum(|P & T|) / (sum(|P|) + sum(|T|))`` over every evaluated frame.

    This is the statistic UniLVSeg and EchoNet report, not the mean of per-image Dice: large ED masks weigh more
    than small ES ones. It equals the global F1 of MONAI's ``ConfusionMatrixMetric("f1 score",
    compute_sample=False, reduction="sum")`` (``2 TP / (2 TP + FP + FN)``), which computes it here (MONAI's
    ``get_confusion_matrix`` and ``compute_confusion_matrix_metric``). Kept as an ignite metric because the summed
    counts are all-reduced across ranks under DDP (MONAI's metric buffers every batch's matrix) and both masks
    empty everywhere scores 1.0 (MONAI's gives NaN). Predictions are logits, positive where ``logit > threshold``
    (``0`` = probability 0.5).

    Args:
        output_transform: maps the engine output to ``(pred, label)``.
        threshold: logit threshold.
    """

    def __init__(self, output_transform: Callable = lambda x: x, threshold: float = 0.0, device="cpu") -> None:
        self.threshold = threshold
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._counts = torch.zeros(4, dtype=torch.float64, device=self._device)  # TP, FP, TN, FN (MONAI's order)

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        if isinstance(pred, (list, tuple)):
            pred, label = torch.stack(list(pred)), torch.stack(list(label))
        p, t = (pred.detach() > self.threshold).float(), (label.detach() > 0.5).float()
        rows = p.shape[-2] * p.shape[-1]  # one row per frame: MONAI's float32 counts stay exact (< 2**24 pixels)
        cm = get_confusion_matrix(p.reshape(-1, 1, rows), t.reshape(-1, 1, rows))  # frames x 1 x 4
        self._counts += cm.sum(dim=(0, 1)).to(self._device, torch.float64)

    @sync_all_reduce("_counts")
    def compute(self) -> float:
        tp, fp, _, fn = self._counts.tolist()
        if tp + fp + fn == 0:
            return 1.0
        return float(compute_confusion_matrix_metric("f1 score", self._counts))
