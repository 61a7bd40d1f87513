"""Contrastive and masked-feature losses of TVRL (Shen et al., MICCAI 2024, arXiv 2403.07513).

- :class:`NTXentLoss`: SimCLR's normalised-temperature cross entropy over ``2N`` views (TVRL's custom
  ``InfoNCE``, temperature 0.1). Under DDP the negatives are the embeddings of *every* rank, gathered with
  :func:`medssl_monai.distributed.all_gather_with_grad` (lightly's ``gather_distributed=True``), so the loss
  equals the single-process loss on the global batch.
- :func:`negative_cosine_similarity`: TVRL's masked frame-feature prediction loss, ``-cos(pred, target)``
  averaged over the masked frames.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medssl_monai.distributed import all_gather_with_grad, rank, world_size

__all__ = ["NTXentLoss", "nt_xent", "negative_cosine_similarity"]


def nt_xent(
    z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.1, gather_distributed: bool = True
) -> torch.Tensor:
    """NT-Xent between two views ``z0``, ``z1`` (``N x D``, row ``i`` of each from the same sample).

    For anchor ``z0_i`` the positive is ``z1_i`` and the negatives are every other embedding of both views except
    itself (``2N - 2`` of them, times the world size under DDP); symmetric over the two views and averaged over
    the ``2N`` anchors: ``-log( exp(s(z0_i, z1_i)/t) / sum_{k != i} exp(s(z0_i, z_k)/t) )`` with cosine ``s``.
    """
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    n = z0.shape[0]
    if gather_distributed and world_size() > 1:
        a0, a1 = all_gather_with_grad(z0), all_gather_with_grad(z1)
        offset = rank() * n
    else:
        a0, a1, offset = z0, z1, 0
    labels = torch.arange(n, device=z0.device) + offset
    # an anchor is not its own negative (a comparison, not one_hot: one_hot range-checks labels on the host)
    self_mask = labels[:, None] == torch.arange(a0.shape[0], device=z0.device)[None, :]
    l00 = (z0 @ a0.T / temperature).masked_fill(self_mask, float("-inf"))
    l11 = (z1 @ a1.T / temperature).masked_fill(self_mask, float("-inf"))
    l01, l10 = z0 @ a1.T / temperature, z1 @ a0.T / temperature
    logits = torch.cat([torch.cat([l01, l00], dim=1), torch.cat([l10, l11], dim=1)], dim=0)
    return F.cross_entropy(logits, torch.cat([labels, labels]))


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent` (TVRL ``simclr.temperature`` = 0.1).

    Args:
        temperature: softmax temperature.
        gather_distributed: gather negatives from every rank (with gradients) under DDP.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return nt_xent(z0, z1, self.temperature, self.gather_distributed)


def negative_cosine_similarity(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``-cos(pred, target)`` over the last axis, averaged over the positions where ``mask`` is ``True``.

    Args:
        pred: ``... x D`` predictions.
        target: ``... x D`` targets (pass them detached: TVRL predicts fixed frame features).
        mask: bool ``...`` (e.g. ``B x T`` masked frames); ``None`` averages over all positions.
        eps: cosine denominator floor.

    Returns:
        A scalar; ``0`` (connected to ``pred``'s graph) when the mask selects nothing.
    """
    cos = F.cosine_similarity(pred, target, dim=-1, eps=eps)
    if mask is None:
        return -cos.mean()
    # a masked sum over a count instead of cos[mask] and `if mask.any()`: both read the mask on the host (a
    # host-device sync every step on a GPU); an empty mask gives 0 / 1 = 0 with zero gradients, as before
    mask = mask.bool()
    count = mask.sum().clamp_min(1).to(cos.dtype)
    return -torch.where(mask, cos, torch.zeros_like(cos)).sum() / count
