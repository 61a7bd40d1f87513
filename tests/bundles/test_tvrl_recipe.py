"""The TVRL bundles' defaults are the reference run's (Leooo-Shen/tvrl at commit 47f9e17); each test fails if a
default drifts. Configs are parsed, not run.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from medssl_monai.transforms.tvrl import AUGMENTATIONS, TwoSeriesWindowsd

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "bundles" / "tvrl_echo_ssl_pretraining" / "configs"
PROBE = ROOT / "bundles" / "tvrl_echo_linear_probe" / "configs"


def _parser(*paths: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def test_tvrl_runs_without_time_embedding_and_tvrl_te_with_it():
    # scripts/cardiac.sh: pretrain_framework=mlm ... use_time_embed=False (TVRL); cSimCLR-TE is the only -TE run
    p = _parser(PRETRAIN / "train.yaml")
    assert p["framework"] == "tvrl"
    expected = {"cvrl": False, "ltn": False, "mae": False, "csimclr": False, "csimclr_te": True}
    expected.update(tvrl=False, tvrl_te=True)
    for framework, te in expected.items():
        p = _parser(PRETRAIN / "train.yaml", framework=framework)
        assert p.get_parsed_content("use_time_embed") is te, framework
    assert _parser(PRETRAIN / "train.yaml").get_parsed_content("mlm_start_epoch") == 101  # current_epoch > 100


def test_benchmark_lists_tvrl_with_and_without_time_embedding():
    spec = yaml.safe_load((ROOT / "scripts" / "benchmark_representations.yaml").read_text())["encoders"]
    frameworks = {n: e.get("overrides", {}).get("framework", "tvrl") for n, e in spec.items() if e["kind"] == "tvrl"}
    assert frameworks.get("tvrl_ssl") == "tvrl"
    # the time-embedding claim: two arms pretrained on the timed series, differing in the framework only
    te, plain = spec["tvrl_te_series_ssl"], spec["tvrl_series_ssl"]
    assert (frameworks["tvrl_series_ssl"], frameworks["tvrl_te_series_ssl"]) == ("tvrl", "tvrl_te")
    assert te["configs"] == plain["configs"] and te["dataset"] == plain["dataset"] == "timed_series"
    assert {k: v for k, v in te["overrides"].items() if k != "framework"} == plain.get("overrides", {})


def test_probe_warm_up_starts_at_a_tenth_of_the_lr():
    # models/scheduler.py: LinearWarmupCosineAnnealingLR(warmup_start_lr=lr / 10, eta_min=0), 10 of 100 epochs
    p = _parser(PROBE / "train.yaml")
    p["optimizer"] = "$torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)"
    sched = p.get_parsed_content("train#lr_scheduler")
    assert (sched.warmup_steps, sched.t_total) == (10, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert abs(lrs[0] - 0.1) < 1e-9 and abs(max(lrs) - 1.0) < 1e-9 and lrs[-1] < 1e-3

    def pl_bolts(epoch: int, warmup: int = 10, max_epochs: int = 100, start: float = 0.1, base: float = 1.0) -> float:
        # LinearWarmupCosineAnnealingLR's closed form (eta_min 0): the reference reaches lr at epoch warmup - 1
        if epoch < warmup:
            return start + epoch * (base - start) / max(1, warmup - 1)
        return 0.5 * base * (1 + math.cos(math.pi * (epoch - warmup) / (max_epochs - warmup)))

    for e, lr in enumerate(lrs):
        assert abs(lr - pl_bolts(e)) < 1e-9, (e, lr, pl_bolts(e))
    assert abs(lrs[9] - 1.0) < 1e-9 and abs(lrs[10] - 1.0) < 1e-9  # full lr from epoch 9, as the reference


def test_mae_recipe_one_light_view_random_tokens():
    # scripts/cardiac.sh VideoMAE: cardiac_aug_mae (resize + h-flip), one clip, mae_helper.py random masking
    p = _parser(PRETRAIN / "train.yaml", framework="mae")
    values = {k: p.get_parsed_content(k) for k in ("augmentation", "num_views", "mae_mask_type", "mae_mask_ratio")}
    assert values == {"augmentation": "mae", "num_views": 1, "mae_mask_type": "random", "mae_mask_ratio": 0.9}
    assert p["train#preprocessing#augmentation"] == "@augmentation" and p["method#mae_mask_type"] == "@mae_mask_type"
    p = _parser(PRETRAIN / "train.yaml")
    assert (p.get_parsed_content("augmentation"), p.get_parsed_content("num_views")) == ("strong", 2)


def test_timed_series_recipe_is_the_reference_oct_setting():
    # oct_1c8f_ssl.yaml / oct_datasets.py / oct_aug_strong: 8 visits, the latest ones, time noise 0.1 years
    p = _parser(PRETRAIN / "train.yaml", PRETRAIN / "timed_series.yaml")
    assert p.get_parsed_content("augmentation") == "oct"
    assert (
        _parser(PRETRAIN / "train.yaml", PRETRAIN / "timed_series.yaml", framework="mae").get_parsed_content(
            "augmentation"
        )
        == "mae"
    )
    oct_aug = AUGMENTATIONS["oct"]
    assert oct_aug == {
        "rotate_degrees": 5.0,
        "crop_scale": (0.10, 1.0),
        "vflip_prob": 0.0,
        "brightness": 0.6,
        "blur_sigma": (0.1, 1.0),
    }
    (windows,) = [t for t in p.get_parsed_content("train#preprocessing").transforms if isinstance(t, TwoSeriesWindowsd)]
    assert (windows.num_frames, windows.window, windows.time_noise_std, windows.identical) == (8, "latest", 0.1, True)
    probe = _parser(PROBE / "train.yaml", PROBE / "timed_series.yaml")
    assert probe.get_parsed_content("num_frames") == 8
    item = {"image": torch.arange(10, dtype=torch.uint8).reshape(1, 10, 1, 1), "times": [float(i) for i in range(10)]}
    out = windows(item)  # the latest 8 visits
    assert out["image"].flatten().tolist() == list(range(2, 10))


def test_finetune_config_switches_the_encoder_on():
    # scripts/cardiac.sh "supervised": finetune.py freeze_backbone=False (random init); the lr is the head's
    p = _parser(PROBE / "train.yaml", PROBE / "small.yaml")
    assert p["finetune"] is False
    p = _parser(PROBE / "train.yaml", PROBE / "small.yaml", PROBE / "finetune.yaml", encoder_lr=1e-4)
    groups = p.get_parsed_content("optimizer").param_groups
    assert [g["lr"] for g in groups] == [p.get_parsed_content("learning_rate"), 1e-4]
    net = p.get_parsed_content("network_def")
    assert net.finetune and all(q.requires_grad for q in net.parameters())


@pytest.mark.slow
def test_supervised_baseline_and_finetuning_run_on_tiny_data(tiny_data, tmp_path):
    from monai.bundle import ConfigWorkflow

    from medssl_monai.bundle_tools import load_state_dict

    states = {}
    for name, extra in (("probe", []), ("supervised", ["finetune.yaml"])):
        root = tmp_path / name
        shutil.copytree(PROBE.parent, root, ignore=shutil.ignore_patterns("models", "runs", "eval"))
        files = [str(root / "configs" / c) for c in ("train.yaml", "small.yaml", *extra)]
        kw = dict(bundle_root=str(root), dataset_dir=str(tiny_data["echonet"]), cache_dir=str(tmp_path / "cache"))
        kw.update(epochs=1, num_workers=0, batch_size=2, seed=0)
        for wf_files, kind in ((files, "train"), ([*files, str(root / "configs" / "evaluate.yaml")], "eval")):
            wf = ConfigWorkflow(config_file=wf_files, workflow_type=kind, **kw)
            wf.initialize()
            wf.run()
            wf.finalize()
        states[name] = load_state_dict(root / "models" / "model.pt")
        assert (root / "eval" / "metrics.json").is_file()
    # BatchNorm statistics start at 0: the frozen probe's encoder (eval mode) never moves them, fine-tuning does
    stats = [k for k in states["probe"] if k.startswith("encoder.") and k.endswith("running_mean")]
    assert stats and all(not states["probe"][k].any() for k in stats)
    assert all(states["supervised"][k].any() for k in stats)
