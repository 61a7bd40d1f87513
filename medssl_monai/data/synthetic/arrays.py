"""Synthetic clips in TVRL's cardiac-MRI array layout: ``<root>/<eid>.npy`` (``T x H x W`` uint8) + split CSVs.

The TVRL reference reads UK Biobank cine CMR as ``{eid}.npy`` arrays of 50 frames (one cardiac cycle) and its
targets from ``train.csv`` / ``val.csv`` / ``test.csv`` keyed by ``eid``. The synthetic EchoNet videos (beating
LV with a known EF, ``Abnormal`` flag) are converted to that layout: grey channel, resized to ``image_size``,
``num_frames`` frames from the first frame (looped when the video is shorter), one CSV per split with
``eid,ef,Abnormal``.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.synthetic._common import parallel_map
from medssl_monai.opencv import import_cv2

cv2 = import_cv2()

__all__ = ["make_arrays", "synthetic_arrays"]

_MARKER = ".synthetic_arrays.json"


def _write_clip(item: dict, root: Path, num_frames: int, image_size: int) -> tuple[str, dict]:
    """Convert one EchoNet datalist item to ``<root>/<video_id>.npy``; its split and CSV row."""
    from medssl_monai.data.video import read_video

    frames = read_video(item["image"])[..., 0]  # grey stored as RGB: one channel
    idx = np.arange(num_frames) % len(frames)
    clip = np.stack(
        [cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) for f in frames[idx]]
    ).astype(np.uint8)
    np.save(root / f"{item['video_id']}.npy", clip)
    return item["split"].upper(), {"eid": item["video_id"], "ef": float(item["ef"]), "Abnormal": int(item["Abnormal"])}


def make_arrays(
    root: str | Path,
    echonet_root: str | Path,
    num_frames: int = 50,
    image_size: int = 64,
    num_workers: int = 1,
) -> Path:
    """Convert the EchoNet-format dataset ``echonet_root`` to TVRL's array layout in ``root`` (skipped if there).

    ``num_workers`` processes convert the videos; the files are the same for any number of them.

    Returns:
        ``root`` with ``<eid>.npy`` clips and ``train.csv`` / ``val.csv`` / ``test.csv`` (``eid``, ``ef``,
        ``Abnormal``).
    """
    from medssl_monai.data.echonet import load_echonet_datalist

    root, echonet_root = Path(root), Path(echonet_root)
    params = {"echonet_root": str(echonet_root.resolve()), "num_frames": num_frames, "image_size": image_size}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    root.mkdir(parents=True, exist_ok=True)
    items = load_echonet_datalist(echonet_root, labels_csv="SyntheticTruth.csv")
    rows: dict[str, list[dict]] = {"TRAIN": [], "VAL": [], "TEST": []}
    convert = partial(_write_clip, root=root, num_frames=num_frames, image_size=image_size)
    for split, row in parallel_map(convert, items, len(items), "arrays", num_workers):
        rows[split].append(row)
    for split, r in rows.items():
        pd.DataFrame(r, columns=["eid", "ef", "Abnormal"]).to_csv(root / f"{split.lower()}.csv", index=False)
    marker.write_text(json.dumps(params))
    return root


def synthetic_arrays(
    size: str | None = None, seed: int = 0, num_frames: int = 50, image_size: int = 64, num_workers: int | None = None
) -> str:
    """The default synthetic array dataset (next to the default synthetic EchoNet set, written on first use).

    ``num_workers`` defaults as in :func:`~medssl_monai.data.defaults.synthetic_dataset`.
    """
    from medssl_monai.data.defaults import default_num_workers, synthetic_dataset, warn_synthetic

    size = size or os.environ.get("MEDSSL_SYNTHETIC_SIZE", "small")
    workers = default_num_workers(size) if num_workers is None else num_workers
    echonet = Path(synthetic_dataset("echonet", size=size, seed=seed, num_workers=workers, warn=False))
    root = echonet.parent / f"arrays_{num_frames}x{image_size}"
    out = make_arrays(root, echonet, num_frames, image_size, num_workers=workers)
    warn_synthetic("arrays", out)  # the folder this run reads, not the EchoNet set it is converted from
    return str(out)
