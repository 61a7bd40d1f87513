"""Timed image series reader on a hand-made long-format CSV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.timed_series import load_timed_series_datalist
from medssl_monai.errors import CSVFormatError, DataError


def make_series(root: Path, rows: list[tuple], missing: set[str] = frozenset()) -> Path:
    for _, path, *_ in rows:
        if path not in missing:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / path), np.zeros((4, 4), np.uint8))
    csv = root / "series.csv"
    pd.DataFrame(rows, columns=["subject_id", "image_path", "time", "label", "split"]).to_csv(csv, index=False)
    return csv


def test_grouped_sorted_and_policy(tmp_path: Path) -> None:
    nan = float("nan")
    rows = [
        ("s1", "images/s1/b.png", 2.5, 1, "train"),
        ("s1", "images/s1/a.png", 0.0, 1, "train"),
        ("s1", "images/s1/c.png", 0.7, 1, "train"),
        ("s2", "images/s2/a.png", 1.0, 0, "test"),
        ("s2", "images/s2/b.png", nan, 0, "test"),  # NaN time: the visit is dropped
        ("s2", "images/s2/c.png", 3.0, 0, "test"),  # missing image: the visit is dropped
        ("s3", "images/s3/a.png", 0.0, nan, "train"),  # NaN label: the subject is skipped
        ("s4", "images/s4/a.png", 0.0, 0, "train"),
        ("s4", "images/s4/b.png", 1.0, 1, "train"),  # label changes: the subject is skipped
    ]
    csv = make_series(tmp_path, rows, missing={"images/s2/c.png"})
    items, report = load_timed_series_datalist(csv, return_report=True)
    img = str(tmp_path / "images")
    assert items == [
        {
            "image": [f"{img}/s1/a.png", f"{img}/s1/c.png", f"{img}/s1/b.png"],
            "times": [0.0, 0.7, 2.5],
            "subject_id": "s1",
            "label": 1,
            "split": "TRAIN",
        },
        {"image": [f"{img}/s2/a.png"], "times": [1.0], "subject_id": "s2", "label": 0, "split": "TEST"},
    ]
    assert dict(report.skipped).keys() == {"s3", "s4"}
    assert "NaN label" in dict(report.skipped)["s3"] and "label differs" in dict(report.skipped)["s4"]
    assert [w[0] for w in report.warnings] == ["s2", "s2"]
    assert "s2/c.png: image of subject s2 not found" in report.warnings[1][1]

    assert [i["subject_id"] for i in load_timed_series_datalist(csv, split="test")] == ["s2"]
    assert [i["subject_id"] for i in load_timed_series_datalist(csv, min_visits=2)] == ["s1"]
    with pytest.raises(DataError, match="no valid time"):
        load_timed_series_datalist(csv, on_error="raise")


def test_missing_column(tmp_path: Path) -> None:
    csv = make_series(tmp_path, [("s1", "a.png", 0.0, 1, "train")])
    pd.read_csv(csv).drop(columns=["time"]).to_csv(csv, index=False)
    with pytest.raises(CSVFormatError, match=r"series\.csv: missing columns \['time'\]"):
        load_timed_series_datalist(csv)
