"""Sinkhorn-Knopp codes and the swapped-prediction loss (SwAV; SIGMA / DISCOVR cluster distillation).

Reference: ``utils/utils.py::sinkhorn`` of DISCOVR (Mishra et al., arXiv 2506.11777), SwAV's ``distributed_sinkhorn``:
``Q = exp(scores / eps)^T`` (K x B), normalised to sum 1 over the global batch, then ``iterations`` rounds of
"rows sum to 1/K" and "columns sum to 1/B", finally scaled by B so each sample's code sums to 1. Under DDP the
sums run over all ranks (``medssl_monai.distributed.all_reduce_sum``), so the equipartition is global.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medssl_monai.distributed import all_reduce_sum, is_dist, world_size

__all__ = ["sinkhorn_knopp", "swapped_prediction_loss", "Prototypes"]


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 10) -> torch.Tensor:
    """Soft codes ``B x K`` from prototype scores ``B x K`` (rows sum to 1; columns to B/K after convergence).

    Args:
        scores: similarities of B samples to K prototypes (this rank's part of the batch).
        epsilon: entropy regularisation (DISCOVR: 0.05).
        iterations: Sinkhorn iterations (DISCOVR: 10).
    """
    logits = scores.detach().float() / epsilon
    # subtract the global maximum: exp stays finite and the normalisation below cancels the constant
    gmax = logits.max()
    if is_dist() and world_size() > 1:
        dist.all_reduce(gmax, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - gmax).t()  # K x B
    k = q.shape[0]
    b = q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def swapped_prediction_loss(
    scores_a: torch.Tensor,
    scores_b: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 10,
    temperature: float = 0.1,
    hard: bool = True,
) -> torch.Tensor:
    """``CE(scores_a / T, code(scores_b)) + CE(scores_b / T, code(scores_a))`` (SwAV's swapped prediction).

    Codes come from :func:`sinkhorn_knopp` (no gradient). ``hard=True`` uses their ``argmax`` as the class (the
    DISCOVR/SIGMA reference); ``False`` the soft codes.

    Args:
        scores_a, scores_b: ``M x K`` prototype scores of the same M items from the two sides.
    """
    q_a = sinkhorn_knopp(scores_a, epsilon, iterations)
    q_b = sinkhorn_knopp(scores_b, epsilon, iterations)
    if hard:
        return F.cross_entropy(scores_a / temperature, q_b.argmax(-1)) + F.cross_entropy(
            scores_b / temperature, q_a.argmax(-1)
        )
    return F.cross_entropy(scores_a / temperature, q_b) + F.cross_entropy(scores_b / temperature, q_a)


class Prototypes(nn.Module):
    """K learnable prototypes ``K x D`` (no bias), kept on the unit sphere by :meth:`normalize_` (every step).

    ``forward(z, detach=False)`` returns ``normalize(z) @ C^T``; ``detach=True`` scores without a gradient to
    the prototypes (the reference detaches them on the image-teacher side).
    """

    def __init__(self, dim: int, num_prototypes: int = 3000) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``M x D`` features -> float32 cosine scores ``M x K`` (computed outside autocast)."""
        w = self.weight.detach() if detach else self.weight
        # float32 even under autocast: Sinkhorn divides the scores by eps = 0.05 and the codes are an argmax, so
        # bf16 rounding of the cosines (about 3 significant digits) changes which prototype wins
        with torch.autocast(device_type=z.device.type, enabled=False):
            return F.normalize(z.float(), dim=-1) @ w.float().t()
