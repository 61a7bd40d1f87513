"""The DISCOVR one-class anomaly detector is fit on the *normal TRAIN* videos only, as the evaluation bundle runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from medssl_monai.evaluation import anomaly, features
from medssl_monai.evaluation.features import FeatureEvaluationHandler, evaluate_features

EVAL_CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "discovr_echo_evaluation" / "configs"

# (video_id, split, Abnormal, number of clips): every split and label, one normal TRAIN video with two clips
VIDEOS = [
    ("tr_n0", "TRAIN", 0, 2),
    ("tr_n1", "TRAIN", 0, 1),
    ("tr_n2", "TRAIN", 0, 1),
    ("tr_a0", "TRAIN", 1, 1),
    ("tr_a1", "TRAIN", 1, 1),
    ("va_n0", "VAL", 0, 1),
    ("va_a0", "VAL", 1, 1),
    ("te_n0", "TEST", 0, 1),
    ("te_n1", "TEST", 0, 1),
    ("te_a0", "TEST", 1, 2),
]


def _handler_kwargs() -> dict:
    """The FeatureEvaluationHandler arguments of discovr_echo_evaluation's evaluate.yaml that choose the splits."""
    ev = ConfigParser()
    ev.read_config([str(EVAL_CONFIGS / "train.yaml"), str(EVAL_CONFIGS / "evaluate.yaml")])
    raw = next(h for h in ev.get("evaluate#handlers") if h["_target_"].endswith("FeatureEvaluationHandler"))
    assert raw["fit_split"] == "TRAIN" and raw["label_key"] == "@label_key" and raw["eval_splits"] == "@eval_splits"
    return {
        "fit_split": raw["fit_split"],
        "label_key": ev.get("label_key"),
        "eval_splits": ev.get("eval_splits"),
        "anomaly_k": ev.get("anomaly_k"),
        "group_key": raw["group_key"],
    }


def test_anomaly_detector_is_fit_on_normal_train_videos_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run through the evaluation bundle's handler settings, the kNN anomaly model sees exactly the normal TRAIN
    videos (clip features averaged per video) when fitted, never an abnormal or a VAL/TEST one, and scores the TEST
    videos only."""
    kwargs = _handler_kwargs()
    label_key = kwargs["label_key"]
    assert [s.upper() for s in kwargs["eval_splits"]] == ["TEST"]

    rng = np.random.default_rng(0)
    video_feature = {vid: rng.normal(size=6) for vid, *_ in VIDEOS}
    clips = []  # one row per clip; the clips of a video average to its feature
    for vid, split, label, n in VIDEOS:
        offsets = [np.zeros(6)] if n == 1 else [np.full(6, 0.5), np.full(6, -0.5)]
        clips += [(vid, split, label, video_feature[vid] + o) for o in offsets]
    order = rng.permutation(len(clips))  # splits and labels interleaved across batches
    clips = [clips[i] for i in order]
    batches = [
        {
            label_key: torch.tensor([c[2] for c in clips[i : i + 3]]),
            "split": [c[1] for c in clips[i : i + 3]],
            "video_id": [c[0] for c in clips[i : i + 3]],
            "pred": torch.tensor(np.stack([c[3] for c in clips[i : i + 3]]), dtype=torch.float32),
        }
        for i in range(0, len(clips), 3)
    ]

    fits: list[np.ndarray] = []
    scored: list[np.ndarray] = []
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    class SpyNearestNeighbors(anomaly.NearestNeighbors):
        def fit(self, X, y=None):  # noqa: N803 (sklearn's argument name)
            fits.append(np.asarray(X))
            return super().fit(X, y)

        def kneighbors(self, X=None, n_neighbors=None, return_distance=True):  # noqa: N803
            scored.append(np.asarray(X))
            return super().kneighbors(X, n_neighbors, return_distance)

    real_scores = features.knn_anomaly_scores

    def spy_scores(normal_features: np.ndarray, query: np.ndarray, **kw: int) -> np.ndarray:
        calls.append((np.asarray(normal_features), np.asarray(query)))
        return real_scores(normal_features, query, **kw)

    monkeypatch.setattr(anomaly, "NearestNeighbors", SpyNearestNeighbors)
    monkeypatch.setattr(features, "knn_anomaly_scores", spy_scores)

    handler = FeatureEvaluationHandler(tmp_path, n_resamples=10, k=3, **kwargs)
    engine = Engine(lambda e, b: {"pred": b["pred"]})
    handler.attach(engine)
    engine.run(batches, max_epochs=1)

    def ids_of(rows: np.ndarray) -> list[str]:
        """The video whose feature each row is (exactly one must match)."""
        out = []
        for row in rows:
            hits = [vid for vid, f in video_feature.items() if np.allclose(row, f, atol=1e-5)]
            assert len(hits) == 1, row
            out.append(hits[0])
        return sorted(out)

    assert len(calls) == 1 and len(fits) == 1 and len(scored) == 1
    normal_train = ["tr_n0", "tr_n1", "tr_n2"]
    assert ids_of(calls[0][0]) == normal_train  # what the handler hands to the anomaly module
    assert ids_of(fits[0]) == normal_train  # what the nearest-neighbour model is fitted on
    assert ids_of(scored[0]) == ["te_a0", "te_n0", "te_n1"]  # scored: TEST videos only, never VAL
    counts = engine.state.metrics["feature_evaluation"]["counts"]
    assert counts == {"fit": 5, "fit_abnormal": 2, "eval": 3, "eval_abnormal": 1}
    assert engine.state.metrics["feature_evaluation"]["anomaly"]["auroc"]["n"] == 3


def test_abnormal_fit_rows_do_not_reach_the_anomaly_model() -> None:
    """With k = 1, a TEST clip identical to an abnormal TRAIN clip scores a positive distance (it would score 0 if
    abnormal rows were in the normal set), while one identical to a normal TRAIN clip scores 0."""
    fit = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fit_labels = np.array([0, 0, 1])
    test = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    _, scores = evaluate_features(
        fit, fit_labels, test, np.array([1, 0]), k=1, anomaly_k=1, n_resamples=0, return_scores=True
    )
    np.testing.assert_allclose(scores["anomaly"], [1.0, 0.0], atol=1e-12)  # cosine distance to the nearest normal
