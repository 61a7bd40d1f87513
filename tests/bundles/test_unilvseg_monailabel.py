"""The segmentation bundle's own configs under MONAI Label's contract, without a server (no ``monailabel`` needed).

MONAI Label's ``monaibundle`` app reads ``configs/inference.yaml`` and ``configs/train.yaml`` as shipped. Inference:
it instantiates ``pre_transforms`` (preferred over ``preprocessing``), ``inferer``, ``post_transforms`` and
``network_def``, then runs ``post(inferer(pre(item)["image"][None], network))`` on ``{"image": <NIfTI path>}``.
Training: ``monai.bundle.run(run_id="run", init_id=None, final_id=None, ...)`` with ``train#dataset#data`` and
``validate#dataset#data`` replaced by ``{"image", "label"}`` NIfTI pairs and ``train#trainer#max_epochs``, ``device``
and ``bundle_root`` set. Both are emulated here call for call; ``tests/integration`` runs the real server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from medssl_monai.bundle_tools import load_state_dict
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "unilvseg_echo_lv_segmentation"
H, W, T = 24, 20, 21


def _clip_and_mask(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An ``H x W x T`` uint8 clip: a bright rectangle (the "LV", moving one pixel every 5 frames) on a dark field."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 30, size=(H, W, T)).astype(np.uint8)
    mask = np.zeros((H, W, T), np.uint8)
    for t in range(T):
        s = t // 5
        mask[4 + s : 14 + s, 5:12, t] = 1
    image[mask > 0] = 220
    return image, mask


def _save(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


class _BrightIsLV(torch.nn.Module):
    """A stand-in network: logit > 0 exactly where the (normalised) red channel is brighter than grey 128."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x 3 x T x H x W
        return x[:, :1] - (128.0 / 255.0 - ECHONET_MEAN[0]) / ECHONET_STD[0]  # A.Normalize: x / 255, mean, std


def test_monailabel_inference_chain_of_the_shipped_inference_yaml(tmp_path: Path):
    image, mask = _clip_and_mask()
    item = {"image": _save(tmp_path / "clip.nii.gz", image)}
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "cpu"
    parser["num_frames"] = 8  # windows overlap and the last one is padded: the full sliding path runs
    parser.get_parsed_content("preprocessing")  # MONAI Label instantiates it too, then prefers pre_transforms
    pre = parser.get_parsed_content("pre_transforms")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("post_transforms")
    assert parser.get_parsed_content("network_def") is not None

    data = pre(item)
    assert data["image"].shape == (3, T, H, W) and data["image"].dtype == torch.float32
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], _BrightIsLV())[0]
    out = post(data)["pred"]
    assert out.shape == (1, H, W, T) and out.dtype == torch.uint8  # the uploaded clip's shape and axis order
    np.testing.assert_array_equal(out[0].numpy(), mask)


def test_monailabel_training_call_on_the_shipped_train_yaml(tmp_path: Path):
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    pairs = []
    for i in range(3):
        image, mask = _clip_and_mask(seed=i)
        if i == 2:  # labels on two frames only, like ED/ES tracings
            mask[..., [t for t in range(T) if t not in (3, 15)]] = 0
        pairs.append(
            {
                "image": _save(tmp_path / f"img{i}.nii.gz", image),
                "label": _save(tmp_path / f"lab{i}.nii.gz", mask),
            }
        )
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.yaml"))
    handlers = parser["train#handlers"]  # MONAI Label passes the raw list back (after maybe adding its loader)
    assert not [h for h in handlers if h.get("_target_") == "CheckpointLoader"], "MONAI Label's loader would be hidden"

    monai.bundle.run(
        run_id="run",
        init_id=None,
        final_id=None,
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=[str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "small.yaml")],
        logging_file=str(bundle / "configs" / "logging.conf"),
        **{
            "bundle_root": str(bundle),
            "train#trainer#max_epochs": 1,
            "train#dataset#data": pairs[:2],
            "validate#dataset#data": pairs[2:],
            "train#handlers": handlers,
            "device": torch.device("cpu"),
            "num_workers": 0,
        },
    )
    state = load_state_dict(bundle / "models" / "model.pt")  # the best-validation-Dice saver ran
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
