"""Set up a MONAI Label app that serves (and trains) the UniLVSeg segmentation bundle, offline, on loopback.

Steps (each can be skipped where its output is already there):

1. tiny synthetic data: ``medssl_monai.data.synthetic.make_all(<work>/data, size="tiny")``;
2. a tiny model: the bundle trained with ``train.yaml + small.yaml`` for ``--epochs`` epochs on it;
3. the app: a copy of the ``monaibundle`` sample app shipped inside the installed ``monailabel`` package;
4. the served bundle ``<app>/model/unilvseg_echo_lv_segmentation`` (the name holds ``segmentation``, so MONAI
   Label serves it as a segmentation model): the repository's bundle folder as it is (every config and the
   metadata unchanged: MONAI Label reads ``configs/inference.yaml``, ``configs/train.yaml`` and
   ``configs/metadata.json``), plus the tiny model as ``models/model.ts``. MONAI Label builds ``network_def``
   from ``configs/inference.yaml`` alone, i.e. at the recipe's sizes, so a model of other sizes is served as
   TorchScript (MONAI's ``ckpt_export`` with ``small_inference.yaml``), which MONAI Label loads when
   ``models/model.pt`` is absent;
5. a study folder of synthetic echo clips as NIfTI stored ``H x W x T`` (``uint8``) at the tiny model's frame size
   (the shipped ``inference.yaml`` segments clips at their own size), and their LV masks (every frame) in
   ``<work>/truth`` (not in the datastore: labels are uploaded through the API).

Run in the MONAI Label environment (``scripts/test_integration.sh`` makes it)::

    $VENV/bin/python scripts/monailabel/setup_app.py --work /tmp/medssl-monailabel
    $VENV/bin/python scripts/monailabel/setup_app.py --work /tmp/medssl-monailabel --start  # + server

``--start`` runs ``monailabel start_server`` on 127.0.0.1 with the zoo and SAM2 off (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLE_NAME",
    "STUDY_SIZE",
    "copy_sample_app",
    "export_torchscript",
    "make_studies",
    "place_bundle",
    "server_command",
    "setup",
    "train_tiny_model",
]

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"
BUNDLE_NAME = BUNDLE.name
LV_LABEL = 1  # LV blood pool in the synthetic label maps and in the bundle's channel_def
STUDY_SIZE = 64  # small.yaml's resize_to: the frame size the tiny model was trained at
SERVED_IGNORE = shutil.ignore_patterns("models", "runs", "eval", "__pycache__")  # outputs of local runs


def train_tiny_model(work: Path, echonet_dir: Path, epochs: int = 2, seed: int = 0) -> Path:
    """Train the bundle (``train.yaml + small.yaml``) on the tiny synthetic EchoNet data; return ``model.pt``.

    The bundle is copied to ``work`` first so that nothing is written into the repository.
    """
    from monai.bundle import ConfigWorkflow

    model = work / "models" / "model.pt"
    if model.is_file():
        return model
    shutil.copytree(BUNDLE, work, ignore=shutil.ignore_patterns("models", "runs", "eval"), dirs_exist_ok=True)
    configs = [str(work / "configs" / "train.yaml"), str(work / "configs" / "small.yaml")]
    overrides = {
        "bundle_root": str(work),
        "dataset_dir": str(echonet_dir),
        "cache_dir": str(work / "cache"),
        "epochs": epochs,
        "num_workers": 0,
        "batch_size": 2,
        "seed": seed,
    }
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    if not model.is_file():
        raise RuntimeError(f"training did not write {model}")
    return model


def _monailabel_root() -> Path:
    import monailabel

    return Path(monailabel.__file__).resolve().parent


def copy_sample_app(dest: Path, name: str = "monaibundle") -> Path:
    """Copy the ``monaibundle`` sample app shipped with the installed ``monailabel`` (what ``monailabel apps``
    lists) to ``dest``."""
    if (dest / "main.py").is_file():
        return dest
    pkg = _monailabel_root()
    candidates = [pkg / "sample-apps" / name, Path(sys.prefix) / "monailabel" / "sample-apps" / name]
    src = next((c for c in candidates if (c / "main.py").is_file()), None)
    if src is None:
        raise FileNotFoundError(f"monailabel's {name} sample app not found in {[str(c) for c in candidates]}")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "model"), dirs_exist_ok=True)
    return dest


def export_torchscript(model_pt: Path, out: Path, small: bool = True) -> Path:
    """``models/model.pt`` -> TorchScript ``out`` with MONAI's ``ckpt_export`` (the zoo's export), building
    ``network_def`` from ``inference.yaml`` (+ ``small_inference.yaml`` for a ``small.yaml`` model)."""
    from monai.bundle import ckpt_export

    cfg = BUNDLE / "configs"
    configs = [str(cfg / "inference.yaml")] + ([str(cfg / "small_inference.yaml")] if small else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_export(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=str(model_pt),
        meta_file=str(cfg / "metadata.json"),
        config_file=configs,
        bundle_root=str(BUNDLE),
    )
    return out


def place_bundle(app: Path, model_pt: Path, small: bool = True) -> Path:
    """Copy the bundle folder as it is to ``<app>/model/<bundle name>`` and add the trained model.

    A model at the shipped sizes goes in as ``models/model.pt``; a ``small.yaml`` model (``small=True``) as
    TorchScript ``models/model.ts``, since MONAI Label would build ``network_def`` at the shipped sizes.
    """
    dest = app / "model" / BUNDLE_NAME
    shutil.copytree(BUNDLE, dest, ignore=SERVED_IGNORE, dirs_exist_ok=True)
    models = dest / "models"
    models.mkdir(exist_ok=True)
    if small:
        export_torchscript(model_pt, models / "model.ts", small=True)
    else:
        shutil.copy2(model_pt, models / "model.pt")
    return dest


def make_studies(
    studies: Path,
    truth: Path,
    num_clips: int = 4,
    seed: int = 1,
    first_index: int = 0,
    image_size: int = STUDY_SIZE,
) -> list[str]:
    """Write synthetic echo clips as NIfTI ``H x W x T`` ``uint8`` to ``studies`` and their LV masks to ``truth``.

    Clips come from :func:`~medssl_monai.data.synthetic.echonet.synthesize_echo_video` with another ``seed``
    than the training data (held out), at the tiny dataset's frame rate and lengths, rendered ``image_size``
    pixels square. The identity affine makes one voxel one pixel and one slice one frame. Returns the study ids
    (file names without ``.nii.gz``).
    """
    import nibabel as nib

    from medssl_monai.data.synthetic.echonet import synthesize_echo_video

    studies.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(first_index, first_index + num_clips):
        sid = f"echo_{i:03d}"
        ids.append(sid)
        if (studies / f"{sid}.nii.gz").is_file() and (truth / f"{sid}.nii.gz").is_file():
            continue
        video = synthesize_echo_video(seed, i, image_size=image_size, fps=25.0, min_frames=40, max_frames=48)
        image = np.ascontiguousarray(video.frames.transpose(1, 2, 0))  # T x H x W -> H x W x T
        mask = np.ascontiguousarray((video.labels == LV_LABEL).astype(np.uint8).transpose(1, 2, 0))
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(studies / f"{sid}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(truth / f"{sid}.nii.gz"))
    return ids


def server_command(app: Path, studies: Path, port: int = 8765, host: str = "127.0.0.1") -> list[str]:
    """``monailabel start_server`` for the app: loopback, this bundle only, zoo and SAM2 off.

    Runs ``python -m monailabel.main`` with this interpreter: the ``monailabel`` launcher script calls the
    first ``python`` on ``PATH``, which need not be the environment's.
    """
    return [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
        "--conf",
        "models",
        BUNDLE_NAME,
        "--conf",
        "zoo_source",
        "github",
        "--conf",
        "sam2",
        "false",
        "--host",
        host,
        "--port",
        str(port),
    ]


def setup(
    work: Path, epochs: int = 2, num_clips: int = 4, seed: int = 0, model: Path | None = None
) -> dict[str, Path | list[str]]:
    """Steps 1-5 of the module docstring under ``work``; returns the paths (and study ids) the server needs.

    ``model``: a ``model.pt`` trained at the shipped sizes (``train.yaml``), served as it is instead of the tiny
    model (steps 1-2 are skipped; the studies are then rendered at EchoNet's 112 pixels).
    """
    from medssl_monai.data.synthetic import make_all

    work = Path(work).resolve()
    app = copy_sample_app(work / "app")
    if model is None:
        data = make_all(work / "data", seed=seed, size="tiny")
        tiny = train_tiny_model(work / "train_bundle", Path(data["echonet"]), epochs=epochs, seed=seed)
        served = place_bundle(app, tiny, small=True)
        size = STUDY_SIZE
    else:
        served = place_bundle(app, Path(model), small=False)
        size = 112
    ids = make_studies(work / "studies", work / "truth", num_clips=num_clips, seed=seed + 1, image_size=size)
    return {"app": app, "bundle": served, "studies": work / "studies", "truth": work / "truth", "ids": ids}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medssl-monailabel"), help="working folder")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the tiny training (small.yaml)")
    parser.add_argument("--clips", type=int, default=4, help="synthetic NIfTI clips in the study folder")
    parser.add_argument("--model", type=Path, default=None, help="serve this model.pt (shipped sizes), no tiny one")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--start", action="store_true", help="start the server (foreground) when set up")
    args = parser.parse_args(argv)
    paths = setup(args.work, epochs=args.epochs, num_clips=args.clips, model=args.model)
    cmd = server_command(paths["app"], paths["studies"], args.port)
    print(json.dumps({k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in paths.items()}, indent=2))
    print("server:", " ".join(cmd))
    if args.start:
        os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
