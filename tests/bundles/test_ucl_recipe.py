"""The UCL bundles' defaults are the reference run's (gbc-iitd/US_UCL at commit 65fea11); each test fails if a default
drifts. Configs are parsed, not run: the pieces under test are instantiated from the bundle YAML with stand-ins for
the data and the network where those would be slow.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medssl_monai.data.ucl_sampling import UCLFrameSampler, holdout_split
from medssl_monai.methods.ucl import finetune_lr_scheduler
from medssl_monai.networks.resnet import load_encoder_weights, resnet_encoder

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "bundles" / "ucl_us_ssl_pretraining" / "configs" / "train.yaml"
CLASSIFY = ROOT / "bundles" / "ucl_us_classification" / "configs" / "train.yaml"


def _parser(path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(path))
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _saver_field(parser: ConfigParser, section: str, field: str) -> str:
    """The evaluated ``field`` of the one checkpoint saver in ``section`` (a handler list) that has it."""
    handlers = parser[section]
    idx = [i for i, h in enumerate(handlers) if isinstance(h, dict) and field in h]
    assert len(idx) == 1, f"expected one handler with {field} in {section}"
    return parser.get_parsed_content(f"{section}#{idx[0]}#{field}")


# 15. models/model.pt is the encoder after the last epoch (train_ucl.py keeps the last checkpoints, no validation)
def test_pretraining_model_pt_is_the_final_encoder():
    parser = _parser(PRETRAIN)
    assert parser["model_selection"] == "final"
    assert _saver_field(parser, "train#handlers", "final_filename") == "model.pt"
    assert _saver_field(parser, "validate#handlers", "key_metric_filename") == "model_best_val_loss.pt"
    # the validation loss stays a logged metric
    assert "val_ucl_loss" in parser["validate#key_metric"]
    swapped = _parser(PRETRAIN, model_selection="val_loss")
    assert _saver_field(swapped, "train#handlers", "final_filename") == "model_final.pt"
    assert _saver_field(swapped, "validate#handlers", "key_metric_filename") == "model.pt"
    with pytest.raises(RuntimeError):  # a typo must not silently leave model.pt unwritten
        _saver_field(_parser(PRETRAIN, model_selection="Final"), "train#handlers", "final_filename")


# 16. every video trains: 64 GBUSV videos at 32 per step = 2 steps per epoch, as the reference's
# DataLoader(drop_last=False) over all videos
def test_pretraining_trains_on_every_video():
    parser = _parser(PRETRAIN)
    assert parser["val_fraction"] == 0.0 and parser["batch_size"] == 32
    videos = [{"image": f"Video_{i}", "num_frames": 200} for i in range(64)]
    train, val = holdout_split(videos, parser["val_fraction"], seed=0, min_val=2)
    assert train == videos and val == []
    sampler = UCLFrameSampler(train, drop_last=parser["train#sampler#drop_last"], num_replicas=1, rank=0)
    assert parser["train#dataloader#drop_last"]  # equal to the reference when the count is a multiple of the batch
    assert len(sampler) // parser["batch_size"] == math.ceil(64 / 32) == 2
    # with no held-out videos the validation loss is still logged, on fixed draws of the training videos
    parser["videos"] = videos
    assert len(parser.get_parsed_content("validate#datalist")) == 64


def _reference_lincls_lrs(lr: float, epochs: int, warmup: int) -> list[float]:
    """lincls_bin.py: CosineAnnealingLR(T_max=50, eta_min=1e-6), stepped after every epoch >= warmup."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-6)
    out = []
    for epoch in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        if epoch >= warmup:
            sched.step()
    return out


# 17. fine-tuning lr: constant through the warm-up, then cosine (T_max 50, eta_min 1e-6)
def test_finetune_schedule_is_lincls_bin():
    parser = _parser(CLASSIFY)
    parser["optimizer"] = {
        "_target_": "torch.optim.SGD",
        "params": "$[torch.nn.Parameter(torch.zeros(1))]",
        "lr": "@learning_rate",
    }
    sched = parser.get_parsed_content("train#lr_scheduler")
    lrs = []
    for _ in range(parser["epochs"]):  # LrScheduleHandler steps once per epoch
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.step()
    assert parser["learning_rate"] == 0.003 and parser["epochs"] == 30 and parser["warmup_epochs"] == 5
    assert lrs == pytest.approx(_reference_lincls_lrs(0.003, 30, 5), rel=1e-9, abs=1e-12)
    assert lrs[:6] == pytest.approx([0.003] * 6)  # no ramp from 0.1 x lr


def test_finetune_schedule_linear_switch_and_state():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = finetune_lr_scheduler(opt, warmup_epochs=4, t_max=10, eta_min=0.0, warmup="linear", start_factor=0.2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.5 * (1 + math.cos(math.pi / 10))])
    with pytest.raises(ValueError):
        finetune_lr_scheduler(opt, warmup="cosine")


# 18. the step curriculum of train_ucl.py (without --cosine-curriculum) beside the default cosine one
def test_step_curriculum_is_selectable():
    def bands(**overrides) -> dict[int, tuple[float, float]]:
        parser = _parser(PRETRAIN, **overrides)
        parser["train#datalist"] = [{"num_frames": 200}] * 4
        sampler = parser.get_parsed_content("train#sampler")
        out = {}
        for epoch in (0, 9, 10, 29, 30, 49, 50, 59):
            sampler.set_epoch(epoch)
            out[epoch] = sampler.band()
        return out

    step = bands(cosine_curriculum=False)
    # the reference table [[10, .2, .4, n^ only], [30, .2, .4], [50, .1, .15], [60, .03, .07]]
    expected = {0: (0.2, 0.4), 9: (0.2, 0.4), 10: (0.2, 0.4), 29: (0.2, 0.4)}
    expected.update({30: (0.1, 0.15), 49: (0.1, 0.15), 50: (0.03, 0.07), 59: (0.03, 0.07)})
    assert step.keys() == expected.keys()
    for epoch, band in expected.items():
        assert step[epoch] == pytest.approx(band), epoch
    cosine = bands()  # the default: scripts/pretrain_gb.sh passes --cosine-curriculum
    assert cosine[29] == pytest.approx((0.2, 0.4)) and cosine[49][0] < 0.1 and cosine[59][0] < 0.03
    assert _parser(PRETRAIN)["warmup_epochs"] == 10  # the table's n^-only epochs, in both curricula


def _torchvision_resnet_state(depth: int) -> dict[str, torch.Tensor]:
    """The keys and shapes of ``torchvision.models.resnet{18,50}().state_dict()``, written out by hand (torchvision's
    layout: conv1/bn1, layer{1-4}.{block}.conv{1-3}/bn{1-3}, downsample.0/.1 on a stage's first block, fc)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def bn(name: str, c: int) -> None:
        state.update({f"{name}.weight": torch.rand(c, generator=g), f"{name}.bias": torch.randn(c, generator=g)})
        state.update({f"{name}.running_mean": torch.randn(c, generator=g), f"{name}.running_var": torch.rand(c) + 0.5})
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * 0.05

    bottleneck = depth == 50
    blocks = [3, 4, 6, 3] if bottleneck else [2, 2, 2, 2]
    expansion = 4 if bottleneck else 1
    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    state["fc.weight"] = torch.randn(1000, inplanes, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


# 19. ImageNet initialisation: a torchvision ResNet state_dict file loads into the encoder with every key matched
@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_state_dict_loads_completely(depth: int, tmp_path: Path):
    state = _torchvision_resnet_state(depth)
    torch.save(state, tmp_path / "resnet.pth")
    enc = resnet_encoder(depth, pretrained_ckpt=tmp_path / "resnet.pth")
    own = enc.state_dict()
    assert set(own) == set(state) - {"fc.weight", "fc.bias"}  # the same layout, fc dropped
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], msg=k)
    res = load_encoder_weights(resnet_encoder(depth), tmp_path / "resnet.pth", strict=True)
    assert res == {"missing": [], "unexpected": []}


def test_mismatched_resnet_file_is_rejected(tmp_path: Path):
    # only BatchNorm's scalar counters would match a narrow encoder: that is a wrong file, not a partial load
    torch.save(_torchvision_resnet_state(50), tmp_path / "resnet50.pth")
    with pytest.raises(ValueError, match="no weights"):
        resnet_encoder(50, widen_factor=0.25, pretrained_ckpt=tmp_path / "resnet50.pth")


def test_imagenet_init_is_a_documented_file_not_a_download():
    for cfg in (PRETRAIN, CLASSIFY):
        assert _parser(cfg)["pretrained_ckpt"] is None  # random init unless the user gives a file
    for bundle in ("ucl_us_ssl_pretraining", "ucl_us_classification"):
        readme = (ROOT / "bundles" / bundle / "docs" / "README.md").read_text()
        assert "download.pytorch.org/models/resnet50-0676ba61.pth" in readme
