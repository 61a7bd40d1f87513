"""Zoo packaging: the zip layout, large_files.yml, and the exported TorchScript/ONNX equal the eager network."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from medssl_monai.bundle_tools import network_input_shape
from medssl_monai.cli import CLI
from medssl_monai.zoo import compare_outputs, load_network

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"  # a 2D U-Net: TorchScript and ONNX both export


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dist")
    # a limit above the ~75 MB weights so every export ships inside the zip and can be loaded from it
    report = CLI().package(str(BUNDLE), out=str(out), allow_untrained=True, max_file_mb=200, log_level="WARNING")
    unpacked = out / "unpacked"
    with zipfile.ZipFile(report["zip"]) as zf:
        zf.extractall(unpacked)
    return report, unpacked / BUNDLE.name


@pytest.mark.slow  # exports a 75 MB U-Net twice (~40 s on 2 idle cores)
def test_zip_layout_and_large_files(packaged):
    report, root = packaged
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert Path(report["zip"]).name == f"{BUNDLE.name}_v{version}.zip"
    for rel in ("configs/metadata.json", "configs/train.yaml", "configs/inference.yaml", "docs/README.md", "LICENSE"):
        assert (root / rel).is_file(), rel
    assert not any(p.name.startswith("checkpoint") for p in root.rglob("*.pt")), "no resumable checkpoints"
    entries = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert sorted(e["path"] for e in entries) == ["models/model.onnx", "models/model.pt", "models/model.ts"]
    for e in entries:  # the hash download_large_files checks is the md5 of the shipped file
        assert e["hash_type"] == "md5"
        assert hashlib.md5((root / e["path"]).read_bytes()).hexdigest() == e["hash_val"]
    assert report["skipped"] == {} and report["large_files_dir"] is None


@pytest.mark.slow
def test_exports_match_eager(packaged):
    report, root = packaged
    net = load_network(root, root / "models" / "model.pt")
    x = torch.rand(network_input_shape(root, n=2))
    assert compare_outputs(net, "torchscript", root / "models" / "model.ts", x) < 1e-4
    assert compare_outputs(net, "onnx", root / "models" / "model.onnx", x) < 1e-4
    # the ONNX graph has a dynamic batch axis
    x3 = torch.rand([3, *network_input_shape(root, n=2)[1:]])
    assert compare_outputs(net, "onnx", root / "models" / "model.onnx", x3) < 1e-4


def test_large_files_stay_out_of_the_zip(tmp_path):
    """The zoo's size rule: with a 1 MB limit the weights are only referenced (path + md5), kept beside the zip."""
    from medssl_monai.zoo import _split_large_files

    models = tmp_path / "stage" / "models"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(b"\0" * (2 * 1024**2))
    (models / "tiny.pt").write_bytes(b"abc")
    large_dir = tmp_path / "large"
    entries, moved = _split_large_files(models, large_dir, "b", max_file_mb=1, url_prefix="https://x")
    assert moved
    by_path = {e["path"]: e for e in entries}
    assert not (models / "model.pt").exists() and (large_dir / "models" / "model.pt").is_file()
    assert (models / "tiny.pt").is_file() and by_path["models/tiny.pt"]["in_zip"]
    assert by_path["models/model.pt"]["hash_val"] == hashlib.md5(b"\0" * (2 * 1024**2)).hexdigest()
    assert by_path["models/model.pt"]["url"] == "https://x/b/models/model.pt"
