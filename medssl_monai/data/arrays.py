"""Clips stored as arrays: TVRL's cardiac-MRI layout ``<root>/<id>.npy`` with label CSVs keyed by id.

The TVRL reference (``datamodule/cardiac*``) reads ``{eid}.npy`` ``uint8`` arrays of shape ``50 x H x W``
(UK Biobank cine CMR) and takes targets from ``train.csv`` / ``val.csv`` / ``test.csv`` with an ``eid``
column. Shapes and dtypes are checked from the ``.npy`` header (memory-mapped; no pixel is read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.echonet import normalise_split
from medssl_monai.data.report import OnError, ReadReport, check_on_error, plain, read_csv_checked
from medssl_monai.errors import CSVFormatError, DataError, VideoReadError

__all__ = ["load_array_datalist", "array_header"]

logger = logging.getLogger(__name__)


def array_header(path: str | Path, min_frames: int = 1) -> tuple[int, ...]:
    """Shape of a clip array, checked to be ``T x H x W`` or ``T x H x W x C`` (C in 1, 3) ``uint8``.

    Raises:
        VideoReadError: missing, unreadable, wrong dtype / shape, or fewer than ``min_frames`` frames.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # header and a mapping only, no pixel read
    except (ValueError, OSError, EOFError) as e:
        raise VideoReadError(path, f"cannot be read as a .npy array ({e})") from e
    if not isinstance(arr, np.ndarray):
        raise VideoReadError(path, "holds an archive, not a single array")
    shape, dtype = tuple(int(s) for s in arr.shape), arr.dtype
    del arr
    if dtype != np.uint8:
        raise VideoReadError(path, f"expected uint8 frames, got {dtype}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))):
        raise VideoReadError(path, f"expected T x H x W or T x H x W x C (C in 1, 3), got shape {shape}")
    if shape[0] < min_frames:
        raise VideoReadError(path, f"too few frames: {shape[0]}, at least {min_frames} needed")
    return shape


def load_array_datalist(
    root: str | Path,
    labels_csv: str | Path | None = None,
    id_column: str = "eid",
    label_columns: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    min_frames: int = 1,
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """``<root>/<id>.npy`` clips (and their labels) to a MONAI datalist.

    Args:
        root: the folder of ``.npy`` clips.
        labels_csv: CSV keyed by ``id_column`` (relative paths are relative to ``root``); one item per row.
            ``None`` lists every ``*.npy`` in ``root`` without labels (for pretraining).
        id_column: the id column (TVRL: ``eid``); ids are read as strings.
        label_columns: a column name -> its value goes to ``"label"``; a list -> each column under its own
            name; ``None`` -> every column except the id and split columns, under their own names.
            Rows with NaN in a selected column are skipped and reported.
        split: keep only these ``split_column`` values (case-insensitive); ``None`` / ``"ALL"`` keeps all.
            TVRL ships one CSV per split instead; then pass that CSV and leave ``split`` unset.
        split_column: the split column of ``labels_csv``.
        min_frames: clips with fewer frames are skipped.
        on_error: ``"skip"`` reports bad rows and clips and goes on; ``"raise"`` raises the first error.
            A missing CSV or missing columns always raise.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image": npy path, "video_id", "num_frames", "label" | <label columns>[, "split"]}``.
    """
    check_on_error(on_error)
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(root, "array folder not found")
    report = ReadReport(str(root), on_error=on_error)
    if labels_csv is None:
        if split is not None:
            raise ValueError("split needs a labels_csv with a split column")
        rows = [{"_id": p.stem} for p in sorted(root.glob("*.npy"))]
        columns: list[str] = []
        single = False
        csv = None
    else:
        csv = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
        wanted = normalise_split(split)
        single = isinstance(label_columns, str)
        requested = [label_columns] if single else list(label_columns or [])
        required = [id_column, *requested] + ([split_column] if wanted is not None else [])
        df = read_csv_checked(csv, required, dtype={id_column: str})
        if split_column in df.columns:
            df[split_column] = df[split_column].astype(str).str.strip().str.upper()
            if wanted is not None:
                df = df.loc[df[split_column].isin(wanted)]
        columns = requested or [c for c in df.columns if c not in (id_column, split_column)]
        df = df.assign(_id=df[id_column].astype(str).str.strip())
        dup = df["_id"].duplicated()
        if dup.any():
            raise CSVFormatError(csv, f"{id_column} values listed more than once: {df.loc[dup, '_id'].tolist()[:5]}")
        keep = [*columns, split_column] if split_column in df.columns else columns
        rows = df[["_id", *keep]].to_dict("records")

    datalist: list[dict] = []
    for row in rows:
        vid = row["_id"]
        nan = [c for c in columns if pd.isna(row[c])]
        if nan:
            report.skip(vid, CSVFormatError(csv, f"{vid}: NaN in {nan}"), "NaN label")
            continue
        path = root / f"{vid}.npy"
        try:
            shape = array_header(path, min_frames=min_frames)
        except VideoReadError as e:
            report.skip(vid, e, "bad array" if path.is_file() else "missing array")
            continue
        item: dict = {"image": str(path), "video_id": vid, "num_frames": shape[0]}
        if single:
            item["label"] = plain(row[columns[0]])
        else:
            item.update({c: plain(row[c]) for c in columns})
        if split_column in row:
            item["split"] = row[split_column]
        datalist.append(item)
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist
