"""The cross-validated probing protocol: hand-computed metrics, TRAIN-only fitting, claims and their schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import r2_score, roc_auc_score

from medssl_monai.evaluation.protocol import (
    CLAIM_KEYS,
    ClippedStandardScaler,
    KNNAnomaly,
    ProbeData,
    evaluate_row,
    fit_predict,
    label_efficiency,
    metric_auroc,
    metric_mae,
    metric_r2,
    paired_claims,
    probe_rows,
    validate_claims,
    validate_controls,
    write_json,
)


def test_hand_computed_metrics():
    t, p = np.array([10.0, 20.0, 30.0, 40.0]), np.array([12.0, 18.0, 30.0, 44.0])
    assert metric_mae(t, p) == pytest.approx(2.0)  # (2 + 2 + 0 + 4) / 4
    assert metric_r2(t, p) == pytest.approx(1 - 24.0 / 500.0)  # SS_res 4+4+0+16, SS_tot 225+25+25+225
    # 3 of the 4 positive-negative pairs ordered, one tied (counts 1/2): (3 + 0.5) / 4
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8])
    assert metric_auroc(y, s) == pytest.approx(0.875)
    assert np.isnan(metric_auroc(np.ones(4), s)) and np.isnan(metric_r2(np.ones(3), np.zeros(3)))
    # vectorised over resample rows, as sklearn row by row
    rng = np.random.default_rng(0)
    ys, ss = rng.integers(0, 2, (5, 30)), rng.normal(size=(5, 30))
    ts, ps = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    np.testing.assert_allclose(metric_auroc(ys, ss), [roc_auc_score(a, b) for a, b in zip(ys, ss)])
    np.testing.assert_allclose(metric_r2(ts, ps), [r2_score(a, b) for a, b in zip(ts, ps)])


def test_knn_anomaly_scores_distance_to_normal_only():
    # normal fitting samples along x and y; the abnormal one along -x must be ignored by the fit
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    det = KNNAnomaly(k=1).fit(x, np.array([0, 0, 1]))
    s = det.decision_function(np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]))
    # cosine distance to the nearest normal: 0; 1 (orthogonal to y, opposite to x); 1 - cos 45 deg
    np.testing.assert_allclose(s, [0.0, 1.0, 1.0 - np.sqrt(0.5)], atol=1e-12)


def _data(n: int = 60, seed: int = 0, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    ef = rng.uniform(20, 70, n)
    x = np.c_[ef / 10 + rng.normal(0, noise, n), rng.normal(size=(n, 4))]
    return x, ef, (ef < 50).astype(int)


@pytest.mark.parametrize("task", ["ef", "abnormal_lin", "abnormal_knn", "anomaly", "progression"])
def test_probe_fits_train_only_and_learns(task):
    x, ef, ab = _data()
    xt, eft, abt = _data(seed=1)
    y, yt = (ef, eft) if task == "ef" else (ab, abt)
    groups = np.arange(len(x)) // 2  # two rows per "video": folds keep them together
    s, info = fit_predict(task, x, y, groups, xt, seed=0)
    s2, _ = fit_predict(task, x, y, groups, xt, seed=0)
    np.testing.assert_array_equal(s, s2)  # deterministic, and the evaluation labels are not an argument at all
    assert set(info) == {"params", "cv_score"}
    if task == "ef":
        assert metric_r2(yt, s) > 0.8
    else:
        assert metric_auroc(yt, s) > 0.85


def test_evaluate_row_marks_missing_data_not_applicable():
    x, ef, ab = _data(80)
    split = np.where(np.arange(80) < 56, "TRAIN", "TEST")
    echo = ProbeData(x, {"ef": ef, "abnormal": ab}, split, np.arange(80))
    res, scores = evaluate_row(echo, None, eval_splits=("TEST",), n_resamples=100)
    assert res["progression"] == "n/a" and "progression" not in scores
    assert set(scores) == {"ef", "abnormal_lin", "abnormal_knn", "anomaly"}
    cell = res["ef"]["r2"]
    assert cell["ci_low"] <= cell["estimate"] <= cell["ci_high"] and len(scores["ef"]) == 24


def test_paired_claims_schema_and_verdicts(tmp_path):
    y = np.linspace(30.0, 70.0, 20)
    err = np.arange(1.0, 21.0)
    scores = {"m_ssl": {"ef": y + err}, "m_random": {"ef": y + err + 0.5}}
    labels = {"ef": y}
    claims = paired_claims([("m", "m_ssl", "m_random")], scores, labels, n_resamples=300)
    assert [c["metric"] for c in claims] == ["ef_mae", "ef_r2"]
    mae = claims[0]
    assert set(CLAIM_KEYS) <= set(mae)
    assert mae["higher_is_better"] is False and mae["diff"] == pytest.approx(-0.5)
    assert mae["diff_ci95"] == pytest.approx([-0.5, -0.5]) and mae["verdict"] == "ssl better"
    validate_claims(claims)
    path = write_json(tmp_path / "claims.json", claims, validate_claims)
    assert json.loads(path.read_text())[0]["method"] == "m"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({}, "must be a list"),
        ([{"method": "m"}], "lacks"),
        ([{**dict.fromkeys(CLAIM_KEYS, "x")}], "higher_is_better"),
    ],
)
def test_validate_claims_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_claims(bad)


def test_validate_claims_checks_numbers_and_interval():
    good = {
        "method": "tvrl",
        "claim": "tvrl_ssl higher than tvrl_random on EF R2",
        "metric": "ef_r2",
        "higher_is_better": True,
        "ssl": 0.5,
        "baseline": 0.25,
        "diff": 0.25,
        "diff_ci95": [0.1, 0.4],
    }
    validate_claims([good])
    for key, value, match in (
        ("diff_ci95", [0.4, 0.1], "low > high"),
        ("diff_ci95", [0.1], r"\[low, high\]"),
        ("ssl", float("nan"), "finite"),
        ("diff", 0.3, "ssl - baseline"),
    ):
        with pytest.raises(ValueError, match=match):
            validate_claims([{**good, key: value}])
    validate_controls({"oracle_row": "oracle", "ef_r2": 0.99, "abnormal_auroc": 1.0})
    with pytest.raises(ValueError, match="abnormal_auroc"):
        validate_controls({"oracle_row": "oracle", "ef_r2": 0.99})


def _assert_close_tree(a, b, path=""):
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close_tree(u, v, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, err_msg=path)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_probe_rows_in_processes_match_one_process():
    """Rows probed by two spawned workers: the same results, in the rows' order, as in this process."""
    split = np.where(np.arange(80) < 56, "TRAIN", "TEST")
    rows = {}
    for seed, name in enumerate(["b_row", "a_row", "series_only"]):
        x, ef, ab = _data(80, seed=seed)
        data = ProbeData(x, {"ef": ef, "abnormal": ab, "progression": ab}, split, np.arange(80))
        rows[name] = (None, data) if name == "series_only" else (data, None)
    kw = dict(eval_splits=("TEST",), n_resamples=50, seed=0, label_fractions=(0.5, 1.0), label_seeds=(0, 1))
    serial = probe_rows(rows, **kw, jobs=1)
    parallel = probe_rows(rows, **kw, jobs=2)
    assert list(serial) == list(parallel) == list(rows)
    assert serial["series_only"][2] is None and serial["a_row"][2]["1"]["n_train"] == 56
    assert serial["series_only"][0]["ef"] == "n/a" and "progression" in serial["series_only"][1]
    _assert_close_tree(serial, parallel)
    # the same as evaluate_row called directly
    res, scores = evaluate_row(rows["a_row"][0], None, eval_splits=("TEST",), n_resamples=50, seed=0)
    _assert_close_tree((res, scores), serial["a_row"][:2])


def test_label_efficiency_counts_and_improves():
    x, ef, ab = _data(200, noise=1.0)
    split = np.where(np.arange(200) < 140, "TRAIN", "VAL")
    data = ProbeData(x, {"ef": ef, "abnormal": ab}, split, np.arange(200))
    out = label_efficiency(data, fractions=(0.1, 1.0), seeds=(0, 1), eval_splits=("VAL",))
    assert out["0.1"]["n_train"] == 14 and len(out["0.1"]["r2"]) == 2
    assert out["1"]["n_train"] == 140 and len(out["1"]["r2"]) == 1 and out["1"]["r2_std"] == 0.0
    assert out["1"]["r2_mean"] >= out["0.1"]["r2_mean"] - 0.02


def test_the_ridge_path_scores_every_alpha_as_grid_search_does():
    """The EF probe's one-SVD-per-fold alpha search gives GridSearchCV's fold-mean R2, choice and predictions."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import Pipeline

    from medssl_monai.evaluation.protocol import RIDGE_ALPHAS, fit_predict, ridge_cv_scores

    rng = np.random.default_rng(0)
    for n, d in ((120, 8), (90, 300)):  # more samples than features, and fewer
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d)
        x[:, 0] = 3.0  # a constant feature: the scaler leaves it at 0
        x[0, 4] = 1e4  # an outlier past the clip in most folds
        y = 50.0 + x[:, 1:4] @ np.array([2.0, -1.0, 0.5]) + rng.normal(scale=2.0, size=n)
        groups = np.repeat(np.arange(n // 3), 3)
        cv = GroupKFold(n_splits=5, shuffle=True, random_state=0)
        model = Pipeline([("scale", ClippedStandardScaler()), ("m", Ridge())])
        search = GridSearchCV(model, {"m__alpha": list(RIDGE_ALPHAS)}, scoring="r2", cv=cv).fit(x, y, groups=groups)
        np.testing.assert_allclose(
            ridge_cv_scores(x, y, groups, cv, RIDGE_ALPHAS),
            search.cv_results_["mean_test_score"],
            rtol=1e-8,
            atol=1e-10,
        )
        pred, info = fit_predict("ef", x, y, groups, x[:10], seed=0)
        assert info["params"] == search.best_params_
        np.testing.assert_allclose(pred, search.best_estimator_.predict(x[:10]), rtol=1e-9)


def test_the_scaler_clips_at_ten_train_standard_deviations():
    scaler = ClippedStandardScaler().fit(np.array([[0.0], [2.0]]))  # mean 1, std 1
    np.testing.assert_array_equal(scaler.transform(np.array([[1.0], [3.0], [100.0], [-50.0]]))[:, 0], [0, 2, 10, -10])


def test_a_nearly_constant_feature_cannot_blow_up_the_ef_probe():
    """A unit that is almost silent on the probe's TRAIN videos and active on an evaluation video (seen in UCL's
    25 % label subsets: predictions of EF 308 %) moves a prediction by at most the clip."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    n, m, d = 150, 60, 20
    x = rng.normal(size=(n + m, d))
    y = 55.0 + 8.0 * x[:, 1] + rng.normal(scale=1.0, size=n + m)
    x[:n, 0] = rng.normal(scale=1e-6, size=n)  # nearly silent on the TRAIN videos
    x[n:, 0] = 1.0  # active on every evaluation video: about 1e6 TRAIN std
    groups = np.arange(n)
    pred, info = fit_predict("ef", x[:n], y[:n], groups, x[n:], seed=0)
    assert r2_score(y[n:], pred) > 0.8 and 20 < pred.min() and pred.max() < 90
    # the same probe with an unclipped scaler (and the alpha chosen above) is thrown off by that one unit
    plain = Pipeline([("scale", StandardScaler()), ("m", Ridge(alpha=info["params"]["m__alpha"]))]).fit(x[:n], y[:n])
    assert np.abs(plain.predict(x[n:]) - 55.0).max() > 1000
