"""One-class anomaly scores inside the label-relevant directions of a frozen embedding (a benchmark diagnostic).

The benchmark's one-class probe (:class:`~.protocol.KNNAnomaly`) scores a video by its cosine distance to the
nearest normal TRAIN videos in the *whole* embedding. A self-supervised embedding may spread videos most along
what varies most in the data (gain, texture, geometry) rather than along the motion that defines "abnormal", so a
distance in the whole space can rank abnormal videos no better than a random network even when the embedding holds
the information (its EF probe is better). This diagnostic separates the two: it projects the standardised features
onto the ``n_components`` partial-least-squares directions of EF fitted on TRAIN (Wold et al., PLS regression) and
runs the same one-class probe there. It uses the TRAIN EF labels, so it is not an unsupervised score: it says where
the abnormal information is, not how a one-class detector would do without labels.
"""

from __future__ import annotations

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from medssl_monai.evaluation.protocol import fit_predict

__all__ = ["ef_subspace_anomaly"]


def ef_subspace_anomaly(
    train_x: np.ndarray,
    train_ef: np.ndarray,
    train_abnormal: np.ndarray,
    train_groups: np.ndarray,
    x: np.ndarray,
    n_components: int | None,
    seed: int = 0,
) -> np.ndarray:
    """One-class anomaly scores of ``x`` (higher = more anomalous) in the EF-PLS subspace of the TRAIN features.

    Args:
        train_x: ``N x D`` TRAIN features.
        train_ef: ``N`` TRAIN EF values (%): the PLS target.
        train_abnormal: ``N`` TRAIN 0/1 labels: the one-class probe keeps the normal ones and chooses ``k`` by
            grouped CV, exactly as the benchmark's ``anomaly`` task.
        train_groups: ``N`` video ids (CV folds never split one).
        x: ``M x D`` features to score.
        n_components: PLS directions, at least 2 (the probe's cosine distance is constant in one dimension);
            ``None``: no projection (the benchmark's whole-embedding score).
        seed: CV fold shuffling.

    Raises:
        ValueError: ``n_components`` is below 2 or above the feature dimension.
    """
    train_x, x = np.asarray(train_x, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if n_components is not None:
        if not 2 <= int(n_components) <= train_x.shape[1]:
            raise ValueError(
                f"n_components must be in [2, {train_x.shape[1]}] (a cosine distance in 1-D is constant), "
                f"got {n_components}"
            )
        scale = StandardScaler().fit(train_x)
        pls = PLSRegression(n_components=int(n_components), scale=False)
        pls.fit(scale.transform(train_x), np.asarray(train_ef, dtype=np.float64))
        train_x, x = pls.transform(scale.transform(train_x)), pls.transform(scale.transform(x))
    scores, _ = fit_predict("anomaly", train_x, train_abnormal, train_groups, x, seed=seed)
    return scores
