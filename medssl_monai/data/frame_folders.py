"""Frame-folder reader: ``<root>/Video_k/00000.jpg, 00001.jpg, ...`` to a MONAI datalist.

The layout of the UCL reference (``ucl/datasets_gb.py``, ``GbVideoDataset``: GBUSV videos as JPEG
folders, frame ``i`` read as ``%05d.jpg``) and of many ultrasound sets. The reference indexes frames by
number and so assumes they are contiguous; we order files by :func:`~medssl_monai.data.sources.frame_files`
(numeric order) and only warn about gaps, which the reference would have crashed on.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.report import OnError, ReadReport, check_on_error, read_csv_checked
from medssl_monai.data.sources import frame_files
from medssl_monai.errors import CSVFormatError, DataError, VideoReadError

__all__ = ["load_frame_folder_datalist", "frame_numbers_contiguous"]

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
        df = read_csv_checked(csv, [id_column, label_column], dtype={id_column: str})
        df[id_column] = df[id_column].str.strip()
        values = _int_labels(df, label_column, csv)
        dup = df[id_column].duplicated()
        if dup.any():
            repeated = df.loc[dup, id_column].tolist()[:5]
            raise CSVFormatError(csv, f"{id_column} values listed more than once: {repeated}")
        labels = dict(zip(df[id_column], values))

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
