"""The dataset counts behind the plans' first time estimates (timed series, frame folders)."""

from __future__ import annotations

from pathlib import Path

from medssl_monai.reproduce.common import count_frame_folders, count_series


def test_count_series_counts_subjects_of_the_split(tmp_path: Path):
    rows = ["subject_id,split,time", "a,TRAIN,0", "a,TRAIN,1", "b,train,0", "c,TEST,0", "d,VAL,0"]
    (tmp_path / "series.csv").write_text("\n".join(rows) + "\n")
    assert count_series(tmp_path) == 2  # a (two visits) and b (case-insensitive split)
    assert count_series(tmp_path, "TEST") == 1
    assert count_series(tmp_path / "missing") == 0
    (tmp_path / "series.csv").write_text("id,split\nx,TRAIN\n")  # no subject_id column: unreadable, 0
    assert count_series(tmp_path) == 0


def test_count_frame_folders_counts_videos_and_frames(tmp_path: Path):
    for i, n in enumerate((3, 5)):
        v = tmp_path / f"Video_{i}"
        v.mkdir()
        for j in range(n):
            (v / f"{j:03d}.jpg").write_bytes(b"")
    (tmp_path / "Video_x.txt").write_text("not a folder")
    assert count_frame_folders(tmp_path) == (2, 8)
    assert count_frame_folders(tmp_path / "missing") == (0, 0)
