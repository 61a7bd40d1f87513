"""DISCOVR pretraining (Mishra et al., arXiv 2506.11777, NeurIPS 2025) and the plain VideoMAE baseline.

:class:`DISCOVR` wraps the bundle's video encoder (``network_def``, a :class:`~medssl_monai.networks.videovit.VideoViT`)
and returns ``{"loss", ...}`` for MONAI's ``SupervisedTrainer`` (``engines.ssl.OutputLoss``). Per clip batch:

1. Masks: one global and ``num_local_views`` local tube masks at 90% (``transforms.tube_masking``).
2. Video DINO: the EMA video teacher sees the unmasked clip (CLS -> DINO head); the student encoder sees each
   local view (CLS -> DINO head); :class:`~medssl_monai.losses.dino.DINOLoss` with its own centre.
3. Image DINO (online image branch): every frame goes through the EMA image teacher (unmasked) and through the
   image student under ``num_image_views`` random patch masks at 90%; a second ``DINOLoss``. The reference
   computes it in chunks of 1024 frames and *overwrites* the loss per chunk (quirk 2: only the last chunk
   counts when ``B * T > 1024``); here it is the mean over all frames and views (no chunking). The reference
   multiplies that loss by ``256 / frames in the chunk`` (0.25 at 16 clips x 64 frames); ``image_dino_scale=
   "reference"`` (default) applies the same factor, ``256 / min(B * T, 1024)`` with ``B`` the per-rank batch
   as in the reference, and ``"none"`` leaves the loss unscaled.
4. Semantic cluster distillation: the encoder sees the global view, the VideoMAE decoder predicts every token;
   targets are the image teacher's patch tokens standardised over the patches of each frame. Both are scored
   against learnable prototypes (L2-normalised every step; detached on the image side), coded by Sinkhorn-Knopp
   and trained by swapped prediction with hard (argmax) codes. The targets are **aligned token by token**:
   token ``(t, h, w)`` of the decoder is compared with patch ``(h, w)`` of the image teacher on the first frame
   of tubelet ``t`` (``target_frames="first"``, the intent of the reference's ``::2``) or the tubelet's frame
   mean (``"mean"``). The reference subsamples ``::2`` over the flattened ``(t * n)`` axis and compares it with
   decoder outputs in ``[visible..., masked...]`` order, so its targets and predictions do not index the same
   tubelet; this module implements what the paper describes.

Loss = ``cluster_weight * L_cluster + video_dino_weight * L_video + image_dino_weight * s * L_image`` (weights 1
in the reference; ``s`` the ``image_dino_scale`` factor above).
Prototype scores and DINO logits are float32 even under autocast (see ``losses.sinkhorn`` and ``losses.dino``);
the reference computes them in fp16 under ``torch.cuda.amp.autocast``.
The teachers are updated by :class:`~medssl_monai.engines.ssl.MomentumTeacherHandler` calling
:meth:`DISCOVR.update_teacher` (momentum 0.996, constant);
:class:`~medssl_monai.engines.ssl.SetEpochHandler` passes the epoch for the teacher-temperature warm-up.
Features for downstream tasks are the CLS of ``video_teacher``.

:class:`VideoMAE` is the baseline: the same encoder and decoder, a 90% tube mask, and the MSE between the
decoder's masked-token predictions and the per-tubelet normalised pixels (``norm_pix_loss``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medssl_monai.engines.ssl import ema_update
from medssl_monai.losses.dino import DINOHead, DINOLoss
from medssl_monai.losses.sinkhorn import Prototypes, swapped_prediction_loss
from medssl_monai.networks.videovit import ImageViT, VideoMAEDecoder, VideoViT, gather_tokens, token_order
from medssl_monai.transforms.tube_masking import multi_local_tube_masks, num_visible_tokens, tube_mask

__all__ = ["DISCOVR", "VideoMAE", "patchify_clip", "standardize_tokens", "tubelet_targets"]


def _frozen_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def patchify_clip(x: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """``B x C x T x H x W`` -> ``B x N x (tubelet * patch * patch) x C`` in the encoder's ``(t, h, w)`` order.

    VideoMAE's ``rearrange('b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c')``.
    """
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // tubelet_size, tubelet_size, h // patch_size, patch_size, w // patch_size, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b t' h' w' p0 p1 p2 c
    return x.reshape(b, -1, tubelet_size * patch_size * patch_size, c)


def standardize_tokens(x: torch.Tensor, dim: int = -2, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` along ``dim`` (unbiased std, as the reference)."""
    return (x - x.mean(dim=dim, keepdim=True)) / (x.var(dim=dim, unbiased=True, keepdim=True).sqrt() + eps)


def tubelet_targets(frame_tokens: torch.Tensor, tubelet_size: int, reduce: str = "first") -> torch.Tensor:
    """Per-frame patch tokens ``B x T x n x D`` -> one target per tubelet token ``B x (T' * n) x D``.

    Token ``t' * n + p`` of the result is patch ``p`` of tubelet ``t'``: the same index the video encoder and
    decoder use, so targets and predictions are aligned (the reference's ``[:, ::2]`` over the flattened
    ``(t * n)`` axis is not).

    Args:
        frame_tokens: ``B x T x n x D``.
        tubelet_size: frames per tubelet.
        reduce: ``"first"`` (frame ``t' * tubelet_size``) or ``"mean"`` (mean over the tubelet's frames).
    """
    b, t, n, d = frame_tokens.shape
    if reduce == "first":
        out = frame_tokens[:, ::tubelet_size]
    elif reduce == "mean":
        out = frame_tokens.reshape(b, t // tubelet_size, tubelet_size, n, d).mean(2)
    else:
        raise ValueError(f"reduce must be 'first' or 'mean', got {reduce!r}")
    return out.reshape(b, -1, d)


class DISCOVR(nn.Module):
    """Video self-distillation with an online image branch and semantic cluster distillation.

    Args:
        encoder: the video student (``network_def``); the video teacher is its EMA copy.
        image_encoder: the image student (:class:`ImageViT`, same patch size and frame size); ``None`` builds
            one with the encoder's width, depth and heads and ``qkv_bias=False`` (the reference image ViT).
        decoder_dim, decoder_depth, decoder_num_heads: VideoMAE decoder (384, 4, 6).
        dino_out_dim, dino_hidden_dim, dino_bottleneck_dim: DINO heads (16384, 2048, 256).
        num_prototypes: cluster prototypes (3000).
        sinkhorn_epsilon, sinkhorn_iterations: Sinkhorn-Knopp (0.05, 10).
        swav_temperature: temperature of the swapped-prediction cross-entropy (0.1).
        global_mask_ratio, local_mask_ratio, num_local_views: multi-local tube masking (0.9, 0.9, 4).
        image_mask_ratio, num_image_views: the image students' patch masks (0.9, 4).
        student_temp, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, center_momentum: DINO
            (0.1, 0.04, 0.07, 30, 0.9), shared by the video and image losses (separate centres).
        cluster_weight, video_dino_weight, image_dino_weight: loss weights (1, 1, 1).
        image_dino_scale: ``"reference"`` multiplies the image DINO loss by ``256 / min(B * T, 1024)`` (the
            reference's ``grad_scale``: 0.25 at 16 x 64 frames); ``"none"`` by 1.
        center_update: the DINO centres average the raw teacher logits (``"logits"``, DINO) or the teacher
            probabilities (``"probs"``, the reference code); see :class:`~medssl_monai.losses.dino.DINOLoss`.
        target_frames: ``"first"`` or ``"mean"``, see :func:`tubelet_targets`.
        eval_seed: masks in eval mode come from a generator seeded with it on every call (comparable val loss).
    """

    def __init__(
        self,
        encoder: VideoViT,
        image_encoder: ImageViT | None = None,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        dino_out_dim: int = 16384,
        dino_hidden_dim: int = 2048,
        dino_bottleneck_dim: int = 256,
        num_prototypes: int = 3000,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 10,
        swav_temperature: float = 0.1,
        global_mask_ratio: float = 0.9,
        local_mask_ratio: float = 0.9,
        num_local_views: int = 4,
        image_mask_ratio: float = 0.9,
        num_image_views: int = 4,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        cluster_weight: float = 1.0,
        video_dino_weight: float = 1.0,
        image_dino_weight: float = 1.0,
        image_dino_scale: str = "reference",
        center_update: str = "logits",
        target_frames: str = "first",
        eval_seed: int = 12345,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        t_grid, h_grid, w_grid = encoder.grid_size
        if image_encoder is None:
            blk = encoder.blocks[0]
            image_encoder = ImageViT(
                in_channels=encoder.patch_embedding.in_channels,
                img_size=(h_grid * encoder.patch_size, w_grid * encoder.patch_size),
                patch_size=encoder.patch_size,
                hidden_size=encoder.hidden_size,
                mlp_dim=blk.linear1.out_features,
                num_layers=len(encoder.blocks),
                num_heads=blk.self_attn.num_heads,
                qkv_bias=False,
            )
        if tuple(image_encoder.grid_size[1:]) != (h_grid, w_grid):
            raise ValueError(
                f"image patch grid {image_encoder.grid_size[1:]} must equal the video's {(h_grid, w_grid)} "
                "for token-aligned cluster distillation"
            )
        self.image_student = image_encoder
        self.decoder = VideoMAEDecoder(
            encoder.num_patches,
            encoder.hidden_size,
            decoder_dim,
            decoder_depth,
            decoder_num_heads,
            out_channels=image_encoder.hidden_size,
        )
        self.video_head = DINOHead(encoder.hidden_size, dino_out_dim, dino_hidden_dim, dino_bottleneck_dim)
        self.image_head = DINOHead(image_encoder.hidden_size, dino_out_dim, dino_hidden_dim, dino_bottleneck_dim)
        self.video_teacher = _frozen_copy(encoder)
        self.video_teacher_head = _frozen_copy(self.video_head)
        self.image_teacher = _frozen_copy(image_encoder)
        self.image_teacher_head = _frozen_copy(self.image_head)
        self.prototypes = Prototypes(image_encoder.hidden_size, num_prototypes)
        dino_kw = {
            "student_temp": student_temp,
            "warmup_teacher_temp": warmup_teacher_temp,
            "teacher_temp": teacher_temp,
            "warmup_teacher_temp_epochs": warmup_teacher_temp_epochs,
            "center_momentum": center_momentum,
            "center_update": center_update,
        }
        self.video_dino_loss = DINOLoss(dino_out_dim, **dino_kw)
        self.image_dino_loss = DINOLoss(dino_out_dim, **dino_kw)
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.swav_temperature = swav_temperature
        self.global_mask_ratio = global_mask_ratio
        self.local_mask_ratio = local_mask_ratio
        self.num_local_views = num_local_views
        self.image_mask_ratio = image_mask_ratio
        self.num_image_views = num_image_views
        self.cluster_weight = cluster_weight
        self.video_dino_weight = video_dino_weight
        self.image_dino_weight = image_dino_weight
        if image_dino_scale not in ("reference", "none"):
            raise ValueError(f"image_dino_scale must be 'reference' or 'none', got {image_dino_scale!r}")
        self.image_dino_scale = image_dino_scale
        self.target_frames = target_frames
        self.eval_seed = eval_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch, for the teacher-temperature warm-up."""
        self.epoch = int(epoch)

    @torch.no_grad()
    def update_teacher(self, momentum: float = 0.996) -> None:
        """EMA of both students and both DINO heads into their teachers."""
        ema_update(self.video_teacher, self.encoder, momentum)
        ema_update(self.video_teacher_head, self.video_head, momentum)
        ema_update(self.image_teacher, self.image_student, momentum)
        ema_update(self.image_teacher_head, self.image_head, momentum)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.training:
            return None
        return torch.Generator(device=device).manual_seed(self.eval_seed)

    def image_dino_factor(self, num_frames: int) -> float:
        """The image DINO loss factor for ``num_frames`` frames in this rank's step.

        The reference scales each chunk of at most 1024 frames by ``256 / chunk size`` ("reference batch size of
        256") and keeps the last chunk's loss; with the mean over all frames here, ``256 / min(frames, 1024)``.
        """
        if self.image_dino_scale == "none":
            return 1.0
        return 256.0 / min(num_frames, 1024)

    def cluster_targets(self, frame_patch_tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Image-teacher patch tokens ``(B * T) x n x D`` -> standardised per frame, one per tubelet ``B x N x D``."""
        tok = standardize_tokens(frame_patch_tokens.float(), dim=1)
        tok = tok.reshape(batch_size, -1, *tok.shape[1:])
        return tubelet_targets(tok, self.encoder.tubelet_size, self.target_frames)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses for a normalised clip batch ``B x C x T x H x W``."""
        b, c, t = x.shape[:3]
        gen = self._generator(x.device)
        if self.training:
            self.prototypes.normalize_()
        global_mask, local_masks = multi_local_tube_masks(
            b,
            self.encoder.grid_size,
            self.global_mask_ratio,
            self.local_mask_ratio,
            self.num_local_views,
            gen,
            x.device,
        )
        frames = x.transpose(1, 2).reshape(b * t, c, *x.shape[3:])

        with torch.no_grad():
            t_video = self.video_teacher_head(self.video_teacher(x))
            t_image_tokens = self.image_teacher.forward_features(frames)
            t_image = self.image_teacher_head(t_image_tokens[:, 0])
            targets = self.cluster_targets(t_image_tokens[:, 1:], b)

        # video student: global view -> decoder (cluster distillation); local views -> video DINO
        # visible-token counts follow from the grid and the ratios: the encoders gather without a host sync
        grid = self.encoder.grid_size
        tok = self.encoder.tokens(x)
        enc = self.encoder.encode(tok, global_mask, num_visible_tokens(grid, self.global_mask_ratio))
        pred = self.decoder(enc[:, 1:], global_mask)  # B x N x D_img, natural token order
        v = local_masks.shape[0]
        loss_video = x.new_zeros(())
        if v > 0:
            n_local = num_visible_tokens(grid, self.local_mask_ratio)
            local = self.encoder.encode(tok.repeat(v, 1, 1), local_masks.reshape(v * b, -1), n_local)[:, 0]
            s_video = self.video_head(local).reshape(v, b, -1)
            loss_video = self.video_dino_loss(s_video, t_video, self.epoch)

        # image student: num_image_views random patch masks per frame
        loss_image = x.new_zeros(())
        if self.num_image_views > 0:
            img_tok = self.image_student.tokens(frames)
            n_views = self.num_image_views
            img_masks = tube_mask(n_views * b * t, self.image_student.grid_size, self.image_mask_ratio, gen, x.device)
            n_img = num_visible_tokens(self.image_student.grid_size, self.image_mask_ratio)
            s_image = self.image_head(self.image_student.encode(img_tok.repeat(n_views, 1, 1), img_masks, n_img)[:, 0])
            loss_image = self.image_dino_loss(s_image.reshape(n_views, b * t, -1), t_image, self.epoch)
            loss_image = loss_image * self.image_dino_factor(b * t)

        # semantic cluster distillation, token by token
        s_img = self.prototypes(targets.reshape(-1, targets.shape[-1]), detach=True)
        s_vid = self.prototypes(pred.reshape(-1, pred.shape[-1]).float())
        loss_cluster = swapped_prediction_loss(
            s_img, s_vid, self.sinkhorn_epsilon, self.sinkhorn_iterations, self.swav_temperature, hard=True
        )
        loss = (
            self.cluster_weight * loss_cluster
            + self.video_dino_weight * loss_video
            + self.image_dino_weight * loss_image
        )
        return {
            "loss": loss,
            "loss_cluster": loss_cluster.detach(),
            "loss_video_dino": loss_video.detach(),
            "loss_image_dino": loss_image.detach(),
        }


class VideoMAE(nn.Module):
    """Plain VideoMAE pretraining (the baseline): 90% tube masking, MSE on normalised pixels of masked tubelets.

    The target is each masked tubelet's pixels standardised per channel over its ``tubelet * patch * patch``
    voxels (VideoMAE ``normlize_target``). The reference first undoes the ImageNet normalisation; a per-channel
    affine map of the input leaves these standardised targets unchanged (up to ``eps``), so the normalised
    clip is patchified directly.

    Args:
        encoder: the video encoder (``network_def``).
        decoder_dim, decoder_depth, decoder_num_heads: the decoder (384, 4, 6).
        mask_ratio: tube-mask ratio (0.9).
        norm_pix_loss: standardise the target tubelets (True in VideoMAE).
        eval_seed: fixed masks in eval mode.
    """

    def __init__(
        self,
        encoder: VideoViT,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        mask_ratio: float = 0.9,
        norm_pix_loss: bool = True,
        eval_seed: int = 12345,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        in_ch = encoder.patch_embedding.in_channels
        self.patch_dim = encoder.tubelet_size * encoder.patch_size**2 * in_ch
        self.decoder = VideoMAEDecoder(
            encoder.num_patches,
            encoder.hidden_size,
            decoder_dim,
            decoder_depth,
            decoder_num_heads,
            out_channels=self.patch_dim,
        )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.eval_seed = eval_seed

    @property
    def video_teacher(self) -> nn.Module:
        """The encoder itself (VideoMAE has no teacher): lets bundles save ``method.video_teacher`` either way."""
        return self.encoder

    def update_teacher(self, momentum: float = 0.996) -> None:
        """No teacher: nothing to do (so the same handlers can be attached)."""

    def set_epoch(self, epoch: int) -> None:
        """No schedule depends on the epoch."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        gen = None if self.training else torch.Generator(device=x.device).manual_seed(self.eval_seed)
        mask = tube_mask(b, self.encoder.grid_size, self.mask_ratio, gen, x.device)
        # gathers with counts fixed by the ratio instead of boolean indexing (a host-device sync on a GPU);
        # the masked tokens keep their increasing order, as x[mask] takes them
        n_vis = num_visible_tokens(self.encoder.grid_size, self.mask_ratio)
        masked = token_order(mask)[:, n_vis:]
        enc = self.encoder.encode(self.encoder.tokens(x), mask, n_vis)
        pred = gather_tokens(self.decoder(enc[:, 1:], mask), masked)
        with torch.no_grad():
            patches = patchify_clip(x.float(), self.encoder.tubelet_size, self.encoder.patch_size)
            if self.norm_pix_loss:
                patches = standardize_tokens(patches, dim=-2)
            target = gather_tokens(patches.flatten(2), masked)
        loss = F.mse_loss(pred.float(), target)
        return {"loss": loss, "loss_mse": loss.detach()}
