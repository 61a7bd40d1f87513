"""Segmentation transfer of a pretrained :class:`~medssl_monai.networks.videovit.VideoViT`: a UNETR-style decoder.

DISCOVR (Mishra et al., arXiv 2506.11777) reports segmentation transfer of its encoder; the scripts are not in the
reference snapshot. This follows UNETR (Hatamizadeh et al., WACV 2022) with MONAI's blocks: the patch tokens after four
evenly spaced blocks (3, 6, 9, 12 of ViT-B) are reshaped to the token grid ``(T/tubelet, H/p, W/p)`` and brought up by
``UnetrPrUpBlock`` s, then merged by ``UnetrUpBlock`` s with a full-resolution ``UnetrBasicBlock`` branch on the clip.
Tubelets are 2 frames while patches are 16 pixels, so every upsampling is ``(1, 2, 2)`` except the last, ``(tubelet, 2,
2)``: the output is ``B x out_channels x T x H x W``, one mask per frame, which is what UniLVSeg's traced-frame
machinery (``engines.inferers.TracedFrameInferer``) consumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from medssl_monai.networks.videovit import VideoViT

__all__ = ["VideoUNETR"]


class VideoUNETR(nn.Module):
    """UNETR decoder on a :class:`VideoViT` (``self.encoder``, loadable from a DISCOVR ``model.pt``).

    Args:
        out_channels: segmentation channels (1: LV logits).
        feature_size: UNETR feature size (16).
        norm_name: normalisation of the decoder blocks.
        skip_layers: 1-based block indices used as skips; ``None``: four evenly spaced ones ending at the last.
        vit_kwargs: :class:`VideoViT` arguments (``patch_size`` must be 16: four x2 steps in H and W, the last
            also ``tubelet`` in time).
    """

    def __init__(
        self,
        out_channels: int = 1,
        feature_size: int = 16,
        norm_name: str | tuple = "instance",
        skip_layers: Sequence[int] | None = None,
        **vit_kwargs,
    ) -> None:
        super().__init__()
        self.encoder = VideoViT(**vit_kwargs)
        n = len(self.encoder.blocks)
        p, tub = self.encoder.patch_size, self.encoder.tubelet_size
        if p != 16:
            raise ValueError(
                f"the UNETR decoder upsamples the token grid 16x in H and W: patch_size must be 16, got {p}"
            )
        self.skip_layers = tuple(skip_layers or [max(1, round(n * k / 4)) for k in (1, 2, 3, 4)])
        in_ch = self.encoder.patch_embedding.in_channels
        d, f = self.encoder.hidden_size, feature_size
        sp = (1, 2, 2)
        kw = {"spatial_dims": 3, "norm_name": norm_name}
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_ch, out_channels=f, kernel_size=3, stride=1, res_block=True, **kw
        )
        self.encoder2 = UnetrPrUpBlock(
            in_channels=d, out_channels=2 * f, num_layer=2, kernel_size=3, stride=1, upsample_kernel_size=sp,
            res_block=True, **kw,
        )  # fmt: skip
        self.encoder3 = UnetrPrUpBlock(
            in_channels=d, out_channels=4 * f, num_layer=1, kernel_size=3, stride=1, upsample_kernel_size=sp,
            res_block=True, **kw,
        )  # fmt: skip
        self.encoder4 = UnetrPrUpBlock(
            in_channels=d, out_channels=8 * f, num_layer=0, kernel_size=3, stride=1, upsample_kernel_size=sp,
            res_block=True, **kw,
        )  # fmt: skip
        self.decoder5 = UnetrUpBlock(
            in_channels=d, out_channels=8 * f, kernel_size=3, upsample_kernel_size=sp, res_block=True, **kw
        )
        self.decoder4 = UnetrUpBlock(
            in_channels=8 * f, out_channels=4 * f, kernel_size=3, upsample_kernel_size=sp, res_block=True, **kw
        )
        self.decoder3 = UnetrUpBlock(
            in_channels=4 * f, out_channels=2 * f, kernel_size=3, upsample_kernel_size=sp, res_block=True, **kw
        )
        self.decoder2 = UnetrUpBlock(
            in_channels=2 * f, out_channels=f, kernel_size=3, upsample_kernel_size=(tub, 2, 2), res_block=True, **kw
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channels)

    def _grid(self, tok: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        return tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], t, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B x out_channels x T x H x W`` for a clip ``B x C x T x H x W``."""
        p, tub = self.encoder.patch_size, self.encoder.tubelet_size
        t, h, w = x.shape[2] // tub, x.shape[3] // p, x.shape[4] // p
        hidden = self.encoder.hidden_states(x)
        i1, i2, i3, i4 = self.skip_layers  # explicit (no generator) so that the network can be scripted
        z1, z2 = self._grid(hidden[i1 - 1], t, h, w), self._grid(hidden[i2 - 1], t, h, w)
        z3, z4 = self._grid(hidden[i3 - 1], t, h, w), self._grid(hidden[i4 - 1], t, h, w)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(z1)
        enc3 = self.encoder3(z2)
        enc4 = self.encoder4(z3)
        dec3 = self.decoder5(z4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))
