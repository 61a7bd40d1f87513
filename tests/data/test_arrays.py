"""Array-clip reader (TVRL cardiac-MRI layout) on hand-written .npy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.arrays import array_header, load_array_datalist
from medssl_monai.data.sources import decode_frames
from medssl_monai.errors import CSVFormatError, VideoReadError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    clip = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    np.save(tmp_path / "1001.npy", clip)
    np.save(tmp_path / "1002.npy", clip[:2])
    np.save(tmp_path / "1003.npy", clip.astype(np.float32))  # wrong dtype
    (tmp_path / "1004.npy").write_bytes(b"garbage")  # corrupt
    pd.DataFrame(
        {
            "eid": ["1001", "1002", "1003", "1004", "1005", "1006"],
            "LVEF (%)": [55.5, 60.0, 50.0, 50.0, 50.0, float("nan")],
            "CAD_broad": [0, 1, 0, 0, 0, 1],
            "split": ["train", "train", "val", "val", "val", "train"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


def test_items_and_report(root: Path) -> None:
    items, report = load_array_datalist(root, "labels.csv", label_columns="LVEF (%)", return_report=True)
    assert items == [
        {"image": str(root / "1001.npy"), "video_id": "1001", "num_frames": 5, "label": 55.5, "split": "TRAIN"},
        {"image": str(root / "1002.npy"), "video_id": "1002", "num_frames": 2, "label": 60.0, "split": "TRAIN"},
    ]
    skipped = dict(report.skipped)
    assert "expected uint8 frames, got float32" in skipped["1003"]
    assert "cannot be read as a .npy array" in skipped["1004"]
    assert skipped["1005"].endswith("1005.npy: file not found")
    assert "NaN in ['LVEF (%)']" in skipped["1006"]


def test_multiple_columns_split_and_min_frames(root: Path) -> None:
    items = load_array_datalist(
        root, "labels.csv", label_columns=["CAD_broad", "LVEF (%)"], split="TRAIN", min_frames=3
    )
    assert items == [
        {
            "image": str(root / "1001.npy"),
            "video_id": "1001",
            "num_frames": 5,
            "CAD_broad": 0,
            "LVEF (%)": 55.5,
            "split": "TRAIN",
        }
    ]
    assert type(items[0]["CAD_broad"]) is int
    unlabelled = load_array_datalist(root, on_error="skip")
    assert [i["video_id"] for i in unlabelled] == ["1001", "1002"]


def test_errors(root: Path) -> None:
    with pytest.raises(CSVFormatError, match=r"labels\.csv: missing columns \['EF'\]"):
        load_array_datalist(root, "labels.csv", label_columns="EF")
    with pytest.raises(VideoReadError, match=r"1003\.npy: expected uint8"):
        load_array_datalist(root, "labels.csv", label_columns="CAD_broad", on_error="raise")
    np.save(root / "bad_shape.npy", np.zeros((2, 3), np.uint8))
    with pytest.raises(VideoReadError, match=r"got shape \(2, 3\)"):
        array_header(root / "bad_shape.npy")


def test_decode_npy(root: Path) -> None:
    frames = decode_frames(root / "1001.npy")
    assert frames.shape == (5, 3, 4, 1)
    assert frames[1, 2, 3, 0] == 1 * 12 + 2 * 4 + 3
