"""The 2D super-image variant of UniLVSeg as a clip network (SimLVSeg, arXiv 2310.00454)."""

from __future__ import annotations

import torch
from torch import nn

from medssl_monai.transforms.superimage import grid_size, tile_super_image, untile_super_image

__all__ = ["SuperImageNet"]


class SuperImageNet(nn.Module):
    """Wrap a 2D network so it maps clips to clips through a super-image.

    ``B x C x L x H x W`` is tiled into a ``sqrt(L) x sqrt(L)`` grid (``B x C x (nH) x (nW)``), passed through the
    2D network, and the output is cut back into ``B x C' x L x H x W``. Everything downstream (temporal masking,
    traced-frame loss, sliding windows over long videos, export) is then the same for the 3D and the 2D variant,
    which is what makes the super-image a config of the same bundles.

    Args:
        network: a 2D network (e.g. ``UniLVSegUNet(spatial_dims=2, ...)``) mapping ``B x C x (nH) x (nW)`` to
            ``B x C' x (nH) x (nW)``.
        num_frames: clip length L, a perfect square (checked here so a bad config fails at construction).
    """

    def __init__(self, network: nn.Module, num_frames: int = 16) -> None:
        super().__init__()
        grid_size(num_frames)
        self.network = network
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != self.num_frames:
            raise ValueError(f"SuperImageNet expects B x C x {self.num_frames} x H x W clips, got {tuple(x.shape)}")
        return untile_super_image(self.network(tile_super_image(x)), self.num_frames)
