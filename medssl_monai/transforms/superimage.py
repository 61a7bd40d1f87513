"""Super-images: the 2D variant of UniLVSeg/SimLVSeg tiles an L-frame clip into a sqrt(L) x sqrt(L) grid.

Reference: ``simlvseg/dataset.py`` and ``simlvseg/si_ssl_masking/dataset.py`` (BioMedIA-MBZUAI/SimLVSeg, arXiv
2310.00454): ``einops.rearrange(video, '(nh nw) c h w -> c (nh h) (nw w)')``, row-major (frame ``i`` sits at grid row
``i // n``, column ``i % n``), e.g. 16 frames of 112 x 112 -> 448 x 448; L must be a perfect square. The traced frame's
target is found by its grid cell (``utils.get_tl_br_coors``).

Masking for super-image pretraining: use :class:`~medssl_monai.transforms.masking.RandTemporalMaskd` *before*
tiling, where ``mask_ratio`` is the fraction of frames MASKED, exactly as in the 3D variant. Note that the reference
SI masker (``SISSLMaskingDataset``) draws ``L - int(L * mask_ratio + 0.5)`` frames to zero, i.e. it masks
``1 - mask_ratio`` of the frames (an inversion, flagged [BUG?] in the digest); to reproduce a run of that code, pass
``mask_ratio = reference_si_masked_fraction(L, ratio)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "grid_size",
    "tile_super_image",
    "untile_super_image",
    "super_image_target_slice",
    "select_super_image_cells",
    "reference_si_masked_fraction",
    "TileSuperImaged",
]

Array = np.ndarray | torch.Tensor


def grid_size(num_frames: int) -> int:
    """Side n of the super-image grid for ``num_frames = n * n`` frames; a clear ValueError if it is not a square."""
    n = math.isqrt(int(num_frames)) if num_frames > 0 else 0
    if n * n != num_frames or n == 0:
        raise ValueError(f"a super-image needs a perfect-square number of frames (4, 9, 16, ...), got {num_frames}.")
    return n


def tile_super_image(x: Array) -> Array:
    """Tile ``... x C x L x H x W`` clips into ``... x C x (n*H) x (n*W)`` super-images, n = sqrt(L), row-major.

    Equivalent to einops ``'c (nh nw) h w -> c (nh h) (nw w)'`` on the library's ``C x T x H x W`` layout (the
    reference applies ``'(nh nw) c h w -> ...'`` to ``T x C x H x W``). Works on numpy arrays and torch tensors.
    """
    if x.ndim < 4:
        raise ValueError(f"tile_super_image expects ... x C x L x H x W, got shape {tuple(x.shape)}.")
    *lead, c, length, h, w = x.shape
    n = grid_size(length)
    y = x.reshape(*lead, c, n, n, h, w)
    # ... c nh nw h w -> ... c nh h nw w
    nd = len(lead)
    perm = (*range(nd), nd, nd + 1, nd + 3, nd + 2, nd + 4)
    y = y.permute(*perm) if isinstance(y, torch.Tensor) else y.transpose(perm)
    return y.reshape(*lead, c, n * h, n * w)


def untile_super_image(x: Array, num_frames: int) -> Array:
    """Inverse of :func:`tile_super_image`: ``... x C x (n*H) x (n*W)`` -> ``... x C x L x H x W`` with L = n * n."""
    if x.ndim < 3:
        raise ValueError(f"untile_super_image expects ... x C x (n*H) x (n*W), got shape {tuple(x.shape)}.")
    n = grid_size(num_frames)
    *lead, c, hh, ww = x.shape
    if hh % n or ww % n:
        raise ValueError(f"super-image of size {hh} x {ww} cannot be split into a {n} x {n} grid.")
    h, w = hh // n, ww // n
    y = x.reshape(*lead, c, n, h, n, w)
    nd = len(lead)
    perm = (*range(nd), nd, nd + 1, nd + 3, nd + 2, nd + 4)
    y = y.permute(*perm) if isinstance(y, torch.Tensor) else y.transpose(perm)
    return y.reshape(*lead, c, n * n, h, w)


def super_image_target_slice(index: int, n: int, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of frame ``index``'s cell in an ``n x n`` super-image of ``height x width`` frames."""
    if not 0 <= index < n * n:
        raise ValueError(f"frame index {index} is outside a {n} x {n} super-image grid.")
    row, col = divmod(int(index), n)
    return slice(row * height, (row + 1) * height), slice(col * width, (col + 1) * width)


def select_super_image_cells(x: torch.Tensor, index: torch.Tensor | Array, height: int, width: int) -> torch.Tensor:
    """Gather, per sample, the grid cell of frame ``index[b]`` from ``B x C x (n*H) x (n*W)`` -> ``B x C x H x W``.

    Differentiable (a gather), with no host sync on the indices, so a loss on the traced frame of a super-image
    touches only that cell, as the reference's crop by grid coordinates.
    """
    if x.ndim != 4:
        raise ValueError(f"select_super_image_cells expects B x C x (n*H) x (n*W), got shape {tuple(x.shape)}.")
    b, c, hh, ww = x.shape
    if hh % height or ww % width or hh // height != ww // width:
        raise ValueError(f"super-image {hh} x {ww} is not a square grid of {height} x {width} frames.")
    n = hh // height
    frames = untile_super_image(x, n * n)  # B x C x L x H x W, a view-compatible reshape
    index = torch.as_tensor(index, device=x.device).long().reshape(b, 1, 1, 1, 1).expand(b, c, 1, height, width)
    return frames.gather(2, index).squeeze(2)


def reference_si_masked_fraction(num_frames: int, mask_ratio: float) -> float:
    """The fraction of frames the reference SI masker really masks for its ``mask_ratio`` (it zeroes
    ``L - int(L * mask_ratio + 0.5)`` frames); pass it as ``mask_ratio`` here to reproduce that behaviour exactly."""
    kept = int(num_frames * mask_ratio + 0.5)
    # value whose half-up rounding gives exactly L - kept masked frames
    return (num_frames - kept) / num_frames


class TileSuperImaged(MapTransform):
    """Dictionary version of :func:`tile_super_image`: ``C x L x H x W`` clips -> ``C x (n*H) x (n*W)`` images.

    Args:
        keys: clip keys to tile (all must have a perfect-square number of frames).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim != 4:
                raise ValueError(f"TileSuperImaged: '{key}' must be C x L x H x W, got shape {tuple(d[key].shape)}.")
            d[key] = tile_super_image(d[key])
        return d
