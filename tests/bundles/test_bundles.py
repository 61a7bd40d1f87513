"""The generic bundle test: every folder under ``bundles/`` passes the conventions and runs end to end.

A new bundle is covered by being there. Per bundle: layout and version/changelog, metadata against the
MONAI schema, ``verify_net_in_out``, TorchScript export that matches the eager network, and a tiny
``ConfigWorkflow`` (initialize, ``check_properties() == []``, run, finalize) of ``train`` (with the bundle's
CPU ``small`` override), then ``evaluate`` and ``inference`` where the bundle has them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from medssl_monai.bundle_tools import (
    check_layout,
    config_path,
    export_torchscript,
    find_bundles,
    load_state_dict,
    network_input_shape,
    train_configs,
    verify_metadata,
    verify_net,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = find_bundles(ROOT / "bundles")
IDS = [b.name for b in BUNDLES]


def _dataset_kind(bundle: Path) -> str:
    """Which synthetic dataset a bundle reads: the ``kind`` of its default ``dataset_dir``."""
    parser = ConfigParser()
    parser.read_config(str(config_path(bundle, "train")))
    default = parser.get("dataset_dir")
    return default.get("kind", "echonet") if isinstance(default, dict) else "echonet"


def _config_value(configs: list[str], key: str):
    parser = ConfigParser()
    parser.read_config(configs)
    return parser.get(key)


def _tiny_overrides(bundle: Path, data: dict, tmp: Path) -> dict:
    return {
        "bundle_root": str(tmp),
        "dataset_dir": str(data[_dataset_kind(bundle)]),
        "cache_dir": str(tmp / "cache"),
        "epochs": 1,
        "num_workers": 0,
        "batch_size": 2,
    }


def test_there_are_bundles():
    assert len(BUNDLES) >= 2, "expected the bundles under bundles/"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_layout_and_metadata(bundle: Path):
    assert check_layout(bundle) == []
    verify_metadata(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_verify_net_in_out(bundle: Path):
    verify_net(bundle, n=1)  # the model zoo's default size variables (n = p = any = 1)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_torchscript_export_matches_eager(bundle: Path, tmp_path: Path):
    cfg = config_path(bundle, "inference") or config_path(bundle, "train")
    parser = ConfigParser()
    parser.read_config(str(cfg))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = export_torchscript(bundle, ckpt, tmp_path / "model.ts", input_shape=network_input_shape(bundle, n=2))
    loaded = torch.jit.load(str(ts)).eval()
    x = torch.rand(network_input_shape(bundle, n=2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-4)


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_end_to_end(bundle: Path, tiny_data, tmp_path: Path):
    work = tmp_path / bundle.name
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    overrides = _tiny_overrides(bundle, tiny_data, work)
    configs = train_configs(work)
    _run(ConfigWorkflow(config_file=configs, workflow_type="train", **overrides))
    model = work / "models" / "model.pt"
    assert model.is_file(), "training must write models/model.pt"
    state = load_state_dict(model)
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "model.pt must be a plain state_dict"
    if _config_value(configs, "embedding_every"):  # the SSL bundles' TensorBoard projector
        assert list((work / "runs").rglob("projector_config.pbtxt")), "no embedding projection was written"
        (tensors,) = list((work / "runs").rglob("tensors.tsv"))  # the last epoch
        rows = tensors.read_text().splitlines()
        assert rows and all(len(r.split("\t")) == len(rows[0].split("\t")) > 1 for r in rows)

    evaluate = config_path(work, "evaluate")
    if evaluate is not None:
        _run(ConfigWorkflow(config_file=[*configs, str(evaluate)], workflow_type="eval", **overrides))
    inference = config_path(work, "inference")
    if inference is not None:
        small_inf = config_path(work, "small_inference")
        files = [str(inference)] + ([str(small_inf)] if small_inf else [])
        _run(ConfigWorkflow(config_file=files, workflow_type="infer", **overrides))
