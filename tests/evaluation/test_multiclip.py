"""Test-time averaging over evenly spaced clips, and the EF regression probe on frozen features."""

from __future__ import annotations

import json

import numpy as np
import torch
from ignite.engine import Engine

from medssl_monai.evaluation.features import FeatureEvaluationHandler, ef_regression_probe
from medssl_monai.evaluation.multiclip import (
    LoadSpacedClipd,
    group_mean,
    multi_clip_datalist,
    spaced_starts,
    with_spaced_clips,
)
from medssl_monai.transforms.presets import ssl_clip_transforms


def test_spaced_starts_like_the_reference_test_segments():
    # int(k * (L - span) / (n - 1)): first window at 0, last ending on the last frame
    assert spaced_starts(100, 8, 2, 3) == [0, 42, 85]  # span 15 -> room 85
    assert spaced_starts(10, 8, 2, 3) == [0, 0, 0]  # shorter than one window
    assert spaced_starts(100, 8, 2, 1) == [0]


def test_spaced_clips_load_the_right_frames(tmp_path):
    video = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None], (40, 8, 8)).copy()  # T x H x W
    path = tmp_path / "v.npy"
    np.save(path, video)  # frame t is filled with t
    items = multi_clip_datalist([{"image": str(path), "video_id": "v"}], num_clips=3)
    assert [d["clip_index"] for d in items] == [0, 1, 2] and all(d["video_id"] == "v" for d in items)
    load = LoadSpacedClipd(num_clips=3, keys="image", num_frames=4, period=3, cache=False, channels=3)
    firsts = [int(load(d)["image"][0, :, 0, 0][0]) for d in items]
    assert firsts == spaced_starts(40, 4, 3, 3) == [0, 15, 30]
    assert load(items[2])["image"][0, :, 0, 0].tolist() == [30, 33, 36, 39]
    base = ssl_clip_transforms(
        num_frames=4, period=3, crop=8, cache=False, augment=False, mode="start", pad_mode="repeat"
    )
    spaced = with_spaced_clips(base, num_clips=3)
    assert isinstance(spaced.transforms[0], LoadSpacedClipd) and spaced.transforms[0].pad_mode == "repeat"
    assert spaced(items[1])["image"].shape[1] == 4


def test_ef_regression_probe_seeds_and_fractions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = 50 + 5 * x[:, 0] - 2 * x[:, 1]
    out = ef_regression_probe(x[:30], y[:30], x[30:], y[30:], seeds=(0, 1, 2), label_fractions=(0.2, 1.0), alpha=1e-6)
    assert set(out) == {"0.2", "1"}
    assert [r["n_fit"] for r in out["0.2"]["runs"]] == [6, 6, 6] and out["1"]["runs"][0]["n_fit"] == 30
    assert out["1"]["summary"]["mae"]["mean"] < 1e-3 and out["1"]["summary"]["mae"]["std"] < 1e-9
    assert out["0.2"]["summary"]["r2"]["n"] == 3


def test_handler_averages_the_clips_of_a_video(tmp_path):
    # 2 clips per video: the features of a video are the mean of its clips; EF is regressed per video
    torch.manual_seed(0)
    per_video = torch.randn(8, 4)
    offsets = torch.randn(8, 4)
    clips = torch.stack([per_video + offsets, per_video - offsets], 1).reshape(16, 4)  # clip mean = per_video
    ids = [f"v{i // 2}" for i in range(16)]
    labels = [(i // 2) % 2 for i in range(16)]
    splits = ["TRAIN" if i < 8 else "TEST" for i in range(16)]
    ef = [50.0 + float(per_video[i // 2, 0]) for i in range(16)]
    batches = [
        {
            "Abnormal": torch.tensor(labels[i : i + 8]),
            "split": splits[i : i + 8],
            "video_id": ids[i : i + 8],
            "ef": torch.tensor(ef[i : i + 8]),
        }
        for i in (0, 8)
    ]
    handler = FeatureEvaluationHandler(
        tmp_path,
        n_resamples=10,
        k=2,
        anomaly_k=1,
        regression_key="ef",
        probe_seeds=(0, 1),
        label_fractions=(1.0,),
        head=torch.nn.Linear(4, 2),
    )
    it = iter([clips[:8], clips[8:]])
    engine = Engine(lambda e, b: {"pred": next(it)})
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    res = json.loads((tmp_path / "feature_metrics.json").read_text())
    assert res["clips"] == {"clips": 16, "videos": 8} and res["counts"]["eval"] == 4
    assert len(res["ef_regression"]["1"]["runs"]) == 2
    means, first = group_mean(clips.numpy(), ids)
    np.testing.assert_allclose(means, per_video.numpy(), atol=1e-6)
    assert first == [0, 2, 4, 6, 8, 10, 12, 14]
