"""Classification metrics against hand-computed values, the ignite metric and the report writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from medssl_monai.evaluation.classification import (
    ClassificationMetric,
    ClassificationReportHandler,
    aggregate_by_video,
    classification_metrics,
    harmonic_mean,
    video_bootstrap,
    video_bootstrap_all,
)

LABELS = np.array([0, 1, 2, 1, 0, 1])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # 0 -> 0
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.2, 0.3, 0.5],  # 2 -> 2
        [0.5, 0.4, 0.1],  # 1 -> 0 (missed positive)
        [0.3, 0.6, 0.1],  # 0 -> 1 (false positive)
        [0.1, 0.1, 0.8],  # 1 -> 2 (missed positive)
    ]
)


def test_metrics_hand_computed():
    m = classification_metrics(LABELS, PROBS, positive_classes=[1])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # binary (class 1 vs rest): tp 1, fn 2, tn 2, fp 1
    assert m["sensitivity"] == pytest.approx(1 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["binary_accuracy"] == pytest.approx(3 / 6)
    assert m["harmonic_mean"] == pytest.approx(2 * (1 / 3) * (2 / 3) / 1.0)
    # AUROC of scores p1 = [.2,.8,.3,.4,.6,.1] for positives {.8,.4,.1} vs negatives {.2,.3,.6}:
    # pairs won: .8 > all 3; .4 > .2,.3; .1 > none -> 5 / 9
    assert m["auroc"] == pytest.approx(5 / 9)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 1], [0, 0, 1]]
    assert harmonic_mean(0, 0) == 0.0
    assert np.isnan(classification_metrics([0, 0], PROBS[:2])["auroc"])


def test_video_aggregation_and_bootstrap():
    ids = ["a", "a", "b", "b", "c", "c"]
    vids, vprobs, vlab = aggregate_by_video(ids, PROBS, [1, 1, 0, 0, 2, 2])
    assert vids == ["a", "b", "c"] and vlab.tolist() == [1, 0, 2]
    np.testing.assert_allclose(vprobs[0], [0.4, 0.5, 0.1])
    with pytest.raises(ValueError):
        aggregate_by_video(ids, PROBS, [1, 0, 0, 0, 2, 2])
    ci = video_bootstrap("accuracy", ids, LABELS, PROBS, n_resamples=200, seed=0)
    assert ci["estimate"] == pytest.approx(0.5) and ci["ci_low"] <= 0.5 <= ci["ci_high"]
    allci = video_bootstrap_all(ids, [1, 1, 0, 0, 2, 2], PROBS, n_resamples=100, seed=0)
    assert set(allci) >= {"accuracy", "auroc", "sensitivity"}
    assert allci["accuracy"]["ci_low"] <= allci["accuracy"]["estimate"] <= allci["accuracy"]["ci_high"]


def test_rank_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    p = rng.dirichlet(np.ones(3), 50).round(1)  # rounding makes ties
    assert classification_metrics(y, p, [1, 2])["auroc"] == pytest.approx(
        roc_auc_score(np.isin(y, [1, 2]), p[:, 1:].sum(1))
    )


def test_ignite_metric_and_report(tmp_path):
    logits = torch.log(torch.tensor(PROBS, dtype=torch.float32))
    batches = [
        {"label": torch.tensor(LABELS[:3]), "video_id": ["a", "b", "c"], "frame_index": torch.tensor([0, 0, 0])},
        {"label": torch.tensor(LABELS[3:]), "video_id": ["b", "d", "e"], "frame_index": torch.tensor([1, 0, 0])},
    ]

    def step(engine, batch):
        i = 0 if batch["video_id"][0] == "a" else 3
        return {"pred": logits[i : i + 3], "label": batch["label"]}

    engine = Engine(step)
    ClassificationMetric("harmonic_mean", output_transform=lambda o: (o["pred"], o["label"])).attach(engine, "hm")
    ClassificationReportHandler(tmp_path, ["n", "l", "a"], n_resamples=50).attach(engine)
    engine.run(batches)
    assert engine.state.metrics["hm"] == pytest.approx(4 / 9)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["frame"]["accuracy"]["estimate"] == pytest.approx(0.5)
    assert report["video"]["n"] == 5
    assert (tmp_path / "confusion_matrix_frames.png").is_file()
    assert (tmp_path / "roc_frames.png").is_file() and (tmp_path / "roc_videos.png").is_file()
    assert (tmp_path / "video_predictions.csv").read_text().splitlines()[0].startswith("video_id,label,pred")
