"""Video decoding errors and the decoded-clip cache: round trip, invalidation, atomicity, concurrency."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

import medssl_monai.data.cache as cache_module
from medssl_monai.data.cache import ClipCache
from medssl_monai.data.video import read_video, to_clip, video_info, write_video
from medssl_monai.errors import VideoReadError


def _frames(t: int = 6, seed: int = 0) -> np.ndarray:
    # smooth content so MJPG round-trips closely; the seed changes the level so two videos differ
    base = np.linspace(0, 200, 16 * 16).reshape(16, 16).astype(np.uint8)
    return np.stack([np.stack([base + 5 * i + 20 * seed] * 3, -1) for i in range(t)]).astype(np.uint8)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "v.avi", _frames())


def _entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.npy"))


def test_read_video_round_trip_and_clip(video: Path) -> None:
    frames = read_video(video)
    assert frames.shape == (6, 16, 16, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - _frames()).max() <= 8  # MJPG is lossy, but only slightly
    assert video_info(video) == {"num_frames": 6, "height": 16, "width": 16, "fps": 50.0}
    assert to_clip(frames).shape == (3, 6, 16, 16)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "missing"])
def test_bad_videos_raise_naming_the_file(tmp_path: Path, video: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.avi"
    expected = {
        "corrupt": "not a video: no known video container header",
        "truncated": r"truncated: the AVI header announces \d+ bytes but the file has \d+ \(\d+ of 24 frames decode\)",
        "empty": r"empty file \(0 bytes\)",
        "missing": "file not found",
    }[kind]
    if kind == "corrupt":
        bad.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated":
        data = write_video(tmp_path / "long.avi", _frames(t=24)).read_bytes()
        bad.write_bytes(data[: len(data) // 2])  # cut in the middle of the frame data
    elif kind == "empty":
        bad.write_bytes(b"")
    with pytest.raises(VideoReadError, match=f"{bad.name}: {expected}"):
        read_video(bad)
    cache_dir = tmp_path / "cache"
    if kind != "missing":  # a missing source fails before any decode
        with pytest.raises(VideoReadError, match=f"{bad.name}: {expected}"):
            ClipCache(cache_dir).frames(bad)
        assert not cache_dir.exists() or not any(cache_dir.iterdir())  # nothing written for a bad source
    report = ClipCache(cache_dir).build([video, bad], progress=False)
    assert report["built"] == 1 and list(report["failed"]) == [str(bad)]


def test_cache_round_trip(tmp_path: Path, video: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    first = cache.frames(video)
    assert isinstance(first, np.memmap)
    np.testing.assert_array_equal(first, read_video(video))
    assert video in cache and len(_entries(cache.cache_dir)) == 1
    np.testing.assert_array_equal(cache.frames(video)[2:5], read_video(video)[2:5])
    assert ClipCache(tmp_path / "cache", enabled=False).frames(video).shape == (6, 16, 16, 3)


def test_entry_rebuilt_when_source_changes(tmp_path: Path, video: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    old_entry = cache.entry_path(video)
    cache.frames(video)
    write_video(video, _frames(t=4, seed=1))
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clearly newer mtime
    assert video not in cache
    fresh = cache.frames(video)
    assert fresh.shape[0] == 4
    np.testing.assert_array_equal(fresh, read_video(video))
    assert _entries(cache.cache_dir) == [cache.entry_path(video)] and not old_entry.exists()  # stale one dropped


def test_half_written_files_are_never_read(tmp_path: Path, video: Path, monkeypatch) -> None:
    cache = ClipCache(tmp_path / "cache")
    entry = cache.entry_path(video)
    entry.parent.mkdir(parents=True)
    # another process's write in progress: a temp file of garbage next to where the entry will go
    foreign_tmp = entry.with_name(f".{entry.stem}.99999.deadbeef.tmp")
    foreign_tmp.write_bytes(b"\x93NUMPY half")
    np.testing.assert_array_equal(cache.frames(video), read_video(video))
    assert foreign_tmp.read_bytes() == b"\x93NUMPY half"  # neither read nor touched

    # a crash in the middle of our own write leaves no entry and no temp file behind
    other = write_video(tmp_path / "w.avi", _frames(seed=2))

    def crash(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.frames(other)
    monkeypatch.undo()
    assert not cache.entry_path(other).exists()
    assert sorted(p.name for p in cache.cache_dir.iterdir()) == sorted([entry.name, foreign_tmp.name])
    np.testing.assert_array_equal(cache.frames(other), read_video(other))


def test_damaged_entry_is_rebuilt(tmp_path: Path, video: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    entry = cache.entry_path(video)
    cache.frames(video)
    entry.write_bytes(entry.read_bytes()[:200])  # a valid header but missing data
    np.testing.assert_array_equal(cache.frames(video), read_video(video))
    entry.write_bytes(b"")  # an empty entry
    np.testing.assert_array_equal(cache.frames(video), read_video(video))


def _build(cache_dir: str, path: str, barrier, queue) -> None:
    barrier.wait()  # all three decode and write at the same moment
    frames = ClipCache(cache_dir).frames(path)
    queue.put(np.asarray(frames).sum(dtype=np.int64).item())


def test_concurrent_build_ends_with_one_valid_entry(tmp_path: Path, video: Path) -> None:
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(tmp_path / "cache"), str(video), barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    expected = read_video(video)
    assert [queue.get(timeout=5) for _ in range(3)] == [int(expected.sum(dtype=np.int64))] * 3
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0] == ClipCache(tmp_path / "cache").entry_path(video)  # no temp files left
    np.testing.assert_array_equal(np.load(files[0]), expected)


def test_parallel_build(tmp_path: Path) -> None:
    paths = [write_video(tmp_path / f"{i}.avi", _frames(seed=i)) for i in range(3)]
    cache = ClipCache(tmp_path / "cache")
    assert cache.build(paths, num_workers=2, progress=False) == {"built": 3, "cached": 0, "failed": {}}
    assert cache.build(paths, progress=False) == {"built": 0, "cached": 3, "failed": {}}
    for p in paths:
        np.testing.assert_array_equal(cache.frames(p), read_video(p))


def _no_listing(*args, **kwargs):
    raise AssertionError("a cache lookup listed the cache folder")


def test_miss_does_not_list_the_folder_and_an_edit_invalidates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "_INDEX", cache_module._EntryIndex())  # this test's process-level index
    cache = ClipCache(tmp_path / "cache")
    edited, fresh = write_video(tmp_path / "a.avi", _frames(seed=1)), tmp_path / "b.avi"
    for i in range(20):  # other entries in the folder: a listing would see them
        cache._write(cache.cache_dir / f"{i:040x}-1-1.npy", _frames(t=1))
    cache.frames(edited)  # the first miss of this process lists the folder once
    assert cache_module._INDEX.listings == 1
    old_entry = cache.entry_path(edited)

    write_video(edited, _frames(t=4, seed=2))  # edited in place: a new size and mtime
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    write_video(fresh, _frames(seed=3))
    monkeypatch.setattr(os, "scandir", _no_listing)
    monkeypatch.setattr(os, "listdir", _no_listing)
    monkeypatch.setattr(Path, "glob", _no_listing)
    monkeypatch.setattr(Path, "iterdir", _no_listing)
    monkeypatch.setattr(Path, "rglob", _no_listing)

    assert edited not in cache
    np.testing.assert_array_equal(cache.frames(edited), read_video(edited))  # rebuilt from the edited file
    assert cache.frames(edited).shape[0] == 4 and not old_entry.exists()  # the stale entry is gone
    np.testing.assert_array_equal(cache.frames(fresh), read_video(fresh))  # a plain miss
    assert cache_module._INDEX.listings == 1
    monkeypatch.undo()
    assert sum(1 for _ in cache.cache_dir.glob("*.npy")) == 22  # 20 others + the two sources, one entry each


def test_stale_entry_of_an_earlier_process_is_removed(tmp_path: Path, video: Path, monkeypatch) -> None:
    cache = ClipCache(tmp_path / "cache")
    entry = cache.entry_path(video)
    earlier = entry.with_name(f"{entry.name.split('-', 1)[0]}-1-1.npy")  # the source at another fingerprint
    cache._write(earlier, _frames(t=2))
    monkeypatch.setattr(cache_module, "_INDEX", cache_module._EntryIndex())  # a new process: nothing listed yet
    cache.frames(video)
    assert _entries(cache.cache_dir) == [entry]


def _child_listings(cache_dir: str, path: str, queue) -> None:
    ClipCache(cache_dir).frames(path)
    queue.put(cache_module._INDEX.listings)


def test_each_process_lists_once(tmp_path: Path, video: Path) -> None:
    # a forked worker must not trust its parent's listing (its lock may even have been held at the fork)
    ClipCache(tmp_path / "cache").frames(write_video(tmp_path / "parent.avi", _frames(seed=4)))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_listings, args=(str(tmp_path / "cache"), str(video), queue))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0 and queue.get(timeout=5) == 1
