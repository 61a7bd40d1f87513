"""Ignite metrics the methods report that MONAI lacks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["PooledDice"]


class PooledDice(Metric):
    """Pooled (dataset-level) Dice: ``2 * sum(|P & T|) / (sum(|P|) + sum(|T|))`` over every evaluated frame.

    This is the statistic UniLVSeg and EchoNet report (methods.md section 2), not the mean of per-image Dice:
    large ED masks weigh more than small ES ones. Predictions are logits, positive where ``logit > threshold``
    (``0`` = probability 0.5). Sums are all-reduced across ranks under DDP.

    Args:
        output_transform: maps the engine output to ``(pred, label)``.
        threshold: logit threshold.
    """

    def __init__(self, output_transform: Callable = lambda x: x, threshold: float = 0.0, device="cpu") -> None:
        self.threshold = threshold
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._inter = torch.zeros((), dtype=torch.float64, device=self._device)
        self._sizes = torch.zeros((), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        if isinstance(pred, (list, tuple)):
            pred, label = torch.stack(list(pred)), torch.stack(list(label))
        p = (pred.detach() > self.threshold).to(torch.float64)
        t = (label.detach() > 0.5).to(torch.float64)
        self._inter += (p * t).sum().to(self._device)
        self._sizes += (p.sum() + t.sum()).to(self._device)

    @sync_all_reduce("_inter", "_sizes")
    def compute(self) -> float:
        if self._sizes.item() == 0:
            return 1.0
        return float(2.0 * self._inter / self._sizes)
