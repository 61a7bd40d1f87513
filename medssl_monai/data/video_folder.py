"""A plain folder of videos (no ``FileList.csv``) as a datalist with a TRAIN/VAL split that files keep.

Pretraining needs no labels, so any folder of echo videos will do: every file with an extension in
:data:`~medssl_monai.data.video.VIDEO_EXTENSIONS` (any case) under the folder, searched recursively, is one item.
Hidden files and folders (names starting with ``.``, e.g. a video still being written) are left out.

The split is a function of each file's path relative to the folder: the first 8 bytes of its SHA-1 as a number
in [0, 1), VAL below ``val_fraction``. A file keeps its split when others are added, removed or the folder is
moved, on every machine. With two videos or more at least one is VAL and one TRAIN: when the hash puts none in a
split, the video nearest to the threshold moves there (only small folders need this, and there a new file can
take over that role).

:func:`load_echo_datalist` is what the echo pretraining bundles read ``--dataset_dir`` with: an EchoNet-Dynamic
folder (``FileList.csv`` present) or a plain video folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medssl_monai.data.echonet import load_echonet_datalist, normalise_split
from medssl_monai.data.report import OnError, ReadReport, check_on_error
from medssl_monai.data.video import VIDEO_EXTENSIONS, video_info
from medssl_monai.data.walk import walk_visible
from medssl_monai.errors import DataError, VideoReadError

__all__ = ["find_videos", "split_position", "video_folder_splits", "load_video_folder_datalist", "load_echo_datalist"]

logger = logging.getLogger(__name__)

SPLITS = ("TRAIN", "VAL")


def find_videos(root: str | Path) -> list[str]:
    """Relative POSIX paths of the videos under ``root`` (recursive, symlinks followed once, hidden names skipped),
    sorted."""
    root = Path(root)
    found = []
    for folder, _, files in walk_visible(root):
        rel = folder.relative_to(root)
        found += [(rel / f).as_posix() for f in files if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    return sorted(found)


def split_position(relative_path: str) -> float:
    """Where a file falls in [0, 1): the first 8 bytes of the SHA-1 of its relative POSIX path."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def video_folder_splits(relative_paths: Sequence[str], val_fraction: float = 0.1) -> dict[str, str]:
    """``{relative path: "TRAIN" | "VAL"}``: VAL where :func:`split_position` is below ``val_fraction``.

    With two paths or more, both splits get at least one: when none falls in VAL, the lowest position moves
    there; when none falls in TRAIN, the highest moves to TRAIN.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    position = {p: split_position(p) for p in relative_paths}
    splits = {p: "VAL" if x < val_fraction else "TRAIN" for p, x in position.items()}
    if len(splits) >= 2:
        if "VAL" not in splits.values():
            splits[min(position, key=position.__getitem__)] = "VAL"
        if "TRAIN" not in splits.values():
            splits[max(position, key=position.__getitem__)] = "TRAIN"
    return splits


def load_video_folder_datalist(
    root: str | Path,
    split: str | Sequence[str] | None = None,
    val_fraction: float = 0.1,
    min_frames: int = 2,
    read_headers: bool = True,
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """Every video under ``root`` (recursively) as a MONAI datalist item, split TRAIN/VAL by file name.

    Args:
        root: the folder.
        split: ``None`` / ``"ALL"`` for every video, else ``"TRAIN"``, ``"VAL"`` or both (case-insensitive).
        val_fraction: the expected fraction of VAL videos (see :func:`video_folder_splits`).
        min_frames: videos whose header announces fewer frames are skipped (with ``read_headers``).
        read_headers: read each selected video's header (frame count, size, frame rate; ~0.2 ms each, nothing
            decoded) into the item and skip videos that cannot be opened, as the EchoNet reader does with its CSV.
        on_error: ``"skip"`` reports unreadable videos and goes on; ``"raise"`` raises the first one's error.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image", "video_id" (the relative path without extension), "split"}``, with ``read_headers``
        also ``"num_frames", "height", "width", "fps"``, in relative-path order.

    Raises:
        DataError: ``root`` is not a folder, or holds no video.
        ValueError: a split other than TRAIN / VAL was asked for.
    """
    check_on_error(on_error)
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    wanted = normalise_split(split)
    if wanted is not None and not wanted <= set(SPLITS):
        raise ValueError(
            f"{root}: a plain video folder has only the splits {SPLITS} (drawn from the file names), "
            f"not {sorted(wanted - set(SPLITS))}"
        )
    relative = find_videos(root)
    if not relative:
        raise DataError(root, f"holds no video (searched recursively for {', '.join(VIDEO_EXTENSIONS)})")
    splits = video_folder_splits(relative, val_fraction)
    stems = [os.path.splitext(r)[0] for r in relative]
    # a.avi next to a.mp4: both keep their extension in the id so ids stay unique
    clash = {s for s, n in Counter(stems).items() if n > 1}
    report = ReadReport(str(root), on_error=on_error)
    datalist: list[dict] = []
    for rel, stem in zip(relative, stems):
        if wanted is not None and splits[rel] not in wanted:
            continue
        path = root / rel
        item: dict[str, Any] = {"image": str(path), "video_id": rel if stem in clash else stem, "split": splits[rel]}
        if read_headers:
            try:
                info = video_info(path)
            except VideoReadError as e:
                report.skip(rel, e, "unreadable video")
                continue
            if 0 < info["num_frames"] < min_frames:  # 0: the container does not say; decoding will tell
                error = VideoReadError(path, f"too few frames: {info['num_frames']}, at least {min_frames} needed")
                report.skip(rel, error, "too few frames")
                continue
            item.update(info)
        datalist.append(item)
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist


def load_echo_datalist(
    root: str | Path,
    split: str | Sequence[str] | None = None,
    val_fraction: float = 0.1,
    **echonet_kwargs: Any,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """An echo dataset folder of either kind as a datalist: EchoNet-Dynamic or a plain folder of videos.

    Args:
        root: an EchoNet-Dynamic folder (``FileList.csv`` there: :func:`~medssl_monai.data.echonet.
            load_echonet_datalist`, its ``Split`` column) or any folder of videos
            (:func:`load_video_folder_datalist`, split by file name).
        split: the split(s) to keep, as both readers take it.
        val_fraction: the VAL fraction of a plain folder (unused for EchoNet).
        echonet_kwargs: passed to :func:`~medssl_monai.data.echonet.load_echonet_datalist` (EchoNet); a plain
            folder takes ``min_frames``, ``on_error`` and ``return_report`` only.

    Raises:
        DataError: ``root`` is missing, or has neither a ``FileList.csv`` nor any video.
        ValueError: EchoNet-only arguments (``samples``, ``labels_csv``, ...) with a plain folder.
    """
    path = Path(root)
    if not path.is_dir():
        raise DataError(path, "dataset folder not found (expected an EchoNet-Dynamic folder or a folder of videos)")
    if (path / "FileList.csv").is_file():
        return load_echonet_datalist(path, split=split, **echonet_kwargs)
    if not find_videos(path):
        raise DataError(
            path,
            "neither an EchoNet-Dynamic folder (no FileList.csv) nor a folder of videos (no file with an extension "
            f"of {', '.join(VIDEO_EXTENSIONS)} under it, searched recursively)",
        )
    shared = ("min_frames", "on_error", "return_report")
    others = sorted(k for k in echonet_kwargs if k not in shared)
    if others:
        raise ValueError(
            f"{path}: {others} need an EchoNet-Dynamic folder (FileList.csv); this is a plain video folder"
        )
    return load_video_folder_datalist(path, split=split, val_fraction=val_fraction, **echonet_kwargs)
