"""TVRL's linear probe: frozen weights cannot change, dense window averaging, metrics, seed summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medssl_monai.evaluation.probe import (
    DenseClipInferer,
    LinearProbe,
    ProbeLoss,
    TimedClipPrepareBatch,
    label_mean,
    load_encoder_weights,
    probe_metrics,
    probe_score,
    summarize_runs,
)
from medssl_monai.networks.spatiotemporal import SpatioTemporalEncoder


def _encoder() -> SpatioTemporalEncoder:
    return SpatioTemporalEncoder(1, 16, 8, 16, 1, 2, dropout_rate=0.1, temporal_layers=1, max_frames=4)


def test_probe_cannot_update_frozen_weights(tmp_path):
    torch.manual_seed(0)
    pre = _encoder()
    torch.save(pre.state_dict(), tmp_path / "model.pt")
    probe = LinearProbe(_encoder(), out_channels=1, pretrained_ckpt=tmp_path / "model.pt")
    frozen = {k: v.clone() for k, v in probe.encoder.state_dict().items()}  # parameters and BatchNorm buffers
    # the pretrained weights were loaded, and the temporal CLS was re-initialised
    assert torch.equal(frozen["frame_encoder.pos_embed"], pre.state_dict()["frame_encoder.pos_embed"])
    assert not torch.equal(frozen["temporal.cls_token"], pre.state_dict()["temporal.cls_token"])
    trainable = sorted(n for n, p in probe.named_parameters() if p.requires_grad)
    # the reference's filter compares full names: the per-frame cls_token stays frozen, the temporal one trains
    assert trainable == ["encoder.temporal.cls_token", "head.bias", "head.weight"]
    # even an optimiser given every parameter (with weight decay) changes only the trainable ones
    opt = torch.optim.AdamW(probe.parameters(), lr=0.1, weight_decay=0.05)
    probe.train()
    assert not probe.encoder.training and probe.head.training
    for _ in range(3):
        opt.zero_grad()
        ProbeLoss("regression")(probe(torch.rand(4, 1, 4, 16, 16)), torch.rand(4)).backward()
        opt.step()
    after = probe.encoder.state_dict()
    changed = sorted(k for k in frozen if not torch.equal(frozen[k], after[k]))
    assert changed == ["temporal.cls_token"]


def test_finetune_trains_the_whole_encoder_at_its_own_lr(tmp_path):
    # the reference's freeze_backbone=False: every encoder parameter trains, the encoder in train mode
    torch.manual_seed(0)
    torch.save(_encoder().state_dict(), tmp_path / "model.pt")
    probe = LinearProbe(_encoder(), out_channels=1, pretrained_ckpt=tmp_path / "model.pt", finetune=True)
    assert all(p.requires_grad for p in probe.parameters())
    groups = probe.param_groups(encoder_lr=1e-4)
    assert len(groups) == 2 and groups[1]["lr"] == 1e-4 and "lr" not in groups[0]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in probe.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in probe.head.parameters()} | {
        id(probe.encoder.temporal.cls_token)
    }
    before = {k: v.clone() for k, v in probe.encoder.state_dict().items()}
    opt = torch.optim.AdamW(probe.param_groups(encoder_lr=1e-2), lr=0.1)
    probe.train()
    assert probe.encoder.training and probe.encoder.frame_encoder.stem.training  # dropout on, BN statistics move
    for _ in range(2):
        opt.zero_grad()
        ProbeLoss("regression")(probe(torch.rand(4, 1, 4, 16, 16)), torch.rand(4)).backward()
        opt.step()
    after = probe.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "frame_encoder.pos_embed" in changed and any("running_mean" in k for k in changed)
    probe.eval()
    assert not probe.encoder.training
    frozen = LinearProbe(_encoder(), out_channels=1)
    assert len(frozen.param_groups(encoder_lr=1e-4)) == 1  # nothing else to train in a linear probe


def test_load_encoder_weights_from_a_method_state_dict(tmp_path):
    enc = _encoder()
    torch.save(
        {f"encoder.{k}": v for k, v in enc.state_dict().items()} | {"head.0.weight": torch.zeros(1)}, tmp_path / "m.pt"
    )
    other = _encoder()
    load_encoder_weights(other, tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), other.state_dict().values()))


def test_dense_clip_inferer_averages_every_window():
    calls = []

    def net(x, times, mask):
        calls.append((x.shape, times.clone(), mask.clone()))
        return x.mean(dim=(1, 3, 4)).mean(1, keepdim=True)  # B x 1: the mean frame value of the window

    video = torch.arange(7.0).reshape(1, 1, 7, 1, 1).expand(1, 1, 7, 2, 2)  # frame t has value t
    inf = DenseClipInferer(num_frames=2, period=2, step=1, sw_batch_size=2)
    assert inf.window_starts(7) == [0, 1, 2, 3, 4]
    # windows {0,2}, {1,3}, {2,4}, {3,5}, {4,6}: means 1..5, average 3
    assert inf(video, net).item() == pytest.approx(3.0)
    assert calls[0][0] == (2, 1, 2, 2, 2) and calls[0][1].tolist() == [[0.0, 2.0], [0.0, 2.0]]
    # a video shorter than one window is zero-padded and the padding masked
    calls.clear()
    assert inf(torch.ones(1, 1, 2, 2, 2), net).item() == pytest.approx(0.5)
    assert calls[0][2].tolist() == [[True, False]]
    # with times given (a timed series already cut to one window) the network is called once, unchanged
    out = inf(
        torch.ones(1, 1, 2, 2, 2),
        lambda x, times, frame_mask: times.sum(1, keepdim=True),
        times=torch.ones(1, 2),
        frame_mask=None,
    )
    assert out.item() == 2.0


def test_probe_metrics_hand_values():
    m = probe_metrics("regression", [1.0, 2.0, 3.0], np.array([[1.0], [2.0], [5.0]]))
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / 2)
    logits = np.array([[0.0, 2.0], [0.0, -1.0], [0.0, 1.0], [0.0, 0.5]])  # p1 ranks 0 > 2 > 3 > 1
    c = probe_metrics("classification", [1, 0, 0, 1], logits)
    # positives at ranks 1 and 3 of 4: pairs (pos > neg) = 3 of 4; AP = (1/1 + 2/3) / 2
    assert c["auroc"] == pytest.approx(0.75) and c["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert probe_score("regression", [1.0, 2.0, 3.0], np.array([1.0, 2.0, 5.0])) == pytest.approx(-2 / 3)
    assert math.isnan(probe_metrics("classification", [1, 1], logits[:2])["auroc"])


def test_probe_loss_tasks():
    assert ProbeLoss("regression")(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    ce = ProbeLoss("classification")(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]))
    assert ce.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        ProbeLoss("segmentation")


def test_summaries_and_label_mean():
    s = summarize_runs([{"mae": 1.0, "n": 3}, {"mae": 3.0, "n": 3}])
    assert s == {"mae": {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}}
    assert label_mean([{"ef": 50}, {"ef": 60}], "ef") == 55.0


def test_timed_prepare_batch_passes_times_and_mask():
    batch = {
        "image": torch.full((1, 1, 2, 4, 4), 255, dtype=torch.uint8),
        "label": torch.tensor([1]),
        "times": torch.tensor([[0.0, 0.5]]),
        "frame_mask": torch.tensor([[False, True]]),
    }
    x, y, _, kw = TimedClipPrepareBatch()(batch, "cpu")
    assert x.max().item() == 1.0 and y.dtype == torch.float32
    assert kw["times"].tolist() == [[0.0, 0.5]] and kw["frame_mask"].tolist() == [[False, True]]


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_probe_metrics_writer_writes_json_csv_and_plots(task: str, tmp_path):
    from ignite.engine import Engine

    from medssl_monai.evaluation.probe import ProbeMetricsWriter

    labels = torch.tensor([0.0, 1.0, 0.0, 1.0]) if task == "classification" else torch.tensor([40.0, 55.0, 60.0, 70.0])
    preds = torch.tensor([[-2.0], [1.5], [0.5], [3.0]]) if task == "classification" else labels[:, None] + 2.0
    batches = [{"video_id": ["a", "b"]}, {"video_id": ["c", "d"]}]

    def step(engine, batch):
        i = 0 if batch["video_id"][0] == "a" else 2
        return {"pred": preds[i : i + 2], "label": labels[i : i + 2]}

    engine = Engine(step)
    ProbeMetricsWriter(task, tmp_path / "eval" / "metrics.json").attach(engine)
    engine.run(batches, max_epochs=1)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label,prediction,status,reason" and [r.split(",")[0] for r in rows[1:]] == list("abcd")
    assert all(r.endswith(",ok,") for r in rows[1:])
    if task == "classification":
        assert metrics["auroc"] == pytest.approx(1.0)  # every positive scores above every negative
        assert (tmp_path / "eval" / "roc.png").is_file()
    else:
        assert metrics["mae"] == pytest.approx(2.0)
        assert (tmp_path / "eval" / "scatter.png").is_file() and (tmp_path / "eval" / "bland_altman.png").is_file()
