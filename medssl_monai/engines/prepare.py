"""``prepare_batch`` callables for MONAI's Ignite engines: host-to-device copy, then the late work on the device.

Clips travel as ``uint8`` (4x less to copy than float32) and are normalised on the device, after the copy.
With ``augment`` set (a :class:`~medssl_monai.transforms.device.DeviceAugmentation`), the training augmentation
runs there too, on the ``uint8`` batch between the copy and the normalisation, so DataLoader workers only load.
Nothing here synchronises the host with the device.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

from medssl_monai.transforms.device import DeviceAugmentation
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD, normalize_clip
from medssl_monai.transforms.masking import mask_frames

__all__ = ["ClipPrepareBatch", "MaskedClipPrepareBatch"]


def _to(x: Any, device, non_blocking: bool):
    return x.to(device=device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x


class ClipPrepareBatch(PrepareBatch):
    """Copy a ``uint8`` clip batch to the device and normalise it there.

    Returns ``(inputs, targets, args, kwargs)`` as MONAI's engines expect. With ``index_key`` set, the
    traced-frame position of each clip is passed to the inferer as ``index`` (see
    :class:`medssl_monai.engines.inferers.TracedFrameInferer`): that is how the loss sees only the traced
    slice (UniLVSeg's sparse supervision, SimLVSeg arXiv 2310.00454).

    Args:
        image_key: the clip, ``B x C x T x H x W`` ``uint8`` (or float already in [0, 255]).
        label_key: the target (a mask, a class, a value); ``None`` for none.
        index_key: per-sample frame position inside the clip, passed on as ``index``.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        channels_last: use ``torch.channels_last_3d`` memory format (helps cuDNN 3D convolutions on GPUs).
        augment: training augmentation applied on the device to the ``uint8`` clip (and the label, with the same
            draw) before normalisation; ``None`` (validation, inference): none.
        augment_label: pass the label through ``augment`` (a mask); ``False`` for a class or a value, which a
            spatial draw must not touch.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        index_key: str | None = None,
        mean: Sequence[float] = ECHONET_MEAN,
        std: Sequence[float] = ECHONET_STD,
        channels_last: bool = False,
        augment: DeviceAugmentation | None = None,
        augment_label: bool = True,
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.index_key = index_key
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.channels_last = channels_last
        self.augment = augment
        self.augment_label = augment_label

    def _copy(self, batchdata: dict, device, non_blocking: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clip and label on the device, augmented there when ``augment`` is set (still ``uint8``)."""
        x = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
        label = None
        if self.label_key is not None and self.label_key in batchdata:
            label = _to(torch.as_tensor(batchdata[self.label_key]), device, non_blocking)
        if self.augment is not None:
            x, augmented = self.augment(x, label if self.augment_label else None)
            label = augmented if self.augment_label else label
        return x, label

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize_clip(x, self.mean[: x.shape[1]], self.std[: x.shape[1]])
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        x, targets = self._copy(batchdata, device, non_blocking)
        inputs = self._normalize(x)
        if targets is not None and targets.dtype == torch.uint8:
            targets = targets.float()
        extra = {}
        if self.index_key is not None:
            extra["index"] = _to(torch.as_tensor(batchdata[self.index_key]), device, non_blocking).long()
        return inputs, targets, (), extra


class MaskedClipPrepareBatch(ClipPrepareBatch):
    """UniLVSeg temporal-masking pretext (SimLVSeg): whole frames zeroed in, the clean clip out.

    ``int(mask_ratio * T + 0.5)`` whole frames are zeroed *before* normalisation, so masked frames become
    ``-mean/std`` as in the reference; the target is channel(s) ``[:target_channels]`` of the normalised unmasked
    clip (the reference regresses channel 0 of the greyscale echo, replicated over RGB). Masks are drawn on the
    device, one independent draw per clip. With ``seed`` set, the draw is a function of the seed and the batch's
    ``id_key`` values, so validation sees the same masks each epoch and its loss is comparable across epochs.
    """

    def __init__(
        self,
        mask_ratio: float = 0.6,
        target_channels: int = 1,
        seed: int | None = None,
        image_key: str = "image",
        mean: Sequence[float] = ECHONET_MEAN,
        std: Sequence[float] = ECHONET_STD,
        channels_last: bool = False,
        id_key: str = "video_id",
        augment: DeviceAugmentation | None = None,
    ) -> None:
        super().__init__(
            image_key=image_key, label_key=None, mean=mean, std=std, channels_last=channels_last, augment=augment
        )
        self.mask_ratio = mask_ratio
        self.target_channels = target_channels
        self.seed = seed
        self.id_key = id_key

    def _generator(self, batchdata: dict, device: torch.device) -> torch.Generator | None:
        """A generator seeded from ``seed`` and the batch's sample ids: the same clip gets the same mask every
        epoch, different clips get different masks."""
        if self.seed is None:
            return None
        ids = batchdata.get(self.id_key)
        token = "|".join(map(str, ids)) if isinstance(ids, (list, tuple)) else str(ids)
        gen = torch.Generator(device=device)
        gen.manual_seed((self.seed * 1_000_003 + zlib.crc32(token.encode())) % (2**63))
        return gen

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        x, _ = self._copy(batchdata, device, non_blocking)  # augmented first, when `augment` is set
        gen = self._generator(batchdata, x.device)
        masked, _ = mask_frames(x, self.mask_ratio, generator=gen)
        c = x.shape[1]
        mean, std = self.mean[:c], self.std[:c]
        inputs = normalize_clip(masked, mean, std)
        targets = normalize_clip(
            x[:, : self.target_channels], mean[: self.target_channels], std[: self.target_channels]
        )
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        return inputs, targets
