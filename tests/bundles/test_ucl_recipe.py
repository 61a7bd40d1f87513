"""The UCL bundles' defaults are the reference run's (gbc-iitd/US_UCL at commit 65fea11); each test fails if a default
drifts. Configs are parsed, not run: the pieces under test are instantiated from the bundle YAML with stand-ins for
the data and the network where those would be slow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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
    assert len(sampler) // parser["batch_size"] == math.ceil(64 / 32) == 2
    # the reference keeps a partial last batch; only a last step of one video (no mixed negative) is dropped
    for n, drop in ((64, False), (65, True), (66, False)):
        parser["train#datalist"] = videos[:1] * n
        assert parser.get_parsed_content("train#dataloader#drop_last", lazy=False) is drop, n
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


# 20. data: GBCU image lists, the POCUS preset, grouped and given folds
POCUS = CLASSIFY.parent / "pocus.yaml"
GBCU = CLASSIFY.parent / "gbcu.yaml"


def _write_gbcu(root: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = 40 + 4 * i, 60 - 2 * i  # GBCU images differ in size
        cv2.imwrite(str(root / f"im{i}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (root / "train.txt").write_text("im0.jpg,0\nim1.jpg,1\nim2.jpg,2\nim3.jpg,0\n\n")
    (root / "val.txt").write_text("im4.jpg,2\nim5.jpg,1\n")


def test_gbcu_image_lists_feed_the_classifier(tmp_path: Path):
    _write_gbcu(tmp_path)
    parser = ConfigParser()
    parser.read_config([str(CLASSIFY), str(GBCU)])
    parser.update({"dataset_dir": str(tmp_path), "train_list": "train.txt", "val_list": str(tmp_path / "val.txt")})
    parser.update({"cache_dir": str(tmp_path / "cache"), "spatial_size": 32, "resize_to": 36})
    assert parser["positive_classes"] == [2] and parser["class_names"] == ["normal", "benign", "malignant"]
    split = parser.get_parsed_content("split")
    assert [d["label"] for d in split["train"]] == [0, 1, 2, 0]
    assert split["test"] == split["val"]  # the reference reports its val list
    assert all(d["num_frames"] == 1 and d["group"] == d["video_id"] for d in split["train"])
    data = parser.get_parsed_content("train#dataset")
    assert len(data) == 4
    item = data[2]
    # the workers resize (shorter side 36, aspect kept); the random crop to 32 runs in the trainer's prepare_batch
    assert item["image"].shape == (3, 36, 42) and item["image"].dtype == torch.uint8 and item["label"] == 2
    assert item["image_size"].tolist() == [36, 42]
    batch = parser.get_parsed_content("train#dataloader#collate_fn")([data[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 36, 54)  # images of different sizes, zero-padded to one batch
    x, y = parser.get_parsed_content("train#augmented_prepare_batch")(batch)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 0]


def test_image_list_errors(tmp_path: Path):
    from medssl_monai.data.frame_folders import load_image_list
    from medssl_monai.errors import CSVFormatError

    _write_gbcu(tmp_path)
    (tmp_path / "bad.txt").write_text("im0.jpg,normal\n")
    with pytest.raises(CSVFormatError, match="integer label"):
        load_image_list(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("im0.jpg,0\nim0.jpg,0\n")
    with pytest.raises(CSVFormatError, match="more than once"):
        load_image_list(tmp_path / "dup.txt")
    (tmp_path / "missing.txt").write_text("im0.jpg,0,p1\nnope.jpg,1,p1\n")
    items, report = load_image_list(tmp_path / "missing.txt", return_report=True)
    assert [d["video_id"] for d in items] == ["im0.jpg"] and items[0]["group"] == "p1" and report.kept == 1


def test_pocus_preset_is_the_reference_evaluation():
    parser = ConfigParser()
    parser.read_config([str(CLASSIFY), str(POCUS)])
    parser.update({"depth": 50, "widen_factor": 0.25, "fused_optimizer": False})  # a narrow ResNet-50, same names
    folds = [
        {"image": f"v{i}", "video_id": f"v{i}", "num_frames": 3, "label": i % 3, "fold": str(i % 5)} for i in range(30)
    ]
    parser["videos"] = folds
    assert parser["epochs"] == 100 and parser["batch_size"] == 32
    net = parser.get_parsed_content("network_def")
    trainable = {
        n.split(".")[1] + "." + n.split(".")[2]
        for n, p in net.named_parameters()
        if p.requires_grad and n.startswith("encoder.")
    }
    assert trainable == {"layer4.1"}
    assert [type(m).__name__ for m in net.head] == ["Linear"]
    opt = parser.get_parsed_content("optimizer")
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 1e-4
    # CosineAnnealingLR(T_max=100, eta_min=0) stepped every epoch from epoch 0
    sched = parser.get_parsed_content("train#lr_scheduler")
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * e / 100)) for e in range(100)], abs=1e-12)
    prep = parser.get_parsed_content("train#prepare_batch")
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25)
    crop = parser.get_parsed_content("train#preprocessing#transforms#1")
    assert crop.scale == (0.8, 1.0) and crop.ratio == (0.8, 1.25) and crop.random
    assert not parser.get_parsed_content("validate#preprocessing#transforms#1").random
    split = parser.get_parsed_content("split")  # the given folds: test = fold `fold`
    assert {d["fold"] for d in split["test"]} == {"0"} and len(split["test"]) == 6
    assert all(d["fold"] != "0" for d in split["train"] + split["val"])


def test_pocus_crop_draws_within_the_ranges():
    from medssl_monai.transforms.frames import FrameResizedCropd

    t = FrameResizedCropd("image", spatial_size=50, random=True)
    t.set_random_state(0)
    x = torch.arange(3 * 40 * 80, dtype=torch.float32).reshape(3, 40, 80)
    for _ in range(50):
        top, left, ch, cw = t._box(50, 50)
        assert 0.8 * 2500 * 0.95 <= ch * cw <= 2500 and 0.8 * 0.9 <= cw / ch <= 1.25 * 1.1
    assert t({"image": x})["image"].shape == (3, 50, 50)
    val = FrameResizedCropd("image", spatial_size=50, random=False)
    torch.testing.assert_close(val({"image": x})["image"], val({"image": x})["image"])


def test_grouped_k_fold_keeps_patients_together():
    from medssl_monai.data.ucl_sampling import split_videos

    rng = np.random.default_rng(0)
    items = []
    for p in range(20):  # 20 patients, 1-4 videos each, one class per patient
        for v in range(int(rng.integers(1, 5))):
            items.append({"image": f"p{p}_v{v}", "label": p % 3, "patient": f"p{p}"})
    tested = []
    for fold in range(4):
        s = split_videos(items, num_folds=4, fold=fold, val_fraction=0.2, group_key="patient")
        groups = [{d["patient"] for d in s[k]} for k in ("train", "val", "test")]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        assert len(s["train"]) + len(s["val"]) + len(s["test"]) == len(items) and s["val"]
        tested += [d["image"] for d in s["test"]]
    assert sorted(tested) == sorted(d["image"] for d in items)  # every video tested once


def test_labels_csv_extra_columns_reach_the_items(tmp_path: Path):
    import cv2

    from medssl_monai.data.frame_folders import load_frame_folder_datalist

    for name in ("Video_1", "Video_2"):
        (tmp_path / name).mkdir()
        for k in range(2):
            cv2.imwrite(str(tmp_path / name / f"{k:05d}.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("video,label,patient,fold\nVideo_1,0,p7,3\nVideo_2,1, p8 ,0\n")
    items = load_frame_folder_datalist(tmp_path, "labels.csv", extra_columns=["patient", "fold"])
    assert [(d["patient"], d["fold"]) for d in items] == [("p7", "3"), ("p8", "0")]


def test_pool_folds_sums_the_folds_confusion_matrices(tmp_path: Path):
    import json

    import pandas as pd

    rng = np.random.default_rng(0)
    roots, expected = [], np.zeros((3, 3), int)
    for k in range(3):
        rows = []
        for v in range(4):
            label = (k + v) % 3
            for t in range(3):
                p = rng.dirichlet(np.ones(3))
                rows.append({"video_id": f"f{k}v{v}", "frame_index": t, "label": label, "pred": int(p.argmax())})
                rows[-1].update({f"prob_{n}": x for n, x in zip(("normal", "lesion", "artefact"), p)})
                expected[label, int(p.argmax())] += 1
        (tmp_path / f"fold{k}" / "eval").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(tmp_path / f"fold{k}" / "eval" / "frame_predictions.csv", index=False)
        roots.append(str(tmp_path / f"fold{k}"))
    parser = ConfigParser()
    parser.read_config([str(CLASSIFY), str(CLASSIFY.parent / "pool_folds.yaml")])
    parser.update({"fold_roots": roots, "pooled_dir": str(tmp_path / "pooled"), "n_resamples": 20})
    parser.get_parsed_content("run")
    report = json.loads((tmp_path / "pooled" / "metrics.json").read_text())
    assert report["frame"]["confusion_matrix"] == expected.tolist() and report["frame"]["n"] == 36
    folds = sum(np.asarray(f["frame_confusion_matrix"]) for f in report["folds"])
    assert folds.tolist() == expected.tolist() and report["video"]["n"] == 12
    assert (tmp_path / "pooled" / "confusion_matrix_videos.png").is_file()
    pooled = pd.read_csv(tmp_path / "pooled" / "frame_predictions.csv")
    assert sorted(pooled["fold"].unique()) == [0, 1, 2]


def test_pocus_inference_matches_the_pocus_training():
    parser = ConfigParser()
    parser.read_config([str(CLASSIFY.parent / "inference.yaml"), str(CLASSIFY.parent / "pocus_inference.yaml")])
    parser.update({"depth": 18, "widen_factor": 0.25})
    prep = parser.get_parsed_content("prepare_batch")
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25) and prep.label_key is None
    assert not parser.get_parsed_content("preprocessing#transforms#1").random
    assert [type(m).__name__ for m in parser.get_parsed_content("network_def").head] == ["Linear"]
