"""The DISCOVR pretraining bundle builds the reference recipe: decay groups, the lr schedule, the loss switches."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medssl_monai.engines.optim import WarmupCosineLR, reference_cosine
from medssl_monai.methods.discovr import DISCOVR

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "discovr_echo_ssl_pretraining" / "configs"


@pytest.fixture(scope="module")
def parser() -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "small.yaml")])
    p["train"]["dataloader"] = list(range(5))  # 5 iterations per epoch, no data needed
    p["device"] = "cpu"
    return p


def test_recipe_switches_default_to_the_reference(parser: ConfigParser):
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.yaml"))
    assert train.get("image_dino_scale") == "reference"  # x 256 / frames, as modeling_pretrain.py
    assert train.get("center_update") == "logits"  # DINO's centre; "probs" is the reference's
    assert train.get("no_decay_match") == "leaf"
    method = parser.get_parsed_content("method")
    assert isinstance(method, DISCOVR) and method.image_dino_scale == "reference"


def test_optimizer_groups_and_schedule(parser: ConfigParser):
    opt = parser.get_parsed_content("optimizer")
    method = parser.get_parsed_content("method")
    names = {id(p): n for n, p in method.named_parameters()}
    decay, no_decay = opt.param_groups[0], opt.param_groups[1]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"encoder.cls_token", "image_student.cls_token", "decoder.mask_token", "encoder.norm.weight"} <= exempt
    assert all(p.ndim >= 2 for p in decay["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in method.parameters())

    sched = parser.get_parsed_content("train#lr_scheduler")
    assert isinstance(sched, WarmupCosineLR)
    base, final = 0.001 * 4 / 256, 0.0001 * 4 / 256  # small.yaml: base_lr, min_lr, batch 4
    lrs = []
    for _ in range(4 * 5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    expected = [reference_cosine(i, base, final, total_steps=20, warmup_steps=5) for i in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[5] == pytest.approx(base) and lrs[-1] > final  # ends on min_lr after the last step, no floor
