"""Few-label frame classification (UCL's claim in the representation benchmark): splits, draws, probe, paired
frame accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_monai.evaluation.fewlabel_frames import (
    embed_frames,
    fewlabel_rows,
    labelled_draws,
    load_video_frames,
    paired_frame_accuracy,
    stratified_video_split,
    thumbnail_features,
)


def test_stratified_split_takes_the_share_of_every_class():
    y = np.repeat([0, 1, 2], [10, 20, 30])
    s = stratified_video_split(y, 0.5, seed=0)
    assert [(s[y == c] == "TEST").sum() for c in range(3)] == [5, 10, 15]
    assert (s == stratified_video_split(y, 0.5, seed=0)).all()


def test_draws_pick_the_count_per_class_from_train_only_and_repeat_with_the_seed():
    y = np.repeat([0, 1], 10)
    split = np.array(["TRAIN", "TEST"] * 10)
    draws = labelled_draws(y, split, 3, draws=4, seed=1)
    assert len(draws) == 4
    for d in draws:
        assert (split[d] == "TRAIN").all()
        assert np.bincount(y[d]).tolist() == [3, 3]
    assert all((a == b).all() for a, b in zip(draws, labelled_draws(y, split, 3, draws=4, seed=1)))
    assert labelled_draws(y, split, None, draws=4, seed=1)[0].tolist() == np.flatnonzero(split == "TRAIN").tolist()
    with pytest.raises(ValueError, match="fewer than videos_per_class"):
        labelled_draws(y, split, 6, draws=1, seed=0)


def test_paired_accuracy_hand_case():
    # 4 videos x 2 frames; a is always right; b is right on exactly one frame of every video
    video = np.repeat(["v0", "v1", "v2", "v3"], 2)
    a = np.ones((1, 8), dtype=bool)
    b = np.tile([True, False], 4)[None]
    out = paired_frame_accuracy(a, b, video, n_resamples=200, seed=0)
    assert out["a"] == 1.0 and out["b"] == 0.5 and out["diff"] == 0.5
    assert out["diff_ci95"] == [0.5, 0.5]  # every resample: 1.0 - 0.5
    assert out["n_videos"] == 4 and out["n_frames"] == 8


def test_paired_accuracy_interval_reflects_which_videos_are_hard():
    # b fails whole videos: its accuracy varies with the resample, so the interval of a - b has width
    video = np.repeat(np.arange(20), 3)
    a = np.ones((2, 60), dtype=bool)
    b = np.repeat(np.arange(20) % 2 == 0, 3)[None].repeat(2, axis=0)
    out = paired_frame_accuracy(a, b, video, n_resamples=500, seed=0)
    lo, hi = out["diff_ci95"]
    assert out["diff"] == pytest.approx(0.5)
    assert 0.2 < lo < 0.5 < hi < 0.8


def test_thumbnail_averages_blocks():
    f = np.zeros((1, 4, 4), dtype=np.uint8)
    f[0, :2, :2] = 255
    assert thumbnail_features(f, grid=2).tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_a_planted_row_beats_a_noise_row_with_few_labels():
    rng = np.random.default_rng(0)
    n_videos, per_video = 60, 4
    y_v = np.arange(n_videos) % 3
    split = stratified_video_split(y_v, 0.5, seed=0)
    video = np.repeat([f"v{i}" for i in range(n_videos)], per_video)
    y = np.repeat(y_v, per_video)
    planted = np.eye(3)[y] * 3 + rng.normal(size=(len(y), 3))
    noise = rng.normal(size=(len(y), 3))
    res, correct = fewlabel_rows(
        {"planted": planted, "noise": noise},
        y,
        video,
        {f"v{i}": s for i, s in enumerate(split)},
        {"few": 3, "all": None},
        draws=3,
        seed=0,
    )
    assert res["planted"]["few"]["accuracy"] > 0.8
    assert res["noise"]["few"]["accuracy"] < 0.6
    assert len(res["planted"]["few"]["draws"]) == 3 and len(res["planted"]["all"]["draws"]) == 1
    ev_video = video[np.isin(video, [f"v{i}" for i in np.flatnonzero(split == "TEST")])]
    out = paired_frame_accuracy(correct["planted"]["few"], correct["noise"]["few"], ev_video, n_resamples=300)
    assert out["diff_ci95"][0] > 0


def test_frames_are_read_evenly_and_a_short_folder_is_named(tmp_path):
    from medssl_monai.data.synthetic import make_frame_folders

    root = make_frame_folders(tmp_path / "us", num_videos=3, seed=0, num_frames=(6, 6), image_size=32)
    frames = load_video_frames(root / "Video_1", 4, 16)
    assert frames.shape == (4, 16, 16) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="Video_1: 6 frames, need at least 7"):
        load_video_frames(root / "Video_1", 7, 16)
    seen = []
    feats = embed_frames(lambda x: seen.append(tuple(x.shape)) or x.float().flatten(1)[:, :2], frames, batch_size=3)
    assert seen == [(3, 1, 1, 16, 16), (1, 1, 1, 16, 16)] and feats.shape == (4, 2)
    assert torch.is_tensor(torch.from_numpy(feats))
