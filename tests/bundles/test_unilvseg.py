"""UniLVSeg specifics beyond the generic bundle test: SSL weights feed segmentation, and the 2D super-image config."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from medssl_monai.bundle_tools import load_state_dict

ROOT = Path(__file__).resolve().parents[2] / "bundles"


def _copy(name: str, tmp: Path) -> Path:
    dst = tmp / name
    shutil.copytree(ROOT / name, dst, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    return dst


def _run(bundle: Path, configs: list[str], **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        workflow_type="train",
        logging_file=False,
        **overrides,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.slow
@pytest.mark.parametrize("variant", [[], ["superimage.yaml"]], ids=["3d", "superimage"])
def test_pretraining_initialises_segmentation(variant, tiny_data, tmp_path):
    ssl, seg = _copy("unilvseg_echo_ssl_pretraining", tmp_path), _copy("unilvseg_echo_lv_segmentation", tmp_path)
    common = {
        "dataset_dir": str(tiny_data["echonet"]),
        "cache_dir": str(tmp_path / "cache"),
        "epochs": 1,
        "num_workers": 0,
        "batch_size": 2,
    }
    _run(ssl, ["train.yaml", "small.yaml", *variant], bundle_root=str(ssl), **common)
    pretrained = load_state_dict(ssl / "models" / "model.pt")
    if variant:
        assert any(k.startswith("network.") for k in pretrained), "the super-image net wraps a 2D UNet"
        assert next(v for k, v in pretrained.items() if v.ndim == 4 and "conv" in k).ndim == 4  # 2D kernels

    # epochs=0 after loading: the segmentation network must hold exactly the pretrained weights
    wf = ConfigWorkflow(
        config_file=[str(seg / "configs" / c) for c in ["train.yaml", "small.yaml", *variant]],
        workflow_type="train",
        logging_file=False,
        bundle_root=str(seg),
        pretrained_ckpt=str(ssl / "models" / "model.pt"),
        **common,
    )
    wf.initialize()
    loader = next(h for h in wf.parser.get_parsed_content("train#handlers") if type(h).__name__ == "CheckpointLoader")
    trainer = wf.parser.get_parsed_content("train#trainer")
    loader(trainer)
    state = wf.parser.get_parsed_content("network_def").state_dict()
    for k, v in pretrained.items():
        torch.testing.assert_close(state[k], v)

    _run(
        seg,
        ["train.yaml", "small.yaml", *variant],
        bundle_root=str(seg),
        pretrained_ckpt=str(ssl / "models" / "model.pt"),
        **common,
    )
    assert (seg / "models" / "model.pt").is_file()


def test_superimage_flexibleunet_backbone_builds_and_transfers() -> None:
    """The super-image variant with an encoder-backbone UNet (SimLVSeg's kind of 2D model): clips in, clips out, and
    the pretraining network's weights load into the segmentation network unchanged."""
    from monai.bundle import ConfigParser

    nets = {}
    for name in ("unilvseg_echo_ssl_pretraining", "unilvseg_echo_lv_segmentation"):
        parser = ConfigParser()
        parser.read_config(
            [
                str(ROOT / name / "configs" / c)
                for c in ("train.yaml", "superimage.yaml", "superimage_flexibleunet.yaml")
            ]
        )
        parser.update({"si_backbone": "resnet18"})
        nets[name] = parser.get_parsed_content("network_def")
        assert type(nets[name].network).__name__ == "FlexibleUNet"
    seg = nets["unilvseg_echo_lv_segmentation"]
    seg.load_state_dict(nets["unilvseg_echo_ssl_pretraining"].state_dict())
    out = seg(torch.randn(1, 3, 16, 64, 64))
    assert out.shape == (1, 1, 16, 64, 64)


@pytest.mark.parametrize("batch_size", [3, 100])
def test_segmentation_drops_the_last_partial_batch_as_the_reference(batch_size, tiny_data, tmp_path) -> None:
    """Full batches only (the reference's drop_last), except a training set smaller than one batch keeps it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "unilvseg_echo_lv_segmentation" / "configs" / "train.yaml"))
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "dataset_dir": str(tiny_data["echonet"]),
            "num_workers": 0,
            "batch_size": batch_size,
        }
    )
    n = len(parser.get_parsed_content("train#datalist"))
    loader = parser.get_parsed_content("train#dataloader")
    assert n % 3 != 0  # the tiny set leaves a partial batch at batch size 3
    assert len(loader) == (n // batch_size if n >= batch_size else 1)


def test_the_bound_term_trains_from_the_bundle(tiny_data, tmp_path):
    """``--bound_weight`` > 0: the trainer's inferer keeps the clip, the loss adds the bound on the untraced frames
    (a finite loss above the Dice alone on the same prediction); 0 (the default) is the paper's Dice only."""
    from medssl_monai.losses.temporal_bounds import TracedClipLoss, TracedPrediction

    seg = _copy("unilvseg_echo_lv_segmentation", tmp_path)
    common = {
        "dataset_dir": str(tiny_data["echonet"]),
        "cache_dir": str(tmp_path / "cache"),
        "epochs": 1,
        "num_workers": 0,
        "batch_size": 2,
        "bundle_root": str(seg),
    }
    default = ConfigWorkflow(
        config_file=[str(seg / "configs" / c) for c in ["train.yaml", "small.yaml"]],
        workflow_type="train",
        logging_file=False,
        **common,
    )
    default.initialize()
    assert default.parser.get_parsed_content("loss").bound_weight == 0
    assert not default.parser.get_parsed_content("train#trainer_inferer").keep_clip

    wf = _run(seg, ["train.yaml", "small.yaml"], bound_weight=0.5, **common)
    loss = wf.parser.get_parsed_content("loss")
    assert isinstance(loss, TracedClipLoss) and loss.bound_weight == 0.5
    out = wf.parser.get_parsed_content("train#trainer").state.output
    pred = out["pred"]
    assert isinstance(pred, TracedPrediction) and pred.clip.ndim == 5
    dice_only = float(loss.traced_loss(pred.traced, out["label"]))
    assert math.isfinite(float(out["loss"])) and float(out["loss"]) > dice_only
    assert (seg / "models" / "model.pt").is_file()
