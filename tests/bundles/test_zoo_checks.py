"""The MONAI model zoo's bundle checks ("full" mode of its CI), run on every bundle through ``monai.bundle``.

The zoo's CI verifies, per bundle: the necessary files (``configs/metadata.json``, ``LICENSE``) and the preferred
ones (``models/model.pt``, ``configs/inference.*``), the files listed in ``large_files.*``, ``version`` listed in
the ``changelog``, ``verify_metadata`` against the metadata schema, the inference workflow's properties,
``verify_net_in_out`` of ``network_def`` with the inference config and its default size variables (``n = p = any
= 1``), and ``ckpt_export`` (TorchScript by scripting, the zoo's default) from ``models/model.pt``. This test does
the same offline: the schema is the copy shipped with the package, and ``models/model.pt`` is written as the zoo
writes its fake weights (the ``network_def`` state_dict of the inference config) in a copy of the bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_net_in_out

from medssl_monai.bundle_tools import config_path, find_bundles, load_state_dict, network_input_shape, verify_metadata

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = find_bundles(ROOT / "bundles")
IDS = [b.name for b in BUNDLES]
NECESSARY = ("configs/metadata.json", "LICENSE")


def _large_files(bundle: Path) -> list[dict]:
    for ext in ("yml", "yaml", "json"):
        f = bundle / f"large_files.{ext}"
        if f.is_file():
            return (yaml.safe_load(f.read_text()) or {}).get("large_files", [])
    return []


#: public datasets with terms of use -> their official page, which docs/data_license.txt must point to
DATA_TERMS = {"EchoNet-Dynamic": "https://echonet.github.io/dynamic/", "CAMUS": "https://www.creatis.insa-lyon.fr/"}


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_data_license(bundle: Path):
    """A bundle whose metadata names a dataset with terms of use states them in docs/data_license.txt."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    used = [name for name in DATA_TERMS if name in meta.get("data_source", "")]
    if (bundle / "configs" / "evaluate_camus.yaml").is_file():
        used.append("CAMUS")
    if not used:
        pytest.skip("no dataset with terms of use")
    text = (bundle / "docs" / "data_license.txt").read_text()
    for name in used:
        assert name in text and DATA_TERMS[name] in text, name


@pytest.fixture(params=BUNDLES, ids=IDS)
def zoo_bundle(request, tmp_path: Path) -> Path:
    """A copy of the bundle with the zoo's fake weights in ``models/model.pt``."""
    work = tmp_path / request.param.name
    shutil.copytree(request.param, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    parser = ConfigParser()
    parser.read_config(str(config_path(work, "inference")))
    parser.read_meta(str(work / "configs" / "metadata.json"))
    parser["bundle_root"] = str(work)
    (work / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")
    return work


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_directory_version_and_metadata(bundle: Path):
    for rel in NECESSARY:
        assert (bundle / rel).is_file(), f"necessary file {rel} is missing"
    assert config_path(bundle, "inference") is not None, "the zoo prefers configs/inference.*"
    for entry in _large_files(bundle):  # downloaded by the zoo before it verifies: path, url and hash
        assert {"path", "url"} <= set(entry), entry
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "version" in meta and "changelog" in meta
    assert meta["version"] in meta["changelog"], "the version must have a changelog entry"
    verify_metadata(bundle)  # monai.bundle.verify_metadata against the packaged schema copy


@pytest.mark.slow  # paper-size networks on the CPU: ~1 min for the nine bundles on 2 cores
def test_properties_net_in_out_and_export(zoo_bundle: Path):
    bundle = zoo_bundle
    inference = str(config_path(bundle, "inference"))
    meta_file = str(bundle / "configs" / "metadata.json")
    assert (bundle / "models" / "model.pt").is_file()

    workflow = create_workflow(
        workflow_type="inference",
        config_file=inference,
        meta_file=meta_file,
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
    )
    assert workflow.check_properties() == []

    # the zoo's call: the metadata's network_data_format with the default n = p = any = 1
    verify_net_in_out(
        net_id="network_def", meta_file=meta_file, config_file=inference, device="cpu", bundle_root=str(bundle)
    )

    ts = bundle / "models" / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=meta_file,
        config_file=inference,
        bundle_root=str(bundle),
    )
    scripted = torch.jit.load(str(ts)).eval()
    parser = ConfigParser()
    parser.read_config(inference)
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(load_state_dict(bundle / "models" / "model.pt"))
    x = torch.rand(network_input_shape(bundle, n=1))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)
