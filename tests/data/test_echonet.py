"""EchoNet-Dynamic reader on hand-made fixtures: tiny AVIs, FileList.csv and VolumeTracings.csv."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.echonet import load_echonet_datalist, read_volume_tracings, tracing_area
from medssl_monai.data.tracings import tracing_mask
from medssl_monai.data.video import write_video
from medssl_monai.errors import CSVFormatError, TracingError, VideoReadError

COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]


def square_rows(lo: float, hi: float, n_chords: int = 7) -> list[list[float]]:
    """A square tracing: long axis down the middle, then horizontal chords from x=lo to x=hi at y=lo..hi."""
    mid = (lo + hi) / 2
    ys = np.linspace(lo, hi, n_chords)
    return [[mid, lo, mid, hi]] + [[lo, y, hi, y] for y in ys]


def diamond_rows(c: float, r: int) -> list[list[float]]:
    """A diamond |x-c| + |y-c| <= r: chords at every integer y from c-r to c+r."""
    ys = np.arange(c - r, c + r + 1)
    hw = r - np.abs(ys - c)
    return [[c, c - r, c, c + r]] + [[c - w, y, c + w, y] for y, w in zip(ys, hw)]


def make_dataset(root: Path, videos: dict[str, dict], filelist_name_suffix: str = "") -> Path:
    """Write ``root/Videos/<id>.avi``, FileList.csv and VolumeTracings.csv.

    ``videos[id]`` = {"frames": int, "split": str, "ef": float, "traces": [(frame, rows), ...] (file order),
    "write": bool (write the AVI)}.
    """
    (root / "Videos").mkdir(parents=True)
    with open(root / "FileList.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for vid, v in videos.items():
            w.writerow([vid + filelist_name_suffix, v.get("ef", 60.0), 20.0, 50.0, 16, 16, 50, v["frames"], v["split"]])
            if v.get("write", True):
                write_video(root / "Videos" / f"{vid}.avi", np.full((v["frames"], 16, 16), 100, np.uint8))
    with open(root / "VolumeTracings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
        for vid, v in videos.items():
            for frame, rows in v.get("traces", []):
                for r in rows:
                    w.writerow([f"{vid}.avi", *r, frame])
    return root


SMALL, LARGE = square_rows(5, 9), square_rows(2, 12)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_dataset(
        tmp_path / "echo",
        {
            "0XA": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (9, LARGE)]},
            "0XB": {"frames": 12, "split": "val", "traces": [(2, SMALL), (7, LARGE)]},
            "0XC": {"frames": 12, "split": "TEST", "traces": [(4, SMALL), (10, LARGE)]},
        },
    )


def test_video_items(good: Path) -> None:
    items = load_echonet_datalist(good)
    assert [i["video_id"] for i in items] == ["0XA", "0XB", "0XC"]
    a = items[0]
    assert a["image"] == str((good / "Videos" / "0XA.avi").resolve())
    assert a["split"] == "TRAIN" and items[1]["split"] == "VAL"
    assert (a["ef"], a["esv"], a["edv"], a["fps"]) == (60.0, 20.0, 50.0, 50.0)
    assert (a["num_frames"], a["height"], a["width"]) == (12, 16, 16)
    assert a["traced_frames"] == {"ES": 3, "ED": 9}
    assert a["tracings"]["ES"] == SMALL and a["tracings"]["ED"] == LARGE
    assert all(type(v) in (str, int, float, dict) for v in a.values())  # plain Python types


@pytest.mark.parametrize("split,expected", [("train", ["0XA"]), (["VAL", "Test"], ["0XB", "0XC"]), ("ALL", None)])
def test_split_filter(good: Path, split, expected) -> None:
    ids = [i["video_id"] for i in load_echonet_datalist(good, split=split)]
    assert ids == (expected or ["0XA", "0XB", "0XC"])


def test_traced_items_es_then_ed(good: Path) -> None:
    items = load_echonet_datalist(good, split="TRAIN", samples="traced")
    assert [(i["phase"], i["frame_index"]) for i in items] == [("ES", 3), ("ED", 9)]
    assert items[0]["label"] == SMALL and items[1]["label"] == LARGE
    # the label rows rasterise to the expected square (corners inclusive, as skimage.draw.polygon does)
    rows = np.asarray(items[1]["label"])
    mask = tracing_mask(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], (16, 16))
    expected = np.zeros((16, 16), np.uint8)
    expected[2:13, 2:13] = 1
    np.testing.assert_array_equal(mask, expected)


def test_diamond_mask_matches_l1_ball() -> None:
    rows = np.asarray(diamond_rows(8, 4))
    mask = tracing_mask(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], (17, 17))
    yy, xx = np.mgrid[:17, :17]
    np.testing.assert_array_equal(mask, (np.abs(xx - 8) + np.abs(yy - 8) <= 4).astype(np.uint8))
    assert tracing_area(rows) == pytest.approx(2 * 4**2)  # diamond area = 2 r^2


def test_area_check_swaps_ed_es(tmp_path: Path) -> None:
    # the larger tracing comes first in the file: the reference would call it ES; the area check swaps
    root = make_dataset(tmp_path / "e", {"0XS": {"frames": 12, "split": "TRAIN", "traces": [(3, LARGE), (9, SMALL)]}})
    items, report = load_echonet_datalist(root, return_report=True)
    assert items[0]["traced_frames"] == {"ED": 3, "ES": 9}
    assert items[0]["tracings"]["ED"] == LARGE
    assert len(report) == 0 and len(report.warnings) == 1 and "swapped" in report.warnings[0][1]
    assert "1 ED/ES swapped" in report.summary()


def test_bad_inputs_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    root = make_dataset(
        tmp_path / "e",
        {
            "0XOK": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (9, LARGE)]},
            "0XNAN": {"frames": 12, "split": "TRAIN", "ef": float("nan"), "traces": [(3, SMALL), (9, LARGE)]},
            "0XONE": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL)]},
            "0XFEW": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL[:3]), (9, LARGE)]},
            "0XMISS": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (9, LARGE)], "write": False},
            "0XOUT": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (12, LARGE)]},
            "0XSHORT": {"frames": 1, "split": "TRAIN", "traces": [(0, SMALL), (0, LARGE)]},
            "0XNOTR": {"frames": 12, "split": "TRAIN"},
        },
    )
    with caplog.at_level(logging.WARNING, logger="medssl_monai.data.echonet"):
        items, report = load_echonet_datalist(root, return_report=True)
    assert [i["video_id"] for i in items] == ["0XOK", "0XNOTR"]
    assert items[1]["traced_frames"] is None and items[1]["tracings"] is None
    skipped = dict(report.skipped)
    assert set(skipped) == {"0XNAN", "0XONE", "0XFEW", "0XMISS", "0XOUT", "0XSHORT"}
    assert len(report) == 6 and report.kept == 2
    assert "FileList.csv: 0XNAN: EF is NaN" in skipped["0XNAN"]
    assert "VolumeTracings.csv: 0XONE: 1 traced frame" in skipped["0XONE"]
    assert "frame 3 has 3 tracing rows" in skipped["0XFEW"]
    assert skipped["0XMISS"].endswith("0XMISS.avi: file not found (listed in FileList.csv)")
    assert "traced frame 12 outside the video" in skipped["0XOUT"]
    assert "too few frames: NumberOfFrames=1" in skipped["0XSHORT"]
    assert "kept 2, skipped 6" in caplog.text  # the one-line summary is logged

    traced = load_echonet_datalist(root, samples="traced")
    assert [i["video_id"] for i in traced] == ["0XOK", "0XOK"]  # 0XNOTR has no tracings
    assert len(load_echonet_datalist(root, require_tracings=True)) == 1


@pytest.mark.parametrize(
    "vid,spec,error,text",
    [
        ("0XNAN", {"ef": float("nan"), "traces": [(3, SMALL), (9, LARGE)]}, CSVFormatError, "EF is NaN"),
        ("0XONE", {"traces": [(3, SMALL)]}, TracingError, "1 traced frame"),
        ("0XFEW", {"traces": [(3, SMALL[:2]), (9, LARGE)]}, TracingError, "2 tracing rows"),
        ("0XMISS", {"traces": [(3, SMALL), (9, LARGE)], "write": False}, VideoReadError, "file not found"),
    ],
)
def test_on_error_raise(tmp_path: Path, vid, spec, error, text) -> None:
    root = make_dataset(tmp_path / "e", {vid: {"frames": 12, "split": "TRAIN", **spec}})
    with pytest.raises(error, match=text) as info:
        load_echonet_datalist(root, on_error="raise")
    assert vid in str(info.value) or vid in info.value.path


def test_missing_columns_and_files_raise(good: Path) -> None:
    df = pd.read_csv(good / "FileList.csv")
    df.drop(columns=["EF", "Split"]).to_csv(good / "FileList.csv", index=False)
    with pytest.raises(CSVFormatError, match=r"FileList\.csv: missing columns \['EF', 'Split'\]"):
        load_echonet_datalist(good)
    (good / "FileList.csv").unlink()
    with pytest.raises(CSVFormatError, match=r"FileList\.csv: CSV file not found"):
        load_echonet_datalist(good)


def test_missing_tracing_column_raises(good: Path) -> None:
    pd.read_csv(good / "VolumeTracings.csv").drop(columns=["Frame"]).to_csv(good / "VolumeTracings.csv", index=False)
    with pytest.raises(CSVFormatError, match=r"VolumeTracings\.csv: missing columns \['Frame'\]"):
        load_echonet_datalist(good)


def test_empty_filelist_raises(good: Path) -> None:
    (good / "FileList.csv").write_text("")
    with pytest.raises(CSVFormatError, match="empty CSV"):
        load_echonet_datalist(good)


def test_filenames_with_extension_and_labels_csv(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "e",
        {
            "0XA": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (9, LARGE)]},
            "0XB": {"frames": 12, "split": "TRAIN", "traces": [(3, SMALL), (9, LARGE)]},
        },
        filelist_name_suffix=".avi",  # some EchoNet versions list FileName with the extension
    )
    pd.DataFrame({"FileName": ["0XA"], "Abnormal": [1], "Abnormality": ["reduced_ef"]}).to_csv(
        root / "SyntheticTruth.csv", index=False
    )
    items, report = load_echonet_datalist(root, labels_csv="SyntheticTruth.csv", return_report=True)
    assert [i["video_id"] for i in items] == ["0XA"]
    assert items[0]["Abnormal"] == 1 and type(items[0]["Abnormal"]) is int
    assert items[0]["Abnormality"] == "reduced_ef"
    assert "no labels row" in report.summary()


def test_read_volume_tracings_keeps_file_order(tmp_path: Path) -> None:
    rows = [["b.avi", 0, 0, 1, 1, 7], ["a.avi", 0, 0, 1, 1, 5], ["b.avi", 1, 1, 2, 2, 7], ["b.avi", 0, 0, 3, 3, 2]]
    rows += [["a.avi", 2, 2, 3, 3, 1]]
    path = tmp_path / "VolumeTracings.csv"
    pd.DataFrame(rows, columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"]).to_csv(path, index=False)
    out, bad = read_volume_tracings(path)
    assert bad == set()
    assert [f for f, _ in out["b"]] == [7, 2] and [f for f, _ in out["a"]] == [5, 1]
    np.testing.assert_array_equal(out["b"][0][1], [[0, 0, 1, 1], [1, 1, 2, 2]])
