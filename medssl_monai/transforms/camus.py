"""SimLVSeg's CAMUS test protocol as one loading transform (zero-shot evaluation of an EchoNet-trained model).

SimLVSeg's ``scripts/camus/preprocess.py`` and ``simlvseg/seg_3d/camus.py`` (BioMedIA-MBZUAI/SimLVSeg) evaluate on the
apical four-chamber half sequence (ED to ES) of every patient with its per-frame ground truth
(``*_half_sequence_gt``, label 1 = LV endocardium): a sequence longer than 32 frames keeps the frames at
``round(linspace(0, T - 1, 32))``; frames are resized to 112 x 112 with area interpolation (masks nearest); the grey
frames are repeated over three channels; the model sees one clip per patient and every frame with ground truth is
scored. Where a dataset has no half-sequence ground truth, the ED and ES masks (``*_ED_gt`` / ``*_ES_gt``) are scored
at their frames.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medssl_monai.data.sources import decode_frames
from medssl_monai.errors import DataError
from medssl_monai.opencv import import_cv2
from medssl_monai.transforms.io import LoadTracingMaskd

cv2 = import_cv2()

__all__ = ["LoadCamusSequenced", "PHASE_CODES", "even_subsample"]

#: per-frame phase codes of ``phase_key``: frames between ED and ES are "middle"
PHASE_CODES: dict[str, int] = {"middle": 0, "ED": 1, "ES": 2}


def even_subsample(num_frames: int, max_frames: int) -> np.ndarray:
    """Frame indices ``round(linspace(0, T - 1, max_frames))`` when ``T > max_frames``, else every frame.

    Both ends are kept, so the ED and ES frames of a CAMUS half sequence always survive.
    """
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, max_frames)).astype(np.int64))


class LoadCamusSequenced(MapTransform):
    """Load a CAMUS half sequence and its per-frame LV ground truth the way SimLVSeg's CAMUS scripts do.

    Takes an item of :func:`~medssl_monai.data.camus.load_camus_datalist` (``samples="video"``) and writes:
    ``image`` (``uint8`` ``channels x T' x H x W``), ``label`` (``uint8`` ``1 x T' x H x W``, 1 = LV),
    ``label_valid`` (``bool`` ``T'``: the frame has ground truth), ``phase_code`` (``int64`` ``T'``, see
    :data:`PHASE_CODES`) and ``frame_indices`` (the kept frames' numbers in the original sequence).

    Args:
        keys: the image key (the half-sequence path).
        label_key: output key of the masks.
        sequence_label_key: item key of the half-sequence ground truth path (``None`` or absent: ED/ES masks only).
        labels_key: item key of the ``{"ED": path, "ES": path}`` single-frame ground truth.
        traced_key: item key of the ``{"ED": i, "ES": j}`` frame numbers (0-based).
        max_frames: longer sequences are subsampled evenly to this many frames (32, the training window).
        spatial_size: frame size after resizing (112; an ``int`` or ``(H, W)``).
        channels: the grey frames are repeated to this many channels (3: the EchoNet-trained network's input).
        label_value: the LV label in the ground truth files (CAMUS: 1).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        sequence_label_key: str | None = "sequence_label",
        labels_key: str = "labels",
        traced_key: str = "traced_frames",
        max_frames: int = 32,
        spatial_size: int | tuple[int, int] = 112,
        channels: int = 3,
        label_value: int = 1,
    ) -> None:
        super().__init__(keys)
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}.")
        self.label_key = label_key
        self.sequence_label_key = sequence_label_key
        self.labels_key = labels_key
        self.traced_key = traced_key
        self.max_frames = max_frames
        size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
        self.spatial_size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.label_value = label_value

    def _masks(self, d: Mapping[Hashable, Any], frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, h, w = frames.shape
        seq_path = d.get(self.sequence_label_key) if self.sequence_label_key else None
        if seq_path:
            labels = decode_frames(seq_path)[..., 0]
            if labels.shape != frames.shape:
                raise DataError(Path(seq_path), f"ground truth is {labels.shape} but the sequence is {frames.shape}")
            return (labels == self.label_value).astype(np.uint8), np.ones(t, dtype=bool)
        masks, valid = np.zeros((t, h, w), np.uint8), np.zeros(t, dtype=bool)
        loader = LoadTracingMaskd(keys="mask", label_value=self.label_value)
        for phase, path in (d.get(self.labels_key) or {}).items():
            f = int(d[self.traced_key][phase])
            mask = np.asarray(loader({"mask": path})["mask"])[0]
            if mask.shape != (h, w):
                raise DataError(Path(path), f"mask is {mask.shape} but the sequence frames are {(h, w)}")
            masks[f], valid[f] = mask, True
        return masks, valid

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            frames = decode_frames(d[key])[..., 0]  # T x H x W uint8
            masks, valid = self._masks(d, frames)
            phase = np.zeros(frames.shape[0], np.int64)
            for name, f in (d.get(self.traced_key) or {}).items():
                phase[int(f)] = PHASE_CODES[name]
            keep = even_subsample(frames.shape[0], self.max_frames)
            size_wh = (self.spatial_size[1], self.spatial_size[0])
            image = np.stack([cv2.resize(frames[i], size_wh, interpolation=cv2.INTER_AREA) for i in keep])
            label = np.stack([cv2.resize(masks[i], size_wh, interpolation=cv2.INTER_NEAREST) for i in keep])
            d[key] = torch.from_numpy(np.ascontiguousarray(np.repeat(image[None], self.channels, axis=0)))
            d[self.label_key] = torch.from_numpy(label[None])
            d["label_valid"] = torch.from_numpy(valid[keep])
            d["phase_code"] = torch.from_numpy(phase[keep])
            d["frame_indices"] = torch.from_numpy(keep)
        return d
