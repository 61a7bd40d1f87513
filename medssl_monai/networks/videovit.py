"""VideoMAE-style ViTs for DISCOVR (Mishra et al., arXiv 2506.11777).

- :class:`VideoViT`: the video encoder. A 3D tubelet patch embedding (``tubelet_size x patch x patch`` strided
  convolution), VideoMAE's *fixed* 1D sinusoidal position table over the
  flattened ``(t, h, w)`` token order with a zero slot for the CLS token, pre-norm ViT
  blocks with SDPA attention (:func:`vit_block`), a final LayerNorm. Given a boolean
  token mask it encodes the visible tokens only (VideoMAE). ``forward`` returns the CLS embedding ``B x D``: the
  one-tensor encoder interface every bundle ships.
- :class:`ImageViT`: the online image branch, the same ViT on single frames (tubelet 1, ``qkv_bias=False`` as
  in the reference ``image_student``).
- :class:`VideoMAEDecoder`: VideoMAE's narrow decoder (Linear without bias to ``decoder_dim``, learnable mask
  token, fixed sinusoidal positions, ``depth`` blocks, LayerNorm, linear head). Unlike the reference, which
  returns tokens in ``[visible..., masked...]`` order, it returns predictions in the *natural* token order so
  that token ``i`` of the output is tubelet ``i`` of the clip (the reference's order is a pitfall when targets
  are matched to tokens). Attention is permutation-equivariant, so the values are the reference's, re-ordered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "sinusoid_table",
    "gather_tokens",
    "token_order",
    "visible_tokens",
    "vit_block",
    "VideoViT",
    "ImageViT",
    "VideoMAEDecoder",
    "VideoViTClassifier",
]


def vit_block(
    hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = True
) -> nn.TransformerEncoderLayer:
    """A pre-norm ViT block (LN -> MHSA -> residual, LN -> GELU MLP -> residual) with SDPA attention.

    torch's ``TransformerEncoderLayer`` (``norm_first=True``): MONAI's ``TransformerBlock`` computes the same
    thing but needs ``einops``, which this project does not depend on. ``qkv_bias=False`` (the reference image
    ViT) zeroes and freezes the qkv bias; the output projection keeps its bias, as in timm.
    """
    layer = nn.TransformerEncoderLayer(
        hidden_size,
        num_heads,
        dim_feedforward=mlp_dim,
        dropout=dropout_rate,
        activation="gelu",
        layer_norm_eps=1e-6,
        batch_first=True,
        norm_first=True,
    )
    if not qkv_bias:
        with torch.no_grad():
            layer.self_attn.in_proj_bias.zero_()
        layer.self_attn.in_proj_bias.requires_grad_(False)
    return layer


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table``: ``1 x num_positions x dim``, sin on even, cos on odd channels."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    half = torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64)
    div = torch.pow(torch.full_like(half, 10000.0), 2 * half / dim)[None, :]
    table = pos / div  # in float64 like the reference's numpy table, then float32
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table.to(torch.float32)[None]


def token_order(mask: torch.Tensor) -> torch.Tensor:
    """Token indices ``B x N``, each row's visible (False) tokens first, then its masked ones, both increasing.

    ``[:, :N_visible]`` and ``[:, N_visible:]`` select what ``x[~mask]`` and ``x[mask]`` select, in the same
    order, but as a gather with a known size: boolean indexing sizes its output from the mask's values, a
    host-device sync on a GPU. The count comes from the caller (tube masks fix it by the ratio).
    """
    return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]``: ``B x N x D`` tokens and ``B x M`` indices -> ``B x M x D``."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def visible_tokens(x: torch.Tensor, mask: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
    """``x[~mask]`` as ``B x N_visible x D`` (every sample must mask the same number of tokens, as tube masks do).

    With ``num_visible`` (the visible tokens per sample) the tokens are gathered without a host-device sync;
    ``None`` uses boolean indexing (any mask with equal counts, one sync on a GPU).
    """
    b, _, d = x.shape
    if num_visible is not None:
        return gather_tokens(x, token_order(mask)[:, :num_visible])
    return x[~mask].reshape(b, -1, d)


class VideoViT(nn.Module):
    """ViT on clips ``B x C x T x H x W`` with tubelet tokens; encodes only the visible tokens when given a mask.

    Args:
        in_channels: clip channels.
        img_size: frame size (int or ``(H, W)``).
        num_frames: clip length T (a multiple of ``tubelet_size``).
        patch_size: spatial patch size.
        tubelet_size: frames per token (2 in DISCOVR/VideoMAE; 1 for the image branch).
        hidden_size, mlp_dim, num_layers, num_heads: ViT size (ViT-B: 768, 3072, 12, 12).
        qkv_bias: bias in the qkv projection (video encoder: True; reference image ViT: False).
        dropout_rate: dropout in the blocks.
    """

    def __init__(
        self,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 112,
        num_frames: int = 64,
        patch_size: int = 16,
        tubelet_size: int = 2,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        img_size = ensure_tuple_rep(img_size, 2)
        if num_frames % tubelet_size or any(s % patch_size for s in img_size):
            raise ValueError(f"clip {num_frames}x{img_size} is not divisible by tubelets {tubelet_size}x{patch_size}")
        self.grid_size = (num_frames // tubelet_size, img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = int(np.prod(self.grid_size))
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.hidden_size = hidden_size
        # a strided Conv3d, as VideoMAE's PatchEmbed: MONAI's PatchEmbeddingBlock always adds a fixed-size position
        # parameter (zeros for "none") before any masking, which rules out other clip sizes
        self.patch_embedding = nn.Conv3d(
            in_channels,
            hidden_size,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # the reference prepends a zero position for the CLS token to the sinusoidal table of the patches
        pos = torch.cat([torch.zeros(1, 1, hidden_size), sinusoid_table(self.num_patches, hidden_size)], dim=1)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = nn.ModuleList(
            [vit_block(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions, ``B x N x D`` in ``(t, h, w)`` order (no CLS).

        Clips of another size (multiples of the tubelet) get the 1D table for their own token count, as VideoMAE
        builds it for its configured size.
        """
        tok = self.patch_embedding(x).flatten(2).transpose(1, 2)
        n = tok.shape[1]
        pos = self.pos_embed[:, 1:] if n == self.num_patches else sinusoid_table(n, self.hidden_size).to(x.device)
        return tok + pos.to(tok.dtype)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, num_visible: int | None = None
    ) -> torch.Tensor:
        """Normalised ``[CLS, visible tokens...]``, ``B x (1 + N_visible) x D``.

        Args:
            x: ``B x C x T x H x W`` clip.
            mask: ``B x N`` bool, True = masked (dropped before the blocks); ``None`` encodes every token.
            num_visible: unmasked tokens per sample, if known (no host-device sync, see :func:`visible_tokens`).
        """
        return self.encode(self.tokens(x), mask, num_visible)

    def encode(
        self, tok: torch.Tensor, mask: torch.Tensor | None = None, num_visible: int | None = None
    ) -> torch.Tensor:
        """:meth:`forward_features` from precomputed :meth:`tokens` (several masked views share one embedding)."""
        if mask is not None:
            tok = visible_tokens(tok, mask, num_visible)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tok.shape[0], -1, -1).to(tok.dtype)
        tok = torch.cat([cls, tok], dim=1)
        for blk in self.blocks:
            tok = blk(tok)
        return self.norm(tok)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens after every block (no CLS, before the final norm), ``num_layers`` x ``B x N x D``: the skip
        features of a UNETR-style decoder."""
        tok = self.tokens(x)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tok.shape[0], -1, -1).to(tok.dtype)
        tok = torch.cat([cls, tok], dim=1)
        out = []
        for blk in self.blocks:
            tok = blk(tok)
            out.append(tok[:, 1:])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding: the CLS token of the unmasked clip, ``B x D``."""
        return self.forward_features(x)[:, 0]


class ImageViT(VideoViT):
    """The DISCOVR online image branch: the ViT on single frames ``B x C x H x W`` (tubelet 1, one frame).

    ``forward_features``/``forward`` also accept ``B x C x 1 x H x W``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 112,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            img_size=img_size,
            num_frames=1,
            patch_size=patch_size,
            tubelet_size=1,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            dropout_rate=dropout_rate,
        )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return super().tokens(x.unsqueeze(2) if x.ndim == 4 else x)


class VideoMAEDecoder(nn.Module):
    """VideoMAE decoder returning one prediction per token in natural ``(t, h, w)`` order.

    Args:
        num_patches: tokens per clip N.
        encoder_dim: encoder width.
        decoder_dim, depth, num_heads, mlp_ratio: decoder size (reference: 384, 4, 6, 4).
        out_channels: prediction size per token (pixels of a tubelet ``3 * 2 * 16 * 16`` for VideoMAE; the image
            teacher's width for DISCOVR's cluster distillation).
    """

    def __init__(
        self,
        num_patches: int,
        encoder_dim: int = 768,
        decoder_dim: int = 384,
        depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        out_channels: int = 1536,
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.encoder_to_decoder = nn.Linear(encoder_dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sinusoid_table(num_patches, decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(
            [vit_block(decoder_dim, int(decoder_dim * mlp_ratio), num_heads) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = nn.Linear(decoder_dim, out_channels)

    def forward(self, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions ``B x N x out_channels``; row ``i`` belongs to token ``i`` of the clip.

        Args:
            visible: encoder outputs of the visible tokens (no CLS), ``B x N_visible x encoder_dim``, in the order
                of ``visible_tokens`` (increasing token index).
            mask: ``B x N`` bool, True = masked.
        """
        vis = self.encoder_to_decoder(visible)
        b, n = mask.shape
        # scatter to the visible positions (in increasing order, as visible_tokens took them): the count is
        # visible's length, so no boolean index_put (a host-device sync on a GPU)
        index = token_order(mask)[:, : vis.shape[1], None].expand(-1, -1, vis.shape[-1])
        full = self.mask_token.to(vis.dtype).expand(b, n, -1).scatter(1, index, vis)
        full = full + self.pos_embed.to(vis.dtype)
        for blk in self.blocks:
            full = blk(full)
        return self.head(self.norm(full))


class VideoViTClassifier(nn.Module):
    """Linear probe (or fine-tuning) head on :class:`VideoViT`'s CLS.

    The DISCOVR reference's ``run_class_finetuning.py --linear_probing`` (VideoMAE's fine-tuning model with the CLS
    token, ``nb_classes`` 2): the encoder's final LayerNorm output at the CLS goes straight into ``head``, a
    ``Linear`` initialised with ``trunc_normal(std=0.02) * init_scale`` (0.001); only ``head`` (and ``fc_norm``,
    absent with the CLS) trains. ``head_norm="batchnorm"`` inserts MAE's ``BatchNorm1d(affine=False)`` before the
    head instead (He et al. 2022, linear probing). With ``freeze_encoder`` the encoder gets no gradient and stays
    in eval mode.

    Args:
        num_classes: output logits.
        freeze_encoder: linear probing (True) or full fine-tuning (False).
        head_norm: ``"none"`` (the reference) or ``"batchnorm"`` (MAE's probe).
        init_scale: scale of the head's initial weights and bias (VideoMAE ``--init_scale``, 0.001).
        vit_kwargs: :class:`VideoViT` arguments (sizes must match the pretrained checkpoint).
    """

    def __init__(
        self,
        num_classes: int = 2,
        freeze_encoder: bool = True,
        head_norm: str = "none",
        init_scale: float = 0.001,
        **vit_kwargs,
    ) -> None:
        super().__init__()
        if head_norm not in ("none", "batchnorm"):
            raise ValueError(f"head_norm must be 'none' or 'batchnorm', got {head_norm!r}")
        self.encoder = VideoViT(**vit_kwargs)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.norm = (
            nn.BatchNorm1d(self.encoder.hidden_size, affine=False, eps=1e-6)
            if head_norm == "batchnorm"
            else nn.Identity()
        )
        self.head = nn.Linear(self.encoder.hidden_size, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)

    def train(self, mode: bool = True) -> VideoViTClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed CLS features ``B x D`` (the encoder's output): the head alone."""
        return self.head(self.norm(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_features(self.encoder(x))
