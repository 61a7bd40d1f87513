"""Few-label LV segmentation (UniLVSeg's headline claim in the representation benchmark): the video choice, the
fixed step budget, the CPU preset's layout, the two fine-tuning arms and the paired pooled-Dice bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser

from medssl_monai.data.datalist import cycle_to_length, subsample_by_key
from medssl_monai.evaluation.bootstrap import paired_bootstrap_pooled_dice
from medssl_monai.evaluation.fewlabel_segmentation import fewlabel_segmentation
from medssl_monai.evaluation.segmentation import pooled_dice

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SEG = BUNDLES / "unilvseg_echo_lv_segmentation" / "configs"
SSL = BUNDLES / "unilvseg_echo_ssl_pretraining" / "configs"


def _items(n_videos: int) -> list[dict]:
    return [{"video_id": f"v{i:02d}", "phase": p} for i in range(n_videos) for p in ("ES", "ED")]


def test_label_videos_keeps_exactly_n_videos_nested_and_fraction_unchanged():
    items = _items(20)
    five, ten = (subsample_by_key(items, count=n, seed=3) for n in (5, 10))
    ids5, ids10 = ({d["video_id"] for d in x} for x in (five, ten))
    assert len(ids5) == 5 and len(ids10) == 10 and len(five) == 10  # both samples of every kept video
    assert ids5 <= ids10  # the first n of one permutation
    assert five == subsample_by_key(items, count=5, seed=3)  # deterministic (no model, no init involved)
    assert ids5 != {d["video_id"] for d in subsample_by_key(items, count=5, seed=4)}
    assert len(subsample_by_key(items, count=50)) == len(items)
    with pytest.raises(ValueError, match="positive"):
        subsample_by_key(items, count=0)
    # the fraction path draws as before: rng.choice over the sorted ids
    keep = np.random.default_rng(0).choice(20, size=2, replace=False)
    assert {d["video_id"] for d in subsample_by_key(items, 0.1, seed=0)} == {f"v{i:02d}" for i in keep}


def test_cycle_to_length_repeats_every_item_evenly():
    items = _items(5)  # 10 samples
    out = cycle_to_length(items, 23, seed=1)
    assert len(out) == 23
    counts = pd.Series([(d["video_id"], d["phase"]) for d in out]).value_counts()
    assert len(counts) == 10 and set(counts) == {2, 3}
    assert out == cycle_to_length(items, 23, seed=1)
    assert cycle_to_length(items, None) == items
    assert len(cycle_to_length(_items(50), 8)) == 8


def test_cpu_preset_matches_the_pretraining_layout_and_the_defaults_are_unchanged():
    def parse(root: Path, files: list[str]) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(root / f) for f in files])
        return parser

    seg, ssl = parse(SEG, ["train.yaml", "cpu.yaml"]), parse(SSL, ["train.yaml", "cpu.yaml"])
    for key in ("channels", "num_frames", "spatial_size", "resize_to"):
        assert seg[key] == ssl[key], key
    assert seg["network_def"] == ssl["network_def"]
    assert seg["period"] == ssl["train"]["preprocessing"]["period"] == ssl["validate"]["preprocessing"]["period"] == 2
    assert isinstance(seg["epoch_length"], int) and seg["epochs"] == 1
    default = parse(SEG, ["train.yaml"])
    assert default["label_videos"] is None and default["epoch_length"] is None and default["label_fraction"] == 1.0


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    from medssl_monai.data.synthetic import make_echonet

    return make_echonet(tmp_path_factory.mktemp("fewlabel") / "echonet", 10, 0, image_size=32, min_frames=32)


# a smaller clip and network than cpu.yaml (same structure), 2 steps of batch 2, no learning: the SSL arm's final
# weights must then be the checkpoint's exactly
TINY = {
    "num_frames": 16,
    "spatial_size": 32,
    "resize_to": 32,
    "channels": [[4], [4], [8], [8], [8]],
    "epoch_length": 2,
    "batch_size": 2,
    "num_workers": 0,
    "learning_rate": 0.0,
}


def test_both_inits_train_the_same_videos_and_the_ssl_arm_starts_from_the_checkpoint(echo, tmp_path):
    from medssl_monai.networks.unet import UniLVSegUNet

    torch.manual_seed(123)
    net = UniLVSegUNet(spatial_dims=3, in_channels=3, out_channels=1, channels=TINY["channels"])
    ckpt = tmp_path / "pretrained.pt"
    torch.save(net.state_dict(), ckpt)
    common = {"cache_dir": tmp_path / "cache", "overrides": TINY, "n_resamples": 10}
    ssl = fewlabel_segmentation(echo, 2, ckpt, tmp_path / "ssl", **common)
    rnd = fewlabel_segmentation(echo, 2, None, tmp_path / "random", **common)

    files = pd.read_csv(echo / "FileList.csv")
    evaluation = files[files.Split.isin(["VAL", "TEST"])].FileName.astype(str).tolist()
    for r in (ssl, rnd):
        assert r["video_ids"] == evaluation
        for k in ("inter", "pred_sum", "true_sum"):
            assert r[k].shape == (len(evaluation),) and r[k].dtype == np.int64
        assert (r["n_frames"] == 2).all()  # the ED and ES frames of every video
        assert 0.0 <= r["dice"] <= 1.0
        assert r["dice"] == pooled_dice(r["inter"], r["pred_sum"], r["true_sum"])
        assert r["steps"] == TINY["epoch_length"] and r["seconds"] > 0
        assert set(r["train_videos"]) <= set(files[files.Split == "TRAIN"].FileName.astype(str))
    assert ssl["train_videos"] == rnd["train_videos"] and len(ssl["train_videos"]) == 2

    # a finished arm with the same settings is read, not run again
    record = (tmp_path / "random" / "train" / "stage.json").read_text()
    again = fewlabel_segmentation(echo, 2, None, tmp_path / "random", **common)
    assert (tmp_path / "random" / "train" / "stage.json").read_text() == record
    assert again["video_ids"] == rnd["video_ids"] and np.array_equal(again["inter"], rnd["inter"])

    pretrained = torch.load(ckpt, weights_only=True)
    for arm, same in (("ssl", True), ("random", False)):
        final = torch.load(tmp_path / arm / "train" / "models" / "checkpoint_final.pt", weights_only=True)["model"]
        assert all(torch.equal(final[k], v) for k, v in pretrained.items()) is same, arm


def test_paired_pooled_dice_on_a_hand_made_case():
    # arm a beats arm b on every video by a different margin; the video sizes differ, so the pooled Dice weighs them
    true = np.array([100, 200, 50, 150])
    a = {"inter": [90, 180, 40, 120], "pred_sum": [100, 200, 50, 150], "true_sum": true}
    b = {"inter": [80, 150, 30, 110], "pred_sum": [100, 200, 50, 150], "true_sum": true}
    out = paired_bootstrap_pooled_dice(a, b, n_resamples=2000, seed=0)
    assert out["n"] == 4
    assert out["a"] == pytest.approx(2 * 430 / 1000) and out["b"] == pytest.approx(2 * 370 / 1000)
    assert out["diff"] == pytest.approx(0.12)
    lo, hi = out["diff_ci95"]
    assert 0 < lo <= out["diff"] <= hi  # better on every video: every resample's difference is positive
    assert out["a_ci95"][0] <= out["a"] <= out["a_ci95"][1]
    assert out["b_ci95"][0] <= out["b"] <= out["b_ci95"][1]

    # b better on half the videos by as much: the difference is 0 and its interval straddles it
    c = {"inter": [70, 180, 30, 120], "pred_sum": [100, 200, 50, 150], "true_sum": true}
    d = {"inter": [90, 160, 50, 100], "pred_sum": [100, 200, 50, 150], "true_sum": true}
    out = paired_bootstrap_pooled_dice(c, d, n_resamples=2000, seed=0)
    assert out["diff"] == pytest.approx(0.0) and out["diff_ci95"][0] < 0 < out["diff_ci95"][1]


def test_paired_pooled_dice_aligns_the_arms_by_video_id():
    a = {"video_ids": ["x", "y", "z"], "inter": [1, 2, 3], "pred_sum": [4, 4, 4], "true_sum": [4, 4, 4]}
    b = {"video_ids": ["z", "x", "y"], "inter": [3, 1, 2], "pred_sum": [4, 4, 4], "true_sum": [4, 4, 4]}
    out = paired_bootstrap_pooled_dice(a, b, n_resamples=200, seed=0)
    assert out["diff"] == 0.0 and out["diff_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same non-empty videos"):
        paired_bootstrap_pooled_dice(
            {**a, "video_ids": None}, {"inter": [1, 2], "pred_sum": [4, 4], "true_sum": [4, 4], "video_ids": None}
        )
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_pooled_dice(a, {**b, "inter": [1, 2]})
