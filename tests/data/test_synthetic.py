"""Tests of the synthetic dataset generators (tiny sizes)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.sources import decode_frames
from medssl_monai.data.synthetic import (
    MARKER_NAME,
    SIZES,
    make_all,
    make_camus,
    make_echonet,
    make_frame_folders,
    make_timed_series,
    save_montage,
    synthesize_echo_video,
)
from medssl_monai.data.synthetic._common import write_dataset
from medssl_monai.data.tracings import disc_volume, tracing_mask
from medssl_monai.data.video import read_video
from medssl_monai.errors import DataError

ECHO_KW = {"num_videos": 6, "seed": 3, "image_size": 64, "fps": 20.0, "min_frames": 30, "max_frames": 36}


@pytest.fixture(scope="module")
def echonet(tmp_path_factory) -> Path:
    return make_echonet(tmp_path_factory.mktemp("syn") / "echonet", abnormal_fraction=0.5, **ECHO_KW)


def _tracing(rows: pd.DataFrame, frame: int) -> tuple[np.ndarray, ...]:
    t = rows[rows["Frame"] == frame]
    return tuple(t[k].to_numpy() for k in ("X1", "Y1", "X2", "Y2"))


def test_echonet_layout(echonet: Path) -> None:
    files = pd.read_csv(echonet / "FileList.csv")
    assert list(files.columns) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                                   "NumberOfFrames", "Split"]  # fmt: skip
    assert (echonet / "VolumeTracings.csv").read_text().splitlines()[0] == "FileName,X1,Y1,X2,Y2,Frame"
    assert len(files) == 6 and set(files["Split"]) <= {"TRAIN", "VAL", "TEST"}
    assert all(re.fullmatch(r"0X[0-9A-F]{14}", n) for n in files["FileName"])
    tracings = pd.read_csv(echonet / "VolumeTracings.csv")
    for row in files.itertuples():
        video = read_video(echonet / "Videos" / f"{row.FileName}.avi")
        assert video.shape == (row.NumberOfFrames, 64, 64, 3)
        assert np.array_equal(video[..., 0], video[..., 2])  # grey stored in three channels
        rows = tracings[tracings["FileName"] == f"{row.FileName}.avi"]
        assert len(rows) == 42 and rows["Frame"].nunique() == 2
        assert (rows["Frame"].iloc[:21].nunique(), rows["Frame"].iloc[21:].nunique()) == (1, 1)
    assert (echonet / MARKER_NAME).is_file()


def test_echonet_ef_recomputes_from_tracings(echonet: Path) -> None:
    files = pd.read_csv(echonet / "FileList.csv")
    truth = pd.read_csv(echonet / "SyntheticTruth.csv")
    tracings = pd.read_csv(echonet / "VolumeTracings.csv")
    for row, tr in zip(files.itertuples(), truth.itertuples()):
        rows = tracings[tracings["FileName"] == f"{row.FileName}.avi"]
        frames = list(dict.fromkeys(rows["Frame"]))
        es, ed = frames[0], frames[-1]  # the EchoNet reference: first traced frame ES, last ED
        assert (ed, es) == (tr.TracedED, tr.TracedES)
        edv = disc_volume(*_tracing(rows, ed), tr.PixelSpacingCm)
        esv = disc_volume(*_tracing(rows, es), tr.PixelSpacingCm)
        np.testing.assert_allclose([row.EDV, row.ESV, row.EF], [edv, esv, 100 * (edv - esv) / edv], rtol=1e-9)
        assert row.EDV > row.ESV > 0
        # Traced ED / ES are one cycle's ED and ES; the video holds >= 1.5 cycles from a random phase.
        period = 60.0 * row.FPS / tr.HeartRateBPM
        assert ed in map(int, tr.EDFrames.split()) and es in map(int, tr.ESFrames.split())
        assert 0 < es - ed < period
        assert row.NumberOfFrames >= 1.5 * period


def test_echonet_tracing_geometry(echonet: Path) -> None:
    tracings = pd.read_csv(echonet / "VolumeTracings.csv")
    for _, rows in tracings.groupby(["FileName", "Frame"]):
        x1, y1, x2, y2 = (rows[k].to_numpy() for k in ("X1", "Y1", "X2", "Y2"))
        axis = np.array([x2[0] - x1[0], y2[0] - y1[0]])
        chords = np.stack([x2[1:] - x1[1:], y2[1:] - y1[1:]], axis=1)
        np.testing.assert_allclose(chords @ axis / np.linalg.norm(axis), 0.0, atol=1e-9)  # perpendicular
        # Chord centres lie on the long axis, ordered from apex to base.
        centres = np.stack([(x1[1:] + x2[1:]) / 2, (y1[1:] + y2[1:]) / 2], axis=1) - [x1[0], y1[0]]
        along = centres @ axis / np.linalg.norm(axis) ** 2
        assert np.all(np.diff(along) > 0) and 0 < along[0] < along[-1] < 1


def test_tracing_mask_matches_rendered_lv(echonet: Path) -> None:
    files = pd.read_csv(echonet / "FileList.csv")
    truth = pd.read_csv(echonet / "SyntheticTruth.csv")
    tracings = pd.read_csv(echonet / "VolumeTracings.csv")
    kw = {k: ECHO_KW[k] for k in ("image_size", "fps", "min_frames", "max_frames")}
    for row, tr in zip(files.itertuples(), truth.itertuples()):
        video = synthesize_echo_video(ECHO_KW["seed"], tr.Index, tr.Abnormality, **kw)
        decoded = read_video(echonet / "Videos" / f"{row.FileName}.avi")[..., 0]
        assert decoded.shape == video.frames.shape
        assert np.abs(decoded.astype(float) - video.frames).mean() < 8  # only MJPG loss
        rows = tracings[tracings["FileName"] == f"{row.FileName}.avi"]
        for frame in (tr.TracedED, tr.TracedES):
            mask = tracing_mask(*_tracing(rows, frame), (64, 64)).astype(bool)
            lv = video.labels[frame] == 1
            dice = 2 * np.sum(mask & lv) / (mask.sum() + lv.sum())
            assert dice > 0.9, (row.FileName, frame, dice)
            # The blood pool is dark and the ring around it bright in the written video.
            myo = video.labels[frame] == 2
            assert decoded[frame][lv].mean() < 0.5 * decoded[frame][myo].mean()
        # The LV pool is largest at ED and smallest at ES over the whole video.
        areas = (video.labels == 1).sum(axis=(1, 2))
        assert areas[tr.TracedED] >= areas.max() * 0.97 and areas[tr.TracedES] <= areas.min() * 1.03


def test_echonet_deterministic(tmp_path: Path) -> None:
    kw = {**ECHO_KW, "num_videos": 2, "min_frames": 24, "max_frames": 30, "image_size": 48}
    a, b = make_echonet(tmp_path / "a", **kw), make_echonet(tmp_path / "b", **kw)
    c = make_echonet(tmp_path / "c", **{**kw, "seed": kw["seed"] + 1})
    for name in ("FileList.csv", "VolumeTracings.csv", "SyntheticTruth.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    for video in (a / "Videos").glob("*.avi"):
        assert np.array_equal(read_video(video), read_video(b / "Videos" / video.name))


def test_abnormal_fraction_and_lower_ef(tmp_path: Path) -> None:
    kw = {**ECHO_KW, "num_videos": 12, "min_frames": 24, "max_frames": 30, "image_size": 48}
    root = make_echonet(tmp_path / "e", abnormal_fraction=0.5, **kw)
    files = pd.read_csv(root / "FileList.csv")
    truth = pd.read_csv(root / "SyntheticTruth.csv")
    assert truth["Abnormal"].sum() == 6
    assert set(truth["Abnormality"]) == {"normal", "reduced_ef", "akinetic_segment"}
    assert list(truth["Abnormal"]) == list((truth["Abnormality"] != "normal").astype(int))
    ef = files["EF"].to_numpy()
    abnormal = truth["Abnormal"].to_numpy() == 1
    assert ef[abnormal].mean() < ef[~abnormal].mean() - 10
    assert np.all((ef[~abnormal] > 50) & (ef[~abnormal] < 75))
    reduced = (truth["Abnormality"] == "reduced_ef").to_numpy()
    assert np.all(ef[reduced] < 47)
    none = make_echonet(tmp_path / "n", abnormal_fraction=0.0, **{**kw, "num_videos": 3})
    assert pd.read_csv(none / "SyntheticTruth.csv")["Abnormal"].sum() == 0


def test_camus_files(tmp_path: Path) -> None:
    root = make_camus(tmp_path / "camus", num_patients=2, seed=1, image_size=(96, 80))
    for k in (1, 2):
        folder = root / f"patient{k:04d}"
        cfg = dict(line.split(": ", 1) for line in (folder / "Info_4CH.cfg").read_text().splitlines())
        n = int(cfg["NbFrame"])
        assert int(cfg["ED"]) == 1 and int(cfg["ES"]) == n >= 2
        assert cfg["Sex"] in ("F", "M") and cfg["ImageQuality"] in ("Good", "Medium", "Poor")
        seq = nib.load(folder / f"patient{k:04d}_4CH_half_sequence.nii.gz")
        gt = np.asarray(nib.load(folder / f"patient{k:04d}_4CH_half_sequence_gt.nii.gz").dataobj)
        data = np.asarray(seq.dataobj)
        assert data.shape == gt.shape == (80, 96, n) and data.dtype == np.uint8 and gt.dtype == np.uint8
        assert set(np.unique(gt)) == {0, 1, 2, 3}
        np.testing.assert_allclose(seq.header.get_zooms()[:2], [1.875, 1.875])  # 18 cm over 96 rows
        for phase, idx in (("ED", 0), ("ES", n - 1)):
            img = np.asarray(nib.load(folder / f"patient{k:04d}_4CH_{phase}.nii.gz").dataobj)
            lab = np.asarray(nib.load(folder / f"patient{k:04d}_4CH_{phase}_gt.nii.gz").dataobj)
            assert img.shape == lab.shape == (80, 96)
            assert np.array_equal(img, data[..., idx]) and np.array_equal(lab, gt[..., idx])
        lv_area = (gt == 1).sum(axis=(0, 1))
        assert lv_area[0] == lv_area.max() and lv_area[-1] == lv_area.min()
        edv, esv = float(cfg["LVedv"]), float(cfg["LVesv"])
        assert abs(float(cfg["LVef"]) - 100 * (edv - esv) / edv) < 0.1
        # The project's NIfTI reader (W x H x T -> T x H x W x 1) sees the apex at the top.
        frames = decode_frames(folder / f"patient{k:04d}_4CH_half_sequence.nii.gz")
        assert frames.shape == (n, 96, 80, 1)
        assert frames[0, :5].max() <= frames[0, 40:60].max()


def test_frame_folders(tmp_path: Path) -> None:
    root = make_frame_folders(tmp_path / "us", num_videos=6, seed=2, num_frames=(40, 44), image_size=48)
    labels = pd.read_csv(root / "labels.csv")
    assert list(labels.columns) == ["video", "label", "label_name"]
    assert labels["label"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2}
    names = ("normal", "lesion", "artefact")
    assert all(names[r.label] == r.label_name for r in labels.itertuples())
    for row in labels.itertuples():
        folder = root / row.video
        files = sorted(p.name for p in folder.iterdir())
        assert files == [f"{i:05d}.jpg" for i in range(len(files))] and 40 <= len(files) <= 44
        frames = decode_frames(folder)[..., 0].astype(np.float32)
        assert frames.shape[1:] == (48, 48)
        # Anatomy-level similarity (16 x 16 area means, so speckle does not dominate): the probe moves smoothly,
        # neighbours show nearly the same anatomy, frames half a video apart show different anatomy.
        coarse = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in frames])
        half = len(frames) // 2
        for arr, ratio in ((frames, 1.0), (coarse, 0.75)):
            near = np.mean([np.abs(arr[t + 1] - arr[t]).mean() for t in range(len(arr) - 1)])
            far = np.mean([np.abs(arr[t + half] - arr[t]).mean() for t in range(half)])
            assert near < ratio * far, (row.video, near, far)


def test_lesion_shadow_only_mid_sweep() -> None:
    from medssl_monai.data.synthetic import synthesize_sweep

    normal = synthesize_sweep(0, 0, "normal", 30, 64).astype(np.float32)
    lesion = synthesize_sweep(0, 0, "lesion", 30, 64).astype(np.float32)
    artefact = synthesize_sweep(0, 0, "artefact", 30, 64).astype(np.float32)
    # The class content has its own generator: same index, same anatomy, probe path and speckle. The mass and its
    # shadow appear only where the sweep passes them (mid-video); B-lines are present throughout.
    diff = np.abs(lesion - normal).mean(axis=(1, 2))
    assert diff[:3].max() < 0.5 and diff[-3:].max() < 0.5 and diff[12:18].min() > 2.0
    assert np.abs(artefact - normal).mean(axis=(1, 2)).min() > 1.0


def test_timed_series(tmp_path: Path) -> None:
    root = make_timed_series(tmp_path / "ts", num_subjects=24, seed=5, horizon=2.0, threshold=1.0)
    series = pd.read_csv(root / "series.csv")
    truth = pd.read_csv(root / "SyntheticTruth.csv")
    assert list(series.columns) == ["subject_id", "image_path", "time", "label", "split"]
    assert series["subject_id"].nunique() == 24 and set(series["split"]) <= {"TRAIN", "VAL", "TEST"}
    assert all((root / p).is_file() for p in series["image_path"])
    gap_cv = []
    for sid, rows in truth.groupby("subject_id"):
        rows = rows.sort_values("time")
        t, s, rate = rows["time"].to_numpy(), rows["lesion_size_mm"].to_numpy(), rows["growth_rate_mm_per_year"].iloc[0]
        assert 3 <= len(t) <= 6 and series[series.subject_id == sid]["label"].nunique() == 1
        assert s[-1] < 1.0
        # Linear growth: every visit's size is the last one minus rate x elapsed time (0 before onset).
        np.testing.assert_allclose(s, np.maximum(s[-1] - rate * (t[-1] - t), 0.0), atol=1e-9)
        assert rows["label"].iloc[0] == int(s[-1] + rate * 2.0 >= 1.0)
        gaps = np.diff(t)
        assert np.all(gaps > 0)
        gap_cv.append(gaps.std() / gaps.mean())
    assert np.mean(gap_cv) > 0.2  # irregular within subjects
    mean_gap = truth.groupby("subject_id")["time"].agg(lambda x: np.diff(np.sort(x)).mean())
    assert mean_gap.max() > 2.5 * mean_gap.min()  # and between subjects
    # Twins: identical images, stretched times, a different growth rate; labels differ in some pairs.
    twins = truth[truth["twin_of"].notna()].groupby("subject_id").first()
    assert len(twins) >= 10
    differ = 0
    for sid, row in twins.iterrows():
        mine = truth[truth.subject_id == sid].sort_values("time")
        other = truth[truth.subject_id == row.twin_of].sort_values("time")
        assert all((root / a).read_bytes() == (root / b).read_bytes()
                   for a, b in zip(mine["image_path"], other["image_path"]))  # fmt: skip
        assert not np.allclose(np.diff(mine["time"]), np.diff(other["time"]))
        assert (
            series[series.subject_id == sid]["split"].iloc[0]
            == series[series.subject_id == row.twin_of]["split"].iloc[0]
        )
        differ += int(row.label != twins.loc[row.twin_of, "label"])
    assert differ >= 2
    # The image shows the size: hypertransmission (bright columns below the retina) widens with the lesion.
    sizes, widths = [], []
    for r in truth.itertuples():
        img = cv2.imread(str(root / r.image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        profile = img[48:].mean(axis=0)
        widths.append(int(np.sum(profile > np.median(profile) * 1.6)))
        sizes.append(r.lesion_size_mm)
    assert np.corrcoef(sizes, widths)[0, 1] > 0.9


def test_make_all_idempotent_and_atomic(tmp_path: Path) -> None:
    out = make_all(tmp_path / "data", seed=0, size="tiny")
    assert set(out) == {"echonet", "camus", "ultrasound", "timed_series"}
    files = sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert make_all(tmp_path / "data", seed=0, size="tiny") == out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file()) == files
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp folders left

    # Different parameters rebuild (the marker differs); user data without a marker is never overwritten.
    old_marker = (out["timed_series"] / MARKER_NAME).read_text()
    make_timed_series(out["timed_series"], num_subjects=4, seed=0)
    assert (out["timed_series"] / MARKER_NAME).read_text() != old_marker
    assert pd.read_csv(out["timed_series"] / "series.csv")["subject_id"].nunique() == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="mine.*refusing"):
        make_frame_folders(tmp_path / "mine", num_videos=1, num_frames=(2, 2), image_size=32)

    def crash(folder: Path) -> None:
        (folder / "half.csv").write_text("a\n")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "crashed", "x", {}, crash)
    assert not (tmp_path / "crashed").exists() and not list(tmp_path.glob(".crashed*"))


def test_save_montage(echonet: Path, tmp_path: Path) -> None:
    png = save_montage(echonet, tmp_path / "m.png", num_videos=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000


def test_parallel_writing_is_byte_identical(tmp_path: Path) -> None:
    from medssl_monai.data.synthetic import make_arrays

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    written = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        out = make_all(root, seed=3, size="tiny", num_workers=workers)
        make_arrays(root / "arrays", out["echonet"], num_frames=8, image_size=32, num_workers=workers)
        (root / "arrays" / ".synthetic_arrays.json").unlink()  # names the source folder, which differs
        written[workers] = files(root)
    assert len(written[1]) > 100 and written[1].keys() == written[2].keys()
    assert [k for k in written[1] if written[1][k] != written[2][k]] == []


def test_bench_size_counts() -> None:
    bench = SIZES["bench"]
    assert bench["echonet"]["num_videos"] >= 512 and bench["ultrasound"]["num_videos"] >= 512
    assert bench["timed_series"]["num_subjects"] >= 1024
