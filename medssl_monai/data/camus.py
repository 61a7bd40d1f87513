"""CAMUS reader: the NIfTI release, unchanged, to a MONAI datalist.

Layout (Leclerc et al., IEEE TMI 2019; the 2023 NIfTI release): ``<root>/patientXXXX/`` holds
``patientXXXX_4CH_half_sequence.nii.gz`` (a half cycle, ED to ES, stored ``W x H x T``),
``patientXXXX_4CH_ED_gt.nii.gz`` / ``..._ES_gt.nii.gz`` (labels 0 background, 1 LV endocardium,
2 LV myocardium, 3 left atrium) and ``Info_4CH.cfg`` (``ED: 1``, ``ES: 15``, ``NbFrame: 15``, ``EF: 52``, ...
with 1-based frame numbers). Only NIfTI headers are read here; pixels are decoded later by the loading
transform (:func:`medssl_monai.data.sources.decode_frames`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medssl_monai.data.report import OnError, ReadReport, check_on_error
from medssl_monai.errors import DataError

__all__ = ["load_camus_datalist", "read_camus_cfg", "CAMUS_LV_LABEL"]

logger = logging.getLogger(__name__)

CAMUS_LV_LABEL = 1  # LV endocardium (blood pool) in the CAMUS ground truth


def read_camus_cfg(path: str | Path) -> dict[str, str]:
    """``Info_<view>.cfg`` (``Key: value`` lines) to a dict of stripped strings.

    Raises:
        DataError: the file is missing or a non-empty line has no ``:``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DataError(path, f"line {i} is not 'Key: value': {line!r}")
        out[key.strip()] = value.strip()
    return out


def _header_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).shape)  # nib.load reads the header only
    except Exception as e:  # nibabel raises several types for corrupt files
        raise DataError(path, f"cannot be read as NIfTI ({e})") from e


def _patient_dirs(root: Path) -> list[Path]:
    if not any(p.name.startswith("patient") for p in root.iterdir() if p.is_dir()):
        nested = root / "database_nifti"  # the official archive unpacks into this subfolder
        if nested.is_dir():
            root = nested
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("patient"))


def load_camus_datalist(
    root: str | Path,
    view: str | Sequence[str] = "4CH",
    samples: str = "video",
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """CAMUS NIfTI folders to a MONAI datalist.

    Args:
        root: the folder of ``patientXXXX`` folders (or its parent holding ``database_nifti/``).
        view: ``"4CH"``, ``"2CH"`` or both as a list.
        samples: ``"video"`` (one item per sequence) or ``"traced"`` (ED then ES items, each with ``phase``,
            ``frame_index`` and ``label`` = that phase's ground-truth path).
        on_error: ``"skip"`` reports bad patients and goes on; ``"raise"`` raises the first one's error.
        return_report: also return the :class:`ReadReport`.

    Returns:
        Items ``{"image": half_sequence path, "video_id": "patient0001_4CH", "patient", "view",
        "traced_frames": {"ED", "ES"} (0-based), "ef" (float or None), "num_frames", "labels": {"ED", "ES"},
        "label_value": 1}`` plus ``"sequence_label"`` (the half sequence's per-frame ground truth) where the
        patient has one, and the report when ``return_report``.

    Raises:
        DataError: ``root`` does not exist; with ``on_error="raise"`` the first missing / inconsistent file.
    """
    check_on_error(on_error)
    if samples not in ("video", "traced"):
        raise ValueError(f"samples must be 'video' or 'traced', got {samples!r}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(root, "CAMUS folder not found")
    views = [view] if isinstance(view, str) else list(view)
    report = ReadReport(str(root), on_error=on_error)
    datalist: list[dict] = []
    for pdir in _patient_dirs(root):
        for v in views:
            item = _read_patient(pdir, v, report)
            if item is None:
                continue
            if samples == "video":
                datalist.append(item)
            else:
                for phase in ("ED", "ES"):
                    datalist.append(
                        {
                            **item,
                            "phase": phase,
                            "frame_index": item["traced_frames"][phase],
                            "label": item["labels"][phase],
                        }
                    )
    if not datalist and not report.skipped:
        report.warn(str(root), "no patientXXXX folders found", "empty dataset")
    report.kept = len(datalist)
    report.log(logger)
    return (datalist, report) if return_report else datalist


def _read_patient(pdir: Path, view: str, report: ReadReport) -> dict | None:
    pid = pdir.name
    vid = f"{pid}_{view}"
    seq = pdir / f"{vid}_half_sequence.nii.gz"
    seq_gt = pdir / f"{vid}_half_sequence_gt.nii.gz"  # per-frame labels; the NIfTI release has them, older ones not
    gts = {phase: pdir / f"{vid}_{phase}_gt.nii.gz" for phase in ("ED", "ES")}
    cfg_path = pdir / f"Info_{view}.cfg"
    for path in (seq, *gts.values(), cfg_path):
        if not path.is_file():
            report.skip(vid, DataError(path, "file not found"), "missing file")
            return None
    try:
        cfg = read_camus_cfg(cfg_path)
        missing = [k for k in ("ED", "ES") if k not in cfg]
        if missing:
            raise DataError(cfg_path, f"missing keys {missing}")
        try:
            ed, es = int(cfg["ED"]) - 1, int(cfg["ES"]) - 1  # CAMUS counts frames from 1
        except ValueError as e:
            raise DataError(cfg_path, f"ED/ES are not integers ({cfg['ED']!r}, {cfg['ES']!r})") from e
        shape = _header_shape(seq)
        if len(shape) == 4 and shape[2] == 1:
            shape = (shape[0], shape[1], shape[3])
        if len(shape) != 3:
            raise DataError(seq, f"expected a W x H x T sequence, header shape {shape}")
        num_frames = shape[2]
        for phase, f in (("ED", ed), ("ES", es)):
            if not 0 <= f < num_frames:
                raise DataError(cfg_path, f"{phase}: {f + 1} outside the sequence's {num_frames} frames")
        for gt in gts.values():
            gshape = _header_shape(gt)
            if tuple(gshape[:2]) != shape[:2] or any(s != 1 for s in gshape[2:]):
                raise DataError(gt, f"shape {gshape} does not match the sequence's W x H {shape[:2]}")
    except DataError as e:
        report.skip(vid, e, "bad patient files")
        return None
    if "NbFrame" in cfg and cfg["NbFrame"].isdigit() and int(cfg["NbFrame"]) != num_frames:
        report.warn(vid, f"{cfg_path}: NbFrame={cfg['NbFrame']} but the NIfTI holds {num_frames}", "NbFrame mismatch")
    try:
        ef = float(cfg["EF"]) if "EF" in cfg else None
    except ValueError:
        ef = None
        report.warn(vid, f"{cfg_path}: EF {cfg['EF']!r} is not a number", "bad EF")
    return {
        "image": str(seq),
        "video_id": vid,
        "patient": pid,
        "view": view,
        "traced_frames": {"ED": ed, "ES": es},
        "ef": ef,
        "num_frames": num_frames,
        "labels": {phase: str(p) for phase, p in gts.items()},
        "label_value": CAMUS_LV_LABEL,
        # only where present: a None would not collate
        **({"sequence_label": str(seq_gt)} if seq_gt.is_file() else {}),
    }
