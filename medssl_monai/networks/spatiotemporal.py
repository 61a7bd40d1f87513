"""TVRL's spatio-temporal encoder: a per-frame ViT with a conv stem, then a temporal transformer over frame tokens.

Shen et al., "Spatio-temporal representation learning for medical image time series" (TVRL, MICCAI 2024,
arXiv 2403.07513), reference ``models/spatiotemporal.py`` (``SpatioTemporalEncoder``):

- spatial encoder: a ViT applied to every frame independently; tokens from a convolutional stem (``log2(patch)``
  stride-2 3x3 conv + BN + ReLU layers, channels ``D/8 -> D/4 -> D/2 -> D`` for ViT-S, then a 1x1 projection),
  a CLS token per frame, learnable position embedding, final LayerNorm. The frame feature is the frame's CLS.
- ``mid_project``: linear map to the temporal width (identity when equal).
- temporal encoder: a learnable temporal CLS token prepended, learnable temporal position embedding, an optional
  time embedding of the real (float) time steps (sinusoidal, ``max_period`` 100, then MLP d -> d, SiLU, d -> d,
  *added* to the tokens), a key-padding mask (the temporal CLS is always attended), 3 transformer blocks and
  no final LayerNorm. The clip representation is the temporal CLS.

As the reference, ``dropout_rate`` (0.1) acts on the frame ViT's projections and MLPs only (timm's ``drop_rate``):
there is no dropout after the position embedding (the reference's ``VideoViT`` has no ``pos_drop``) and the
temporal transformer runs without dropout (the reference builds it with ``ViT_Backbone``'s default
``drop_rate=0``; ``temporal_dropout_rate`` switches it on).

Differences from the reference, on purpose: the temporal position embedding is added out of place (the
reference adds it in place, which corrupts its masked-prediction target) and has the temporal width (the
reference sizes it with the spatial width, which works only because both are 384). Attention is PyTorch's
``scaled_dot_product_attention`` (:class:`AttentionBlock`); attention-weight dropout is off (timm's
``attn_drop=0``).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution, MLPBlock, PatchEmbeddingBlock
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AttentionBlock",
    "ConvStem",
    "FrameViT",
    "TimeEmbedding",
    "TemporalTransformer",
    "SpatioTemporalEncoder",
    "sinusoidal_embedding",
    "key_padding_mask",
]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^(-k / (dim/2))``, for float times ``t`` (``... -> ... x dim``).

    The guided-diffusion timestep embedding the reference uses for time steps (``max_period`` 100).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


def key_padding_mask(valid: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """``B x T`` bool (``True`` = attend) -> ``B x 1 x 1 x (num_prefix + T)`` SDPA mask; prefix tokens attended.

    Callers pass no mask at all (``None``) when nothing is padded: an all-``True`` mask gives the same attention
    but keeps ``scaled_dot_product_attention`` off its flash kernel on a GPU.
    """
    prefix = torch.ones(valid.shape[0], num_prefix, dtype=torch.bool, device=valid.device)
    return torch.cat([prefix, valid.to(torch.bool)], dim=1)[:, None, None, :]


class AttentionBlock(nn.Module):
    """Pre-norm transformer block (timm ``Block``): ``x + proj(SDPA(LN(x)))``, then ``x + MLP(LN(x))``.

    MONAI's ``TransformerBlock`` has this structure but needs ``einops`` (not a dependency of this project) and
    applies its dropout to the attention weights even in eval mode when it uses SDPA; this block uses
    ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key-padding mask and MONAI's
    ``MLPBlock`` (GELU). ``dropout_rate`` acts on the attention output projection and the MLP (timm ``proj_drop``).

    Args:
        hidden_size: token width.
        mlp_dim: MLP width.
        num_heads: attention heads.
        dropout_rate: projection / MLP dropout.
        qkv_bias: bias in the qkv projection.
    """

    def __init__(
        self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(dropout_rate)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``B x L x D`` tokens; ``attn_mask`` bool, broadcastable to ``B x heads x L x L`` (``True`` = attend)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj_drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.mlp(self.norm2(x))


def _blocks(
    hidden_size: int, mlp_dim: int, num_layers: int, num_heads: int, dropout_rate: float, qkv_bias: bool
) -> nn.ModuleList:
    return nn.ModuleList(
        AttentionBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias) for _ in range(num_layers)
    )


class ConvStem(nn.Module):
    """Early-convolution tokenizer (TVRL's 3D ``ConvStem`` with 1x3x3 kernels = this 2D stem applied per frame).

    ``log2(patch_size)`` layers of 3x3 stride-2 convolution + BatchNorm + ReLU, then a 1x1 projection to
    ``hidden_size``. BatchNorm over ``B*T`` frames has the statistics of the reference's ``BatchNorm3d``.

    Args:
        in_channels: image channels.
        hidden_size: token width.
        patch_size: total downsampling, a power of two (16: four layers).
        channels: widths of the conv layers; default ``hidden_size / 2^(n-1-i)`` (384: 48, 96, 192, 384).
    """

    def __init__(
        self, in_channels: int, hidden_size: int, patch_size: int = 16, channels: list[int] | None = None
    ) -> None:
        super().__init__()
        n = int(round(math.log2(patch_size)))
        if 2**n != patch_size or n < 1:
            raise ValueError(f"ConvStem needs a power-of-two patch_size, got {patch_size}")
        channels = (
            list(channels) if channels is not None else [max(1, hidden_size // 2 ** (n - 1 - i)) for i in range(n)]
        )
        if len(channels) != n:
            raise ValueError(f"patch_size {patch_size} needs {n} conv channels, got {channels}")
        layers, c_in = [], in_channels
        for c in channels:
            layers.append(
                Convolution(2, c_in, c, strides=2, kernel_size=3, act="RELU", norm="BATCH", bias=False, padding=1)
            )
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, hidden_size, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` -> ``N x (H/p * W/p) x hidden_size``."""
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


class FrameViT(nn.Module):
    """The per-frame (spatial) ViT: stem tokens + learnable position embedding, a CLS token, blocks, LayerNorm.

    Args:
        in_channels: image channels (TVRL: 1).
        img_size: square frame size (TVRL: 128).
        patch_size: token size in pixels (16).
        hidden_size: token width (ViT-S: 384).
        mlp_dim: MLP width (``4 * hidden_size``).
        num_layers: transformer blocks (12).
        num_heads: attention heads (6).
        dropout_rate: projection / MLP dropout (TVRL: 0.1); none after the position embedding, as the reference.
        qkv_bias: bias in the qkv projection (TVRL: False).
        stem: ``"conv"`` (TVRL's ConvStem) or ``"patch"`` (linear patch embedding, the VideoMAE baseline: the
            receptive field of a token is its patch, so token masking leaks nothing).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int = 128,
        patch_size: int = 16,
        hidden_size: int = 384,
        mlp_dim: int | None = None,
        num_layers: int = 12,
        num_heads: int = 6,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.in_channels, self.img_size, self.patch_size, self.hidden_size = (
            in_channels,
            img_size,
            patch_size,
            hidden_size,
        )
        self.stem_type = stem
        self.num_patches = (img_size // patch_size) ** 2
        if stem == "conv":
            self.stem: nn.Module = ConvStem(in_channels, hidden_size, patch_size)
        elif stem == "patch":
            self.stem = PatchEmbeddingBlock(
                in_channels, img_size, patch_size, hidden_size, num_heads, "conv", "none", 0.0, spatial_dims=2
            )
        else:
            raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, hidden_size))
        self.blocks = _blocks(hidden_size, mlp_dim or 4 * hidden_size, num_layers, num_heads, dropout_rate, qkv_bias)
        self.norm = nn.LayerNorm(hidden_size)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` frames -> ``N x P x D`` patch tokens with their position embedding (no CLS)."""
        return self.stem(x) + self.pos_embed[:, 1:]

    def forward_tokens(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prepend the CLS to ``N x P' x D`` (all or only visible) patch tokens, run the blocks; ``N x (1+P') x D``.

        ``token_mask`` (``N x P'`` bool, ``True`` = a real token) hides padding from the attention, for frames that
        keep different numbers of visible tokens (VideoMAE's random masking); the CLS is always attended.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        mask = None if token_mask is None else key_padding_mask(token_mask)
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` -> ``N x D`` frame features (the frame CLS)."""
        return self.forward_tokens(self.patch_tokens(x))[:, 0]


class TimeEmbedding(nn.Module):
    """TVRL's ``TimeEmbedding``: sinusoidal embedding of float times, then Linear-SiLU-Linear (``... -> ... x D``)."""

    def __init__(self, hidden_size: int, max_period: float = 100.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.hidden_size, self.max_period))


class TemporalTransformer(nn.Module):
    """Transformer over frame features with a temporal CLS, key-padding mask and optional time embedding.

    Args:
        hidden_size: token width (384).
        num_layers: blocks (3).
        num_heads: heads (6).
        mlp_dim: MLP width (``4 * hidden_size``).
        dropout_rate: projection / MLP dropout (TVRL: 0).
        qkv_bias: bias in the qkv projection.
        max_frames: the length of the learnable position embedding (TVRL: ``clip_frames`` = 8).
        use_time_embed: add :class:`TimeEmbedding` of the real time steps (the ``-TE`` variants, TVRL).
        time_max_period: the sinusoid's ``max_period``.
    """

    def __init__(
        self,
        hidden_size: int = 384,
        num_layers: int = 3,
        num_heads: int = 6,
        mlp_dim: int | None = None,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        max_frames: int = 8,
        use_time_embed: bool = False,
        time_max_period: float = 100.0,
    ) -> None:
        super().__init__()
        self.hidden_size, self.max_frames, self.use_time_embed = hidden_size, max_frames, use_time_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, max_frames, hidden_size))
        self.time_embed = TimeEmbedding(hidden_size, time_max_period) if use_time_embed else None
        self.blocks = _blocks(hidden_size, mlp_dim or 4 * hidden_size, num_layers, num_heads, dropout_rate, qkv_bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.reset_cls_token()

    def reset_cls_token(self) -> None:
        """Xavier-uniform re-initialisation of the temporal CLS (TVRL's linear probe does this before training)."""
        nn.init.xavier_uniform_(self.cls_token)

    def forward(
        self, frames: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x T x D`` frame tokens (+ ``B x T`` float times, ``B x T`` bool mask) -> ``B x (1+T) x D`` outputs.

        ``frame_mask`` ``None``: no frame padded, attention without a mask (SDPA's flash kernel on a GPU).
        """
        b, t, _ = frames.shape
        if t > self.max_frames:
            raise ValueError(f"{t} frames but the temporal position embedding has {self.max_frames}")
        x = frames + self.pos_embed[:, :t]  # out of place: the input (a prediction target) stays intact
        if self.time_embed is not None:
            if times is None:
                times = torch.arange(t, device=frames.device, dtype=torch.float32).expand(b, t)
            x = x + self.time_embed(times)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        mask = None if frame_mask is None else key_padding_mask(frame_mask)
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        return x


class SpatioTemporalEncoder(nn.Module):
    """TVRL's encoder: ``B x C x T x H x W`` clips (+ times, frame mask) -> ``B x D`` temporal-CLS embeddings.

    ``forward`` returns one tensor (for ``verify_net_in_out`` and TorchScript): ``times`` default to the frame
    index and every frame is valid. :meth:`encode_frames` (per-frame features ``B x T x D``) and
    :meth:`encode_temporal` (all temporal tokens) are the pieces the pretraining methods and probes use.

    Args:
        in_channels, img_size, patch_size, hidden_size, num_layers, num_heads, mlp_dim, dropout_rate, qkv_bias,
            stem: the per-frame :class:`FrameViT` (ViT-S: 384, 12, 6; 128 px, patch 16, dropout 0.1, ``"conv"``
            stem).
        temporal_dropout_rate: the temporal transformer's projection / MLP dropout (TVRL: 0).
        temporal_size: temporal width (``None``: ``hidden_size``; else a linear ``mid_project``).
        temporal_layers, temporal_heads: the :class:`TemporalTransformer` (3 blocks, 6 heads).
        max_frames: clip length the temporal position embedding covers (8).
        use_time_embed: add the time embedding of the real time steps.
        time_max_period: the time sinusoid's ``max_period`` (100).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int = 128,
        patch_size: int = 16,
        hidden_size: int = 384,
        num_layers: int = 12,
        num_heads: int = 6,
        mlp_dim: int | None = None,
        dropout_rate: float = 0.1,
        qkv_bias: bool = False,
        stem: str = "conv",
        temporal_size: int | None = None,
        temporal_layers: int = 3,
        temporal_heads: int | None = None,
        max_frames: int = 8,
        use_time_embed: bool = False,
        time_max_period: float = 100.0,
        temporal_dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        temporal_size = temporal_size or hidden_size
        self.frame_encoder = FrameViT(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, dropout_rate, qkv_bias, stem
        )
        self.mid_project = nn.Identity() if temporal_size == hidden_size else nn.Linear(hidden_size, temporal_size)
        self.temporal = TemporalTransformer(
            temporal_size,
            temporal_layers,
            temporal_heads or num_heads,
            4 * temporal_size,
            temporal_dropout_rate,
            qkv_bias,
            max_frames,
            use_time_embed,
            time_max_period,
        )
        self.out_features = temporal_size

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x T x D`` per-frame features (frame CLS after ``mid_project``)."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return self.mid_project(self.frame_encoder(frames)).reshape(b, t, -1)

    def encode_temporal(
        self, frames: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x T x D`` frame features -> ``B x (1+T) x D`` temporal tokens (index 0: the temporal CLS)."""
        return self.temporal(frames, times, frame_mask)

    def forward(
        self, x: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x C x T x H x W`` (+ ``B x T`` times, ``B x T`` bool mask) -> ``B x D`` clip embeddings."""
        return self.encode_temporal(self.encode_frames(x), times, frame_mask)[:, 0]
