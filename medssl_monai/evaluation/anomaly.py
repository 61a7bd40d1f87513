"""One-class video anomaly detection on frozen clip features, and AUROC / AP with bootstrap intervals.

DISCOVR (Mishra et al., arXiv 2506.11777) reports anomaly detection on the video teacher's CLS features with no trained
classifier: fit on *normal* clips only, score a test clip by its distance to the normal ones. Here the score is the mean
cosine distance to the ``k`` nearest normal training clips (sklearn ``NearestNeighbors``); abnormal hearts should lie
farther from the normal manifold. The paper's exact scoring script is not in the reference snapshot.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from medssl_monai.evaluation.bootstrap import bootstrap_ci

__all__ = ["knn_anomaly_scores", "safe_auroc", "safe_average_precision", "binary_score_metrics"]

logger = logging.getLogger(__name__)


def knn_anomaly_scores(
    normal_features: np.ndarray, features: np.ndarray, k: int = 5, metric: str = "cosine"
) -> np.ndarray:
    """Mean distance of each row of ``features`` to its ``k`` nearest rows of ``normal_features`` (higher = more
    anomalous). ``k`` is capped at the number of normal clips."""
    normal_features = np.asarray(normal_features, dtype=np.float64)
    if len(normal_features) == 0:
        raise ValueError("knn_anomaly_scores needs at least one normal clip to fit on")
    k = max(1, min(int(k), len(normal_features)))
    nn = NearestNeighbors(n_neighbors=k, metric=metric).fit(normal_features)
    dist, _ = nn.kneighbors(np.asarray(features, dtype=np.float64))
    return dist.mean(axis=1)


def safe_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """``roc_auc_score``, or NaN when only one class is present (small test sets, bootstrap resamples)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def safe_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """``average_precision_score``, or NaN without a positive."""
    labels = np.asarray(labels)
    if labels.sum() == 0:
        return float("nan")
    return float(average_precision_score(labels, scores))


def _with_ci(fn, labels: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int, confidence_level: float) -> dict:
    estimate = fn(labels, scores)
    out = {"estimate": estimate, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(len(labels))}
    if not np.isfinite(estimate) or n_resamples < 1:
        return out
    try:
        res = bootstrap_ci(
            fn, labels, scores, n_resamples=n_resamples, seed=seed, confidence_level=confidence_level, vectorized=False
        )
    except ValueError as e:  # every resample degenerate
        logger.warning("bootstrap failed: %s", e)
        return out
    out.update(ci_low=res.ci[0], ci_high=res.ci[1])
    return out


def binary_score_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, dict]:
    """AUROC and average precision of ``scores`` for binary ``labels`` (1 = abnormal), each with a paired
    percentile bootstrap interval (:func:`~medssl_monai.evaluation.bootstrap.bootstrap_ci`; NaN when undefined).
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return {
        "auroc": _with_ci(safe_auroc, labels, scores, n_resamples, seed, confidence_level),
        "ap": _with_ci(safe_average_precision, labels, scores, n_resamples, seed, confidence_level),
    }
