"""TVRL's six pretraining frameworks on the spatio-temporal encoder, chosen by one key.

Shen et al., "Spatio-temporal representation learning for medical image time series" (TVRL, MICCAI 2024,
arXiv 2403.07513), reference ``pretrain.py`` / ``models/simclr.py`` / ``models/mae.py``:

- ``cvrl``: clip contrastive learning between two clips from *different* times (Qian et al., CVRL).
- ``csimclr``: one clip, two augmentations (``make_clips_identical``), NT-Xent on the temporal CLS.
- ``csimclr_te``: ``csimclr`` with the encoder's time embedding of the real time steps.
- ``ltn``: latent time navigation (Zeng et al.): the second view's embedding is moved along ``K`` = 64
  orthonormal directions (QR of a learnable ``K x D`` matrix, every forward) by coefficients from an MLP on
  ``[z, TE(|dt|)]``, ``dt`` = the offset between the views' first time steps, before the projection head;
  ``TE`` is a learnable time embedding of its own (sinusoid then Linear-SiLU-Linear, the reference's
  ``TimeEmbedding(learnable=True)`` in ``SimCLR``).
- ``mae``: VideoMAE: 90% of the clip's ``T x P`` patch tokens masked at random per sample (the reference's
  ``mae_helper.py`` shuffles all space-time tokens and keeps ``round(T P (1 - 0.9))``; ``mae_mask_type="tube"``
  masks the same patch positions in every frame instead), the visible patches through the encoder, a small
  decoder (192-d, 4 blocks), norm-pix MSE on the masked patches only. One view, lightly augmented (the
  reference's ``cardiac_aug_mae``: resize + horizontal flip; :func:`~medssl_monai.transforms.tvrl.tvrl_ssl_transforms`
  with ``augmentation="mae"``, ``num_views=1``).
- ``tvrl``: clip contrastive plus masked frame-feature prediction, on an encoder *without* time embedding (the
  reference's cardiac script runs it with ``use_time_embed=False``):
  ``L = (1 - w) InfoNCE + w NegCos(pred_masked, target_masked)`` averaged over the two views, ``w`` = 0.5 once
  the 0-based epoch exceeds 100 (the reference's ``current_epoch > 100``: ``mlm_start_epoch`` = 101) and 0
  before; 15% of the valid frames masked (Bernoulli). ``mask_mode`` ``"v2"`` (default): masked frames are
  removed from the contrastive branch's attention; the prediction branch sees a detached copy of the frame
  features with masked frames replaced by a learnable mask token.
- ``tvrl_te``: ``tvrl`` on an encoder with the time embedding (the variant the reference's configs switch on
  with ``use_time_embed=True``).

Differences from the reference, on purpose (say so in the bundle docs):

- The prediction *target* is the true frame feature (the unmasked, detached ``mid_project`` output). The
  reference writes the mask token and the position embedding in place into the tensor it later reads the
  target from, so its target is ``mask_token + pos_embed``, and it adds the position
  embedding twice to the prediction input. ``mask_mode="v1"`` here only changes the contrastive branch (it
  sees every frame); its target is the same true, detached feature (the reference's v1 target is not detached).
- LTN is trained on two clips from different times (CVRL's sampling): with the reference's identical clips
  ``dt`` is always ~0 and the navigation has nothing to learn.
- MAE trains this project's factorised encoder (per-frame ViT with a linear patch stem, then the temporal
  transformer) rather than the reference's joint space-time ViT, so that every framework yields the same
  encoder for the probe: each frame encodes its visible patches (frames keep different numbers of them under
  random masking: the shorter ones are padded and the padding hidden from the attention); the decoder attends
  jointly over the temporal tokens and all space-time patch tokens, so the temporal transformer is trained too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from torch import nn

from medssl_monai.losses.contrastive import NTXentLoss, negative_cosine_similarity
from medssl_monai.networks.spatiotemporal import (
    AttentionBlock,
    SpatioTemporalEncoder,
    TimeEmbedding,
    key_padding_mask,
)
from medssl_monai.transforms.intensity import normalize_clip

__all__ = [
    "FRAMEWORKS",
    "TIME_AWARE_FRAMEWORKS",
    "MASKED_PREDICTION_FRAMEWORKS",
    "projection_head",
    "LatentTimeNavigation",
    "VideoMAEDecoder",
    "TVRLPretraining",
    "TwoViewPrepareBatch",
    "bernoulli_frame_mask",
    "tube_mask",
    "random_token_mask",
    "patchify",
    "norm_pix_mse",
]

FRAMEWORKS = ("cvrl", "ltn", "mae", "csimclr", "csimclr_te", "tvrl", "tvrl_te")
TIME_AWARE_FRAMEWORKS = ("csimclr_te", "tvrl_te")  # the encoder uses the time embedding
MASKED_PREDICTION_FRAMEWORKS = ("tvrl", "tvrl_te")  # contrastive + masked frame-feature prediction
TWO_CLIP_FRAMEWORKS = ("cvrl", "ltn")  # two clips from different times; the others duplicate one clip


def projection_head(
    in_features: int, hidden: int = 2048, out_features: int = 128, batch_norm: bool = True
) -> nn.Sequential:
    """lightly ``SimCLRProjectionHead``: Linear (no bias with BN) - [BN] - ReLU - Linear (TVRL: 384 -> 2048 -> 128)."""
    layers: list[nn.Module] = [nn.Linear(in_features, hidden, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_features)]
    return nn.Sequential(*layers)


def bernoulli_frame_mask(
    frame_mask: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mask each valid frame with probability ``mask_ratio`` (TVRL ``mlm.mask_ratio`` = 0.15), keeping at least one
    valid frame of every clip visible (the contrastive branch then still has a frame to attend to)."""
    valid = frame_mask.bool()
    draw = torch.rand(valid.shape, device=valid.device, generator=generator) < mask_ratio
    masked = draw & valid
    all_gone = valid.any(1) & ~(valid & ~masked).any(1)
    # unmask the last valid frame of the clips that lost every frame (unconditionally: testing first would sync)
    last = (valid.cumsum(1) == valid.sum(1, keepdim=True)) & valid
    return masked & ~(last & all_gone[:, None])


def tube_mask(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """VideoMAE tube masking: ``int(mask_ratio * P)`` of the ``P`` patch positions masked, the same in every frame.

    Returns ``(visible_idx B x P_vis, masked B x P bool)`` (at least one visible patch).
    """
    n_mask = min(int(mask_ratio * num_patches), num_patches - 1)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    order = noise.argsort(dim=1)
    visible = order[:, n_mask:].sort(dim=1).values
    masked = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    masked.scatter_(1, visible, False)
    return visible, masked


def random_token_mask(
    batch: int,
    num_frames: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VideoMAE's random masking over all ``T x P`` space-time tokens (TVRL ``mae_helper.py``, ``masking_fn``).

    Each sample keeps exactly ``round(T * P * (1 - mask_ratio))`` tokens (at least one), drawn uniformly, so a
    frame may keep any number of its patches, none included. Returns ``masked`` ``B x T x P`` bool.
    """
    total = num_frames * num_patches
    n_keep = min(max(1, round(total * (1.0 - mask_ratio))), total)
    noise = torch.rand(batch, total, device=device, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_keep]
    masked = torch.ones(batch, total, dtype=torch.bool, device=device)
    masked.scatter_(1, keep, False)
    return masked.reshape(batch, num_frames, num_patches)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``B x C x T x H x W`` -> ``B x T x P x (p*p*C)`` patches (row-major patch order, as the stem's tokens)."""
    b, c, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 4, 6, 1)
    return x.reshape(b, t, (h // p) * (w // p), p * p * c)


def norm_pix_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """VideoMAE's loss: MSE between ``pred`` and (per-patch normalised) ``target`` over the patches where ``mask``.

    ``target`` patches are normalised by their own mean and unbiased variance (``(x - mu) / sqrt(var + 1e-6)``)
    when ``norm_pix``; the mean is over masked patches and patch values.
    """
    if norm_pix:
        mu = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, unbiased=True, keepdim=True)
        target = (target - mu) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class LatentTimeNavigation(nn.Module):
    """LTN (TVRL's ``use_ltn``): ``z + MLP([z, TE(|dt|)]) Q^T`` with ``Q`` the QR-orthonormalised directions.

    ``TE`` is a learnable :class:`~medssl_monai.networks.spatiotemporal.TimeEmbedding` (sinusoid, then
    Linear-SiLU-Linear), separate from the encoder's, as the reference's ``SimCLR.time_embed``.

    Args:
        hidden_size: embedding width ``D`` (384).
        num_directions: ``K`` (64).
        mlp_hidden: MLP width (2048).
        max_period: the sinusoid's ``max_period`` for ``|dt|``.
    """

    def __init__(
        self, hidden_size: int = 384, num_directions: int = 64, mlp_hidden: int = 2048, max_period: float = 100.0
    ):
        super().__init__()
        if num_directions > hidden_size:
            raise ValueError(f"num_directions {num_directions} must not exceed hidden_size {hidden_size}")
        self.hidden_size, self.max_period = hidden_size, max_period
        self.directions = nn.Parameter(torch.randn(num_directions, hidden_size) / hidden_size**0.5)
        self.time_embed = TimeEmbedding(hidden_size, max_period)
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, num_directions)
        )

    def basis(self) -> torch.Tensor:
        """``D x K`` orthonormal columns spanning the directions (reduced QR, re-computed every call)."""
        q, _ = torch.linalg.qr(self.directions.T)
        return q

    def forward(self, z: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        te = self.time_embed(dt.abs())
        a = self.mlp(torch.cat([z, te.to(z.dtype)], dim=-1))
        return z + a @ self.basis().T


class VideoMAEDecoder(nn.Module):
    """VideoMAE decoder over ``[temporal tokens, T*P patch tokens]`` (mask tokens where masked) -> patch pixels.

    Args:
        encoder_size: encoder token width.
        temporal_size: temporal token width.
        num_frames: frames per clip (decoder position embedding length ``T*P``).
        num_patches: patches per frame.
        patch_dim: pixels per patch ``p*p*C``.
        hidden_size, num_layers, num_heads: decoder (VideoMAE ViT-S: 192, 4, 6... heads must divide the width).
    """

    def __init__(
        self,
        encoder_size: int,
        temporal_size: int,
        num_frames: int,
        num_patches: int,
        patch_dim: int,
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 6,
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.embed = nn.Linear(encoder_size, hidden_size)
        self.embed_temporal = nn.Linear(temporal_size, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames * num_patches, hidden_size))
        self.blocks = nn.ModuleList(AttentionBlock(hidden_size, 4 * hidden_size, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, patch_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self,
        visible: torch.Tensor,
        visible_idx: torch.Tensor,
        temporal: torch.Tensor,
        frame_mask: torch.Tensor | None,
        visible_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``visible`` ``B x T x P_vis x De`` at patch positions ``visible_idx`` (``B x T x P_vis``, or ``B x P_vis``
        for every frame), ``temporal`` ``B x (1+T) x Dt`` -> ``B x T x P x patch_dim``. Entries where
        ``visible_valid`` (``B x T x P_vis`` bool) is ``False`` are padding and dropped; ``frame_mask`` ``None``:
        no frame padded, attention without a mask."""
        b, t, n_vis, _ = visible.shape
        p = self.num_patches
        if visible_idx.dim() == 2:
            visible_idx = visible_idx[:, None].expand(b, t, n_vis)
        if visible_valid is not None:  # padding goes to a spare slot P, cut off below
            visible_idx = torch.where(visible_valid, visible_idx, torch.full_like(visible_idx, p))
        grid = self.mask_token.expand(b * t, p + 1, -1).clone()
        idx = visible_idx.reshape(b * t, n_vis, 1).expand(-1, -1, grid.shape[-1])
        grid = grid.scatter(1, idx, self.embed(visible).reshape(b * t, n_vis, -1).to(grid.dtype))[:, :p]
        tokens = grid.reshape(b, t * p, -1) + self.pos_embed[:, : t * p]
        x = torch.cat([self.embed_temporal(temporal), tokens], dim=1)
        mask = None
        if frame_mask is not None:  # hide padded frames' temporal and patch tokens
            valid = torch.cat([frame_mask.bool(), frame_mask.bool().repeat_interleave(p, dim=1)], dim=1)
            mask = key_padding_mask(valid, num_prefix=1)
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        return self.head(self.norm(x[:, 1 + t :])).reshape(b, t, p, -1)


class TVRLPretraining(nn.Module):
    """One of TVRL's six frameworks around a :class:`SpatioTemporalEncoder`; ``forward`` returns ``{"loss", ...}``.

    Args:
        encoder: the bundle's ``network_def``.
        framework: one of :data:`FRAMEWORKS`.
        proj_hidden, proj_out: SimCLR projection head (2048, 128); BatchNorm in it except for ``tvrl`` /
            ``tvrl_te`` (as the reference's ``SimCLRMaskLM``).
        temperature: NT-Xent temperature (0.1).
        mlm_weight: ``w`` of the masked-feature loss (0.5).
        mlm_start_epoch: first (0-based) epoch with ``w > 0``: 101 of 200, the reference's ``current_epoch > 100``;
            the epoch is set by :class:`~medssl_monai.engines.ssl.SetEpochHandler`.
        mask_ratio: TVRL frame masking probability (0.15).
        mask_mode: ``"v2"`` (masked frames hidden from the contrastive branch) or ``"v1"``.
        ltn_directions: LTN's ``K`` (64).
        mae_mask_ratio: VideoMAE mask ratio (0.9).
        mae_mask_type: ``"random"`` (the reference: any ``T x P`` tokens) or ``"tube"`` (the same patch positions
            in every frame, VideoMAE's own tube masking).
        mae_decoder_size, mae_decoder_layers, mae_decoder_heads: VideoMAE decoder (192, 4, 6).
        norm_pix_loss: VideoMAE's per-patch target normalisation.
        num_frames: clip length (MAE decoder position embedding; default the encoder's ``max_frames``).
        gather_distributed: NT-Xent negatives from every rank.

    Raises:
        ValueError: an unknown framework, a time-aware framework (:data:`TIME_AWARE_FRAMEWORKS`) on an encoder
            without time embedding or ``csimclr`` / ``tvrl`` on one with it (each pair would be the same method),
            or ``mae`` on a conv-stem encoder (the stem's receptive field would leak masked pixels into visible
            tokens).
    """

    def __init__(
        self,
        encoder: SpatioTemporalEncoder,
        framework: str = "tvrl",
        proj_hidden: int = 2048,
        proj_out: int = 128,
        temperature: float = 0.1,
        mlm_weight: float = 0.5,
        mlm_start_epoch: int = 101,
        mask_ratio: float = 0.15,
        mask_mode: str = "v2",
        ltn_directions: int = 64,
        mae_mask_ratio: float = 0.9,
        mae_mask_type: str = "random",
        mae_decoder_size: int = 192,
        mae_decoder_layers: int = 4,
        mae_decoder_heads: int = 6,
        norm_pix_loss: bool = True,
        num_frames: int | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
        if mask_mode not in ("v1", "v2"):
            raise ValueError(f"mask_mode must be 'v1' or 'v2', got {mask_mode!r}")
        if mae_mask_type not in ("random", "tube"):
            raise ValueError(f"mae_mask_type must be 'random' or 'tube', got {mae_mask_type!r}")
        te = encoder.temporal.use_time_embed
        if framework in TIME_AWARE_FRAMEWORKS and not te:
            raise ValueError(f"{framework} needs an encoder with use_time_embed=True")
        if framework in ("csimclr", "tvrl") and te:
            raise ValueError(
                f"{framework} runs without time embedding; use {framework}_te or an encoder with use_time_embed=False"
            )
        self.encoder, self.framework = encoder, framework
        self.mlm_weight, self.mlm_start_epoch = mlm_weight, mlm_start_epoch
        self.mask_ratio, self.mask_mode = mask_ratio, mask_mode
        self.mae_mask_ratio, self.mae_mask_type, self.norm_pix_loss = mae_mask_ratio, mae_mask_type, norm_pix_loss
        self.epoch = 0
        d = encoder.out_features
        self.criterion = NTXentLoss(temperature, gather_distributed)
        if framework == "mae":
            fe = encoder.frame_encoder
            if fe.stem_type != "patch":
                raise ValueError("mae needs the encoder's linear patch stem (stem='patch')")
            self.decoder = VideoMAEDecoder(
                fe.hidden_size,
                d,
                num_frames or encoder.temporal.max_frames,
                fe.num_patches,
                fe.patch_size**2 * fe.in_channels,
                mae_decoder_size,
                mae_decoder_layers,
                mae_decoder_heads,
            )
            return
        masked_prediction = framework in MASKED_PREDICTION_FRAMEWORKS
        self.head = projection_head(d, proj_hidden, proj_out, batch_norm=not masked_prediction)
        if framework == "ltn":
            self.ltn = LatentTimeNavigation(d, ltn_directions, proj_hidden)
        if masked_prediction:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.mask_token, std=0.02)
            self.pred_norm = nn.LayerNorm(d)
            self.pred_head = projection_head(d, proj_hidden, d, batch_norm=False)

    # ------------------------------------------------------------------ helpers
    def set_epoch(self, epoch: int) -> None:
        """The 0-based training epoch (TVRL's loss-weight schedule)."""
        self.epoch = int(epoch)

    def current_mlm_weight(self) -> float:
        """``w``: ``mlm_weight`` from ``mlm_start_epoch`` on, 0 before."""
        return self.mlm_weight if self.epoch >= self.mlm_start_epoch else 0.0

    @staticmethod
    def _defaults(
        x: torch.Tensor, times: torch.Tensor | None, frame_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Times default to the frame index; a ``None`` frame mask stays ``None`` (no frame padded)."""
        b, t = x.shape[0], x.shape[2]
        if times is None:
            times = torch.arange(t, device=x.device, dtype=torch.float32).expand(b, t)
        # no all-True mask in its place: any boolean mask keeps SDPA off its flash kernel on a GPU
        return times.float(), None if frame_mask is None else frame_mask.bool()

    def masked_feature_prediction(
        self, frames: torch.Tensor, times: torch.Tensor, frame_mask: torch.Tensor | None, masked: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TVRL's prediction branch: ``(pred, target)``, both ``B x T x D``; the loss reads them where ``masked``.

        The input is a detached copy of the frame features with masked frames replaced by the mask token; the
        target is the detached, *unmasked* frame feature (the paper; not the reference's corrupted copy).
        """
        target = frames.detach()
        inp = torch.where(masked[..., None], self.mask_token.to(target.dtype).expand_as(target), target)
        tokens = self.encoder.encode_temporal(inp, times, frame_mask)[:, 1:]
        return self.pred_head(self.pred_norm(tokens)), target

    def _tvrl_view(self, x: torch.Tensor, times: torch.Tensor, frame_mask: torch.Tensor | None):
        frames = self.encoder.encode_frames(x)
        valid = (
            frame_mask if frame_mask is not None else torch.ones(frames.shape[:2], dtype=torch.bool, device=x.device)
        )
        masked = bernoulli_frame_mask(valid, self.mask_ratio)
        # v2 hides the masked frames from the contrastive branch (a mask is needed); v1 needs one only for padding
        attend = valid & ~masked if self.mask_mode == "v2" else frame_mask
        z = self.encoder.encode_temporal(frames, times, attend)[:, 0]
        pred, target = self.masked_feature_prediction(frames, times, frame_mask, masked)
        return z, negative_cosine_similarity(pred, target, masked)

    def _mae(self, x: torch.Tensor, frame_mask: torch.Tensor | None, times: torch.Tensor) -> dict[str, torch.Tensor]:
        fe = self.encoder.frame_encoder
        b, c, t, h, w = x.shape
        p = fe.num_patches
        tokens = fe.patch_tokens(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T) x P x D, with positions
        if self.mae_mask_type == "tube":
            visible, tube = tube_mask(b, p, self.mae_mask_ratio, x.device)
            masked = tube[:, None].expand(b, t, p)
            # every frame keeps the same number of patches: the count is a shape, no frame's tokens are padded
            n_vis, counts = visible.shape[1], None
        else:
            masked = random_token_mask(b, t, p, self.mae_mask_ratio, x.device)
            counts = (~masked.reshape(b * t, p)).sum(1)
            n_vis = max(int(counts.max()), 1)
        flat = masked.reshape(b * t, p)
        # each frame's visible positions first, in patch order (a stable sort of the mask), padded to n_vis
        visible_idx = torch.sort(flat.to(torch.uint8), dim=1, stable=True).indices[:, :n_vis]
        valid = None if counts is None else torch.arange(n_vis, device=x.device) < counts[:, None]
        gather = visible_idx[..., None].expand(-1, -1, tokens.shape[-1])
        enc = fe.forward_tokens(torch.gather(tokens, 1, gather), valid)  # (B*T) x (1 + n_vis) x D
        frame_feats = self.encoder.mid_project(enc[:, 0]).reshape(b, t, -1)
        temporal = self.encoder.encode_temporal(frame_feats, times, frame_mask)
        pred = self.decoder(
            enc[:, 1:].reshape(b, t, n_vis, -1),
            visible_idx.reshape(b, t, n_vis),
            temporal,
            frame_mask,
            None if valid is None else valid.reshape(b, t, n_vis),
        )
        loss_mask = masked if frame_mask is None else masked & frame_mask[:, :, None]
        loss = norm_pix_mse(pred, patchify(x, fe.patch_size), loss_mask, self.norm_pix_loss)
        return {"loss": loss, "reconstruction": loss.detach()}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        image_2: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
        times_2: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        frame_mask_2: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Views ``x`` and ``image_2`` (``B x C x T x H x W``, normalised) with their times and frame masks.

        A ``None`` frame mask means no frame of that view is padded: attention then runs without a mask.
        """
        times, frame_mask = self._defaults(x, times, frame_mask)
        if self.framework == "mae":
            return self._mae(x, frame_mask, times)
        if image_2 is None:
            raise ValueError(f"{self.framework} needs two views (image_2)")
        times_2, frame_mask_2 = self._defaults(image_2, times_2, frame_mask_2)
        if self.framework in MASKED_PREDICTION_FRAMEWORKS:
            z0, m0 = self._tvrl_view(x, times, frame_mask)
            z1, m1 = self._tvrl_view(image_2, times_2, frame_mask_2)
            contrastive = self.criterion(self.head(z0), self.head(z1))
            mlm = 0.5 * (m0 + m1)
            w = self.current_mlm_weight()
            loss = (1.0 - w) * contrastive + w * mlm
            return {
                "loss": loss,
                "contrastive": contrastive.detach(),
                "mlm": mlm.detach(),
                "mlm_weight": torch.tensor(w, device=x.device),
            }
        z0 = self.encoder(x, times, frame_mask)
        z1 = self.encoder(image_2, times_2, frame_mask_2)
        if self.framework == "ltn":
            z1 = self.ltn(z1, times_2[:, 0] - times[:, 0])
        loss = self.criterion(self.head(z0), self.head(z1))
        return {"loss": loss, "contrastive": loss.detach()}


class TwoViewPrepareBatch(PrepareBatch):
    """``prepare_batch`` for :class:`TVRLPretraining`: both views to the device, normalised there, as kwargs.

    Returns ``(image, None, (), {"image_2", "times", "times_2", "frame_mask", "frame_mask_2"})`` (keys absent
    from the batch are left out: a frame mask that :func:`~medssl_monai.transforms.tvrl.drop_unpadded_masks_collate`
    dropped reaches the method as ``None``). TVRL scales pixels to [0, 1] only (``mean=0, std=1``). With
    ``augment`` (a :class:`~medssl_monai.transforms.device.TVRLDeviceAugmentation`) the ``uint8`` views are
    augmented on the device before the scaling, both views in one call: every clip of either view gets its own
    draw, as the worker path draws each view independently.
    """

    def __init__(
        self,
        image_key: str = "image",
        second_suffix: str = "_2",
        mean: float | tuple[float, ...] = 0.0,
        std: float | tuple[float, ...] = 1.0,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.image_key, self.second_suffix, self.mean, self.std = image_key, second_suffix, mean, std
        self.augment = augment

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        s = self.second_suffix
        keys = [k for k in (self.image_key, f"{self.image_key}{s}") if k in batchdata]
        views = [torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking) for k in keys]
        if self.augment is not None:
            views = list(self.augment(torch.cat(views)).split(views[0].shape[0]))
        clips = {k: normalize_clip(v, self.mean, self.std) for k, v in zip(keys, views)}
        extra: dict[str, torch.Tensor] = {}
        if f"{self.image_key}{s}" in clips:
            extra["image_2"] = clips[f"{self.image_key}{s}"]
        for key in ("times", f"times{s}", "frame_mask", f"frame_mask{s}"):
            if key in batchdata:
                extra[key.replace(s, "_2")] = torch.as_tensor(batchdata[key]).to(
                    device=device, non_blocking=non_blocking
                )
        return clips[self.image_key], None, (), extra
