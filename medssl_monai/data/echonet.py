"""EchoNet-Dynamic reader: ``Videos/*.avi``, ``FileList.csv`` and ``VolumeTracings.csv`` to a MONAI datalist.

Follows the EchoNet reference (Ouyang et al., Nature 2020, ``echonet/datasets/echo.py``), which SimLVSeg /
UniLVSeg reuse: ``FileName`` in ``FileList.csv`` has no extension (some releases add ``.avi``; both are
accepted), ``VolumeTracings.csv`` has ~21 rows per traced frame (row 0 the long axis), the first traced frame
in file order is ES and the last is ED, and videos with fewer than two traced frames are dropped. Unlike the
reference we also check ED/ES by polygon area and skip (and report) unusable rows instead of crashing later in
a DataLoader worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.report import OnError, ReadReport, check_on_error, plain, read_csv_checked
from medssl_monai.data.tracings import MIN_TRACING_ROWS, tracing_polygon
from medssl_monai.errors import CSVFormatError, DataError, TracingError, VideoReadError

__all__ = [
    "load_echonet_datalist",
    "read_volume_tracings",
    "tracing_area",
    "normalise_split",
    "FILELIST_COLUMNS",
    "TRACING_COLUMNS",
]

logger = logging.getLogger(__name__)

FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
_ITEM_KEYS = (
    "image",
    "video_id",
    "split",
    "ef",
    "edv",
    "esv",
    "fps",
    "num_frames",
    "height",
    "width",
    "traced_frames",
    "tracings",
    "phase",
    "frame_index",
    "label",
)


def _video_ids(names: pd.Series) -> pd.Series:
    """``FileName`` values to video ids: stripped, without a trailing ``.avi`` (either spelling is accepted)."""
    return names.astype(str).str.strip().str.replace(r"\.avi$", "", case=False, regex=True)


def normalise_split(split: str | Sequence[str] | None) -> set[str] | None:
    """``None``/``"ALL"`` -> ``None`` (no filter), else the upper-cased split names as a set.

    Any name is accepted (EchoNet-Pediatric uses fold numbers), compared case-insensitively.
    """
    if split is None:
        return None
    names = [split] if isinstance(split, (str, int)) else list(split)
    names = {str(s).strip().upper() for s in names}
    return None if "ALL" in names else names


def tracing_area(rows: np.ndarray) -> float:
    """Area (pixels^2) of the EchoNet polygon of one traced frame's ``N x 4`` rows, by the shoelace formula."""
    rows = np.asarray(rows, dtype=np.float64)
    xs, ys = tracing_polygon(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def read_volume_tracings(csv_path: str | Path) -> tuple[dict[str, list[tuple[int, np.ndarray]]], set[str]]:
    """Parse ``VolumeTracings.csv`` with one pandas groupby (the real file has ~420k rows).

    Returns:
        ``{video_id: [(frame, rows N x 4 float64), ...]}`` with frames in order of first appearance in the
        file (the order the reference uses to tell ES from ED), and the set of video ids with NaN
        coordinates or frame numbers (unusable; the caller reports them).

    Raises:
        CSVFormatError: the file is missing or lacks columns.
    """
    df = read_csv_checked(csv_path, TRACING_COLUMNS)
    df["_vid"] = _video_ids(df["FileName"])
    coord_cols = ["X1", "Y1", "X2", "Y2"]
    for c in [*coord_cols, "Frame"]:
        df[c] = pd.to_numeric(df[c], errors="coerce")  # a stray string becomes NaN and is reported as such
    bad_rows = df[[*coord_cols, "Frame"]].isna().any(axis=1)
    bad = set(df.loc[bad_rows, "_vid"])
    df = df.loc[~bad_rows & ~df["_vid"].isin(bad)]
    if df.empty:
        return {}, bad
    frames = df["Frame"].to_numpy().astype(np.int64)
    # sort=False numbers the groups in order of first appearance, which keeps the file's frame order per video
    gid = df.groupby(["_vid", frames], sort=False).ngroup().to_numpy()
    order = np.argsort(gid, kind="stable")
    counts = np.bincount(gid)
    blocks = np.split(df[coord_cols].to_numpy(np.float64)[order], np.cumsum(counts)[:-1])
    first = np.unique(gid, return_index=True)[1]  # row of each group's first appearance, by group id
    vids = df["_vid"].to_numpy()[first]
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for vid, frame, rows in zip(vids, frames[first], blocks):
        out.setdefault(vid, []).append((int(frame), rows))
    return out, bad


def load_echonet_datalist(
    root: str | Path,
    split: str | Sequence[str] | None = None,
    samples: str = "video",
    labels_csv: str | Path | None = None,
    on_error: OnError = "skip",
    min_frames: int = 2,
    return_report: bool = False,
    require_tracings: bool = False,
    labels_key: str = "FileName",
) -> list[dict] | tuple[list[dict], ReadReport]:
    """EchoNet-Dynamic on disk, unchanged, to a MONAI datalist.

    Args:
        root: the dataset folder holding ``Videos/``, ``FileList.csv`` and ``VolumeTracings.csv``.
        split: ``None`` or ``"ALL"`` for every video, else a ``Split`` value (``"TRAIN"``, ``"VAL"``, ``"TEST"``,
            case-insensitive) or a list of them.
        samples: ``"video"``: one item per video; ``"traced"``: two items per video (ES then ED, the reference's
            ``small_trace`` / ``large_trace``) with ``phase``, ``frame_index`` and ``label`` (that frame's
            ``[[x1, y1, x2, y2], ...]`` rows, row 0 the long axis; a transform rasterises it with
            :func:`~medssl_monai.data.tracings.tracing_mask`).
        labels_csv: an extra CSV keyed by ``labels_key`` (e.g. the synthetic ``SyntheticTruth.csv``) whose
            other columns are added to every item under their own names; relative paths are relative to
            ``root``. Videos without a row are skipped.
        on_error: ``"skip"`` reports bad videos and goes on; ``"raise"`` raises the first one's error.
            A missing ``FileList.csv``, missing columns or a missing ``Videos/`` folder always raise.
        min_frames: videos whose ``NumberOfFrames`` (from the CSV; nothing is decoded) is smaller are skipped.
        return_report: also return the :class:`ReadReport`.
        require_tracings: with ``samples="video"``, skip videos absent from ``VolumeTracings.csv`` instead of
            keeping them with ``traced_frames`` / ``tracings`` = ``None``. ``samples="traced"`` implies it.
        labels_key: the id column of ``labels_csv``.

    Returns:
        The datalist (plain Python types), and the report when ``return_report``. A video item is
        ``{"image", "video_id", "split", "ef", "edv", "esv", "fps", "num_frames", "height", "width",
        "traced_frames": {"ED", "ES"}, "tracings": {"ED", "ES"}}`` plus the ``labels_csv`` columns.

    Raises:
        CSVFormatError: ``FileList.csv`` (or a needed ``VolumeTracings.csv`` / ``labels_csv``) is missing or
            lacks columns; with ``on_error="raise"`` also NaN EF/EDV/ESV.
        VideoReadError, TracingError: with ``on_error="raise"``, the first bad video or tracing.
    """
    check_on_error(on_error)
    if samples not in ("video", "traced"):
        raise ValueError(f"samples must be 'video' or 'traced', got {samples!r}")
    root = Path(root).resolve()
    filelist_csv, tracings_csv, videos_dir = root / "FileList.csv", root / "VolumeTracings.csv", root / "Videos"
    report = ReadReport(str(root), on_error=on_error)
    need_tracings = samples == "traced" or require_tracings

    df = read_csv_checked(filelist_csv, FILELIST_COLUMNS).copy()
    df["_vid"] = _video_ids(df["FileName"])
    df["_split"] = df["Split"].astype(str).str.strip().str.upper()
    wanted = normalise_split(split)
    if wanted is not None:
        df = df.loc[df["_split"].isin(wanted)].copy()
    if not videos_dir.is_dir():
        raise DataError(videos_dir, "videos folder not found (expected <root>/Videos/*.avi)")
    existing = set(os.listdir(videos_dir))  # one listing instead of 10k stat calls

    if tracings_csv.is_file() or need_tracings:
        tracings, bad_tracings = read_volume_tracings(tracings_csv)
    else:
        tracings, bad_tracings = {}, set()
        report.warn(str(tracings_csv), "not found; items carry no tracings", "no VolumeTracings.csv")

    extra: dict[str, dict] | None = None
    if labels_csv is not None:
        labels_path = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
        ldf = read_csv_checked(labels_path, [labels_key])
        clash = [c for c in ldf.columns if c != labels_key and c in _ITEM_KEYS]
        if clash:
            raise CSVFormatError(labels_path, f"columns {clash} clash with datalist keys; rename them")
        ldf.index = _video_ids(ldf[labels_key])
        if ldf.index.has_duplicates:
            repeated = ldf.index[ldf.index.duplicated()].tolist()[:5]
            raise CSVFormatError(labels_path, f"{labels_key} values listed more than once: {repeated}")
        extra = ldf.drop(columns=[labels_key]).to_dict("index")

    numeric = ["EF", "EDV", "ESV", "FPS", "NumberOfFrames", "FrameHeight", "FrameWidth"]
    for c in numeric:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    dup = df["_vid"].duplicated()
    for vid in df.loc[dup, "_vid"]:
        report.skip(vid, CSVFormatError(filelist_csv, f"{vid}: listed more than once"), "duplicate FileName")
    df = df.loc[~dup]

    datalist: list[dict] = []
    videos_str = str(videos_dir)
    for rec in df[["_vid", "_split", *numeric]].itertuples(index=False, name=None):
        vid, split_name, ef, edv, esv, fps, n, h, w = rec
        video_path = os.path.join(videos_str, f"{vid}.avi")
        nan = [c for c, v in zip(("EF", "EDV", "ESV"), (ef, edv, esv)) if np.isnan(v)]
        if nan:
            report.skip(vid, CSVFormatError(filelist_csv, f"{vid}: {'/'.join(nan)} is NaN"), "NaN EF/EDV/ESV")
            continue
        nan = [c for c, v in zip(("FPS", "NumberOfFrames", "FrameHeight", "FrameWidth"), (fps, n, h, w)) if np.isnan(v)]
        if nan:
            report.skip(vid, CSVFormatError(filelist_csv, f"{vid}: {'/'.join(nan)} is NaN"), "NaN video metadata")
            continue
        if f"{vid}.avi" not in existing:
            report.skip(vid, VideoReadError(video_path, "file not found (listed in FileList.csv)"), "missing video")
            continue
        n = int(n)
        if n < min_frames:
            error = VideoReadError(video_path, f"too few frames: NumberOfFrames={n}, at least {min_frames} needed")
            report.skip(vid, error, "too few frames")
            continue
        item = {
            "image": video_path,
            "video_id": vid,
            "split": split_name,
            "ef": float(ef),
            "edv": float(edv),
            "esv": float(esv),
            "fps": float(fps),
            "num_frames": n,
            "height": int(h),
            "width": int(w),
            "traced_frames": None,
            "tracings": None,
        }
        if vid in bad_tracings:
            report.skip(vid, TracingError(tracings_csv, f"{vid}: NaN or non-numeric coordinates/frame"), "bad tracing")
            continue
        if vid in tracings:
            traced = _ed_es(vid, tracings[vid], n, tracings_csv, report)
            if traced is None:
                continue
            item["traced_frames"], item["tracings"] = traced
        elif need_tracings:
            report.skip(vid, TracingError(tracings_csv, f"{vid}: no tracings"), "no tracings")
            continue
        if extra is not None:
            if vid not in extra:
                report.skip(vid, CSVFormatError(labels_path, f"{vid}: no row for this video"), "no labels row")
                continue
            item.update({k: plain(v) for k, v in extra[vid].items()})
        if samples == "video":
            datalist.append(item)
        else:
            for phase in ("ES", "ED"):  # the reference's order: small (ES) trace, then large (ED)
                datalist.append(
                    {
                        **item,
                        "phase": phase,
                        "frame_index": item["traced_frames"][phase],
                        "label": item["tracings"][phase],
                    }
                )
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist


def _ed_es(
    vid: str, frames: list[tuple[int, np.ndarray]], num_frames: int, csv: Path, report: ReadReport
) -> tuple[dict, dict] | None:
    """ES = first traced frame, ED = last (EchoNet reference), checked by area; ``None`` when unusable."""
    if len(frames) < 2:
        report.skip(vid, TracingError(csv, f"{vid}: {len(frames)} traced frame, two needed (ED and ES)"), "one trace")
        return None
    (es, es_rows), (ed, ed_rows) = frames[0], frames[-1]
    for f, rows in ((es, es_rows), (ed, ed_rows)):
        if len(rows) < MIN_TRACING_ROWS:
            msg = f"{vid}: frame {f} has {len(rows)} tracing rows, at least {MIN_TRACING_ROWS} needed"
            report.skip(vid, TracingError(csv, msg), "too few tracing rows")
            return None
        if not 0 <= f < num_frames:
            msg = f"{vid}: traced frame {f} outside the video (NumberOfFrames={num_frames})"
            report.skip(vid, TracingError(csv, msg), "traced frame outside video")
            return None
    if tracing_area(es_rows) > tracing_area(ed_rows):
        # the file order disagrees with the anatomy: the larger cavity is end-diastole
        (es, es_rows), (ed, ed_rows) = (ed, ed_rows), (es, es_rows)
        report.warn(vid, f"first traced frame {ed} is larger than last {es}: ED/ES swapped by area", "ED/ES swapped")
    return {"ED": ed, "ES": es}, {"ED": ed_rows.tolist(), "ES": es_rows.tolist()}
