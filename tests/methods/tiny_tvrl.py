"""A tiny TVRL method for the method tests: a 1-layer, 16-wide spatio-temporal encoder on 16 x 16 grey frames."""

from __future__ import annotations

import torch

from medssl_monai.methods.tvrl import TIME_AWARE_FRAMEWORKS, TVRLPretraining
from medssl_monai.networks.spatiotemporal import SpatioTemporalEncoder

#: heads small enough for the tiny encoder
TINY_HEADS = dict(
    proj_hidden=16, proj_out=8, ltn_directions=4, mae_decoder_size=16, mae_decoder_layers=1, mae_decoder_heads=2
)


def tiny_tvrl(framework: str, max_frames: int = 4, **kw) -> TVRLPretraining:
    """``framework`` (time embedding where it is time-aware, patch stem for MAE) with :data:`TINY_HEADS` and ``kw``;
    the same weights on every call."""
    torch.manual_seed(0)
    encoder = SpatioTemporalEncoder(
        in_channels=1,
        img_size=16,
        patch_size=8,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        temporal_layers=1,
        max_frames=max_frames,
        use_time_embed=framework in TIME_AWARE_FRAMEWORKS,
        stem="patch" if framework == "mae" else "conv",
    )
    return TVRLPretraining(encoder, framework, **{**TINY_HEADS, **kw})
