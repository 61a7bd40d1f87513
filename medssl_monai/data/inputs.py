"""A user's own files as an inference datalist: a folder, a glob pattern, a file, or a list of those.

Every bundle's ``configs/inference.yaml`` reads ``--inputs`` with :func:`inference_datalist`:

- a folder is searched recursively for videos (:data:`~medssl_monai.data.video.VIDEO_EXTENSIONS`, any case) and
  NIfTI sequences (``.nii``, ``.nii.gz``); hidden names (``.partial.avi``) are left out. With
  ``frame_folders=True`` (the ultrasound bundles) a folder of images (``Video_7/00000.jpg``...) is one input too;
- a glob pattern (``/data/**/*.mp4``; ``**`` crosses folders) takes the supported files it matches (and searches
  the folders it matches);
- a file is taken as it is, whatever its extension: one that cannot be read becomes a skipped, listed input at
  loading time, as does a listed file that does not exist;
- a list (``--inputs "['/data/a', '/data/b/1.avi']"``) takes each of the above, a file found twice once.

Each input's id (``video_id``, the name of its outputs) is its path relative to the folder that holds all inputs,
without the extension, in POSIX form: ``a/1.avi`` and ``b/1.avi`` become ``a/1`` and ``b/1`` and do not overwrite
each other's outputs. Inputs that would still share an id (``1.avi`` and ``1.mp4``) keep their extension.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medssl_monai.data.robust import resource_problem
from medssl_monai.data.sources import IMAGE_EXTENSIONS
from medssl_monai.data.video import VIDEO_EXTENSIONS
from medssl_monai.data.walk import walk_visible

__all__ = ["INPUT_EXTENSIONS", "find_inputs", "inference_datalist", "input_ids", "is_input_file", "with_frame_counts"]

logger = logging.getLogger(__name__)

#: what a folder or glob search picks up: videos and NIfTI sequences
INPUT_EXTENSIONS = (*VIDEO_EXTENSIONS, ".nii", ".nii.gz")


def is_input_file(path: str | Path) -> bool:
    """A video or NIfTI file name (any case), not hidden."""
    name = Path(path).name.lower()
    return not name.startswith(".") and name.endswith(INPUT_EXTENSIONS)


def _is_frame_folder(path: Path) -> bool:
    try:
        return path.is_dir() and any(
            f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") for f in path.iterdir()
        )
    except OSError:
        return False


def _search(root: Path, frame_folders: bool) -> list[Path]:
    """The inputs under ``root`` (recursive, symlinked folders followed once, hidden names skipped), sorted."""
    if frame_folders and _is_frame_folder(root):
        return [root]
    found: list[Path] = []
    for folder, dirs, files in walk_visible(root):
        if frame_folders:  # a folder of images is one input: not searched further
            frames = [d for d in dirs if _is_frame_folder(folder / d)]
            found += [folder / d for d in frames]
            dirs[:] = [d for d in dirs if d not in frames]
        found += [folder / f for f in files if is_input_file(f)]
    return sorted(found)


def _entries(inputs: Any) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    if isinstance(inputs, Sequence):
        return [os.fspath(x) for x in inputs]
    raise TypeError(f"inputs must be a path, a glob pattern or a list of them, got {type(inputs).__name__}")


def find_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], frame_folders: bool = False) -> list[Path]:
    """The input files (and, with ``frame_folders``, image folders) that ``inputs`` names, in a stable order.

    Raises:
        FileNotFoundError: a folder or glob pattern with no input in it, or nothing at all to read.
    """
    found: list[Path] = []
    for entry in _entries(inputs):
        text = os.path.expanduser(entry)
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            hits = [m for m in matches if m.is_file() and is_input_file(m)]
            hits += [p for m in matches if m.is_dir() for p in _search(m, frame_folders)]
            if not hits:
                raise FileNotFoundError(f"no video or NIfTI file matches {entry!r} ({', '.join(INPUT_EXTENSIONS)})")
            found += hits
        elif Path(text).is_dir():
            hits = _search(Path(text), frame_folders)
            if not hits:
                what = "video, NIfTI file or image folder" if frame_folders else "video or NIfTI file"
                raise FileNotFoundError(f"no {what} in {entry} ({', '.join(INPUT_EXTENSIONS)}, searched recursively)")
            found += hits
        else:  # a file, read whatever its name; a missing one is reported (and skipped) when it is loaded
            found.append(Path(text))
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    if not unique:
        raise FileNotFoundError(f"no input given: {inputs!r}")
    return list(unique.values())


def _stem(relative: str) -> str:
    return relative[: -len(".nii.gz")] if relative.lower().endswith(".nii.gz") else os.path.splitext(relative)[0]


def input_ids(paths: Sequence[str | Path]) -> list[str]:
    """Each path's id: relative to the folder that holds them all, without the extension (kept where two would
    share an id), POSIX separators."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    relative = [Path(os.path.relpath(p, base)).as_posix() for p in absolute]
    stems = [_stem(r) for r in relative]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else r for s, r in zip(stems, relative)]


def inference_datalist(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    id_key: str = "video_id",
    frame_folders: bool = False,
) -> list[dict[str, str]]:
    """``[{"image": path, id_key: id}]`` for the files (or folders) ``inputs`` names (see the module docstring).

    Args:
        inputs: a folder, a glob pattern, a file, or a list of them.
        id_key: the key of each input's id.
        frame_folders: a folder of images is one input (the ultrasound bundles' ``Video_7/00000.jpg``).
    """
    paths = find_inputs(inputs, frame_folders=frame_folders)
    items = [{"image": str(p), id_key: i} for p, i in zip(paths, input_ids(paths))]
    logger.info(f"inputs: {len(items)} files from {inputs!r}")
    return items


def with_frame_counts(datalist: Sequence[dict], cache_dir: str | Path | None = None) -> list[dict]:
    """The items with ``num_frames`` (decoded once through the clip cache), for one item per frame.

    An input that cannot be decoded gets ``num_frames`` 1 and a WARNING: its one frame item fails again when it is
    loaded, where the bad-sample policy skips and lists it (or stops the run, with ``raise``). A full disk or
    memory error stops here.
    """
    from medssl_monai.data.cache import ClipCache

    cache = ClipCache(cache_dir)
    out = []
    for item in datalist:
        try:
            n = len(cache.frames(item["image"]))
        except Exception as e:  # noqa: BLE001 - any decoding problem is the input's, reported when it is loaded
            if resource_problem(e) is not None:
                raise
            logger.warning(f"{item['image']}: cannot be read ({e}); it will be listed as skipped")
            n = 1
        out.append({**item, "num_frames": n})
    return out
