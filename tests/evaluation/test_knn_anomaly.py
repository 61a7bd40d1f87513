"""kNN / linear-probe classification, one-class kNN anomaly scores, AUROC/AP with bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import torch
from ignite.engine import Engine

from medssl_monai.evaluation.anomaly import binary_score_metrics, knn_anomaly_scores, safe_auroc
from medssl_monai.evaluation.features import (
    FeatureEvaluationHandler,
    evaluate_features,
    extract_features,
    results_table,
)
from medssl_monai.evaluation.knn import knn_predict_proba, linear_probe_predict_proba


def test_knn_anomaly_scores_by_hand():
    normal = np.array([[1.0, 0.0], [0.0, 1.0]])
    test = np.array([[1.0, 0.0], [-1.0, 0.0]])
    # cosine distances: to [1,0]: 0 and 1 -> mean 0.5; [-1,0]: 2 and 1 -> 1.5
    np.testing.assert_allclose(knn_anomaly_scores(normal, test, k=2), [0.5, 1.5])
    np.testing.assert_allclose(knn_anomaly_scores(normal, test, k=1), [0.0, 1.0])


def test_knn_weighted_vote():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    proba, classes = knn_predict_proba(train, labels, np.array([[0.1, 1.0]]), k=3, temperature=0.07)
    assert classes.tolist() == [0, 1]
    sims = np.array([0.0995037, 0.1937, 0.9950372])  # cosine of [0.1, 1] to each training row
    w = np.exp(sims / 0.07)
    np.testing.assert_allclose(proba[0, 1], w[2] / w.sum(), rtol=1e-3)


def test_metrics_and_probe_on_separable_features():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 10)
    x = rng.normal(size=(30, 4)) + 3.0 * y[:, None] * np.array([1, 0, 0, 0])
    proba, _ = linear_probe_predict_proba(x, y, x)
    assert safe_auroc(y, proba[:, 1]) > 0.95
    m = binary_score_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), n_resamples=200)
    assert m["auroc"]["estimate"] == 0.75  # 3 of 4 positive-negative pairs ordered
    assert abs(m["ap"]["estimate"] - (0.5 * 1.0 + 0.5 * (2 / 3))) < 1e-12  # AP = sum (R_n - R_{n-1}) P_n
    assert m["auroc"]["ci_low"] <= 0.75 <= m["auroc"]["ci_high"]
    assert np.isnan(binary_score_metrics(np.array([0, 0]), np.array([0.1, 0.2]))["auroc"]["estimate"])
    # clusters in different directions (the anomaly score is a cosine distance)
    x = rng.normal(size=(30, 4)) + np.where(y[:, None] == 1, [0.0, 4.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0])
    fit = np.r_[0:10, 20:25]
    ev = np.r_[10:20, 25:30]
    res = evaluate_features(x[fit], y[fit], x[ev], y[ev], n_resamples=50)
    assert res["anomaly"]["auroc"]["estimate"] > 0.8 and res["knn"]["auroc"]["estimate"] > 0.8
    assert "| encoder |" in results_table({"a": res})


def test_feature_extraction_and_handler(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2 * 2, 4))
    batches = [
        {
            "image": torch.randint(0, 255, (2, 3, 2, 2, 2), dtype=torch.uint8),
            "Abnormal": torch.tensor([0, 1]),
            "split": ["TRAIN", "TRAIN"],
            "video_id": ["a", "b"],
        },
        {
            "image": torch.randint(0, 255, (2, 3, 2, 2, 2), dtype=torch.uint8),
            "Abnormal": torch.tensor([0, 1]),
            "split": ["TEST", "TRAIN"],
            "video_id": ["c", "d"],
        },
    ]
    out = extract_features(net, batches)
    assert out["features"].shape == (4, 4) and out["split"].tolist() == ["TRAIN", "TRAIN", "TEST", "TRAIN"]

    handler = FeatureEvaluationHandler(tmp_path, n_resamples=10)
    feats = iter([torch.randn(2, 4), torch.randn(2, 4)])

    def step(engine, batch):
        return {"pred": next(feats)}

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    saved = json.loads((tmp_path / "feature_metrics.json").read_text())
    assert saved["counts"] == {"fit": 3, "fit_abnormal": 2, "eval": 1, "eval_abnormal": 0}
    assert (tmp_path / "roc.png").is_file()  # one class in the eval clips: curves listed as undefined


def test_handler_scores_the_trained_probe_head(tmp_path):
    # the linear probe trained by the evaluation bundle is scored on the evaluated split from the same features
    torch.manual_seed(0)
    feats = torch.randn(12, 4)
    labels = [0, 1] * 6
    splits = ["TRAIN"] * 6 + ["TEST"] * 6
    head = torch.nn.Linear(4, 2)
    handler = FeatureEvaluationHandler(tmp_path, n_resamples=10, k=3, anomaly_k=2, head=head)
    batches = [{"Abnormal": torch.tensor(labels[i : i + 6]), "split": splits[i : i + 6]} for i in (0, 6)]
    it = iter([feats[:6], feats[6:]])
    engine = Engine(lambda e, b: {"pred": next(it)})
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    res = engine.state.metrics["feature_evaluation"]["trained_head"]
    with torch.no_grad():
        logits = head(feats[6:])
    y = np.array(labels[6:])
    assert res["accuracy"] == float((logits.argmax(-1).numpy() == y).mean())
    assert abs(res["auroc"]["estimate"] - safe_auroc(y, torch.softmax(logits, -1)[:, 1].numpy())) < 1e-12
    assert "trained probe head" in (tmp_path / "feature_metrics.md").read_text()
