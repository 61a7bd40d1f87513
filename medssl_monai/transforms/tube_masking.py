"""Tube masks for VideoMAE / DISCOVR (the reference's ``models/masking_generator.py``).

A tube mask masks the same ``int(H' * W' * mask_ratio)`` spatial patches in every temporal slot, so a masked
patch cannot be copied from a neighbouring frame (VideoMAE). DISCOVR's ``MultiLocalMaskingGenerator`` (random
mode) draws one *global* tube mask (the view the decoder completes) and ``num_local_views`` *local* tube masks
(the student views of video DINO), all at 90% by default. Masks are flattened in the encoder's ``(t, h, w)``
token order, True = masked. The reference's region-based and mixed modes are not implemented.

Masks are drawn with torch on the device, per sample, so a batch needs no host round trip; pass a seeded
``torch.Generator`` for reproducible masks (validation, tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "num_masked_patches",
    "num_visible_tokens",
    "tube_mask",
    "multi_local_tube_masks",
    "MultiLocalTubeMaskGenerator",
]


def num_masked_patches(num_spatial: int, mask_ratio: float) -> int:
    """Masked patches per frame slot: ``int(num_spatial * mask_ratio)`` (reference: ``int(49 * 0.9) = 44``)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_spatial * mask_ratio)


def num_visible_tokens(grid_size: Sequence[int], mask_ratio: float) -> int:
    """Unmasked tokens per sample of a :func:`tube_mask`: ``T' * (H' * W' - int(H' * W' * mask_ratio))``.

    Fixed by the grid and the ratio, so encoders can gather the visible tokens without reading the mask.
    """
    t, h, w = (int(s) for s in grid_size)
    return t * (h * w - num_masked_patches(h * w, mask_ratio))


def tube_mask(
    batch_size: int,
    grid_size: Sequence[int],
    mask_ratio: float = 0.9,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``batch_size x (T' * H' * W')`` bool tube masks: one random spatial mask per sample repeated over time.

    Args:
        batch_size: number of masks B.
        grid_size: token grid ``(T', H', W')`` (``(1, H', W')`` gives per-image patch masks).
        mask_ratio: fraction of the spatial patches masked in every temporal slot.
        generator: random generator (on ``device``).
        device: where the mask lives.
    """
    t, h, w = (int(s) for s in grid_size)
    n_sp = h * w
    k = num_masked_patches(n_sp, mask_ratio)
    scores = torch.rand(batch_size, n_sp, generator=generator, device=device)
    # the k lowest scores are masked: a uniform random subset of exactly k patches per sample
    ranks = scores.argsort(dim=1).argsort(dim=1)
    spatial = ranks < k
    return spatial[:, None, :].expand(batch_size, t, n_sp).reshape(batch_size, t * n_sp)


def multi_local_tube_masks(
    batch_size: int,
    grid_size: Sequence[int],
    global_mask_ratio: float = 0.9,
    local_mask_ratio: float = 0.9,
    num_local_views: int = 4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DISCOVR's multi-local masks: ``(global B x N, local V x B x N)``, each an independent tube mask."""
    glob = tube_mask(batch_size, grid_size, global_mask_ratio, generator, device)
    if num_local_views < 1:
        return glob, glob.new_zeros((0, *glob.shape))
    # one draw for all views (fewer small kernels than a loop over views); on a CPU generator the same numbers
    # as one draw per view, in view order
    local = tube_mask(num_local_views * batch_size, grid_size, local_mask_ratio, generator, device)
    return glob, local.reshape(num_local_views, batch_size, -1)


class MultiLocalTubeMaskGenerator:
    """Callable form of :func:`multi_local_tube_masks` for a fixed token grid (configurable from a bundle).

    Args:
        grid_size: token grid ``(T', H', W')``.
        global_mask_ratio, local_mask_ratio: masking ratios (reference: 0.9 and 0.9).
        num_local_views: local (student) views V (reference: 4).
        seed: seed of an own generator (reproducible masks); ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        grid_size: Sequence[int],
        global_mask_ratio: float = 0.9,
        local_mask_ratio: float = 0.9,
        num_local_views: int = 4,
        seed: int | None = None,
    ) -> None:
        self.grid_size = tuple(int(s) for s in grid_size)
        num_masked_patches(self.grid_size[1] * self.grid_size[2], global_mask_ratio)
        num_masked_patches(self.grid_size[1] * self.grid_size[2], local_mask_ratio)
        self.global_mask_ratio = global_mask_ratio
        self.local_mask_ratio = local_mask_ratio
        self.num_local_views = num_local_views
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def __call__(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        return multi_local_tube_masks(
            batch_size,
            self.grid_size,
            self.global_mask_ratio,
            self.local_mask_ratio,
            self.num_local_views,
            self._generator(device),
            device,
        )
