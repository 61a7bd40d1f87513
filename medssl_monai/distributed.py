"""DDP helpers: gathers that keep gradients, so global negatives and statistics are right under ``torchrun``.

With one process every function is the identity, so single-GPU/CPU runs pay nothing.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

__all__ = [
    "is_dist",
    "world_size",
    "rank",
    "all_gather_with_grad",
    "all_gather_no_grad",
    "all_reduce_sum",
    "all_reduce_mean",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably (identity without DDP).

    PyTorch's ``torch.distributed.nn.functional.all_gather``: its backward sends each rank the gradient of its own
    slice summed over ranks (reduce-scatter; all-to-all on gloo), which matches DDP's gradient averaging since the
    loss of every rank depends on every rank's embeddings.
    """
    if not is_dist() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.13 deprecates it for all_gather_single of the private _functional_collectives; this one still works
        warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (identity without DDP)."""
    if not is_dist() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (in place; returns ``x``)."""
    if is_dist() and world_size() > 1:
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (in place; returns ``x``)."""
    if is_dist() and world_size() > 1:
        dist.all_reduce(x)
        x /= world_size()
    return x
