"""The methods' training augmentations, batched on the device, with explicit random draws.

Each augmentation runs on a ``uint8`` batch (``B x C x T x H x W``, or UCL's frames) already on the device, after
the host-to-device copy and before normalisation, and has three parts: a sampler that draws every random quantity
of a batch from a CPU ``torch.Generator`` with the distributions of the worker-side transforms, ops that apply
explicitly given per-clip parameters (so each can be checked against the worker path with the same draw), and a
class that chains them and owns a :class:`SeededStream` (its step counter goes into ``resume.pt``).

Modules, one concept each:

- :mod:`.common`: parameter records, sync-free copies of draws and constants, :class:`SeededStream`;
- :mod:`.color_jitter`, :mod:`.clahe`: albumentations' ``ColorJitter`` and ``CLAHE`` (OpenCV's arithmetic);
- :mod:`.geometry`: rotation + pad + random crop, the resized-crop box rule and resize, flips;
- :mod:`.unilvseg`: SimLVSeg's chain (:class:`DeviceAugmentation`);
- :mod:`.tvrl`: TVRL's strong augmentation (:class:`TVRLDeviceAugmentation`);
- :mod:`.ucl`: UCL's crop and resized crop of every frame (:class:`FrameCropDeviceAugmentation`,
  :class:`FrameResizedCropDeviceAugmentation`).

Grey frames: echo clips are grey stored as RGB (equal channels). With ``grey=True`` (the default) channel 0 is
taken as the grey value, so saturation and hue are identities (as in the worker path for grey clips) and CLAHE
works on OpenCV's LAB lightness of the grey value through two exact lookup tables. ``grey=False`` jitters true
colour clips (saturation and hue reproduce OpenCV's 8-bit HSV to within rounding); CLAHE then needs 1-channel clips.
"""

from medssl_monai.transforms.device.clahe import clahe
from medssl_monai.transforms.device.color_jitter import color_jitter
from medssl_monai.transforms.device.common import SeededStream, device_constant
from medssl_monai.transforms.device.geometry import (
    flip,
    pad_crop_geometry,
    resized_crop,
    rotate,
    rotate_pad_crop,
    sample_resized_crop_boxes,
)
from medssl_monai.transforms.device.tvrl import TVRLDeviceAugmentation, TVRLParams, gaussian_blur, sample_tvrl_params
from medssl_monai.transforms.device.ucl import (
    FrameCropDeviceAugmentation,
    FrameResizedCropDeviceAugmentation,
    ResizedCropParams,
    crop_frames,
    sample_crop_offsets,
    sample_resized_crop_params,
)
from medssl_monai.transforms.device.unilvseg import AugmentParams, DeviceAugmentation, sample_params

__all__ = [
    "AugmentParams",
    "sample_params",
    "color_jitter",
    "clahe",
    "rotate_pad_crop",
    "pad_crop_geometry",
    "DeviceAugmentation",
    "TVRLParams",
    "sample_resized_crop_boxes",
    "sample_tvrl_params",
    "rotate",
    "resized_crop",
    "flip",
    "gaussian_blur",
    "TVRLDeviceAugmentation",
    "SeededStream",
    "device_constant",
    "sample_crop_offsets",
    "crop_frames",
    "FrameCropDeviceAugmentation",
    "ResizedCropParams",
    "sample_resized_crop_params",
    "FrameResizedCropDeviceAugmentation",
]
