"""The DISCOVR pretraining bundle builds the reference recipe: decay groups, the lr schedule, the loss switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


EVAL_CONFIGS = CONFIGS.parent.parent / "discovr_echo_evaluation" / "configs"


def test_linear_probe_is_the_reference_recipe():
    # run_class_finetuning.py --linear_probing: only `head` trains, label smoothing 0.1, lr 1e-3 x batch / 256 with
    # 5 warm-up epochs then a per-iteration cosine to 1e-6, 30 epochs, wd 0.05 (not on the bias), no BatchNorm,
    # the final weights are tested
    p = ConfigParser()
    p.read_config([str(EVAL_CONFIGS / "train.yaml")])
    assert (p.get("epochs"), p.get("warmup_epochs"), p.get("label_smoothing")) == (30, 5, 0.1)
    assert (p.get("learning_rate"), p.get("min_lr"), p.get("weight_decay")) == (0.001, 1e-6, 0.05)
    assert p.get("head_norm") == "none" and p.get("select_by_val") is False
    p.read_config([str(EVAL_CONFIGS / "train.yaml"), str(EVAL_CONFIGS / "small.yaml")])
    p["train"]["dataloader"] = list(range(3))
    p["device"] = "cpu"
    net = p.get_parsed_content("network_def")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    opt = p.get_parsed_content("optimizer")
    names = {id(q): n for n, q in net.named_parameters()}
    assert [[names[id(q)] for q in g["params"]] for g in opt.param_groups] == [["head.weight"], ["head.bias"]]
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert p.get_parsed_content("loss").label_smoothing == 0.1
    assert isinstance(p.get_parsed_content("train#lr_scheduler"), WarmupCosineLR)
    ev = ConfigParser()
    ev.read_config([str(EVAL_CONFIGS / "train.yaml"), str(EVAL_CONFIGS / "evaluate.yaml")])
    handler = next(h for h in ev.get("evaluate#handlers") if h["_target_"].endswith("FeatureEvaluationHandler"))
    assert "classify_features" in handler["head"]  # the trained head is scored on TEST


def test_evaluation_averages_test_clips_and_regresses_ef():
    ev = ConfigParser()
    ev.read_config([str(EVAL_CONFIGS / "train.yaml"), str(EVAL_CONFIGS / "evaluate.yaml")])
    assert ev.get("num_test_clips") == 3 and ev.get("ef_key") == "ef"
    assert ev.get("probe_seeds") == [0, 1, 2, 3, 4] and ev.get("label_fractions") == [0.1, 1.0]
    assert ev.get("evaluate#datalist#_target_").endswith("multi_clip_datalist")
    assert ev.get("evaluate#preprocessing#_target_").endswith("with_spaced_clips")
    handler = next(h for h in ev.get("evaluate#handlers") if h["_target_"].endswith("FeatureEvaluationHandler"))
    assert handler["group_key"] == "video_id" and handler["regression_key"] == "@ef_key"
