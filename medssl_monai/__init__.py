"""medssl_monai: the shared library behind the medssl-monai bundles.

Networks, losses, transforms, data readers and Ignite engines for UniLVSeg, TVRL, DISCOVR and UCL.
Clips are ``C x T x H x W`` tensors everywhere (``B x C x T x H x W`` batched); frames stay ``uint8``
on disk and in caches.
"""

from __future__ import annotations

# registers the fork hook that configures OpenCV before any worker is forked (no cv2 import here)
from medssl_monai import opencv as _opencv  # noqa: F401, E402

__version__ = "0.1.0"
__all__ = ["__version__"]
