"""Every bundle's ``configs/inference.yaml`` runs on a random-init ``models/model.pt`` and writes its outputs.

Nothing is trained: the test saves the ``network_def`` state_dict of the (small) inference config as
``models/model.pt``, runs the inference workflow on the tiny synthetic data, and checks the files: embeddings
(``embeddings.npy`` rows = ``embeddings.csv`` rows = clips), predictions (one CSV line per sample, probabilities
that sum to 1) or whole-video masks (one NIfTI per video, as many frames as the video).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from medssl_monai.bundle_tools import config_path, find_bundles

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = find_bundles(ROOT / "bundles")

#: what each bundle's inference writes
OUTPUTS = {
    "unilvseg_echo_ssl_pretraining": "embeddings",
    "tvrl_echo_ssl_pretraining": "embeddings",
    "discovr_echo_ssl_pretraining": "embeddings",
    "ucl_us_ssl_pretraining": "embeddings",
    "tvrl_echo_linear_probe": "predictions",
    "discovr_echo_evaluation": "predictions",
    "ucl_us_classification": "video_predictions",
    "unilvseg_echo_lv_segmentation": "masks",
    "discovr_echo_lv_segmentation": "masks",
}
CASES = [(b.name, ()) for b in BUNDLES] + [
    (name, ("timed_series_inference.yaml",)) for name in ("tvrl_echo_ssl_pretraining", "tvrl_echo_linear_probe")
]


def test_every_bundle_has_an_inference_config():
    assert sorted(b.name for b in BUNDLES) == sorted(OUTPUTS)
    assert [b.name for b in BUNDLES if config_path(b, "inference") is None] == []


def _weight_shapes(files: list[str], bundle: Path) -> dict[str, tuple[int, ...]]:
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(bundle)
    for key in ("pretrained_ckpt", "network_def#pretrained_ckpt"):  # no weights are read here
        if parser.get(key, "absent") != "absent":
            parser[key] = None
    return {k: tuple(v.shape) for k, v in parser.get_parsed_content("network_def").state_dict().items()}


@pytest.mark.parametrize("small", [True, False], ids=["small", "paper"])
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_inference_network_matches_training(bundle: Path, small: bool):
    """models/model.pt written by train.yaml (+ small.yaml) loads into inference.yaml's (+ small_inference.yaml)."""
    train = [str(config_path(bundle, "train"))] + ([str(config_path(bundle, "small"))] if small else [])
    infer = [str(config_path(bundle, "inference"))]
    if small and config_path(bundle, "small_inference"):
        infer.append(str(config_path(bundle, "small_inference")))
    assert _weight_shapes(infer, bundle) == _weight_shapes(train, bundle)


def _files(work: Path, extra: tuple[str, ...]) -> list[str]:
    files = [config_path(work, "inference"), config_path(work, "small_inference")]
    return [str(f) for f in files if f is not None] + [str(work / "configs" / e) for e in extra]


@pytest.mark.parametrize("name, extra", CASES, ids=[n + ("-" + e[0].split("_inf")[0] if e else "") for n, e in CASES])
def test_inference_writes_outputs(name: str, extra: tuple[str, ...], tiny_data, tmp_path: Path):
    work = tmp_path / name
    shutil.copytree(ROOT / "bundles" / name, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    files = _files(work, extra)
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(work)
    kind = parser.get("dataset_dir")["kind"]
    torch.manual_seed(0)
    (work / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")

    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=files,
        workflow_type="infer",
        bundle_root=str(work),
        dataset_dir=str(tiny_data[kind]),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(out),
        num_workers=0,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    key = "videos" if OUTPUTS[name] == "video_predictions" else "dataset"
    n = len(workflow.parser.get_parsed_content(key))
    assert n > 0

    if OUTPUTS[name] == "embeddings":
        emb = np.load(out / "embeddings.npy")
        ids = pd.read_csv(out / "embeddings.csv")
        assert emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[0] == n and emb.shape[1] > 0
        assert np.isfinite(emb).all()
        assert len(ids) == n and list(ids["row"]) == list(range(n)) and ids["id"].notna().all()
    elif OUTPUTS[name] == "predictions":
        pred = pd.read_csv(out / "predictions.csv")
        assert len(pred) == n and pred["id"].notna().all()
        probs = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy()
        if probs.shape[1]:  # classification: one probability per class
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        else:
            assert np.isfinite(pred["prediction"].to_numpy(float)).all()
    elif OUTPUTS[name] == "video_predictions":
        pred = pd.read_csv(out / "video_predictions.csv")
        assert len(pred) == n
    else:
        pred = pd.read_csv(out / "predictions.csv")
        assert len(pred) == n
        for row in pred.itertuples():
            mask = nib.load(str(out / f"{row.video_id}_mask.nii.gz")).get_fdata()
            assert mask.ndim == 3 and mask.shape[2] == row.frames and set(np.unique(mask)) <= {0.0, 1.0}
