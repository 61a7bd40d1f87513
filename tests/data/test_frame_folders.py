"""Frame-folder reader and frame-folder decoding on hand-written PNG/JPEG folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.frame_folders import frame_numbers_contiguous, load_frame_folder_datalist
from medssl_monai.data.sources import decode_frames, frame_files
from medssl_monai.errors import CSVFormatError, DataError


def make_folder(root: Path, name: str, numbers, ext: str = ".png") -> Path:
    d = root / name
    d.mkdir(parents=True)
    for k in numbers:
        img = np.full((4, 6, 3), k, np.uint8)  # BGR on disk as OpenCV writes it
        img[0, 5] = (0, 0, 255)  # red (in RGB) at row 0, column 5
        cv2.imwrite(str(d / f"{k:05d}{ext}"), img)
    return d


def test_items_labels_and_report(tmp_path: Path) -> None:
    make_folder(tmp_path, "Video_1", range(3))
    make_folder(tmp_path, "Video_2", [0, 1, 3])  # a gap: kept, with a warning
    make_folder(tmp_path, "Video_3", [0])  # too short
    make_folder(tmp_path, "Video_4", range(2))  # no CSV row
    (tmp_path / "not_a_video").mkdir()  # no images, not in the CSV: ignored silently
    pd.DataFrame({"video": ["Video_1", "Video_2", "Video_3", "Video_9"], "label": [2, 0, 1, 1]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    items, report = load_frame_folder_datalist(tmp_path, labels_csv="labels.csv", return_report=True)
    assert items == [
        {"image": str(tmp_path / "Video_1"), "video_id": "Video_1", "num_frames": 3, "label": 2},
        {"image": str(tmp_path / "Video_2"), "video_id": "Video_2", "num_frames": 3, "label": 0},
    ]
    assert type(items[0]["label"]) is int
    skipped = dict(report.skipped)
    assert set(skipped) == {"Video_3", "Video_4", "Video_9"}
    assert "too few frames: 1, at least 2" in skipped["Video_3"]
    assert "no row for folder 'Video_4'" in skipped["Video_4"]
    assert "folder is missing" in skipped["Video_9"]
    assert report.warnings == [("Video_2", f"{tmp_path / 'Video_2'}: frame numbers are not contiguous")]
    unlabelled = load_frame_folder_datalist(tmp_path, min_frames=1)
    assert [i["video_id"] for i in unlabelled] == ["Video_1", "Video_2", "Video_3", "Video_4"]
    assert "label" not in unlabelled[0]


def test_label_csv_errors(tmp_path: Path) -> None:
    make_folder(tmp_path, "Video_1", range(3))
    pd.DataFrame({"video": ["Video_1"], "cls": ["normal"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(CSVFormatError, match=r"l\.csv: missing columns \['label'\]"):
        load_frame_folder_datalist(tmp_path, labels_csv="l.csv")
    with pytest.raises(CSVFormatError, match="must hold integer class indices, found \\['normal'\\]"):
        load_frame_folder_datalist(tmp_path, labels_csv="l.csv", label_column="cls")
    with pytest.raises(CSVFormatError, match="CSV file not found"):
        load_frame_folder_datalist(tmp_path, labels_csv="missing.csv")


def test_contiguity() -> None:
    assert frame_numbers_contiguous([Path("00003.jpg"), Path("00004.jpg")])
    assert not frame_numbers_contiguous([Path("00000.jpg"), Path("00002.jpg")])
    assert not frame_numbers_contiguous([Path("a.jpg")])


def test_decode_frame_folder_order_and_orientation(tmp_path: Path) -> None:
    d = make_folder(tmp_path, "v", [10, 2, 1, 0])  # numeric order, not file-system or string order
    assert [f.name for f in frame_files(d)] == ["00000.png", "00001.png", "00002.png", "00010.png"]
    frames = decode_frames(d)
    assert frames.shape == (4, 4, 6, 3) and frames.dtype == np.uint8
    assert frames[:, 1, 1, 0].tolist() == [0, 1, 2, 10]
    assert frames[0, 0, 5].tolist() == [255, 0, 0]  # RGB, row 0 / column 5


def test_decode_broken_folder(tmp_path: Path) -> None:
    d = make_folder(tmp_path, "v", [0, 1])
    (d / "00002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"00002\.png: cannot be decoded as an image"):
        decode_frames(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="frame folder holds no images"):
        decode_frames(tmp_path / "empty")
