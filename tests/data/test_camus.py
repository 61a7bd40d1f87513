"""CAMUS reader and NIfTI decoding on hand-made NIfTI files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medssl_monai.data.camus import load_camus_datalist, read_camus_cfg
from medssl_monai.data.sources import decode_frames
from medssl_monai.errors import DataError

W, H, T = 6, 4, 5  # W != H so a transposed decode cannot pass


def _nii(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def make_patient(root: Path, pid: str, ed: int = 1, es: int = T, nb: int = T, gt_shape=(W, H), view="4CH") -> Path:
    d = root / pid
    d.mkdir(parents=True, exist_ok=True)
    seq = np.zeros((W, H, T), np.uint8)
    for t in range(T):
        seq[:, :, t] = 10 * t
    seq[5, 0, :] = 255  # x = 5, y = 0: the top-right pixel of every frame
    _nii(d / f"{pid}_{view}_half_sequence.nii.gz", seq)
    for phase in ("ED", "ES"):
        _nii(d / f"{pid}_{view}_{phase}_gt.nii.gz", np.ones(gt_shape, np.uint8))
    (d / f"Info_{view}.cfg").write_text(f"ED: {ed}\nES: {es}\nNbFrame: {nb}\nSex: F\nAge: 61\nEF: 52\n")
    return d


def test_video_and_traced_items(tmp_path: Path) -> None:
    make_patient(tmp_path, "patient0001")
    make_patient(tmp_path, "patient0002", ed=2, es=4)
    items = load_camus_datalist(tmp_path)
    assert [i["video_id"] for i in items] == ["patient0001_4CH", "patient0002_4CH"]
    a = items[0]
    assert a["image"] == str(tmp_path / "patient0001" / "patient0001_4CH_half_sequence.nii.gz")
    assert a["traced_frames"] == {"ED": 0, "ES": 4}  # 1-based in the cfg, 0-based here
    assert items[1]["traced_frames"] == {"ED": 1, "ES": 3}
    assert (a["ef"], a["num_frames"], a["label_value"]) == (52.0, T, 1)
    assert a["labels"]["ES"].endswith("patient0001_4CH_ES_gt.nii.gz")
    traced = load_camus_datalist(tmp_path, samples="traced")
    assert [(i["phase"], i["frame_index"]) for i in traced[:2]] == [("ED", 0), ("ES", 4)]
    assert traced[1]["label"] == a["labels"]["ES"]


def test_nifti_decoding_orientation(tmp_path: Path) -> None:
    make_patient(tmp_path, "patient0001")
    frames = decode_frames(tmp_path / "patient0001" / "patient0001_4CH_half_sequence.nii.gz")
    assert frames.shape == (T, H, W, 1) and frames.dtype == np.uint8  # W x H x T on disk -> T x H x W x C
    assert frames[3, 1, 1, 0] == 30
    assert frames[:, 0, 5, 0].tolist() == [255] * T  # the marked pixel: row y = 0, column x = 5


def test_bad_patients_skipped_and_reported(tmp_path: Path) -> None:
    make_patient(tmp_path, "patient0001")
    d = make_patient(tmp_path, "patient0002")
    (d / "patient0002_4CH_ES_gt.nii.gz").unlink()
    make_patient(tmp_path, "patient0003", es=T + 1)  # ES outside the sequence
    make_patient(tmp_path, "patient0004", gt_shape=(H, W))  # gt transposed
    make_patient(tmp_path, "patient0005", nb=T + 3)  # NbFrame disagrees: kept with a warning
    items, report = load_camus_datalist(tmp_path, return_report=True)
    assert [i["patient"] for i in items] == ["patient0001", "patient0005"]
    skipped = dict(report.skipped)
    assert skipped["patient0002_4CH"].endswith("patient0002_4CH_ES_gt.nii.gz: file not found")
    assert "ES: 6 outside the sequence's 5 frames" in skipped["patient0003_4CH"]
    assert "does not match the sequence's W x H (6, 4)" in skipped["patient0004_4CH"]
    assert report.warnings[0][0] == "patient0005_4CH" and "NbFrame=8" in report.warnings[0][1]
    with pytest.raises(DataError, match="file not found"):
        load_camus_datalist(tmp_path, on_error="raise")


def test_cfg_and_root_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "Info_4CH.cfg"
    cfg.write_text("ED: 1\nnot a key value line\n")
    with pytest.raises(DataError, match="line 2 is not 'Key: value'"):
        read_camus_cfg(cfg)
    with pytest.raises(DataError, match="CAMUS folder not found"):
        load_camus_datalist(tmp_path / "nope")


def test_database_nifti_subfolder_and_two_views(tmp_path: Path) -> None:
    make_patient(tmp_path / "database_nifti", "patient0001")
    make_patient(tmp_path / "database_nifti", "patient0001", view="2CH")
    items = load_camus_datalist(tmp_path, view=["2CH", "4CH"])
    assert [i["video_id"] for i in items] == ["patient0001_2CH", "patient0001_4CH"]


def _mhd(path: Path, array_slowest_first: np.ndarray) -> None:
    """ITK writes numpy's slowest axis last in ``DimSize``: ``T x H x W`` becomes ``W H T``, the NIfTI layout."""
    import itk

    itk.imwrite(itk.image_from_array(np.ascontiguousarray(array_slowest_first)), str(path))


def make_mhd_patient(root: Path, pid: str, view: str = "4CH") -> Path:
    """The original release's files for :func:`make_patient`'s patient: ``_sequence.mhd`` + ``.raw``, ``LVef``."""
    d = root / pid
    d.mkdir(parents=True, exist_ok=True)
    seq = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        seq[t] = 10 * t
    seq[:, 0, 5] = 255  # the same marked pixel as the NIfTI copy: x = 5, y = 0
    _mhd(d / f"{pid}_{view}_sequence.mhd", seq)
    _mhd(d / f"{pid}_{view}_sequence_gt.mhd", (seq > 0).astype(np.uint8))
    _mhd(d / f"{pid}_{view}_ED_gt.mhd", np.ones((H, W), np.uint8))  # 2D header
    _mhd(d / f"{pid}_{view}_ES_gt.mhd", np.ones((1, H, W), np.uint8))  # 3D header with one slice
    (d / f"Info_{view}.cfg").write_text(f"ED: 1\nES: {T}\nNbFrame: {T}\nSex: F\nAge: 61\nLVef: 52\n")
    return d


def test_metaimage_release_reads_like_the_nifti_one(tmp_path: Path) -> None:
    from medssl_monai.transforms.camus import LoadCamusSequenced
    from medssl_monai.transforms.io import LoadTracingMaskd

    d = make_mhd_patient(tmp_path / "mhd" / "training", "patient0001")
    assert (d / "patient0001_4CH_sequence.raw").is_file()
    nii_dir = make_patient(tmp_path / "nii", "patient0001")
    seq = np.zeros((W, H, T), np.uint8)  # the NIfTI copy of the per-frame ground truth
    for t in range(T):
        seq[:, :, t] = 10 * t
    seq[5, 0, :] = 255
    _nii(nii_dir / "patient0001_4CH_half_sequence_gt.nii.gz", (seq > 0).astype(np.uint8))
    [m] = load_camus_datalist(tmp_path / "mhd")  # finds training/
    [n] = load_camus_datalist(tmp_path / "nii")
    assert m["image"].endswith("patient0001_4CH_sequence.mhd") and m["sequence_label"].endswith("_sequence_gt.mhd")
    assert m["labels"]["ED"].endswith("patient0001_4CH_ED_gt.mhd")
    same = ("video_id", "traced_frames", "ef", "num_frames", "label_value")
    assert {k: m[k] for k in same} == {k: n[k] for k in same}
    frames = decode_frames(m["image"])
    assert frames.shape == (T, H, W, 1) and frames[:, 0, 5, 0].tolist() == [255] * T
    np.testing.assert_array_equal(frames, decode_frames(n["image"]))
    np.testing.assert_array_equal(decode_frames(m["sequence_label"]), decode_frames(n["sequence_label"]))
    clip = np.zeros((1, T, H, W), np.uint8)
    for phase in ("ED", "ES"):
        mask = LoadTracingMaskd()({"image": clip, "label": m["labels"][phase]})["label"]
        assert mask.shape == (1, H, W) and mask.sum() == H * W
    a = LoadCamusSequenced(max_frames=4, spatial_size=(4, 6))(m)
    b = LoadCamusSequenced(max_frames=4, spatial_size=(4, 6))(n)
    for key in ("image", "label", "label_valid", "phase_code", "frame_indices"):
        assert torch.equal(a[key], b[key]), key
