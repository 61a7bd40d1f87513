"""The UniLVSeg / SimLVSeg "3d_unet": a residual UNet built from MONAI blocks.

Reproduces ``simlvseg/model/unet_3d.py::UNet3D`` of BioMedIA-MBZUAI/SimLVSeg (arXiv 2310.00454): encoder stages of MONAI
``ResidualUnit`` s (kernel 3, 2 subunits, PReLU, InstanceNorm, ordering "NDA") separated by ``MaxPool(2)``; a decoder of
stride-2 transposed convolutions, concatenated skips and one ``ResidualUnit`` per level, the top one ``last_conv_only``
so the network returns logits.

The reference takes ``B x 3 x H x W x T`` (time as the last spatial axis); this library's clip contract is
``B x C x T x H x W``, so time is the first spatial axis here. Convolutions are isotropic (3x3x3, pooling 2x2x2),
so the two layouts are the same network up to a permutation of the spatial axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["UniLVSegUNet", "DEFAULT_CHANNELS"]

#: The reference "3d_unet" channel plan: one tuple per encoder stage, one ``ResidualUnit`` per entry.
DEFAULT_CHANNELS: tuple[tuple[int, ...], ...] = ((16, 16), (32, 32, 32), (64, 64, 64, 64), (128,) * 6, (256, 256, 256))


class UniLVSegUNet(nn.Module):
    """Residual UNet of UniLVSeg/SimLVSeg (the reference ``3d_unet``), 3D for clips or 2D for super-images.

    With the default plan and ``spatial_dims=3, in_channels=3, out_channels=1`` the network has 18,832,525 parameters
    (the reference ``UNet3D``; the 2D super-image variant with the same plan has 6,338,779).

    Args:
        spatial_dims: 3 for clips ``B x C x T x H x W`` (time is the first spatial axis), 2 for super-images
            ``B x C x H x W`` (see :mod:`medssl_monai.transforms.superimage`).
        in_channels: input channels (3: the RGB-decoded echo frames, as in the reference).
        out_channels: output channels of the final ``last_conv_only`` unit (1: LV logits).
        channels: one tuple of channel widths per encoder stage; stage ``i`` is a chain of ``len(channels[i])``
            ``ResidualUnit`` s and stages are separated by ``MaxPool(2)``. Needs at least two stages.
        kernel_size: convolution kernel size of every unit.
        subunits: convolutions per ``ResidualUnit``.
        act: activation (MONAI factory name or tuple).
        norm: normalisation (MONAI factory name or tuple).
        dropout: dropout rate of every unit (the reference uses 0).

    Every spatial size must be divisible by ``2 ** (len(channels) - 1)`` (16 with the default plan), as the
    reference requires, so that the decoder restores the input size exactly.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[Sequence[int]] = DEFAULT_CHANNELS,
        kernel_size: int = 3,
        subunits: int = 2,
        act: str | tuple = "PRELU",
        norm: str | tuple = "INSTANCE",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        plan = [tuple(int(c) for c in stage) for stage in channels]
        if len(plan) < 2 or any(len(stage) == 0 for stage in plan):
            raise ValueError(f"channels needs at least two non-empty stages, got {channels!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(plan)
        self.divisor = 2 ** (len(plan) - 1)
        #: width of the bottleneck, i.e. of :meth:`embed`'s output
        self.embedding_dim = plan[-1][-1]

        def unit(cin: int, cout: int, last_conv_only: bool = False) -> ResidualUnit:
            return ResidualUnit(
                spatial_dims,
                cin,
                cout,
                strides=1,
                kernel_size=kernel_size,
                subunits=subunits,
                act=act,
                norm=norm,
                dropout=dropout,
                bias=True,
                last_conv_only=last_conv_only,
                adn_ordering="NDA",
            )

        # Encoder: stage i maps the previous stage's last width through its own widths, one unit each.
        self.encoder = nn.ModuleList()
        cin = in_channels
        for stage in plan:
            widths = (cin, *stage)
            self.encoder.append(nn.Sequential(*(unit(widths[j], widths[j + 1]) for j in range(len(stage)))))
            cin = stage[-1]
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)

        # Decoder, deepest level first: a stride-2 transposed convolution to the skip's width, concatenation,
        # then one ResidualUnit; the top unit is last_conv_only so the output is raw logits.
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(plan) - 2, -1, -1):
            skip = plan[level][-1]
            self.upconvs.append(
                Convolution(
                    spatial_dims,
                    plan[level + 1][-1],
                    skip,
                    strides=2,
                    kernel_size=kernel_size,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    bias=True,
                    is_transposed=True,
                    adn_ordering="NDA",
                )
            )
            top = level == 0
            self.decoders.append(unit(2 * skip, out_channels if top else skip, last_conv_only=top))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            layout = "B x C x T x H x W" if self.spatial_dims == 3 else "B x C x H x W"
            raise ValueError(f"UniLVSegUNet expects a {layout} tensor, got shape {x.shape}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UniLVSegUNet expects {self.in_channels} input channels, got shape {x.shape}.")
        for size in x.shape[2:]:  # a plain loop (not a comprehension) so that the network can be scripted
            if size % self.divisor != 0:
                raise ValueError(
                    f"UniLVSegUNet needs every spatial size divisible by {self.divisor} "
                    f"(2 ** (number of stages - 1)), got shape {x.shape}."
                )

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        self._check_input(x)
        skips: list[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)
        return skips[:-1], skips[-1]

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map ``B x channels[-1][-1] x T/16 x H/16 x W/16`` (3D) for clip embeddings."""
        return self._encode(x)[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clip embedding ``B x embedding_dim``: global average pool of the bottleneck (the library's encoder API)."""
        return self.encoder_features(x).flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with the input's spatial size: ``B x out_channels x T x H x W`` (3D) or ``B x out x H x W`` (2D)."""
        skips, x = self._encode(x)
        level = len(skips)
        for upconv, decoder in zip(self.upconvs, self.decoders):  # deepest skip first
            level -= 1
            x = decoder(torch.cat([upconv(x), skips[level]], dim=1))
        return x
