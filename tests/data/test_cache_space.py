"""The clip cache's space check: entry sizes from headers, sampling, the free-space verdict and the loader hook."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from monai.data import Dataset

import medssl_monai.data.cache as cache_module
from medssl_monai.data.cache import (
    CacheSpaceError,
    ClipCache,
    check_cache_space,
    entry_nbytes,
    estimate_cache_bytes,
)
from medssl_monai.data.camus import load_camus_datalist
from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.frame_folders import load_frame_folder_datalist
from medssl_monai.data.loader import DataLoader
from medssl_monai.data.robust import SkipBadSamples
from medssl_monai.data.seeded import SeededSamples
from medssl_monai.transforms.presets import ssl_clip_transforms


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch) -> None:
    """Each test starts as a new process would: no loader has counted anything yet."""
    monkeypatch.setattr(cache_module, "_PENDING", cache_module._Pending())
    monkeypatch.delenv("MEDSSL_CACHE_SPACE_CHECK", raising=False)


def _free(monkeypatch, free_bytes: int) -> None:
    """Make the cache's disk report ``free_bytes`` free."""
    usage = shutil._ntuple_diskusage(10**12, 10**12 - free_bytes, free_bytes)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage)


def _videos(tiny_data) -> list[Path]:
    return sorted((tiny_data["echonet"] / "Videos").glob("*.avi"))


def test_entry_size_from_headers_is_the_built_entry_size(tiny_data, tmp_path: Path) -> None:
    # every source kind of the supported datasets: videos, frame folders, CAMUS NIfTI sequences, arrays
    frames = np.random.default_rng(0).integers(0, 255, (5, 9, 7), dtype=np.uint8)
    np.save(tmp_path / "clip.npy", frames)
    sources = [
        _videos(tiny_data)[0],
        Path(load_frame_folder_datalist(tiny_data["ultrasound"])[0]["image"]),
        Path(load_camus_datalist(tiny_data["camus"])[0]["image"]),
        tmp_path / "clip.npy",
    ]
    cache = ClipCache(tmp_path / "cache")
    for source in sources:
        cache.frames(source)
        assert entry_nbytes(source) == cache.entry_path(source).stat().st_size, source


def test_many_sources_are_sampled_and_extrapolated(tiny_data) -> None:
    videos = _videos(tiny_data)
    sizes = [entry_nbytes(v) for v in videos]
    full = estimate_cache_bytes(videos)
    assert (full.sources, full.headers_read, full.nbytes, full.sampled) == (len(videos), len(videos), sum(sizes), False)
    part = estimate_cache_bytes(videos, max_headers=2)
    assert part.headers_read == 2 and part.sampled and "extrapolated from the headers of 2 of them" in part.describe()
    assert min(sizes) * len(videos) <= part.nbytes <= max(sizes) * len(videos)
    assert estimate_cache_bytes(videos, max_headers=2) == part  # the same sample every time


def test_check_stops_when_the_entries_do_not_fit(tiny_data, tmp_path: Path, monkeypatch) -> None:
    videos = _videos(tiny_data)
    need = sum(entry_nbytes(v) for v in videos)
    _free(monkeypatch, need + 10**9)  # short of the 10% margin
    with pytest.raises(CacheSpaceError) as info:
        check_cache_space(ClipCache(tmp_path / "cache"), videos)
    message = str(info.value)
    assert f"{len(videos)} sources not cached yet, about {need / 1e6:.1f} MB" in message
    assert f"has only {(need + 10**9) / 1e9:.1f} GB free" in message
    for option in ("--cache_dir", "$MEDSSL_CACHE_DIR", "free space", "--resize_to", "source's size"):
        assert option in message
    assert not (tmp_path / "cache").exists()  # stopped before anything was written

    monkeypatch.setattr(cache_module, "_PENDING", cache_module._Pending())
    _free(monkeypatch, int(need * 1.1) + 10**9 + 1)
    assert check_cache_space(ClipCache(tmp_path / "cache"), videos).nbytes == need


def test_only_entries_not_cached_yet_count(tiny_data, tmp_path: Path, monkeypatch) -> None:
    videos = _videos(tiny_data)
    cache = ClipCache(tmp_path / "cache")
    for v in videos[:-1]:
        cache.frames(v)
    _free(monkeypatch, entry_nbytes(videos[-1]) + 10**9 + 10**6)
    estimate = check_cache_space(cache, videos)
    assert estimate.sources == 1 and estimate.nbytes == entry_nbytes(videos[-1])


def test_loaders_of_one_run_add_up(tiny_data, tmp_path: Path, monkeypatch) -> None:
    # training fits alone, training + validation does not: the second loader stops the run before an epoch
    train, val = _videos(tiny_data)[:4], _videos(tiny_data)[4:]
    cache = ClipCache(tmp_path / "cache")
    train_bytes = sum(entry_nbytes(v) for v in train)
    _free(monkeypatch, int(train_bytes * 1.1) + 10**9 + 1000)
    check_cache_space(cache, train)
    assert check_cache_space(cache, train) is None  # nothing new: not counted twice
    with pytest.raises(CacheSpaceError, match=r"with the 4 counted for loaders built before this one"):
        check_cache_space(cache, val)

    for v in train:  # once training has written its entries they no longer count against the free space
        cache.frames(v)
    monkeypatch.setattr(cache_module, "_PENDING", cache_module._Pending())
    _free(monkeypatch, int(sum(entry_nbytes(v) for v in val) * 1.1) + 10**9 + 1000)
    check_cache_space(cache, train)
    assert check_cache_space(cache, val).sources == len(val)


def test_every_bundle_loader_checks_before_the_first_epoch(tiny_data, tmp_path: Path, monkeypatch) -> None:
    datalist = load_echonet_datalist(tiny_data["echonet"], split="TRAIN")
    transform = ssl_clip_transforms(num_frames=8, crop=32, cache_dir=tmp_path / "cache")
    wrapped = SkipBadSamples(SeededSamples(Dataset(datalist, transform), seed=0))  # as the bundles build it
    _free(monkeypatch, 10**6)
    with pytest.raises(CacheSpaceError, match=f"{len(datalist)} sources not cached yet"):
        DataLoader(wrapped, batch_size=2)
    monkeypatch.setenv("MEDSSL_CACHE_SPACE_CHECK", "0")  # the escape hatch (e.g. a quota the free space hides)
    assert len(DataLoader(wrapped, batch_size=2)) == (len(datalist) + 1) // 2


def test_command_line_run_prints_and_exits_2(tiny_data, tmp_path: Path, monkeypatch, capsys) -> None:
    import medssl_monai.engines.loader_check as loader_check

    monkeypatch.setattr(loader_check, "_is_command_line_run", lambda: True)
    _free(monkeypatch, 0)
    with pytest.raises(SystemExit) as info:
        ClipCache(tmp_path / "cache").build(_videos(tiny_data), progress=False)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: the decoded-clip cache will not fit")
