"""MONAI-style dictionary transforms on clips (``C x T x H x W``): loading, clip sampling, clip-consistent
augmentation (one random draw for every frame and the mask), normalisation, temporal masking, super-images."""

from __future__ import annotations

from medssl_monai.transforms.intensity import (
    ECHONET_MEAN,
    ECHONET_STD,
    NormalizeClipd,
    RandClipCLAHEd,
    RandClipColorJitterd,
    RandClipGaussianBlurd,
    normalize_clip,
)
from medssl_monai.transforms.io import LoadClipd, LoadSeriesd, LoadTracingMaskd
from medssl_monai.transforms.masking import RandTemporalMaskd, mask_frames
from medssl_monai.transforms.sampling import clip_indices
from medssl_monai.transforms.spatial import ClipConsistentd
from medssl_monai.transforms.superimage import TileSuperImaged, tile_super_image, untile_super_image

__all__ = [
    "ECHONET_MEAN",
    "ECHONET_STD",
    "ClipConsistentd",
    "LoadClipd",
    "LoadSeriesd",
    "LoadTracingMaskd",
    "NormalizeClipd",
    "RandClipCLAHEd",
    "RandClipColorJitterd",
    "RandClipGaussianBlurd",
    "RandTemporalMaskd",
    "TileSuperImaged",
    "clip_indices",
    "mask_frames",
    "normalize_clip",
    "tile_super_image",
    "untile_super_image",
]
