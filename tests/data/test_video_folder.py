"""Plain video folders: recursive search, the TRAIN/VAL split by file name, kind detection, a bundle trained on one."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from bounded import run_bounded

from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.video import write_video
from medssl_monai.data.video_folder import (
    find_videos,
    load_echo_datalist,
    load_video_folder_datalist,
    video_folder_splits,
)
from medssl_monai.errors import DataError, VideoReadError

ROOT = Path(__file__).resolve().parents[2]


def _frames(t: int = 4, seed: int = 0) -> np.ndarray:
    return np.full((t, 16, 16, 3), 40 + 30 * seed, dtype=np.uint8)


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """site_a/p1/x.avi, site_a/p2/y.MP4 (a real MPEG-4), site_b/z.mkv, plus files that are no videos."""
    root = tmp_path / "videos"
    write_video(root / "site_a" / "p1" / "x.avi", _frames(seed=0))
    write_video(root / "site_a" / "p2" / "y.MP4", _frames(seed=1), fourcc="mp4v")
    write_video(root / "site_b" / "z.mkv", _frames(seed=2))  # an MJPG AVI named .mkv: OpenCV reads it by content
    (root / "site_b" / "notes.txt").write_text("not a video")
    write_video(root / "site_b" / ".partial.avi", _frames())  # hidden: e.g. still being copied
    write_video(root / ".trash" / "old.avi", _frames())
    return root


def test_find_videos_recursive_any_case_no_hidden(nested: Path) -> None:
    assert find_videos(nested) == ["site_a/p1/x.avi", "site_a/p2/y.MP4", "site_b/z.mkv"]


def test_items_with_headers(nested: Path) -> None:
    items = load_video_folder_datalist(nested)
    assert [i["video_id"] for i in items] == ["site_a/p1/x", "site_a/p2/y", "site_b/z"]
    assert all(i["num_frames"] == 4 and (i["height"], i["width"]) == (16, 16) for i in items)
    assert sorted(i["split"] for i in items) == ["TRAIN", "TRAIN", "VAL"]  # 3 videos: at least one VAL
    assert {i["split"] for i in load_video_folder_datalist(nested, split="VAL")} == {"VAL"}


def test_split_is_by_name_and_stable_when_files_are_added() -> None:
    names = [f"patient{i:04d}/view{j}.avi" for i in range(300) for j in range(2)]
    before = video_folder_splits(names[:400])
    after = video_folder_splits(names)  # 200 files added
    assert all(after[n] == s for n, s in before.items())
    val = sum(s == "VAL" for s in after.values()) / len(after)
    assert 0.06 < val < 0.14  # about the 10% asked for
    assert video_folder_splits(list(reversed(names))) == after  # order does not matter
    assert sum(s == "VAL" for s in video_folder_splits(names, val_fraction=0.3).values()) > 140


@pytest.mark.parametrize("n", [1, 2, 5])
def test_small_folders_get_both_splits(n: int) -> None:
    names = [f"v{i}.avi" for i in range(n)]
    splits = video_folder_splits(names)
    assert sorted(set(splits.values())) == (["TRAIN"] if n == 1 else ["TRAIN", "VAL"])
    assert set(video_folder_splits(names, val_fraction=1.0).values()) == ({"VAL"} if n == 1 else {"TRAIN", "VAL"})


def test_same_split_after_moving_the_folder(nested: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(nested, moved)
    first = {i["video_id"]: i["split"] for i in load_video_folder_datalist(nested)}
    assert {i["video_id"]: i["split"] for i in load_video_folder_datalist(moved)} == first


def test_unreadable_videos_are_reported(nested: Path) -> None:
    bad = nested / "site_b" / "broken.avi"
    bad.write_bytes(b"RIFF" + bytes(100))
    items, report = load_video_folder_datalist(nested, return_report=True)
    assert str(bad) not in [i["image"] for i in items] and report.skipped[0][0] == "site_b/broken.avi"
    with pytest.raises(VideoReadError, match="broken.avi"):
        load_video_folder_datalist(nested, on_error="raise")


def test_kind_detection(tiny_data, nested: Path, tmp_path: Path) -> None:
    echonet = tiny_data["echonet"]
    assert load_echo_datalist(echonet, split="TRAIN") == load_echonet_datalist(echonet, split="TRAIN")
    assert [i["video_id"] for i in load_echo_datalist(nested)] == ["site_a/p1/x", "site_a/p2/y", "site_b/z"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "labels.csv").write_text("a,b\n")
    neither = r"neither an EchoNet-Dynamic folder \(no FileList.csv\) nor a folder of videos"
    with pytest.raises(DataError, match=neither):
        load_echo_datalist(empty)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_echo_datalist(tmp_path / "missing")
    with pytest.raises(ValueError, match="only the splits"):
        load_echo_datalist(nested, split="TEST")
    with pytest.raises(ValueError, match="need an EchoNet-Dynamic folder"):
        load_echo_datalist(nested, samples="traced")


@pytest.mark.slow
def test_pretraining_bundle_trains_on_a_nested_video_folder(tiny_data, tmp_path: Path) -> None:
    """One tiny TVRL epoch on EchoNet's videos spread over subfolders, one as a real .mp4, one renamed .AVI."""
    videos = sorted((tiny_data["echonet"] / "Videos").glob("*.avi"))
    root = tmp_path / "videos"
    for i, video in enumerate(videos):
        target = root / f"site{i % 2}" / f"patient{i}" / video.name
        target.parent.mkdir(parents=True)
        if i == 0:
            from medssl_monai.data.video import read_video

            write_video(target.with_suffix(".mp4"), read_video(video), fourcc="mp4v")
        elif i == 1:
            shutil.copy(video, target.with_suffix(".AVI"))
        else:
            shutil.copy(video, target)
    relative = find_videos(root)
    train = sorted(r for r, s in video_folder_splits(relative).items() if s == "TRAIN")
    assert len(relative) == len(videos) and len(train) >= 2

    work = tmp_path / "bundle"
    bundle = ROOT / "bundles" / "tvrl_echo_ssl_pretraining"
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("models", "runs"))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cmd += ["['configs/train.yaml','configs/small.yaml']", "--bundle_root", str(work)]
    cmd += ["--dataset_dir", str(root), "--cache_dir", str(tmp_path / "cache")]
    cmd += ["--epochs", "1", "--num_workers", "0", "--batch_size", "2"]
    cmd += ["--embedding_every", "0", "--monitor_every", "0"]  # training alone: the cache count below is exact
    result = run_bounded(cmd, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "models" / "model.pt").is_file()
    assert f"{root}: kept {len(train)}, skipped 0" in result.stderr + result.stdout
    # every training video was decoded into the cache (a batch of 2, drop_last: all of them when the count is even)
    cached = len(list((tmp_path / "cache").glob("*.npy")))
    assert cached == len(train) - len(train) % 2
