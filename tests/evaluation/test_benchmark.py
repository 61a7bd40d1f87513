"""The representation benchmark protocol: hand-checked probes, test-label blindness, the table writer's checks."""

from __future__ import annotations

import numpy as np
import pytest

from medssl_monai.evaluation.benchmark import (
    NOT_APPLICABLE,
    MissingCellError,
    benchmark_chart,
    benchmark_table,
    fit_predict,
    probe_task,
    score_task,
    summarize_runs,
)


def _data(seed: int = 0, n: int = 40, d: int = 6):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, d))
    x[:, 0] += 4.0 * y  # two directions: separable by kNN, logistic regression and cosine distance alike
    x[:, 1] += 4.0 * (1 - y)
    return x, y


@pytest.mark.parametrize("task", ["ef", "abnormal_knn", "abnormal_lin", "anomaly", "progression"])
def test_probe_never_sees_test_labels(task):
    x, y = _data()
    xt, yt = _data(seed=1)
    y_fit = y * 30.0 + 40.0 if task == "ef" else y
    yt_eval = yt * 30.0 + 40.0 if task == "ef" else yt
    perm = np.random.default_rng(2).permutation(len(yt))
    a = probe_task(task, x, y_fit, xt, yt_eval, seeds=(0, 1), n_resamples=0)
    b = probe_task(task, x, y_fit, xt, yt_eval[perm], seeds=(0, 1), n_resamples=0)
    # the fit does not depend on the evaluation labels: the scores are identical whatever they are ...
    s = fit_predict(task, x, y_fit, xt, seed=0)
    np.testing.assert_array_equal(s, fit_predict(task, x, y_fit, xt, seed=0))
    # ... and permuting them only changes the metric computed afterwards (separable data: it gets worse)
    key = "mae" if task == "ef" else "auroc"
    better = a[key]["mean"] < b[key]["mean"] if task == "ef" else a[key]["mean"] > b[key]["mean"]
    assert better
    if task != "ef":
        assert a["auroc"]["mean"] > 0.9


def test_hand_computed_metrics():
    r = score_task("ef", np.array([10.0, 20.0, 30.0, 40.0]), np.array([12.0, 18.0, 30.0, 44.0]), n_resamples=0)
    assert r["mae"]["estimate"] == pytest.approx(2.0)  # (2 + 2 + 0 + 4) / 4
    assert r["r2"]["estimate"] == pytest.approx(1 - 24.0 / 500.0)  # 1 - SS_res / SS_tot
    r = score_task("anomaly", np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), n_resamples=200)
    assert r["auroc"]["estimate"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert r["auroc"]["ci_low"] <= 0.75 <= r["auroc"]["ci_high"]
    # one-class score: mean distance to the k nearest normal TRAIN clips
    normal = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = fit_predict("anomaly", normal, np.zeros(3), np.array([[1.0, 0.0], [-1.0, 0.0]]), resample=False, anomaly_k=1)
    np.testing.assert_allclose(s, [0.0, 1.0], atol=1e-12)  # [-1, 0] is orthogonal to [0, 1]: 1 - cos = 1
    assert summarize_runs([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0}
    assert summarize_runs([5.0]) == {"mean": 5.0, "std": 0.0}


def test_probe_seeds_resample_train_set():
    x, y = _data()
    xt, yt = _data(seed=1)
    r = probe_task("abnormal_lin", x, y, xt, yt, seeds=(0, 1, 2), n_resamples=100)
    assert len(r["auroc"]["values"]) == 3
    assert r["auroc"]["mean"] == pytest.approx(np.mean(r["auroc"]["values"]))
    assert r["auroc"]["std"] == pytest.approx(np.std(r["auroc"]["values"], ddof=1))


def _cell(m: float) -> dict:
    return {"mean": m, "std": 0.01, "ci_low": m - 0.1, "ci_high": m + 0.1}


COLUMNS = (("ef", "mae", "EF MAE", False), ("anomaly", "auroc", "anomaly AUROC", True), ("seg", "dice", "Dice", True))


def test_table_writer_refuses_missing_cells(tmp_path):
    ok = {
        "a_ssl": {"ef": {"mae": _cell(5.0)}, "anomaly": {"auroc": _cell(0.8)}, "seg": {"dice": _cell(0.9)}},
        "b_ssl": {"ef": {"mae": _cell(6.0)}, "anomaly": {"auroc": _cell(0.7)}, "seg": NOT_APPLICABLE},
    }
    table = benchmark_table(ok, COLUMNS)
    lines = table.strip().splitlines()
    assert lines[0] == "| encoder | EF MAE (down) | anomaly AUROC (up) | Dice (up) |"
    assert (
        lines[2]
        == "| a_ssl | 5.000 +- 0.010 [4.900, 5.100] | 0.800 +- 0.010 [0.700, 0.900] | 0.900 +- 0.010 [0.800, 1.000] |"
    )
    assert lines[3].endswith("| n/a |")
    assert benchmark_chart(ok, tmp_path / "c.png", COLUMNS).stat().st_size > 0
    missing = {"a_ssl": dict(ok["a_ssl"]), "b_ssl": {"ef": {"mae": _cell(6.0)}, "seg": NOT_APPLICABLE}}
    with pytest.raises(MissingCellError, match="b_ssl/anomaly/auroc"):
        benchmark_table(missing, COLUMNS)
    nan = {"a_ssl": {**ok["a_ssl"], "ef": {"mae": _cell(float("nan"))}}}
    with pytest.raises(MissingCellError, match="a_ssl/ef/mae"):
        benchmark_table(nan, COLUMNS)
    with pytest.raises(MissingCellError):
        benchmark_chart(missing, tmp_path / "d.png", COLUMNS)
