"""CAMUS reader: the NIfTI release or the original MetaImage release, unchanged, to a MONAI datalist.

Layouts (Leclerc et al., IEEE TMI 2019). The 2023 NIfTI release: ``<root>/patientXXXX/`` holds
``patientXXXX_4CH_half_sequence.nii.gz`` (a half cycle, ED to ES, stored ``W x H x T``),
``patientXXXX_4CH_half_sequence_gt.nii.gz`` (its per-frame labels), ``patientXXXX_4CH_ED_gt.nii.gz`` /
``..._ES_gt.nii.gz`` (labels 0 background, 1 LV endocardium, 2 LV myocardium, 3 left atrium) and ``Info_4CH.cfg``
(``ED: 1``, ``ES: 15``, ``NbFrame: 15``, ``EF: 52``, ... with 1-based frame numbers). The original release
(``training/patientXXXX/``) has the same files as ITK MetaImage (``.mhd`` header + ``.raw`` pixels), the half
sequence named ``patientXXXX_4CH_sequence.mhd`` (``..._sequence_gt.mhd`` where present) and the EF as ``LVef``;
either name and format is accepted. Only headers are read here; pixels are decoded later by the loading
transform (:func:`medssl_monai.data.sources.decode_frames`, ITK for MetaImage).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medssl_monai.data.report import OnError, ReadReport, check_on_error
from medssl_monai.data.sources import header_shape
from medssl_monai.errors import DataError

__all__ = ["load_camus_datalist", "read_camus_cfg", "CAMUS_LV_LABEL"]

logger = logging.getLogger(__name__)

CAMUS_LV_LABEL = 1  # LV endocardium (blood pool) in the CAMUS ground truth
#: file formats in the order they are looked for: the NIfTI release, then the original MetaImage one
CAMUS_EXTENSIONS = (".nii.gz", ".nii", ".mhd", ".mha")
#: names of the half sequence: the NIfTI release's, then the original release's
_SEQUENCE_STEMS = ("half_sequence", "sequence")


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


def _find(pdir: Path, stems: Sequence[str]) -> Path | None:
    """The first of ``<stem><ext>`` present in ``pdir`` (stems, then :data:`CAMUS_EXTENSIONS`, in order)."""
    for stem in stems:
        for ext in CAMUS_EXTENSIONS:
            if (pdir / f"{stem}{ext}").is_file():
                return pdir / f"{stem}{ext}"
    return None


def _patient_dirs(root: Path) -> list[Path]:
    if not any(p.name.startswith("patient") for p in root.iterdir() if p.is_dir()):
        for sub in ("database_nifti", "training"):  # the NIfTI / the original archive unpacks into these
            if (root / sub).is_dir():
                root = root / sub
                break
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("patient"))


def load_camus_datalist(
    root: str | Path,
    view: str | Sequence[str] = "4CH",
    samples: str = "video",
    on_error: OnError = "skip",
    return_report: bool = False,
) -> list[dict] | tuple[list[dict], ReadReport]:
    """CAMUS folders (NIfTI or MetaImage release) to a MONAI datalist.

    Args:
        root: the folder of ``patientXXXX`` folders (or its parent holding ``database_nifti/`` or ``training/``).
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
    # a missing file is reported under its NIfTI-release name
    seq = _find(pdir, [f"{vid}_{s}" for s in _SEQUENCE_STEMS]) or pdir / f"{vid}_half_sequence.nii.gz"
    seq_gt = _find(pdir, [f"{vid}_{s}_gt" for s in _SEQUENCE_STEMS])  # per-frame labels; not in every release
    gts = {phase: _find(pdir, [f"{vid}_{phase}_gt"]) or pdir / f"{vid}_{phase}_gt.nii.gz" for phase in ("ED", "ES")}
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
        shape = header_shape(seq)
        if len(shape) == 4 and shape[2] == 1:
            shape = (shape[0], shape[1], shape[3])
        if len(shape) != 3:
            raise DataError(seq, f"expected a W x H x T sequence, header shape {shape}")
        num_frames = shape[2]
        for phase, f in (("ED", ed), ("ES", es)):
            if not 0 <= f < num_frames:
                raise DataError(cfg_path, f"{phase}: {f + 1} outside the sequence's {num_frames} frames")
        for gt in gts.values():
            gshape = header_shape(gt)
            if tuple(gshape[:2]) != shape[:2] or any(s != 1 for s in gshape[2:]):
                raise DataError(gt, f"shape {gshape} does not match the sequence's W x H {shape[:2]}")
    except DataError as e:
        report.skip(vid, e, "bad patient files")
        return None
    if "NbFrame" in cfg and cfg["NbFrame"].isdigit() and int(cfg["NbFrame"]) != num_frames:
        report.warn(vid, f"{cfg_path}: NbFrame={cfg['NbFrame']} but {seq.name} holds {num_frames}", "NbFrame mismatch")
    ef_key = "EF" if "EF" in cfg else "LVef"  # the original release's name
    try:
        ef = float(cfg[ef_key]) if ef_key in cfg else None
    except ValueError:
        ef = None
        report.warn(vid, f"{cfg_path}: {ef_key} {cfg[ef_key]!r} is not a number", "bad EF")
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
        **({"sequence_label": str(seq_gt)} if seq_gt is not None else {}),
    }
