"""UCL's frame augmentations on the device: a random crop of every frame (:class:`FrameCropDeviceAugmentation`)
and the POCUS preset's RandomResizedCrop and flip of every frame (:class:`FrameResizedCropDeviceAugmentation`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medssl_monai.transforms.device.common import SeededStream, _PerClipParams, _to_device
from medssl_monai.transforms.device.geometry import flip, resized_crop, sample_resized_crop_boxes

__all__ = [
    "sample_crop_offsets",
    "crop_frames",
    "FrameCropDeviceAugmentation",
    "ResizedCropParams",
    "sample_resized_crop_params",
    "FrameResizedCropDeviceAugmentation",
]


def sample_crop_offsets(max_offset: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``N x 2`` crop starts (row, column), each uniform over ``0..max_offset`` (``N x 2`` integers).

    The distribution of :class:`~medssl_monai.transforms.frames.FrameResizeCropd`'s random crop (``randint(0, h - s
    + 1)``, then ``randint(0, w - s + 1)``, for each frame); only the random stream differs. The uniforms come from
    ``generator`` (CPU); the offsets are on ``max_offset``'s device, checked (frame >= crop) only on the host.
    """
    bound = torch.as_tensor(max_offset, dtype=torch.int64)
    if bound.device.type == "cpu" and bound.numel() and int(bound.min()) < 0:  # a host read, no device sync
        raise ValueError(f"a frame is smaller than the crop (largest offsets {bound.tolist()})")
    u = _to_device(torch.rand(bound.shape, generator=generator, dtype=torch.float64), bound.device)
    # floor(u * (b + 1)) is uniform over 0..b; the minimum guards the rounding of u * (b + 1) up to b + 1
    return (u * (bound + 1)).floor().long().minimum(bound)


def crop_frames(x: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size x size`` window at ``offset`` (``N x 2`` row, column) of each frame of ``N x C x H x W``.

    An exact copy (one gather of rows and columns) in ``x``'s dtype on ``x``'s device; ``offset`` may be a host
    tensor (copied without a sync).
    """
    dev = x.device
    off = _to_device(torch.as_tensor(offset, dtype=torch.int64), dev)
    steps = torch.arange(size, device=dev)
    rows = (off[:, 0, None] + steps)[:, :, None]  # N x s x 1
    cols = (off[:, 1, None] + steps)[:, None, :]  # N x 1 x s
    frame = torch.arange(x.shape[0], device=dev)[:, None, None]
    # channels last, so the three broadcast indices give N x s x s x C in one gather
    return x.permute(0, 2, 3, 1)[frame, rows, cols].permute(0, 3, 1, 2).contiguous()


class FrameCropDeviceAugmentation(SeededStream):
    """UCL's ``RandomCrop(spatial_size)`` of every frame (after the shorter-side resize) on a device batch.

    The device counterpart of :class:`~medssl_monai.transforms.frames.FrameResizeCropd` with ``random_crop``: with
    ``augment_on="device"`` the workers only resize, this crops. As in the worker path every frame gets its own
    offset (UCL's anchor, positive and negatives are transformed separately), uniform over the crop's positions
    inside that frame's resized size. The stream is a :class:`SeededStream`, as :class:`DeviceAugmentation`'s.

    Args:
        spatial_size: the crop size.
        seed: the run's seed.
    """

    def __init__(self, spatial_size: int = 224, seed: int = 0) -> None:
        self.spatial_size = int(spatial_size)
        super().__init__(seed)

    def max_offsets(self, shape: Sequence[int], sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``N x 2`` largest offsets of the ``N`` frames of a ``B x [K x] C x H x W`` batch of ``shape``.

        ``sizes``: each sample's ``(h, w)`` before padding (``B x 2``; on the host, as the DataLoader gives it, the
        offsets are drawn and checked there); ``None``: every frame is ``H x W``.
        """
        b, per_sample = int(shape[0]), math.prod(int(n) for n in shape[1:-3])
        if sizes is None:
            sizes = torch.tensor([[int(shape[-2]), int(shape[-1])]]).expand(b, 2)
        bound = torch.as_tensor(sizes, dtype=torch.int64).reshape(b, 2) - self.spatial_size
        return bound[:, None].expand(b, per_sample, 2).reshape(-1, 2)  # a stack's frames share their sample's size

    def sample(self, max_offset: torch.Tensor) -> torch.Tensor:
        """Draw the next batch's ``N x 2`` offsets (advances the step counter)."""
        return sample_crop_offsets(max_offset, self.next_generator())

    def apply(self, image: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Crop ``image`` (``B x [K x] C x H x W``) at the frames' ``offset`` (``N x 2``, frames in batch order)."""
        frames = crop_frames(image.reshape(-1, *image.shape[-3:]), offset, self.spatial_size)
        return frames.reshape(*image.shape[:-2], self.spatial_size, self.spatial_size)

    def __call__(self, image: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Draw and apply one batch's crops.

        Args:
            image: the ``uint8`` frames ``B x [K x] C x H x W`` on the device, zero-padded to the batch's largest
                frame where sizes differ (:func:`~medssl_monai.transforms.frames.pad_frames_collate`).
            sizes: each sample's frame size before padding, ``B x 2`` on the host; ``None``: ``H x W``.
        """
        if image.dtype != torch.uint8:
            raise TypeError(
                f"FrameCropDeviceAugmentation needs the uint8 batch (before normalising), got {image.dtype}"
            )
        return self.apply(image, self.sample(self.max_offsets(image.shape, sizes)))


@dataclass
class ResizedCropParams(_PerClipParams):
    """Per-frame parameters of the POCUS preset's augmentation (host tensors, leading dimension ``N`` frames).

    Attributes:
        box: ``N x 4`` crop box ``(top, left, height, width)`` (``int64``).
        hflip: flip the columns after the resize (``bool``).
    """

    box: torch.Tensor
    hflip: torch.Tensor


def sample_resized_crop_params(
    num_frames: int,
    frame_size: tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.8, 1.25),
    flip_prob: float = 0.5,
) -> ResizedCropParams:
    """Draw every frame's box and flip from ``generator`` (a CPU generator).

    The distributions of :class:`~medssl_monai.transforms.frames.FrameResizedCropd`'s random path: the box by its
    rule (:func:`sample_resized_crop_boxes`: ten tries of area ``U(scale)`` and log-uniform aspect ratio, the
    first that fits, else the whole frame clamped to the ratio range; top and left uniform), the flip with
    probability ``flip_prob``; only the random stream differs.
    """
    n = int(num_frames)
    box = sample_resized_crop_boxes(n, tuple(frame_size), generator, tuple(scale), tuple(ratio))
    return ResizedCropParams(box=box, hflip=torch.rand(n, generator=generator, dtype=torch.float64) < flip_prob)


class FrameResizedCropDeviceAugmentation(SeededStream):
    """The POCUS preset's ``RandomResizedCrop`` and horizontal flip of every frame, on a device batch.

    The device counterpart of :class:`~medssl_monai.transforms.frames.FrameResizedCropd` with ``random``: with
    ``augment_on="device"`` the workers only resize every frame to ``spatial_size x spatial_size``; this draws each
    frame's box (:func:`sample_resized_crop_params`: torchvision's ten tries of area and log-uniform aspect ratio,
    else the whole frame clamped to the ratio range, the worker's rule) and flip, resizes the box to
    ``spatial_size`` (:func:`resized_crop`, the antialiased bilinear weights of the worker's resize, one box per
    frame) and flips. Every frame gets its own draw, as in the workers.
    The stream is a :class:`SeededStream`, as :class:`FrameCropDeviceAugmentation`'s.

    Args:
        spatial_size: output frame size.
        scale: range of the box area as a fraction of the frame.
        ratio: range of the box aspect ratio (width / height).
        flip_prob: probability of the horizontal flip.
        seed: the run's seed.
    """

    def __init__(
        self,
        spatial_size: int = 224,
        scale: Sequence[float] = (0.8, 1.0),
        ratio: Sequence[float] = (0.8, 1.25),
        flip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.spatial_size = int(spatial_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = float(flip_prob)
        super().__init__(seed)

    def sample(self, num_frames: int, frame_size: tuple[int, int]) -> ResizedCropParams:
        """Draw the next batch's boxes and flips for ``num_frames`` frames (advances the step counter)."""
        return sample_resized_crop_params(
            num_frames, frame_size, self.next_generator(), self.scale, self.ratio, self.flip_prob
        )

    def apply(self, image: torch.Tensor, params: ResizedCropParams) -> torch.Tensor:
        """Crop, resize and flip ``image`` (``B x [K x] C x H x W``) with ``params`` (frames in batch order)."""
        frames = image.reshape(-1, *image.shape[-3:])
        size = (self.spatial_size, self.spatial_size)
        out = resized_crop(frames[:, :, None], params.box, size)[:, :, 0]  # each frame a one-frame clip
        out = flip(out, params.hflip, torch.zeros_like(params.hflip))
        return out.reshape(*image.shape[:-2], *size)

    def __call__(self, image: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Draw and apply one batch's augmentation.

        Args:
            image: the ``uint8`` frames ``B x [K x] C x H x W`` on the device, all of one size (the workers resize
                every frame to ``spatial_size x spatial_size``).
            sizes: each sample's frame size (``B x 2``) where the collate passes it; host sizes must be ``H x W``.
        """
        if image.dtype != torch.uint8:
            raise TypeError(
                f"FrameResizedCropDeviceAugmentation needs the uint8 batch (before normalising), got {image.dtype}"
            )
        h, w = (int(s) for s in image.shape[-2:])
        given = None if sizes is None else torch.as_tensor(sizes)
        # the boxes are drawn inside H x W: frames padded to one batch would let a box reach into the padding
        if given is not None and given.device.type == "cpu" and (given.reshape(-1, 2) != torch.tensor([h, w])).any():
            raise ValueError(f"frames of different sizes {given.tolist()} in one batch; expected {h} x {w}")
        return self.apply(image, self.sample(math.prod(image.shape[:-3]), (h, w)))
