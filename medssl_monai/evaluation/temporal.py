"""Frozen features that keep motion: per-time features of every encoder, pooled with mean, std and quantiles.

A clip embedding averaged over time cannot tell a heart that moves a lot from one that moves little: on the
synthetic echo set a ridge probe on the *true* LV volume curve in time order reaches EF R2 of about -0.2 when the
curve is mean-pooled, and about 0.99 when it is pooled with its spread and sorted quantiles (the largest and
smallest volume of a beat are EDV and ESV, EF = 1 - ESV / EDV). :func:`pool_time` therefore summarises a
``B x T x D`` sequence per dimension by its mean, standard deviation and quantiles over time (sorted values, so the
phase at which the clip starts does not matter), and :class:`TemporalFeatures` gets a per-time sequence from
each encoder where its architecture has one:

========== ==================================================== ===============================================
kind       per-time features (``B x T' x D``)                   clip-level feature kept beside them
========== ==================================================== ===============================================
unilvseg   3D UNet stage-3 map (T/4 time steps) averaged over   the bottleneck's global average (the library's
           space: the deepest stage that still resolves the     ``UniLVSegUNet.embed``); the bottleneck has
           beat (the bottleneck keeps T/16 steps, 2 for 32      only T/16 steps
           frames)
tvrl       the temporal transformer's frame tokens (after the   the temporal CLS
           temporal blocks, so they carry the clip context)
ucl        the ResNet feature of every frame                    their mean (UCL's own clip embedding)
discovr    the ViT's patch tokens averaged over space, one per  the CLS token
/videomae  tubelet time step (T/2)
========== ==================================================== ===============================================

The layout each encoder is probed with (frames, stride) is the one it was pretrained on, spanning at least one
heart beat (``scripts/benchmark_representations.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medssl_monai.encoders import ClipEncoder

__all__ = ["DEFAULT_QUANTILES", "pool_time", "pooled_dim", "TemporalFeatures"]

#: quantiles over time kept per dimension (0 and 1: the extremes, e.g. EDV and ESV of a volume curve)
DEFAULT_QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def pool_time(
    x: torch.Tensor, quantiles: Sequence[float] = DEFAULT_QUANTILES, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``B x T x D`` -> ``B x D (2 + len(quantiles))``: mean, standard deviation (population) and quantiles over T.

    Laid out ``[mean (D), std (D), q_0 (D), q_1 (D), ...]``. ``mask`` (``B x T`` bool, True = a real step) leaves
    padded steps out; a sample needs at least one real step.
    """
    if x.ndim != 3:
        raise ValueError(f"pool_time expects B x T x D, got shape {tuple(x.shape)}")
    x = x if x.is_floating_point() else x.float()  # float64 input (the oracle's volumes) stays float64
    q = torch.as_tensor(list(quantiles), dtype=x.dtype, device=x.device)
    if mask is None:
        mean = x.mean(dim=1)
        std = x.std(dim=1, unbiased=False)
        quant = torch.quantile(x, q, dim=1) if len(q) else x.new_zeros(0, *mean.shape)  # Q x B x D
        return torch.cat([mean, std, *quant], dim=1)
    rows = [pool_time(x[i : i + 1, mask[i].bool()], quantiles) for i in range(x.shape[0])]
    return torch.cat(rows, dim=0)


def pooled_dim(dim: int, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> int:
    """Width of :func:`pool_time`'s output for ``D = dim``."""
    return dim * (2 + len(quantiles))


class TemporalFeatures(nn.Module):
    """An encoder's motion-keeping clip features: ``[clip-level feature, pool_time(per-time features)]``.

    Args:
        encoder: a :class:`~medssl_monai.encoders.ClipEncoder` (its preprocessing is reused: channels, frame
            selection, resizing, normalisation).
        quantiles: of :func:`pool_time`.
    """

    def __init__(self, encoder: ClipEncoder, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        super().__init__()
        self.encoder = encoder
        self.quantiles = tuple(float(q) for q in quantiles)

    @property
    def kind(self) -> str:
        return self.encoder.kind

    def sequence(
        self, x: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(clip feature B x Dg, per-time features B x T' x D, per-time mask B x T' or None)``."""
        enc = self.encoder
        x, idx = enc.preprocess(x)
        if idx is not None:
            times = None if times is None else times.index_select(1, idx.to(times.device))
            frame_mask = None if frame_mask is None else frame_mask.index_select(1, idx.to(frame_mask.device))
        b = enc.backbone
        if enc.kind == "unilvseg":
            skips, bottleneck = b._encode(x)  # the UNet's own encoder pass (stage maps + bottleneck)
            stage = skips[min(2, len(skips) - 1)]  # B x C x T/4 x H/4 x W/4: the beat is still resolved in time
            return bottleneck.flatten(2).mean(dim=2), stage.mean(dim=(3, 4)).transpose(1, 2), None
        if enc.kind == "tvrl":
            tokens = b.encode_temporal(b.encode_frames(x), times, frame_mask)
            return tokens[:, 0], tokens[:, 1:], frame_mask
        if enc.kind == "ucl":
            bsz, c, t, h, w = x.shape
            frames = b(x.transpose(1, 2).reshape(bsz * t, c, h, w)).reshape(bsz, t, -1)
            if frame_mask is None:
                return frames.mean(dim=1), frames, None
            m = frame_mask.to(frames.dtype).unsqueeze(-1)
            return (frames * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0), frames, frame_mask
        # DISCOVR / VideoMAE: tokens in (t, h, w) order after the final norm; CLS first
        tokens = b.forward_features(x)
        t_grid = x.shape[2] // b.tubelet_size
        patches = tokens[:, 1:].reshape(tokens.shape[0], t_grid, -1, tokens.shape[-1]).mean(dim=2)
        return tokens[:, 0], patches, None

    def forward(
        self, x: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """8-bit clips ``B x C x T x H x W`` -> ``B x (Dg + pooled_dim(D))`` features."""
        clip, seq, mask = self.sequence(x, times, frame_mask)
        return torch.cat([clip.float(), pool_time(seq, self.quantiles, mask)], dim=1)
