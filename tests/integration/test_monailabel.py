"""MONAI Label serves and trains the UniLVSeg segmentation bundle as shipped: a real server on loopback.

Skipped unless ``MEDSSL_INTEGRATION=1`` (``scripts/test_integration.sh`` sets it and runs this file in the MONAI
Label environment; the default test environment has no ``monailabel``). The module fixture trains the bundle for a
few epochs on the tiny synthetic EchoNet data (``small.yaml``), copies MONAI Label's ``monaibundle`` sample app,
copies ``bundles/unilvseg_echo_lv_segmentation`` into it unchanged with the tiny model as TorchScript
(``models/model.ts``), writes synthetic NIfTI clips (``H x W x T``) and starts ``monailabel start_server`` on
127.0.0.1 with the zoo and SAM2 off. Training through the API then uses the shipped ``train.yaml`` (recipe-sized
network, one epoch on three clips).
"""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("MEDSSL_INTEGRATION") != "1", reason="integration test: run scripts/test_integration.sh"
)

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 420
TRAIN_EPOCHS = 3  # the tiny pre-training before the server starts (small.yaml, tiny synthetic data)
INFER_DICE_BAR = 0.2  # a weak tiny model; an empty mask scores 0, an all-foreground mask about 0.12 (LV ~6% of a frame)


def _setup_module():
    spec = importlib.util.spec_from_file_location("medssl_monailabel_setup", ROOT / "scripts/monailabel/setup_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = float(np.logical_and(pred > 0, truth > 0).sum())
    return 2.0 * inter / max(float((pred > 0).sum() + (truth > 0).sum()), 1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    pytest.importorskip("monailabel")
    requests = pytest.importorskip("requests")
    setup = _setup_module()
    work = tmp_path_factory.mktemp("monailabel")
    os.environ.setdefault("MEDSSL_CACHE_DIR", str(work / "cache"))
    paths = setup.setup(work, epochs=TRAIN_EPOCHS, num_clips=4)
    port = _free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    env = dict(os.environ)
    # MONAI Label starts training in a subprocess: keep this environment's interpreter first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        setup.server_command(paths["app"], paths["studies"], port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        start_new_session=True,  # the server forks workers: stop the whole group at the end
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    info = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = requests.get(f"{url}/info/", timeout=5)
            if r.ok:
                info = r.json()
                break
        except requests.ConnectionError:
            pass
        time.sleep(2)
    try:
        if info is None:
            log.flush()
            pytest.fail(f"MONAI Label did not start (rc={proc.poll()}):\n{(work / 'server.log').read_text()[-4000:]}")
        yield {"url": url, "info": info, "work": work, "log": work / "server.log", **paths, "name": setup.BUNDLE_NAME}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_served_configs_are_the_bundles_own(server):
    import filecmp

    shipped = ROOT / "bundles" / server["name"]
    for sub in ("configs", "docs"):
        cmp = filecmp.dircmp(shipped / sub, server["bundle"] / sub)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), (sub, cmp.left_only, cmp.right_only)
        for name in cmp.common_files:  # byte for byte, not only size and time
            assert filecmp.cmp(shipped / sub / name, server["bundle"] / sub / name, shallow=False), name


def test_info_lists_the_bundle_as_segmentation(server):
    models = server["info"]["models"]
    assert server["name"] in models
    model = models[server["name"]]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 3
    assert model["labels"] == {"left ventricle": 1}  # the mask value, from the bundle's metadata
    assert server["name"] in server["info"]["trainers"]


def test_infer_returns_a_mask_of_the_clip_shape_that_overlaps_the_truth(server):
    import nibabel as nib
    import requests

    sid = server["ids"][-1]  # never labelled, so never trained on
    image = nib.load(str(server["studies"] / f"{sid}.nii.gz"))
    truth = np.asanyarray(nib.load(str(server["truth"] / f"{sid}.nii.gz")).dataobj)
    r = requests.post(f"{server['url']}/infer/{server['name']}", params={"image": sid, "output": "image"}, timeout=300)
    assert r.ok, r.text[:2000]
    out = server["work"] / f"{sid}_pred.nii.gz"
    out.write_bytes(r.content)
    pred_img = nib.load(str(out))
    pred = np.asanyarray(pred_img.dataobj)
    assert pred.shape == image.shape == truth.shape  # H x W x T, as uploaded
    assert set(np.unique(pred).tolist()) <= {0, 1}
    np.testing.assert_allclose(pred_img.affine, image.affine, atol=1e-5)
    dice = _dice(pred, truth)
    (server["work"] / "infer_dice.txt").write_text(f"{dice:.4f}\n")
    print(f"\n[monailabel] /infer Dice vs truth on {sid} ({pred.shape}): {dice:.4f}")
    assert dice > INFER_DICE_BAR


def test_train_from_datastore_labels_writes_a_model(server):
    import requests

    # labels go into the datastore through the API: two clips fully labelled, one with ED/ES-like frames only
    for k, sid in enumerate(server["ids"][:3]):
        import nibabel as nib

        truth = nib.load(str(server["truth"] / f"{sid}.nii.gz"))
        mask = np.asanyarray(truth.dataobj).copy()
        if k == 2:
            keep = np.zeros(mask.shape[-1], dtype=bool)
            keep[[5, mask.shape[-1] // 2]] = True
            mask[..., ~keep] = 0
        buf = io.BytesIO(nib.Nifti1Image(mask, truth.affine).to_bytes())
        r = requests.put(
            f"{server['url']}/datastore/label",
            params={"image": sid, "tag": "final"},
            files={"label": (f"{sid}.nii.gz", buf.getvalue())},
            timeout=60,
        )
        assert r.ok, r.text[:2000]
    model = server["bundle"] / "models" / "model.pt"  # absent before: the tiny model is served as model.ts
    before = model.stat().st_mtime_ns if model.is_file() else None
    request = {"max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False, "pretrained": True}
    r = requests.post(
        f"{server['url']}/train/{server['name']}", params={"run_sync": True}, json=request, timeout=TRAIN_TIMEOUT_S
    )
    assert r.ok, r.text[:2000]
    log = server["log"].read_text()
    assert model.is_file() and model.stat().st_mtime_ns != before, "training must write models/model.pt\n" + log[-4000:]
    state = __import__("torch").load(model, map_location="cpu", weights_only=True)
    assert state and all(hasattr(v, "shape") for v in state.values())

    # The running server keeps serving models/model.ts (MONAI Label fixes the model file when it loads a bundle); a
    # server started now would serve the new models/model.pt through the shipped inference.yaml's network_def, at
    # the recipe's sizes. MONAI Label's own infer task, built on the served folder as a restart builds it, shows it.
    import nibabel as nib
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(server["bundle"]), {})
    assert task.network is not None and task.get_path().endswith("model.pt")
    sid = server["ids"][-1]
    image = server["studies"] / f"{sid}.nii.gz"
    result, _ = task({"image": str(image), "device": "cpu"})
    pred = np.asanyarray(nib.load(result).dataobj)
    assert pred.shape == nib.load(str(image)).shape
    assert set(np.unique(pred).tolist()) <= {0, 1}
