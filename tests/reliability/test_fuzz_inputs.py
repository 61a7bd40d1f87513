"""Bad input: corrupt, empty, truncated, wrongly-shaped and missing videos, NaN labels, unknown config keys.

Every case ends in a clear error naming the file/key or in a logged, counted skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.data import DataLoader, Dataset

from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.robust import BadSampleError, SkipBadSamples
from medssl_monai.transforms.io import LoadClipd

ROOT = Path(__file__).resolve().parents[2]


def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "missing":
        path.unlink()
    elif how == "not_a_video":
        path.write_text("id,label\n1,2\n")


@pytest.fixture
def echonet(tiny_data, tmp_path: Path) -> Path:
    root = tmp_path / "echonet"
    shutil.copytree(tiny_data["echonet"], root)
    return root


@pytest.mark.parametrize("how", ["corrupt", "empty", "truncated", "missing", "not_a_video"])
def test_loader_time_bad_video_is_skipped_counted_or_raised_with_its_name(echonet: Path, how: str):
    datalist = load_echonet_datalist(echonet, split=None)
    bad = Path(datalist[1]["image"])
    _break(bad, how)  # the file breaks after the datalist was built
    transform = LoadClipd(keys="image", num_frames=4, mode="start", cache=False)

    ds = SkipBadSamples(Dataset(datalist, transform=transform), on_bad_sample="skip")
    batches = list(DataLoader(ds, batch_size=1, num_workers=0))
    assert len(batches) == len(datalist)  # the run goes on: the bad item is replaced by the next one
    if how == "truncated" and ds.skipped == 0:
        pytest.skip("the decoder read the frames left in the truncated file (valid prefix)")
    assert ds.skipped == 1 and ds.bad[0][0] == 1 and ds.bad[0][1] == str(bad)

    strict = SkipBadSamples(Dataset(datalist, transform=transform), on_bad_sample="raise")
    with pytest.raises(BadSampleError, match=bad.name):
        strict[1]


def test_all_bad_gives_up_with_a_clear_error(echonet: Path):
    datalist = load_echonet_datalist(echonet, split=None)
    for item in datalist:
        _break(Path(item["image"]), "empty")
    ds = SkipBadSamples(
        Dataset(datalist, transform=LoadClipd(keys="image", num_frames=4, cache=False)), max_consecutive=3
    )
    with pytest.raises(BadSampleError, match="4 consecutive bad samples"):
        ds[0]
    assert ds.skipped == 4


def test_invalid_policy_is_rejected():
    with pytest.raises(ValueError, match="'skip' or 'raise'"):
        SkipBadSamples([], on_bad_sample="ignore")


@pytest.mark.parametrize("how", ["missing"])  # the reader lists without decoding: content errors surface later
def test_datalist_time_bad_video_is_reported(echonet: Path, how: str):
    videos = sorted((echonet / "Videos").glob("*.avi"))
    _break(videos[0], how)
    datalist, report = load_echonet_datalist(echonet, split=None, return_report=True)
    names = [Path(d["image"]).name for d in datalist]
    assert videos[0].name not in names and len(names) == len(videos) - 1
    assert len(report) == 1 and videos[0].stem in report.skipped[0][0]
    with pytest.raises(Exception, match=videos[0].stem):
        load_echonet_datalist(echonet, split=None, on_error="raise")


def test_nan_label_is_reported(echonet: Path):
    csv = echonet / "FileList.csv"
    df = pd.read_csv(csv)
    df.loc[0, "EF"] = np.nan
    df.to_csv(csv, index=False)
    datalist, report = load_echonet_datalist(echonet, split=None, return_report=True)
    assert len(datalist) == len(df) - 1 and "NaN" in report.skipped[0][1] + str(report.skipped)
    with pytest.raises(Exception, match="NaN"):
        load_echonet_datalist(echonet, split=None, on_error="raise")


def test_unknown_bundle_override_is_rejected_with_a_suggestion():
    from medssl_monai.config_checks import check_overrides

    train = ROOT / "bundles" / "unilvseg_echo_ssl_pretraining" / "configs" / "train.yaml"
    check_overrides(train, {"epochs": 1, "on_bad_sample": "raise", "checkpoint_every": 5})
    with pytest.raises(KeyError, match="'epochz'.*'epochs'"):
        check_overrides(train, {"epochz": 3})


def test_non_integer_indices_raise_with_the_file_name():
    class Tuples:
        data = [{"image": "/data/a.avi"}]

        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise OSError("cannot decode")

    with pytest.raises(BadSampleError, match="a.avi.*cannot decode"):
        SkipBadSamples(Tuples())[(0, 3)]


def _bad_video(folder: Path, how: str) -> Path:
    """A video broken in one way: cut short, 0 bytes, not a video, undecodable frames, shorter than the clip needs."""
    from medssl_monai.data.video import write_video

    path = folder / f"{how}.avi"
    frames = np.random.default_rng(0).integers(0, 256, (2 if how == "too_few_frames" else 24, 16, 16), np.uint8)
    data = write_video(path, frames).read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not_a_video":
        path.write_text("id,label\n1,2\n")
    elif how == "undecodable":  # intact container and index, frame data the codec cannot decode
        start = data.index(b"movi") + 4
        noise = np.random.default_rng(1).integers(0, 256, len(data) - start, np.uint8).tobytes()
        path.write_bytes(data[:start] + noise)
    return path


_PROBLEMS = {
    "truncated": r"truncated: the AVI header announces \d+ bytes but the file has \d+",
    "empty": r"empty file \(0 bytes\)",
    "not_a_video": "not a video: no known video container header",
    "undecodable": r"unreadable: the header announces 24 frames but no frame decodes \(codec 'MJPG' unsupported",
    "too_few_frames": "too few frames: 2 decoded, at least 4 needed",
}


@pytest.mark.parametrize("cache", [False, True], ids=["decode", "clip_cache"])
@pytest.mark.parametrize("how", sorted(_PROBLEMS))
def test_bad_sample_messages_name_the_file_and_the_problem(tmp_path: Path, caplog, how: str, cache: bool):
    import logging
    import re

    good = _bad_video(tmp_path, "good")
    bad = _bad_video(tmp_path, how)
    transform = LoadClipd(keys="image", num_frames=4, mode="start", min_frames=4, cache=cache, cache_dir=tmp_path / "c")
    datalist = [{"image": str(bad)}, {"image": str(good)}]
    expected = f"{re.escape(str(bad))}: {_PROBLEMS[how]}"

    with caplog.at_level(logging.WARNING, logger="medssl_monai.data.robust"):
        skip = SkipBadSamples(Dataset(datalist, transform=transform), on_bad_sample="skip")
        assert skip[0]["image"].shape == (3, 4, 16, 16)  # replaced by the good video
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert re.search(f"bad sample 0 .*VideoReadError: {expected}", line), line
    assert "applying transform" not in line and skip.bad[0][2].startswith("VideoReadError: ")

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="medssl_monai.data.robust"):
        with pytest.raises(BadSampleError, match=f"sample 0 .*VideoReadError: {expected}") as info:
            SkipBadSamples(Dataset(datalist, transform=transform), on_bad_sample="raise")[0]
    assert "applying transform" not in str(info.value)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert re.search(expected, line) and "--on_bad_sample skip" in line, line


def test_root_cause_unwraps_monai_transform_errors():
    from monai.transforms import Compose

    from medssl_monai.data.robust import describe_error, root_cause
    from medssl_monai.errors import VideoReadError

    def fail(_):
        raise VideoReadError("/data/a.avi", "empty file (0 bytes)")

    with pytest.raises(RuntimeError, match="applying transform") as info:
        Compose([fail])({"image": "/data/a.avi"})
    assert isinstance(root_cause(info.value), VideoReadError)
    assert describe_error(info.value) == "VideoReadError: /data/a.avi: empty file (0 bytes)"
    plain = OSError("disk gone")
    assert root_cause(plain) is plain
