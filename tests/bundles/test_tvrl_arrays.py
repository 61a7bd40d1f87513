"""TVRL on its own paper's data layout: ``<eid>.npy`` clips + per-split label CSVs (``configs/arrays.yaml``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.bundle import ConfigWorkflow

from medssl_monai.bundle_tools import load_state_dict
from medssl_monai.data.arrays import load_array_datalist
from medssl_monai.data.synthetic.arrays import make_arrays

ROOT = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture(scope="module")
def arrays(tiny_data, tmp_path_factory) -> Path:
    return make_arrays(tmp_path_factory.mktemp("arrays"), tiny_data["echonet"], num_frames=20, image_size=32)


def test_synthetic_arrays_layout(arrays, tiny_data):
    truth = pd.read_csv(tiny_data["echonet"] / "FileList.csv")
    ids = set()
    for split in ("train", "val", "test"):
        df = pd.read_csv(arrays / f"{split}.csv", dtype={"eid": str})
        assert list(df.columns) == ["eid", "ef", "Abnormal"]
        ids |= set(df.eid)
    assert len(ids) == len(truth)
    items = load_array_datalist(arrays, "train.csv", id_column="eid", label_columns="ef")
    clip = np.load(items[0]["image"])
    assert clip.shape == (20, 32, 32) and clip.dtype == np.uint8 and items[0]["num_frames"] == 20
    ef = truth.set_index(truth.FileName.str.replace(".avi", "", regex=False)).EF
    assert items[0]["label"] == pytest.approx(ef[items[0]["video_id"]])


def _run(bundle: str, configs: list[str], workflow_type: str, work: Path, **overrides) -> None:
    files = [str(work / "configs" / c) for c in configs]
    wf = ConfigWorkflow(config_file=files, workflow_type=workflow_type, bundle_root=str(work), **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()


@pytest.mark.slow
def test_tvrl_bundles_run_on_arrays(arrays, tmp_path):
    common = {"dataset_dir": str(arrays), "cache_dir": str(tmp_path / "cache"), "epochs": 1, "num_workers": 0}
    ssl = tmp_path / "ssl"
    shutil.copytree(ROOT / "tvrl_echo_ssl_pretraining", ssl, ignore=shutil.ignore_patterns("models", "runs"))
    _run("ssl", ["train.yaml", "small.yaml", "arrays.yaml"], "train", ssl, batch_size=2, framework="tvrl_te", **common)
    ckpt = ssl / "models" / "model.pt"
    assert ckpt.is_file() and load_state_dict(ckpt)
    probe = tmp_path / "probe"
    shutil.copytree(ROOT / "tvrl_echo_linear_probe", probe, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    configs = ["train.yaml", "small.yaml", "arrays.yaml"]
    # the pretrained encoder has the time embedding (framework tvrl_te); the probe builds it to match
    common.update(pretrained_ckpt=str(ckpt), use_time_embed=True)
    _run("probe", configs, "train", probe, batch_size=2, **common)
    assert (probe / "models" / "model.pt").is_file()
    _run("probe", [*configs, "evaluate.yaml"], "eval", probe, **common)
