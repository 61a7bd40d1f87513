"""Frame-folder reader: ``<root>/Video_k/00000.jpg, 00001.jpg, ...`` to a MONAI datalist.

The layout of the UCL reference (``ucl/datasets_gb.py``, ``GbVideoDataset``: GBUSV videos as JPEG
folders, frame ``i`` read as ``%05d.jpg``) and of many ultrasound sets. The reference indexes frames by
number and so assumes they are contiguous; we order files by :func:`~medssl_monai.data.sources.frame_files`
(numeric order) and only warn about gaps, which the reference would have crashed on.

:func:`load_image_list` reads the reference's still-image lists (``lincls_bin.py`` / ``dataloader.py``
``GbUsgDataSet``: GBCU, one ``img,label`` line per image, names relative to an image folder).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.report import OnError, ReadReport, check_on_error, read_csv_checked
from medssl_monai.data.sources import frame_files
from medssl_monai.errors import CSVFormatError, DataError, VideoReadError

__all__ = ["load_frame_folder_datalist", "frame_numbers_contiguous", "load_image_list"]

logger = logging.getLogger(__name__)


def frame_numbers_contiguous(files: list[Path]) -> bool:
    """Whether the last number in each (sorted) file name runs ``k, k+1, ...`` without gaps or repeats."""
    nums = []
    for f in files:
        digits = re.findall(r"\d+", f.stem)
        if not digits:
            return False
        nums.append(int(digits[-1]))
    return bool(nums) and np.array_equal(np.asarray(nums), np.arange(nums[0], nums[0] + len(nums)))


def _int_labels(df: pd.DataFrame, column: str, csv: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df[column].notna() & (values.isna() | (values % 1 != 0))
    if bad.any():
        examples = df.loc[bad, column].astype(str).unique()[:3].tolist()
        raise CSVFormatError(csv, f"column {column!r} must hold integer class indices, found {examples}")
    return values


def load_frame_folder_datalist(
    root: str | Path,
    labels_csv: str | Path | None = None,
    id_column: str = "video",
    label_column: str = "label",
    extra_columns: Sequence[str] = (),
    min_frames: int = 2,
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """Every sub-folder of ``root`` that holds images becomes one video item.

    Args:
        root: the folder of frame folders.
        labels_csv: optional CSV with ``id_column`` (folder names) and ``label_column`` (integer class);
            relative paths are relative to ``root``. With it, folders without a row, rows without a folder and
            NaN labels are skipped and reported.
        id_column: the folder-name column of ``labels_csv``.
        label_column: the class column of ``labels_csv``.
        extra_columns: further ``labels_csv`` columns copied into the items as strings (e.g. a patient id for
            grouped k-fold splits, or given fold numbers).
        min_frames: folders with fewer images are skipped.
        on_error: ``"skip"`` reports bad folders and goes on; ``"raise"`` raises the first one's error.
            A missing ``labels_csv``, missing columns or non-integer labels always raise.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image": folder path, "video_id": folder name, "num_frames"[, "label": int]}`` sorted by
        folder name, and the report when ``return_report``. Frame-number gaps are report warnings.
    """
    check_on_error(on_error)
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(root, "frame-folder root not found")
    report = ReadReport(str(root), on_error=on_error)
    labels: dict[str, float] | None = None
    if labels_csv is not None:
        csv = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
        extra = list(extra_columns)
        dtypes = {id_column: str, **dict.fromkeys(extra, str)}
        df = read_csv_checked(csv, [id_column, label_column, *extra], dtype=dtypes)
        df[id_column] = df[id_column].str.strip()
        values = _int_labels(df, label_column, csv)
        dup = df[id_column].duplicated()
        if dup.any():
            repeated = df.loc[dup, id_column].tolist()[:5]
            raise CSVFormatError(csv, f"{id_column} values listed more than once: {repeated}")
        labels = dict(zip(df[id_column], values))
        extras = {c: dict(zip(df[id_column], df[c].fillna("").str.strip())) for c in extra}

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    datalist: list[dict] = []
    for folder in folders:
        files = frame_files(folder)
        if not files:
            if labels is None or folder.name not in labels:
                continue  # a folder of something else (e.g. a cache) is not a video unless the CSV says so
            report.skip(folder.name, VideoReadError(folder, "frame folder holds no images"), "no images")
            continue
        if len(files) < min_frames:
            error = VideoReadError(folder, f"too few frames: {len(files)}, at least {min_frames} needed")
            report.skip(folder.name, error, "too few frames")
            continue
        item: dict = {"image": str(folder), "video_id": folder.name, "num_frames": len(files)}
        if labels is not None:
            if folder.name not in labels:
                report.skip(folder.name, CSVFormatError(csv, f"no row for folder {folder.name!r}"), "no label row")
                continue
            if np.isnan(labels[folder.name]):
                report.skip(folder.name, CSVFormatError(csv, f"{folder.name}: label is NaN"), "NaN label")
                continue
            item["label"] = int(labels[folder.name])
            item.update({c: extras[c][folder.name] for c in extras})
        if not frame_numbers_contiguous(files):
            report.warn(folder.name, f"{folder}: frame numbers are not contiguous", "non-contiguous frames")
        datalist.append(item)
    if labels is not None:
        present = {f.name for f in folders}
        for vid in labels:
            if vid not in present:
                error = DataError(root / vid, f"listed in {csv.name} but the folder is missing")
                report.skip(vid, error, "missing folder")
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist


def load_image_list(
    list_file: str | Path,
    image_dir: str | Path | None = None,
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """Still images from a list file of ``img,label[,group]`` lines (GBCU's ``train.txt`` / ``val.txt``).

    As ``GbUsgDataSet``: the first field is the image name (relative to ``image_dir``), the second the integer class.
    An optional third field names a group (e.g. the patient) for grouped k-fold splits; without it every image is
    its own group. Blank lines are ignored.

    Args:
        list_file: the list; a relative path is taken relative to ``image_dir``.
        image_dir: the image folder (the reference's ``--img_dir``); ``None``: the list file's folder.
        on_error: ``"skip"`` reports missing images and goes on; ``"raise"`` raises. Malformed lines always raise.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image": path, "video_id": image name, "group": group, "num_frames": 1, "label": int}`` in list
        order: each image is a one-frame clip, so the frame pipeline of the classifier applies unchanged.

    Raises:
        CSVFormatError: a line without an integer label, or an image listed twice.
    """
    check_on_error(on_error)
    list_file = Path(list_file)
    if not list_file.is_absolute() and image_dir is not None and not list_file.is_file():
        list_file = Path(image_dir) / list_file
    if not list_file.is_file():
        raise DataError(list_file, "image list not found")
    root = Path(image_dir) if image_dir is not None else list_file.parent
    report = ReadReport(str(list_file), on_error=on_error)
    datalist: list[dict] = []
    seen: set[str] = set()
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not fields[0]:
            continue
        if len(fields) < 2 or not re.fullmatch(r"-?\d+", fields[1]):
            raise CSVFormatError(list_file, f"line {n}: expected 'img,label[,group]' with an integer label: {line!r}")
        name = fields[0]
        if name in seen:
            raise CSVFormatError(list_file, f"line {n}: {name!r} listed more than once")
        seen.add(name)
        path = root / name
        if not path.is_file():
            report.skip(name, DataError(path, "listed image not found"), "missing image")
            continue
        group = fields[2] if len(fields) > 2 and fields[2] else name
        item = {"image": str(path), "video_id": name, "group": group, "num_frames": 1, "label": int(fields[1])}
        datalist.append(item)
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist
