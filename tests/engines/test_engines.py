"""prepare_batch, inferers, metrics and reports used by the UniLVSeg bundles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from medssl_monai.engines.inferers import TracedFrameInferer, VideoSlidingWindowInferer
from medssl_monai.engines.metrics import PooledDice
from medssl_monai.engines.prepare import ClipPrepareBatch, MaskedClipPrepareBatch
from medssl_monai.engines.reports import TracedFrameReport, VideoEFReport, VideoMaskWriter, update_json
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD


def test_clip_prepare_batch_normalises_on_device_and_passes_index():
    x = torch.full((2, 3, 4, 8, 8), 255, dtype=torch.uint8)
    batch = {"image": x, "label": torch.ones(2, 1, 8, 8, dtype=torch.uint8), "target_index": torch.tensor([1, 3])}
    inputs, targets, args, kwargs = ClipPrepareBatch(index_key="target_index")(batch, "cpu")
    expected = (1.0 - ECHONET_MEAN[0]) / ECHONET_STD[0]
    assert inputs.dtype == torch.float32 and torch.allclose(inputs[:, 0], torch.full_like(inputs[:, 0], expected))
    assert targets.dtype == torch.float32 and args == ()
    assert kwargs["index"].tolist() == [1, 3]


def test_masked_prepare_batch_masks_whole_frames_before_normalisation():
    torch.manual_seed(0)
    x = torch.randint(1, 255, (3, 3, 32, 8, 8), dtype=torch.uint8)
    inputs, targets = MaskedClipPrepareBatch(mask_ratio=0.6)({"image": x}, "cpu")
    masked_value = -ECHONET_MEAN[0] / ECHONET_STD[0]  # a zeroed frame after normalisation
    per_frame = (inputs[:, 0] - masked_value).abs().amax(dim=(-1, -2)) < 1e-6  # B x T
    assert per_frame.sum(dim=1).tolist() == [19, 19, 19]  # int(32 * 0.6 + 0.5)
    assert targets.shape == (3, 1, 32, 8, 8)  # channel 0 of the clean clip, as the reference
    clean = (x[:, :1].float() / 255 - ECHONET_MEAN[0]) / ECHONET_STD[0]
    torch.testing.assert_close(targets, clean)


def test_masked_prepare_batch_seed_gives_same_masks_per_clip_not_per_batch():
    x = torch.randint(1, 255, (2, 3, 16, 4, 4), dtype=torch.uint8)
    prep = MaskedClipPrepareBatch(mask_ratio=0.5, seed=7)
    a1, _ = prep({"image": x, "video_id": ["a", "b"]}, "cpu")
    a2, _ = prep({"image": x, "video_id": ["a", "b"]}, "cpu")
    b1, _ = prep({"image": x, "video_id": ["c", "d"]}, "cpu")
    torch.testing.assert_close(a1, a2)  # same clips, same masks: validation loss comparable across epochs
    assert not torch.equal(a1, b1)  # other clips, other masks


def test_traced_frame_loss_has_zero_gradient_outside_the_traced_slice():
    net = torch.nn.Identity()
    pred = torch.randn(2, 1, 6, 5, 5, requires_grad=True)
    label = (torch.rand(2, 1, 5, 5) > 0.5).float()
    index = torch.tensor([2, 4])
    out = TracedFrameInferer()(pred, net, index=index)
    DiceLoss(sigmoid=True, batch=True)(out, label).backward()
    g = pred.grad.abs().sum(dim=(1, 3, 4))  # B x T
    for b, t in enumerate(index.tolist()):
        assert g[b, t] > 0
        assert torch.count_nonzero(g[b]) == 1


def test_pooled_dice_matches_hand_computation():
    m = PooledDice()
    pred = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]], [[[1.0, -1.0], [-1.0, -1.0]]]])  # 2 + 1 predicted pixels
    label = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 0.0]]]])  # 1 + 3 true pixels
    m.update((pred, label))
    # intersections 1 + 1, sizes (2 + 1) + (1 + 3) -> 2 * 2 / 7
    assert m.compute() == pytest.approx(4 / 7)


def test_sliding_window_inferer_keeps_every_frame():
    video = torch.arange(40, dtype=torch.float32).reshape(1, 1, 40, 1, 1).expand(1, 1, 40, 4, 4).contiguous()
    out = VideoSlidingWindowInferer(window=16, overlap=0.5)(video, lambda x: x)
    torch.testing.assert_close(out, video)


def _engine(output, batch):
    return SimpleNamespace(state=SimpleNamespace(output=output, batch=batch))


@pytest.mark.parametrize("unit", ["frame", "video"])
def test_traced_frame_report_writes_csv_json_and_plots(tmp_path, unit):
    report = TracedFrameReport(tmp_path, n_resamples=200, num_overlays=2, bootstrap_unit=unit)
    report.reset()
    label = torch.zeros(2, 1, 8, 8)
    label[:, :, 2:6, 2:6] = 1
    pred = torch.full((2, 1, 8, 8), -5.0)
    pred[0, :, 2:6, 2:6] = 5.0  # perfect
    pred[1, :, 2:4, 2:6] = 5.0  # half: Dice 2 * 8 / (8 + 16)
    batch = {
        "image": torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8),
        "target_index": torch.tensor([0, 3]),
        "video_id": ["v1", "v1"],
        "phase": ["ED", "ES"],
        "frame_index": torch.tensor([10, 20]),
    }
    report.iteration_completed(_engine({"pred": pred, "label": label}, batch))
    report.completed(None)
    summary = json.loads((tmp_path / "summary.json").read_text())["dice"]
    # one video: resampling videos can only redraw it, so the overall interval collapses to the estimate
    assert (summary["overall"]["ci_low"] == summary["overall"]["ci_high"]) == (unit == "video")
    assert summary["ED"]["estimate"] == pytest.approx(1.0)
    assert summary["ES"]["estimate"] == pytest.approx(16 / 24)
    assert summary["overall"]["estimate"] == pytest.approx(2 * (16 + 8) / (32 + 24))
    for name in ("per_frame_dice.csv", "dice_histogram.png", "overlays_worst.png", "overlays_best.png"):
        assert (tmp_path / name).is_file()


def _beating_disc(es_radius: float, ed_radius: float = 10.0, frames: int = 60, period: int = 30) -> torch.Tensor:
    t = np.arange(frames)
    radius = ed_radius - (ed_radius - es_radius) * (0.5 - 0.5 * np.cos(2 * np.pi * t / period))
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack([((yy - 16) ** 2 + (xx - 16) ** 2) <= r**2 for r in radius])
    return torch.from_numpy(np.where(masks, 5.0, -5.0)).float()[None, None]


def test_video_ef_report_recovers_ef_of_a_beating_disc(tmp_path):
    report = VideoEFReport(tmp_path, n_resamples=100, min_distance=10)
    report.reset()
    # a disc of radius r: area-length volume (8/3/pi) A^2 / L with A = pi r^2, L = 2r is 4/3 pi r^3
    analytic = {7.0: 100 * (1 - 0.7**3), 8.0: 100 * (1 - 0.8**3), 6.0: 100 * (1 - 0.6**3)}
    for i, (es, ef) in enumerate(analytic.items()):
        report.iteration_completed(
            _engine({"pred": _beating_disc(es)}, {"video_id": [f"v{i}"], "ef": torch.tensor([ef])})
        )
    report.completed(None)
    summary = json.loads((tmp_path / "summary.json").read_text())["ef"]
    assert summary["videos"] == 3
    assert summary["mae"]["estimate"] < 3.0  # rasterised discs: within a few EF points of the analytic value
    assert summary["pearson_r"]["estimate"] > 0.99
    assert (tmp_path / "ef_bland_altman.png").is_file() and (tmp_path / "per_video_ef.csv").is_file()
    import pandas as pd

    per_video = pd.read_csv(tmp_path / "per_video_ef.csv")
    assert list(per_video["video_id"]) == ["v0", "v1", "v2"]
    for row in per_video.itertuples():
        # every beat's frames, areas, volumes and EF, consistent with each other and with the video's EF
        eds, ess = str(row.ed_frames).split(), str(row.es_frames).split()
        edv, esv = np.array(str(row.edv).split(), float), np.array(str(row.esv).split(), float)
        beat_ef = np.array(str(row.beat_ef).split(), float)
        assert len(eds) == len(ess) == len(edv) == len(beat_ef) == row.beats >= 1
        np.testing.assert_allclose(beat_ef, 100 * (edv - esv) / edv, rtol=1e-4)
        assert row.ef_pred == pytest.approx(beat_ef.mean(), rel=1e-4)
        assert row.error == pytest.approx(row.ef_pred - row.ef_true)
        assert np.all(np.array(str(row.ed_areas).split(), float) > np.array(str(row.es_areas).split(), float))
    per_frame = pd.read_csv(tmp_path / "per_frame_area.csv")
    v0 = per_frame[per_frame["video_id"] == "v0"]
    assert len(v0) == _beating_disc(7.0).shape[2] and v0["frame"].tolist() == list(range(len(v0)))
    ed_frames = [int(f) for f in str(per_video.loc[0, "ed_frames"]).split()]
    assert v0.loc[v0["ed"], "frame"].tolist() == ed_frames
    assert v0["area"].max() == pytest.approx(np.pi * 10**2, rel=0.05)  # the ED disc of radius 10
    # the worst videos' area curves (num_curves 8 >= 3 videos: all of them)
    assert sorted(q.name for q in (tmp_path / "area_curves").glob("*.png")) == ["v0.png", "v1.png", "v2.png"]
    assert "bias" in summary
    assert summary["videos_with_implausible_masks"] == 0 and per_video["mask_check"].isna().all()


def test_video_ef_report_flags_whole_frame_masks(tmp_path, caplog):
    """The recipe model's failure: untraced frames called LV everywhere, taken as ED, so EF near 100 %. The video
    is flagged in per_video_ef.csv and the summary, with a WARNING; a plausible video is not."""
    import pandas as pd

    bad = _beating_disc(7.0).clone()
    bad[:, :, 5:25] = 5.0  # 20 of 60 frames: the whole 32 x 32 frame
    report = VideoEFReport(tmp_path, n_resamples=100, min_distance=10)
    report.reset()
    for i, (pred, ef) in enumerate([(_beating_disc(7.0), 65.7), (_beating_disc(8.0), 48.8), (bad, 65.7)]):
        report.iteration_completed(_engine({"pred": pred}, {"video_id": [f"v{i}"], "ef": torch.tensor([ef])}))
    with caplog.at_level("WARNING"):
        report.completed(None)
    per_video = pd.read_csv(tmp_path / "per_video_ef.csv").set_index("video_id")
    assert per_video.loc[["v0", "v1"], "mask_check"].isna().all()
    assert per_video.loc["v2", "mask_check"].startswith("the mask covers 100% of the frame at frame 5 (20 of 60")
    assert "an ES area is" in per_video.loc["v2", "mask_check"]  # ~150 px ES against a 1,024 px 'ED'
    assert per_video.loc["v2", "ef_pred"] > 90
    assert json.loads((tmp_path / "summary.json").read_text())["ef"]["videos_with_implausible_masks"] == 1
    assert "1 of 3 videos have masks that cannot be a left ventricle" in caplog.text and "e.g. v2:" in caplog.text


def test_video_mask_writer_flags_whole_frame_masks(tmp_path, caplog):
    import pandas as pd

    bad = _beating_disc(7.0).clone()
    bad[:, :, 5:25] = 5.0
    writer = VideoMaskWriter(tmp_path, write_video=False, min_distance=10)
    image = torch.zeros(1, 1, 60, 32, 32, dtype=torch.uint8)
    with caplog.at_level("WARNING"):
        for vid, pred in (("ok", _beating_disc(7.0)), ("bad", bad)):
            writer.iteration_completed(_engine({"pred": pred}, {"video_id": [vid], "image": image}))
        writer.completed(None)
    rows = pd.read_csv(tmp_path / "predictions.csv").set_index("video_id")
    assert pd.isna(rows.loc["ok", "mask_check"])
    assert rows.loc["bad", "mask_check"].startswith("the mask covers 100% of the frame")
    assert "bad: EF" in caplog.text and "cannot be a left ventricle" in caplog.text and "ok: EF" not in caplog.text


def test_update_json_merges(tmp_path):
    p = tmp_path / "s.json"
    update_json(p, {"a": 1})
    update_json(p, {"b": 2})
    assert json.loads(p.read_text()) == {"a": 1, "b": 2}


def test_sliding_window_inferer_pads_black_and_feeds_channels_last():
    from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD

    video = torch.zeros(1, 3, 5, 4, 4)
    seen = []

    def net(x):
        seen.append(x.clone())  # the inferer scales its output in place
        return x[:, :1]

    VideoSlidingWindowInferer(window=8, channels_last=True)(video, net)
    (x,) = seen
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    for ch in range(3):  # uint8 0 normalised: what training pads short clips with
        assert torch.allclose(x[0, ch, 5:], torch.tensor(-ECHONET_MEAN[ch] / ECHONET_STD[ch]))
    # one channel (grey input): the first channel's statistics
    seen.clear()
    VideoSlidingWindowInferer(window=8)(torch.zeros(1, 1, 5, 4, 4), net)
    assert torch.allclose(seen[0][0, 0, 5:], torch.tensor(-ECHONET_MEAN[0] / ECHONET_STD[0]))
    assert seen[0].is_contiguous()
