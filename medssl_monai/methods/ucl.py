"""UCL: MoCo-style contrastive pretraining of a frame encoder with intra-video hard negatives.

Basu et al., "Unsupervised Contrastive Learning of Image Representations from Ultrasound Videos with Hard
Negative Mining", MICCAI 2022 (arXiv 2207.13148); reference gbc-iitd/US_UCL (``ucl/builder_gb.py``,
``train_ucl.py``). Per video and step the batch holds ``[anchor, positive, negative_1..K]`` frames
(:mod:`medssl_monai.data.ucl_sampling`):

- query encoder = ``network_def`` (the ResNet) + MLP head ``D -> D -> ReLU -> 128``; key encoder = a momentum
  copy (m = 0.999, updated after each step by :class:`~medssl_monai.engines.ssl.MomentumTeacherHandler`; the
  reference updates it at the start of the next step, which is the same sequence of weights);
- ``q`` = query(anchor), ``p`` = key(positive) without gradient (batch-shuffled across ranks under DDP, as MoCo's
  shuffle-BN), the intra-video negatives go through the *query* encoder with gradient, as in the reference;
- the negatives of all videos are all-gathered (no gradient) into the bank of the cross-video mixed negative;
- loss :class:`~medssl_monai.losses.ucl.UCLLoss`; during the first ``warmup_epochs`` epochs only ``[p, n^]``.

Differences from the reference, all configurable: the mixed negative excludes the anchor's own video by default
(``cross_video_only``; the reference bank includes it); the reference's second anchor crop ``k`` only feeds a
queue whose logits are overwritten (dead code), so it is not computed; ``sep-head`` cycle heads are unused there
and not built. ``intra_negatives=False, mixed_negative=False, cross_negatives=True`` is the ablation "same
contrastive loss without hard negatives": ``[p, other videos' frames]``, a plain MoCo-style loss.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch
from torch import nn

from medssl_monai import distributed
from medssl_monai.engines.ssl import ema_update
from medssl_monai.losses.ucl import UCLLoss, mixed_negative
from medssl_monai.networks.resnet import feature_dim
from medssl_monai.transforms.device import (
    FrameCropDeviceAugmentation,
    FrameResizedCropDeviceAugmentation,
    device_constant,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize_frames",
    "UCL",
    "UCLPrepareBatch",
    "FramePrepareBatch",
    "UCLEpochHandler",
    "finetune_lr_scheduler",
]

logger = logging.getLogger(__name__)

# the reference normalises with the ImageNet statistics (its encoders start from ImageNet weights)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_frames(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` over the channel axis ``-3`` of ``[...] x C x H x W`` frames (uint8 or 0..255)."""
    c = x.shape[-3]
    # cached on the device: a copy of the constants in every step would synchronise it
    m = device_constant(tuple(float(v) for v in mean[:c]), (c, 1, 1), torch.float32, x.device)
    s = device_constant(tuple(float(v) for v in std[:c]), (c, 1, 1), torch.float32, x.device)
    return (x.float() / 255.0 - m) / s


class UCL(nn.Module):
    """The UCL pretraining method around a frame encoder; ``forward`` returns ``{"loss", "acc", ...}``.

    Args:
        encoder: the bundle's ``network_def``: ``B x 3 x H x W`` -> ``B x D``.
        feature_dim: ``D``; ``None`` reads it from the encoder.
        hidden_dim: MLP hidden width (``None``: ``D``, the reference's ``--mlp``).
        out_dim: embedding size (``moco-dim`` 128).
        momentum: key-encoder EMA momentum (``moco-m`` 0.999), used by :meth:`update_teacher` when the handler
            passes none.
        moco_t: ``moco-t``, the logit temperature.
        soft_nn_t: ``soft-nn-t``, the temperature of the mixed-negative weights.
        support_size: ``single-loss-ncap-support-size`` (4 for GB, 2 for Butterfly).
        intra_negatives: use the intra-video negatives as logits (``--negatives --intranegs-only-two``).
        mixed_negative: add the cross-video mixed negative (``--qcap-include``).
        cross_negatives: add every other-video negative as its own logit (the plain MoCo-style ablation).
        cross_video_only: exclude the anchor's own video from the mixed-negative bank (see module docstring).
        warmup_epochs: epochs with logits ``[p, n^]`` only (reference curriculum: 10); training mode only.
        shuffle_bn: MoCo's batch shuffle for the key encoder under DDP.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int | None = None,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        momentum: float = 0.999,
        moco_t: float = 0.07,
        soft_nn_t: float = 0.07,
        support_size: int = 4,
        intra_negatives: bool = True,
        mixed_negative: bool = True,
        cross_negatives: bool = False,
        cross_video_only: bool = True,
        warmup_epochs: int = 10,
        shuffle_bn: bool = True,
    ) -> None:
        super().__init__()
        d = feature_dim or _feature_dim(encoder)
        h = hidden_dim or d
        head = nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=True), nn.Linear(h, out_dim))
        self.query = nn.Sequential(encoder, head)
        self.key = copy.deepcopy(self.query)
        for p in self.key.parameters():
            p.requires_grad = False
        self.momentum = float(momentum)
        self.loss = UCLLoss(moco_t)
        self.soft_nn_t = float(soft_nn_t)
        self.support_size = int(support_size)
        if not (intra_negatives or mixed_negative or cross_negatives):
            raise ValueError("at least one kind of negative is needed")
        self.intra_negatives = intra_negatives
        self.mixed_negative = mixed_negative
        self.cross_negatives = cross_negatives
        self.cross_video_only = cross_video_only
        self.warmup_epochs = int(warmup_epochs)
        self.shuffle_bn = shuffle_bn
        self.epoch = 0

    @property
    def encoder(self) -> nn.Module:
        """The query encoder (the bundle's ``network_def``)."""
        return self.query[0]

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch (selects the warm-up logits)."""
        self.epoch = int(epoch)

    def in_warmup(self) -> bool:
        """Whether this step uses the warm-up logits ``[p, n^]`` (training mode, ``epoch < warmup_epochs``)."""
        return self.training and self.mixed_negative and self.epoch < self.warmup_epochs

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """``key = m * key + (1 - m) * query`` (encoder and head)."""
        ema_update(self.key, self.query, self.momentum if momentum is None else momentum)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        world = distributed.world_size()
        if not (self.shuffle_bn and world > 1):
            return F.normalize(self.key(x), dim=1)
        # MoCo shuffle-BN: the key batch statistics mix samples of all ranks, so BN cannot leak the positive
        x_all = distributed.all_gather_no_grad(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        rank = distributed.rank()
        k = F.normalize(self.key(x_all[perm.view(world, -1)[rank]]), dim=1)
        k_all = distributed.all_gather_no_grad(k)
        return k_all[torch.argsort(perm).view(world, -1)[rank]]

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """``frames``: ``B x (2 + K) x C x H x W`` normalised ``[anchor, positive, negatives...]`` per video."""
        if frames.ndim != 5 or frames.shape[1] < 2:
            raise ValueError(f"expected B x (2 + K) x C x H x W frames, got shape {tuple(frames.shape)}")
        b, k = frames.shape[0], frames.shape[1] - 2
        warm = self.in_warmup()
        use_intra = self.intra_negatives and not warm
        q = F.normalize(self.query(frames[:, 0]), dim=1)
        p = self._keys(frames[:, 1])
        negs = None
        if k > 0:
            # the reference always encodes the negatives (they fill the bank); gradient only where they are logits
            with torch.set_grad_enabled(torch.is_grad_enabled() and use_intra):
                negs = F.normalize(self.query(frames[:, 2:].flatten(0, 1)), dim=1).view(b, k, -1)
        mixed, bank, exclude = None, None, None
        if (self.mixed_negative or self.cross_negatives) and negs is not None:
            bank = distributed.all_gather_no_grad(negs.detach().flatten(0, 1).contiguous())
            owner = torch.arange(bank.shape[0], device=q.device) // k  # global sample index of each bank row
            me = distributed.rank() * b + torch.arange(b, device=q.device)
            exclude = owner[None, :] == me[:, None]
        if self.mixed_negative:
            if bank is None:
                raise ValueError("the mixed negative needs intra-video negatives (num_negatives > 0)")
            # every query excludes exactly its own video's k rows of the bank: the count needs no device read
            mixed = mixed_negative(
                q,
                bank,
                self.support_size,
                self.soft_nn_t,
                exclude if self.cross_video_only else None,
                num_eligible=bank.shape[0] - k if self.cross_video_only else None,
            )
        loss = self.loss(
            q,
            p,
            negatives=negs if use_intra else None,
            mixed=mixed,
            extra_negatives=bank if self.cross_negatives and not warm else None,
            extra_exclude=exclude if self.cross_negatives and not warm else None,
        )
        with torch.no_grad():
            pos = (q * p).sum(-1)
            out = {"loss": loss, "pos_sim": pos.mean()}
            if negs is not None:
                out["intra_neg_sim"] = torch.einsum("bd,bkd->bk", q, negs).mean()
                # fraction of anchors whose positive beats every intra-video negative (hardness diagnostic)
                out["intra_acc"] = (pos[:, None] > torch.einsum("bd,bkd->bk", q, negs)).all(1).float().mean()
        return out


def _feature_dim(encoder: nn.Module) -> int:
    try:
        return feature_dim(encoder)
    except TypeError:
        raise TypeError("pass feature_dim for an encoder that is not a MONAI ResNet") from None


class _FramesPrepareBatch(PrepareBatch):
    """The part :class:`UCLPrepareBatch` and :class:`FramePrepareBatch` share: copy, crop (``augment``), normalise."""

    def __init__(
        self,
        image_key: str = "image",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: FrameCropDeviceAugmentation | FrameResizedCropDeviceAugmentation | None = None,
        size_key: str = "image_size",
    ) -> None:
        self.image_key = image_key
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.size_key = size_key

    def _frames(self, batchdata: dict, device, non_blocking: bool) -> torch.Tensor:
        x = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
        if self.augment is not None:
            x = self.augment(x, batchdata.get(self.size_key))
        return normalize_frames(x, self.mean, self.std)


class UCLPrepareBatch(_FramesPrepareBatch):
    """``B x (2 + K) x C x H x W`` uint8 frame stacks -> device -> (cropped) -> normalised for :class:`UCL`.

    Args:
        image_key: the ``uint8`` frames.
        mean, std: per-channel statistics on the [0, 1] scale (default ImageNet's, as the reference).
        augment: the training crop on the device, one draw per frame
            (:class:`~medssl_monai.transforms.device.FrameCropDeviceAugmentation`; the POCUS preset's resized crop
            and flip: :class:`~medssl_monai.transforms.device.FrameResizedCropDeviceAugmentation`), before the
            normalisation; ``None`` (validation, inference, or the crop already done in the workers): none.
        size_key: each sample's frame size before padding (``B x 2``, left on the host, where the crop offsets are
            drawn); absent: every frame is ``H x W``.
    """

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        return self._frames(batchdata, device, non_blocking), None, (), {}


class FramePrepareBatch(_FramesPrepareBatch):
    """``B x C x H x W`` uint8 frames (and integer labels) -> device, frames (cropped and) normalised (ImageNet
    statistics); the label is never augmented.

    Args:
        label_key: the integer class; ``None`` for none. The other arguments as :class:`UCLPrepareBatch`'s.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: FrameCropDeviceAugmentation | FrameResizedCropDeviceAugmentation | None = None,
        size_key: str = "image_size",
    ) -> None:
        super().__init__(image_key, mean, std, augment, size_key)
        self.label_key = label_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        y = None
        if self.label_key is not None and self.label_key in batchdata:
            y = torch.as_tensor(batchdata[self.label_key]).to(device=device, non_blocking=non_blocking).long()
        return self._frames(batchdata, device, non_blocking), y


class UCLEpochHandler:
    """At ``EPOCH_STARTED``, give the 0-based epoch to the frame sampler (curriculum) and the method (warm-up).

    Ignite creates an epoch's data iterator after ``EPOCH_STARTED``, and :class:`UCLFrameSampler` draws the
    epoch's indices when iterated, in the main process: every batch of the epoch uses that epoch's band.
    """

    def __init__(self, sampler: Any = None, method: nn.Module | None = None) -> None:
        self.sampler = sampler
        self.method = method.module if hasattr(method, "module") else method

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
            if hasattr(self.sampler, "band"):
                lo, hi = self.sampler.band()
                logger.info("UCL epoch %d: negative band (%.4f, %.4f)", epoch, lo, hi)
        if self.method is not None:
            self.method.set_epoch(epoch)


def finetune_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_epochs: int = 5,
    t_max: int = 50,
    eta_min: float = 1e-6,
    warmup: str = "constant",
    start_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The fine-tuning schedule of ``lincls_bin.py`` (``--cos_lr --warmup 5``), stepped once per epoch.

    The reference builds ``CosineAnnealingLR(T_max=50, eta_min=1e-6)`` and steps it after every epoch ``e >=
    warmup``, so epoch ``e`` trains at ``eta_min + (lr - eta_min) (1 + cos(pi max(0, e - warmup) / t_max)) / 2``:
    the lr is constant for the first ``warmup + 1`` epochs, then follows the cosine. ``warmup="linear"`` instead
    ramps linearly from ``start_factor x lr`` over the ``warmup`` epochs (a common fine-tuning warm-up, not the
    reference's), then the same cosine.

    Raises:
        ValueError: an unknown ``warmup``.
    """
    if warmup not in ("constant", "linear"):
        raise ValueError(f"warmup must be 'constant' or 'linear', got {warmup!r}")
    w, span = int(warmup_epochs), max(1, int(t_max))

    def factor(base_lr: float):
        floor = eta_min / base_lr if base_lr > 0 else 0.0

        def f(epoch: int) -> float:
            if warmup == "linear" and epoch < w:
                return start_factor + (1.0 - start_factor) * epoch / w
            k = max(0, epoch - w)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * k / span))

        return f

    lambdas = [factor(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
