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
