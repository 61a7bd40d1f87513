"""Classification on frozen clip features: weighted kNN and a linear probe (sklearn).

DISCOVR (Mishra et al., arXiv 2506.11777) evaluates the video teacher's CLS features by kNN and linear-probe
classification (normal vs abnormal). The kNN is supervised: the training clips vote with their labels, so it is not a
zero-shot evaluation (only the encoder is frozen and untrained on the labels). The kNN is DINO's weighted vote: the
``k`` nearest training clips by cosine similarity ``s`` vote with weight ``exp(s / T)`` (T = 0.07), implemented with
sklearn's ``KNeighborsClassifier`` and a callable weight. The linear probe is ``StandardScaler`` +
``LogisticRegression`` with balanced class weights (the reference's VideoMAE-style torch linear probe is the evaluation
bundle's ``train.yaml``, scored on TEST by its ``evaluate.yaml``).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["l2_normalize", "knn_predict_proba", "linear_probe_predict_proba"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def knn_predict_proba(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
) -> tuple[np.ndarray, np.ndarray]:
    """DINO-style weighted kNN: class probabilities ``N x C`` and the classes (sorted labels).

    Features are L2-normalised, so the Euclidean distance ``d`` gives the cosine similarity ``1 - d^2 / 2``.
    ``k`` is capped at the number of training clips.
    """
    x_train, x = l2_normalize(train_features), l2_normalize(features)
    k = max(1, min(int(k), len(x_train)))

    def weights(dist: np.ndarray) -> np.ndarray:
        return np.exp((1.0 - dist**2 / 2.0) / temperature)

    clf = KNeighborsClassifier(n_neighbors=k, weights=weights).fit(x_train, np.asarray(train_labels))
    return clf.predict_proba(x), clf.classes_


def linear_probe_predict_proba(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    C: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic-regression probe on standardised features: probabilities ``N x C`` and the classes.

    Raises:
        ValueError: fewer than two classes in ``train_labels``.
    """
    y = np.asarray(train_labels)
    if len(np.unique(y)) < 2:
        raise ValueError("linear probe needs both classes in the training features")
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", random_state=seed)
    )
    clf.fit(np.asarray(train_features, dtype=np.float64), y)
    return clf.predict_proba(np.asarray(features, dtype=np.float64)), clf.classes_
