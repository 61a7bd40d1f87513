"""The EF-subspace one-class diagnostic: it finds abnormal videos whose signal the whole-space distance drowns."""

from __future__ import annotations

import numpy as np
import pytest

from medssl_monai.evaluation.protocol import metric_auroc
from medssl_monai.evaluation.subspace import ef_subspace_anomaly


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EF in 2 informative dimensions (abnormal = low EF), 200 nuisance dimensions unrelated to it."""
    rng = np.random.default_rng(seed)
    ef = rng.uniform(20, 75, n)
    abnormal = (ef < 40).astype(int)
    signal = np.stack([(ef - 50) / 15, (ef - 50) / 15 + 0.3 * rng.normal(size=n)], axis=1)
    nuisance = 5.0 * rng.normal(size=(n, 200))
    return np.concatenate([signal + 0.1 * rng.normal(size=(n, 2)), nuisance], axis=1), ef, abnormal


def test_the_subspace_recovers_what_the_whole_space_distance_misses():
    x_tr, ef_tr, ab_tr = _planted(300, 0)
    x_ev, _, ab_ev = _planted(200, 1)
    groups = np.arange(len(x_tr))
    whole = ef_subspace_anomaly(x_tr, ef_tr, ab_tr, groups, x_ev, None)
    sub = ef_subspace_anomaly(x_tr, ef_tr, ab_tr, groups, x_ev, 2)
    assert whole.shape == sub.shape == (200,)
    a_whole, a_sub = metric_auroc(ab_ev, whole), metric_auroc(ab_ev, sub)
    assert a_whole < 0.8  # the nuisance dimensions dominate the cosine distance
    assert a_sub > 0.9 and a_sub - a_whole > 0.15  # in the EF directions the abnormal videos stand apart


def test_components_are_checked():
    x, ef, ab = _planted(50, 2)
    with pytest.raises(ValueError, match="n_components"):
        ef_subspace_anomaly(x, ef, ab, np.arange(50), x, 1)
    with pytest.raises(ValueError, match="n_components"):
        ef_subspace_anomaly(x, ef, ab, np.arange(50), x, 203)
