"""Irregularly timed image series (TVRL's longitudinal OCT setting) from a long-format CSV.

TVRL (Shen et al., MICCAI 2024) feeds each subject's scan history as (image, acquisition time) pairs
so the temporal encoder can use the real intervals (the ``-TE`` time embedding). Here the history is a CSV
with one row per image: ``subject_id, image_path, time, label[, split]``. Rows are grouped per subject and
sorted by time.

Policy for bad rows: a *visit* with a NaN time or a missing image file is dropped (a warning; the rest of
the history is still usable); a *subject* is skipped (and reported) when its label is NaN, differs between
its rows, or fewer than ``min_visits`` visits remain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.echonet import normalise_split
from medssl_monai.data.report import OnError, ReadReport, check_on_error, plain, read_csv_checked
from medssl_monai.errors import CSVFormatError, DataError

__all__ = ["load_timed_series_datalist"]

logger = logging.getLogger(__name__)


def load_timed_series_datalist(
    csv_path: str | Path,
    subject_column: str = "subject_id",
    path_column: str = "image_path",
    time_column: str = "time",
    label_column: str | None = "label",
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    min_visits: int = 1,
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """A long-format series CSV to one datalist item per subject.

    Args:
        csv_path: the CSV; relative image paths are relative to its folder.
        subject_column: the subject id column.
        path_column: the image path column.
        time_column: acquisition time (e.g. years, float).
        label_column: the per-subject label (must be equal on all its rows); ``None`` for unlabelled series.
        split: keep only these ``split_column`` values (case-insensitive); ``None`` / ``"ALL"`` keeps all.
        split_column: the split column; needed only when ``split`` is given.
        min_visits: subjects with fewer usable visits are skipped.
        on_error: ``"skip"`` reports bad subjects / visits and goes on; ``"raise"`` raises the first error.
            A missing CSV or missing columns always raise.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image": [abs paths by time], "times": [floats], "label", "subject_id", "split"}``
        (``label`` int when integral, else float; ``split`` when the column exists), sorted by subject id.
    """
    check_on_error(on_error)
    csv_path = Path(csv_path).resolve()
    wanted = normalise_split(split)
    required = [subject_column, path_column, time_column]
    if label_column is not None:
        required.append(label_column)
    if wanted is not None:
        required.append(split_column)
    df = read_csv_checked(csv_path, required, dtype={subject_column: str, path_column: str})
    has_split = split_column in df.columns
    if has_split:
        df[split_column] = df[split_column].astype(str).str.strip().str.upper()
        if wanted is not None:
            df = df.loc[df[split_column].isin(wanted)]
    df = df.copy()
    df["_time"] = pd.to_numeric(df[time_column], errors="coerce")
    base = str(csv_path.parent)
    df["_path"] = [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in df[path_column]]
    report = ReadReport(str(csv_path), on_error=on_error)

    datalist: list[dict] = []
    for subject, rows in df.groupby(subject_column, sort=True):
        subject = str(subject)
        if label_column is not None:
            labels = pd.to_numeric(rows[label_column], errors="coerce")
            if labels.isna().any():
                report.skip(subject, CSVFormatError(csv_path, f"subject {subject}: NaN label"), "NaN label")
                continue
            if labels.nunique() != 1:
                msg = f"subject {subject}: label differs between visits {sorted(labels.unique().tolist())}"
                report.skip(subject, CSVFormatError(csv_path, msg), "inconsistent label")
                continue
        if has_split and rows[split_column].nunique() != 1:
            msg = f"subject {subject}: visits in several splits {sorted(rows[split_column].unique())}"
            report.skip(subject, CSVFormatError(csv_path, msg), "inconsistent split")
            continue
        keep = np.ones(len(rows), dtype=bool)
        for i, (t, path) in enumerate(zip(rows["_time"], rows["_path"])):
            problem = None
            if np.isnan(t):
                problem = DataError(csv_path, f"subject {subject}: visit {path} has no valid time")
            elif not os.path.isfile(path):
                problem = DataError(path, f"image of subject {subject} not found")
            if problem is not None:
                if on_error == "raise":
                    raise problem
                keep[i] = False
                report.warn(subject, str(problem), "visit dropped")
        rows = rows.loc[keep].sort_values("_time", kind="stable")
        if len(rows) < min_visits:
            msg = f"subject {subject}: {len(rows)} usable visits, at least {min_visits} needed"
            report.skip(subject, DataError(csv_path, msg), "too few visits")
            continue
        item: dict = {
            "image": rows["_path"].tolist(),
            "times": [float(t) for t in rows["_time"]],
            "subject_id": subject,
        }
        if label_column is not None:
            value = float(labels.iloc[0])
            item["label"] = int(value) if value.is_integer() else value
        if has_split:
            item["split"] = plain(rows[split_column].iloc[0])
        datalist.append(item)
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist
