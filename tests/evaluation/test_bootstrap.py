from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from medssl_monai.evaluation.bootstrap import bootstrap_ci, bootstrap_pooled_dice, dice_summary


def test_identical_frames_zero_width() -> None:
    n = 50
    res = bootstrap_pooled_dice(np.full(n, 900), np.full(n, 1000), np.full(n, 1100), n_resamples=2000)
    assert res.estimate == pytest.approx(1800 / 2100)
    assert res.ci == (res.estimate, res.estimate)
    assert res.reference_90 == (res.estimate, res.estimate)
    assert res.n_resamples == 2000 and res.n_invalid == 0


def test_two_valued_case_matches_binomial() -> None:
    # 24 perfect frames (inter = pred = true = 1) and 16 missed ones (inter 0, pred = true = 1): a resample's pooled
    # Dice is 2K / (2 * 40) = K / 40 with K ~ Binomial(40, 0.6), so its percentiles are binomial quantiles
    n, k = 40, 24
    inter = np.r_[np.ones(k), np.zeros(n - k)]
    ones = np.ones(n)
    res = bootstrap_pooled_dice(inter, ones, ones, n_resamples=10000, seed=0)
    assert res.estimate == pytest.approx(0.6)
    # (the quantile levels sit >= 0.006 from the CDF jumps, > 3.5 standard errors of a quantile at R = 10,000)
    assert res.ci == (binom.ppf(0.025, n, 0.6) / n, binom.ppf(0.975, n, 0.6) / n) == (18 / 40, 30 / 40)
    assert res.reference_90 == (binom.ppf(0.05, n, 0.6) / n, binom.ppf(0.95, n, 0.6) / n) == (19 / 40, 29 / 40)
    assert res.distribution.mean() == pytest.approx(0.6, abs=0.003)
    assert res.distribution.var() == pytest.approx(0.6 * 0.4 / n, rel=0.05)


def test_seeded_and_modes_agree() -> None:
    rng = np.random.default_rng(1)
    t, p = rng.normal(55, 10, 60), rng.normal(55, 10, 60)
    vec = bootstrap_ci(lambda a, b: np.abs(a - b).mean(axis=1), t, p, n_resamples=500, seed=7)
    loop = bootstrap_ci(lambda a, b: np.abs(a - b).mean(), t, p, n_resamples=500, seed=7, vectorized=False)
    chunked = bootstrap_ci(lambda a, b: np.abs(a - b).mean(axis=1), t, p, n_resamples=500, seed=7, batch_size=64)
    assert vec.estimate == pytest.approx(np.abs(t - p).mean())
    np.testing.assert_allclose(vec.distribution, loop.distribution)
    assert vec.ci == pytest.approx(loop.ci) and vec.reference_90 == pytest.approx(loop.reference_90)
    # a different chunking draws different indices but the same distribution
    assert chunked.ci == pytest.approx(vec.ci, rel=0.1)
    assert vec.ci[0] < vec.reference_90[0] < vec.estimate < vec.reference_90[1] < vec.ci[1]


def test_non_finite_resamples_are_dropped() -> None:
    x = np.array([0.0, 0.0, 0.0, 1.0])
    # the statistic is undefined (nan) when a resample holds no 1
    res = bootstrap_ci(lambda a: np.mean(a) if a.any() else np.nan, x, n_resamples=400, vectorized=False)
    assert 0 < res.n_invalid < 400 and res.distribution.size == 400 - res.n_invalid
    assert np.all(np.isfinite(res.distribution))


def test_dice_summary_groups() -> None:
    inter = np.array([8, 8, 2, 2])
    size = np.array([10, 10, 4, 4])
    res = dice_summary(inter, size, size, ["ED", "ED", "ES", "ES"], n_resamples=200)
    assert set(res) == {"overall", "ED", "ES"}
    assert res["overall"].estimate == pytest.approx(40 / 56)
    assert res["ED"].estimate == pytest.approx(0.8) and res["ES"].estimate == pytest.approx(0.5)
    assert res["ED"].ci == (0.8, 0.8)
    assert set(res["overall"].as_dict()) >= {"estimate", "ci_low", "ci_high", "reference_90_low", "reference_90_high"}


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_ci(lambda a, b: a.mean(1), np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="confidence_level"):
        bootstrap_ci(lambda a: a.mean(1), np.ones(3), confidence_level=1.5)
    with pytest.raises(ValueError, match="one value per resample"):
        bootstrap_ci(lambda a: a.mean(), np.ones(3), n_resamples=10)


def test_grouped_bootstrap_resamples_videos_as_units() -> None:
    rng = np.random.default_rng(1)
    n = 30
    # per video an ED and an ES frame whose Dice go together (a good video is good at both phases)
    quality = rng.uniform(0.5, 1.0, n)
    true = np.repeat(rng.integers(800, 1200, n), 2).astype(float)
    inter = np.round(true * np.repeat(quality, 2))
    pred = true.copy()
    video = np.repeat([f"v{i}" for i in range(n)], 2)
    frames = bootstrap_pooled_dice(inter, pred, true, n_resamples=4000, seed=0)
    videos = bootstrap_pooled_dice(inter, pred, true, n_resamples=4000, seed=0, groups=video)
    assert videos.estimate == pytest.approx(frames.estimate)
    # hand check: per-video summed counts bootstrapped as frames give the same distribution
    summed = [np.add.reduceat(a, np.arange(0, 2 * n, 2)) for a in (inter, pred, true)]
    by_hand = bootstrap_pooled_dice(*summed, n_resamples=4000, seed=0)
    np.testing.assert_allclose(videos.distribution, by_hand.distribution)
    # correlated pairs: treating them as independent frames understates the spread
    assert (videos.ci[1] - videos.ci[0]) > 1.2 * (frames.ci[1] - frames.ci[0])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_pooled_dice(inter, pred, true, groups=video[:-1])


def test_paired_interval_excludes_zero_where_marginal_intervals_overlap() -> None:
    from medssl_monai.evaluation.bootstrap import paired_bootstrap_diff

    # EF truth 0, encoder A's absolute errors 1, 2, ..., 20 (MAE 10.5), encoder B's exactly 0.5 larger on every
    # video (MAE 11.0): the videos vary far more than the encoders differ. Any resample draws the same videos for
    # both, so B's MAE exceeds A's by exactly 0.5 in every resample: the paired interval is [0.5, 0.5].
    err = np.arange(1.0, 21.0)
    truth = np.zeros(20)
    res = paired_bootstrap_diff(
        lambda t, p: np.abs(t - p).mean(axis=-1), truth, err + 0.5, err, n_resamples=2000, seed=0
    )
    assert (res.a, res.b, res.diff) == (11.0, 10.5, 0.5)
    assert res.diff_ci == pytest.approx((0.5, 0.5))
    # each marginal interval spans about +-2.6 around its MAE (sd of the errors 5.9 / sqrt(20) = 1.3): they overlap
    assert res.ci_b[1] > res.ci_a[0] + 3.0
    assert res.ci_a[0] < 11.0 < res.ci_a[1] and res.ci_b[0] < 10.5 < res.ci_b[1]
    assert res.n_invalid == 0 and res.as_dict()["diff_ci"] == list(res.diff_ci)


def test_paired_bootstrap_resamples_groups_together() -> None:
    from medssl_monai.evaluation.bootstrap import paired_bootstrap_diff

    # two clips per video with values (v, v): resampling videos keeps both clips of a video together, so a
    # resample's mean of A - B equals the mean over the drawn videos, never a mix of half-videos
    a = np.repeat([1.0, 2.0, 3.0], 2)
    b = np.zeros(6)
    groups = np.repeat(["x", "y", "z"], 2)
    res = paired_bootstrap_diff(lambda t, p: p.mean(axis=-1), b, a, b, groups=groups, n_resamples=500, seed=3)
    assert res.diff == pytest.approx(2.0)
    assert 1.0 <= res.diff_ci[0] <= res.diff_ci[1] <= 3.0
    with pytest.raises(ValueError, match="same number of items"):
        paired_bootstrap_diff(lambda t, p: p.mean(axis=-1), b[:5], a[:5], b[:5], groups=groups[:5])
