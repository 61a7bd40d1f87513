"""The progression task's positive controls (medssl_monai.evaluation.growth_oracle)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medssl_monai.data.synthetic.timed_series import make_timed_series, sample_subject
from medssl_monai.data.timed_series import load_timed_series_datalist
from medssl_monai.evaluation.controls import BrokenProtocolError
from medssl_monai.evaluation.growth_oracle import check_growth_oracle, growth_features, lesion_sizes
from medssl_monai.evaluation.protocol import fit_predict, metric_auroc


def test_growth_features_by_hand():
    times = [[0.0, 1.0, 3.0], [5.0]]
    sizes = [np.array([0.1, 0.3, 0.7]), np.array([0.4])]
    x = growth_features(times, sizes, num_visits=3)
    # last interval (0.7 - 0.3) / 2; least squares over t = 0, 1, 3: slope 0.2 exactly (the points are on a line)
    np.testing.assert_allclose(x, [[0.7, 0.2, 0.2], [0.4, 0.0, 0.0]])
    blind = growth_features(times, sizes, num_visits=3, use_time=False)  # visit index 0, 1, 2
    np.testing.assert_allclose(blind[0], [0.7, 0.4, 0.3])
    last2 = growth_features(times, sizes, num_visits=2)  # only the last two visits are seen
    np.testing.assert_allclose(last2[0], [0.7, 0.2, 0.2])
    with pytest.raises(ValueError, match="num_visits"):
        growth_features(times, sizes, num_visits=0)


def _twin_cohort(n: int, seed: int = 0) -> tuple[list, list, np.ndarray]:
    """Subjects and time-stretched twins (same sizes, gaps x k) as the generator makes them."""
    rng = np.random.default_rng(seed)
    times, sizes, labels = [], [], []
    for _ in range(n):
        s = sample_subject(rng, threshold=1.0, horizon=2.0, min_visits=3, max_visits=6)
        k = float(np.exp(rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)))
        for stretch in (1.0, k):
            rate = s["rate"] / stretch
            times.append(s["times"] * stretch)
            sizes.append(s["sizes"])
            labels.append(int(s["size_last"] + rate * 2.0 >= 1.0))
    return times, sizes, np.array(labels)


def test_the_growth_oracle_separates_progression_and_the_time_blind_one_cannot():
    """With times the label is linear in the features (AUROC about 1); without, twins with identical sizes but
    different labels cap the score well below."""
    times, sizes, y = _twin_cohort(300)
    groups = np.repeat(np.arange(300), 2)  # a twin pair is one group: CV never splits it
    tr = groups < 200
    scores = {}
    for use_time in (True, False):
        x = growth_features(times, sizes, num_visits=6, use_time=use_time)
        s, _ = fit_predict("progression", x[tr], y[tr], groups[tr], x[~tr])
        scores[use_time] = metric_auroc(y[~tr], s)
    assert scores[True] >= 0.97
    check_growth_oracle(scores[True])
    assert scores[False] < scores[True] - 0.1
    with pytest.raises(BrokenProtocolError, match="growth oracle"):
        check_growth_oracle(scores[False] if scores[False] < 0.95 else 0.5)


def test_lesion_sizes_join_the_truth_by_image(tmp_path):
    root = make_timed_series(tmp_path / "series", num_subjects=6, image_size=32, seed=3)
    items = load_timed_series_datalist(root / "series.csv")
    sizes = lesion_sizes(root / "series.csv", items)
    truth = pd.read_csv(root / "SyntheticTruth.csv")
    for it, s in zip(items, sizes):
        rows = truth[truth["subject_id"] == it["subject_id"]].sort_values("time")
        np.testing.assert_allclose(s, rows["lesion_size_mm"].to_numpy())
        assert len(s) == len(it["times"])
    # the last size and growth separate the labels exactly like the generator's rule (threshold 1, horizon 2)
    rates = truth.groupby("subject_id")["growth_rate_mm_per_year"].first()
    for it, s in zip(items, sizes):
        assert it["label"] == int(s[-1] + rates[it["subject_id"]] * 2.0 >= 1.0)

    truth.drop(columns="lesion_size_mm").to_csv(root / "SyntheticTruth.csv", index=False)
    assert lesion_sizes(root / "series.csv", items) is None  # no sizes: no oracle rows
    truth.iloc[1:].to_csv(root / "SyntheticTruth.csv", index=False)
    with pytest.raises(ValueError, match="no lesion_size_mm for .*0.png"):
        lesion_sizes(root / "series.csv", items)
    (root / "SyntheticTruth.csv").unlink()
    assert lesion_sizes(root / "series.csv", items) is None
