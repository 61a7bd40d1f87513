"""The benchmark's probing protocol: cross-validated probes on TRAIN, metrics with intervals, paired claims.

Every row of the table (an encoder, or a control of :mod:`.controls`) is a matrix of frozen features, one row per
video (the features of its clips averaged, :func:`~.multiclip.group_mean`). Then, for every task:

============ ========================================================== ==================================
task         probe (scikit-learn, fit on TRAIN only)                    metric
============ ========================================================== ==================================
ef           standardised ridge; alpha by 5-fold GroupKFold CV          MAE, R2
abnormal_lin standardised balanced logistic regression; C by 5-fold     AUROC
             StratifiedGroupKFold CV (ROC AUC)
abnormal_knn standardised cosine kNN (distance-weighted); k by CV        AUROC
anomaly      mean cosine distance to the k nearest *normal* TRAIN        AUROC
             videos (standardised); k by CV
progression  as abnormal_lin, on the timed-series features               AUROC
============ ========================================================== ==================================

"Standardised" is :class:`ClippedStandardScaler`: TRAIN mean and std, the result clipped to +-10 std. Without the
clip, a dimension that is almost constant on the probe's TRAIN videos (a rarely active unit, common in a 5 % or
25 % label subset) reaches hundreds of std on an evaluation video and one ridge prediction an EF of 300 %.

Hyper-parameters are chosen by cross-validation inside TRAIN with the folds split by video (``groups``), so no
video is in a training and a validation fold at once and no evaluation label is seen
(:func:`fit_predict` has no argument for them). Every metric gets a percentile bootstrap interval over the
evaluation videos (:func:`score`); two rows are compared by the paired bootstrap of their difference on the same
videos (:func:`paired_claims`, :func:`~.bootstrap.paired_bootstrap_diff`). :func:`label_efficiency` refits the EF
probe on 5 %, 25 % and 100 % of the TRAIN videos.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medssl_monai.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_diff
from medssl_monai.evaluation.processes import map_in_processes

__all__ = [
    "TASKS",
    "TASK_METRICS",
    "ProbeData",
    "ClippedStandardScaler",
    "metric_mae",
    "metric_r2",
    "metric_auroc",
    "KNNAnomaly",
    "fit_predict",
    "score",
    "evaluate_row",
    "paired_claims",
    "label_efficiency",
    "CLAIM_KEYS",
    "validate_claims",
    "validate_controls",
    "write_json",
]

TASKS = ("ef", "abnormal_lin", "abnormal_knn", "anomaly", "progression")
#: task -> ((metric, higher is better), ...)
TASK_METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "ef": (("mae", False), ("r2", True)),
    "abnormal_lin": (("auroc", True),),
    "abnormal_knn": (("auroc", True),),
    "anomaly": (("auroc", True),),
    "progression": (("auroc", True),),
}
logger = logging.getLogger(__name__)

#: standardised features are clipped to +- this many TRAIN standard deviations (:class:`ClippedStandardScaler`)
Z_CLIP = 10.0
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))
KNN_KS = (5, 10, 20, 40)
ANOMALY_KS = (1, 5, 20)


# ---- metrics, vectorised over bootstrap resamples (rows) -------------------------------------------------


def metric_mae(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean absolute error over the last axis."""
    return np.abs(np.asarray(t, dtype=np.float64) - np.asarray(p, dtype=np.float64)).mean(axis=-1)


def metric_r2(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Coefficient of determination ``1 - SS_res / SS_tot`` over the last axis (NaN when ``t`` is constant)."""
    t, p = np.asarray(t, dtype=np.float64), np.asarray(p, dtype=np.float64)
    ss_res = ((t - p) ** 2).sum(axis=-1)
    ss_tot = ((t - t.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


def metric_auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC over the last axis by the rank-sum (Mann-Whitney) formula, ties counted half; NaN with one class."""
    y = np.asarray(y).astype(bool)
    ranks = rankdata(np.asarray(s, dtype=np.float64), method="average", axis=-1)
    n1 = y.sum(axis=-1).astype(np.float64)
    n0 = y.shape[-1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(axis=-1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mae": metric_mae,
    "r2": metric_r2,
    "auroc": metric_auroc,
}


# ---- probes ---------------------------------------------------------------------------------------------


class KNNAnomaly(ClassifierMixin, BaseEstimator):
    """One-class anomaly score: mean cosine distance to the ``k`` nearest *normal* (label 0) fitting samples.

    A classifier in scikit-learn's sense only so that ``GridSearchCV(scoring="roc_auc")`` can choose ``k``: the
    fit uses the labels only to keep the normal samples, ``decision_function`` is the distance (higher = more
    anomalous).
    """

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, x: np.ndarray, y: np.ndarray) -> KNNAnomaly:
        y = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        normal = np.asarray(x)[y == 0]
        if len(normal) == 0:
            raise ValueError("KNNAnomaly needs normal (label 0) samples to fit")
        self.nn_ = NearestNeighbors(n_neighbors=min(self.k, len(normal)), metric="cosine").fit(normal)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        dist, _ = self.nn_.kneighbors(np.asarray(x))
        return dist.mean(axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """1 where the distance exceeds the median distance of ``x`` (only the classifier interface needs it)."""
        d = self.decision_function(x)
        return (d > np.median(d)).astype(int)


class ClippedStandardScaler(StandardScaler):
    """``StandardScaler`` whose output is clipped to ``[-clip, clip]`` TRAIN standard deviations.

    A linear probe's output is unbounded: a feature that is nearly constant on the fitted videos and not on new
    ones would otherwise move a prediction by hundreds of std times its weight. Well-behaved features rarely reach
    the clip (on the published benchmark only the UCL rows' cells moved, and the pixel std map's in the third
    decimal).
    """

    def __init__(self, *, copy: bool = True, with_mean: bool = True, with_std: bool = True, clip: float = Z_CLIP):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.clip = clip

    def transform(self, X: Any, copy: bool | None = None) -> np.ndarray:
        return np.clip(super().transform(X, copy=copy), -self.clip, self.clip)


def _search(task: str, n_train: int, seed: int) -> tuple[Pipeline, dict[str, list], str]:
    if task == "ef":
        return Pipeline([("scale", ClippedStandardScaler()), ("m", Ridge())]), {"m__alpha": list(RIDGE_ALPHAS)}, "r2"
    if task in ("abnormal_lin", "progression"):
        clf = LogisticRegression(class_weight="balanced", max_iter=5000, random_state=seed)
        return Pipeline([("scale", ClippedStandardScaler()), ("m", clf)]), {"m__C": list(LOGISTIC_CS)}, "roc_auc"
    if task == "abnormal_knn":
        ks = [k for k in KNN_KS if k <= max(1, int(0.7 * n_train))] or [1]
        knn = KNeighborsClassifier(metric="cosine", weights="distance", algorithm="brute")
        return Pipeline([("scale", ClippedStandardScaler()), ("m", knn)]), {"m__n_neighbors": ks}, "roc_auc"
    if task == "anomaly":
        anomaly = Pipeline([("scale", ClippedStandardScaler()), ("m", KNNAnomaly())])
        return anomaly, {"m__k": list(ANOMALY_KS)}, "roc_auc"
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def fit_predict(
    task: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_groups: np.ndarray,
    x: np.ndarray,
    seed: int = 0,
    n_splits: int = 5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Choose ``task``'s hyper-parameter by grouped CV on TRAIN, refit on all of TRAIN, score ``x``.

    The evaluation labels are not an argument: nothing here can depend on them.

    Args:
        task: one of :data:`TASKS`.
        train_x, train_y: ``N x D`` features and labels (EF in %, or 0/1).
        train_groups: ``N`` video (or subject) ids: CV folds never split a group.
        x: ``M x D`` features to score.
        seed: fold shuffling and solver seed.
        n_splits: CV folds (fewer when there are fewer groups).

    Returns:
        ``M`` predictions (EF) or scores (higher = positive / anomalous), and ``{"params", "cv_score"}``.
    """
    train_x = np.asarray(train_x, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(train_y, dtype=np.float64 if task == "ef" else np.int64)
    groups = np.asarray(train_groups)
    n_groups = len(np.unique(groups))
    if task != "ef":
        counts = np.bincount(y, minlength=2)
        if (counts < 2).any():
            raise ValueError(f"{task}: TRAIN needs at least 2 samples of each class, got {counts.tolist()}")
        folds = min(n_splits, n_groups, int(counts.min()))
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        folds = min(n_splits, n_groups)
        cv = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    if task == "ef":
        return _fit_predict_ridge(train_x, y, groups, x, cv)
    model, grid, scoring = _search(task, len(y), seed)
    search = GridSearchCV(model, grid, scoring=scoring, cv=cv, refit=True, error_score=np.nan)
    search.fit(train_x, y, groups=groups)
    best = search.best_estimator_
    if task == "ef":
        out = best.predict(x)
    elif task == "anomaly":
        out = best.decision_function(x)
    else:
        out = best.predict_proba(x)[:, list(best.classes_).index(1)]
    return np.asarray(out, dtype=np.float64), {"params": search.best_params_, "cv_score": float(search.best_score_)}


def ridge_cv_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cv: Any, alphas: Sequence[float]) -> np.ndarray:
    """Mean validation R2 of ``ClippedStandardScaler`` + ``Ridge(alpha)`` over the folds of ``cv``, for every alpha.

    The scores ``GridSearchCV`` gives for that pipeline, from one SVD per fold instead of one fit per alpha and
    fold: with the fold's scaled, centred features ``U S V^T`` the ridge weights are ``V diag(s / (s^2 + alpha))
    U^T (y - mean y)`` and the intercept ``mean y``.
    """
    from sklearn.metrics import r2_score

    alphas = np.asarray(alphas, dtype=np.float64)
    per_fold = []
    for tr, va in cv.split(x, y, groups):
        scaler = ClippedStandardScaler().fit(x[tr])
        a, b = scaler.transform(x[tr]), scaler.transform(x[va])
        offset, y_mean = a.mean(axis=0), y[tr].mean()
        u, sv, vt = np.linalg.svd(a - offset, full_matrices=False)
        uty = u.T @ (y[tr] - y_mean)
        proj = (b - offset) @ vt.T
        shrink = sv[None, :] / (sv[None, :] ** 2 + alphas[:, None])  # alphas x k
        preds = proj @ (shrink * uty[None, :]).T + y_mean  # n_val x alphas
        per_fold.append([r2_score(y[va], preds[:, j]) for j in range(len(alphas))])
    return np.mean(np.asarray(per_fold), axis=0)


def _fit_predict_ridge(
    train_x: np.ndarray, y: np.ndarray, groups: np.ndarray, x: np.ndarray, cv: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """The EF probe: alpha by :func:`ridge_cv_scores` (first of equals, as ``GridSearchCV``), refit on all of
    TRAIN."""
    scores = ridge_cv_scores(train_x, y, groups, cv, RIDGE_ALPHAS)
    best = int(np.nanargmax(scores))
    alpha = RIDGE_ALPHAS[best]
    model = Pipeline([("scale", ClippedStandardScaler()), ("m", Ridge(alpha=alpha))]).fit(train_x, y)
    return np.asarray(model.predict(x), dtype=np.float64), {
        "params": {"m__alpha": alpha},
        "cv_score": float(scores[best]),
    }


def score(
    task: str, labels: np.ndarray, scores: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """``{metric: {"estimate", "ci_low", "ci_high"}}`` of ``task`` with percentile bootstrap intervals over the
    evaluation videos (the same resamples for every row with the same ``seed``; NaN where undefined)."""
    out = {}
    for name, _ in TASK_METRICS[task]:
        fn = _METRICS[name]
        est = float(fn(labels, scores))
        lo = hi = float("nan")
        if n_resamples > 0 and math.isfinite(est):
            try:
                res = bootstrap_ci(fn, labels, scores, n_resamples=n_resamples, seed=seed, confidence_level=level)
                lo, hi = res.ci
            except ValueError:  # every resample degenerate
                pass
        out[name] = {"estimate": est, "ci_low": float(lo), "ci_high": float(hi)}
    return out


# ---- rows -----------------------------------------------------------------------------------------------


@dataclass
class ProbeData:
    """One row's features, one per video (or series), with labels and splits.

    Attributes:
        x: ``N x D`` features.
        labels: task -> ``N`` labels (``"ef"``: EF in %; ``"abnormal"``: 0/1; ``"progression"``: 0/1).
        split: ``N`` split names (``TRAIN``, ``VAL``, ``TEST``).
        groups: ``N`` video / subject ids.
    """

    x: np.ndarray
    labels: dict[str, np.ndarray]
    split: np.ndarray
    groups: np.ndarray

    def masks(self, eval_splits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        s = np.char.upper(np.asarray(self.split).astype(str))
        return s == "TRAIN", np.isin(s, [e.upper() for e in eval_splits])


_TASK_LABEL = {"ef": "ef", "abnormal_lin": "abnormal", "abnormal_knn": "abnormal", "anomaly": "abnormal"}


def evaluate_row(
    echo: ProbeData | None,
    series: ProbeData | None = None,
    tasks: Sequence[str] = TASKS,
    eval_splits: Sequence[str] = ("VAL", "TEST"),
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every task of one row: ``({task: {metric: cell} | "n/a", "_probe": {...}}, {task: evaluation scores})``.

    Echo tasks need ``echo``, ``progression`` needs ``series``; a task whose data is ``None`` is ``"n/a"``.
    """
    from medssl_monai.evaluation.benchmark import NOT_APPLICABLE

    results: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    chosen: dict[str, Any] = {}
    for task in tasks:
        data, key = (series, "progression") if task == "progression" else (echo, _TASK_LABEL[task])
        if data is None:
            results[task] = NOT_APPLICABLE
            continue
        tr, ev = data.masks(eval_splits)
        y = data.labels[key]
        s, info = fit_predict(task, data.x[tr], y[tr], data.groups[tr], data.x[ev], seed=seed)
        results[task] = score(task, y[ev], s, n_resamples=n_resamples, seed=seed)
        scores[task] = s
        chosen[task] = info
    results["_probe"] = chosen
    return results, scores


def _verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    if lo > 0:
        return "ssl better" if higher_is_better else "baseline better"
    if hi < 0:
        return "baseline better" if higher_is_better else "ssl better"
    return "no difference shown"


def paired_claims(
    comparisons: Sequence[tuple[str, str, str]],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The paired comparison "SSL row minus baseline row" for every task metric both rows have.

    Args:
        comparisons: ``(method, ssl_row, baseline_row)`` triples, e.g. ``("tvrl", "tvrl_ssl", "tvrl_random")``.
        scores: row -> task -> evaluation scores (from :func:`evaluate_row`; the same videos in the same order).
        labels: task -> evaluation labels.
        n_resamples, seed, level: of :func:`~.bootstrap.paired_bootstrap_diff` (the same resamples for every
            comparison with the same ``seed``).
        names: optional metric display names (``"ef_r2"`` -> ``"EF R2"``) for the claim text.

    Returns:
        One claim per (comparison, metric): ``method, claim, metric, higher_is_better, ssl, baseline, diff,
        diff_ci95`` (:data:`CLAIM_KEYS`) plus ``ssl_row, baseline_row, ssl_ci95, baseline_ci95, n_eval, verdict``.
    """
    claims = []
    for method, a, b in comparisons:
        for task in TASKS:
            if task not in scores.get(a, {}) or task not in scores.get(b, {}):
                continue
            for name, up in TASK_METRICS[task]:
                metric = f"{task}_{name}" if task != "ef" else f"ef_{name}"
                try:
                    res = paired_bootstrap_diff(
                        _METRICS[name],
                        labels[task],
                        scores[a][task],
                        scores[b][task],
                        n_resamples=n_resamples,
                        seed=seed,
                        confidence_level=level,
                    )
                except ValueError as e:  # e.g. one class only among the evaluation labels: no claim possible
                    logger.warning("no claim %s - %s on %s: %s", a, b, metric, e)
                    continue
                shown = (names or {}).get(metric, metric)
                claims.append(
                    make_claim(
                        method,
                        a,
                        b,
                        metric,
                        up,
                        res.a,
                        res.b,
                        res.diff,
                        res.diff_ci,
                        res.ci_a,
                        res.ci_b,
                        len(labels[task]),
                        shown,
                    )
                )
    return claims


def make_claim(
    method: str,
    ssl_row: str,
    baseline_row: str,
    metric: str,
    higher_is_better: bool,
    ssl: float,
    baseline: float,
    diff: float,
    diff_ci95: Sequence[float],
    ssl_ci95: Sequence[float],
    baseline_ci95: Sequence[float],
    n_eval: int,
    shown: str | None = None,
) -> dict[str, Any]:
    """One paired comparison in the layout of ``claims.json`` (:data:`CLAIM_KEYS` plus ``ssl_row, baseline_row,
    ssl_ci95, baseline_ci95, n_eval, verdict``); ``shown`` is the metric's display name in the claim text."""
    word = "higher" if higher_is_better else "lower"
    return {
        "method": method,
        "claim": f"{ssl_row} {word} than {baseline_row} on {shown or metric} (paired, same evaluation units)",
        "metric": metric,
        "higher_is_better": bool(higher_is_better),
        "ssl": float(ssl),
        "baseline": float(baseline),
        "diff": float(diff),
        "diff_ci95": [float(v) for v in diff_ci95],
        "ssl_row": ssl_row,
        "baseline_row": baseline_row,
        "ssl_ci95": [float(v) for v in ssl_ci95],
        "baseline_ci95": [float(v) for v in baseline_ci95],
        "n_eval": int(n_eval),
        "verdict": _verdict(float(diff_ci95[0]), float(diff_ci95[1]), bool(higher_is_better)),
    }


def headline_claims(comparisons: Sequence[Mapping[str, Any]], declared: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The declared headline claims (one per paper claim), looked up among all paired ``comparisons``.

    Each declared entry names ``method``, ``claim`` (the paper's claim, in words), ``metric``, ``ssl_row`` and
    ``baseline_row``; the result is the matching comparison with ``claim`` replaced by those words and the
    comparison's own text kept as ``test``. A declared claim with no matching comparison (its rows were not run)
    is logged and left out, so ``claims.json`` never carries a made-up number.
    """
    index = {(c["ssl_row"], c["baseline_row"], c["metric"]): c for c in comparisons}
    out = []
    for d in declared:
        key = (d["ssl_row"], d["baseline_row"], d["metric"])
        if key not in index:
            logger.warning("headline claim %s (%s - %s on %s) has no comparison: not run", d["method"], *key)
            continue
        c = dict(index[key])
        c["test"], c["claim"], c["method"] = c["claim"], str(d["claim"]), str(d["method"])
        out.append(c)
    return out


def label_efficiency(
    data: ProbeData,
    fractions: Sequence[float] = (0.05, 0.25, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    eval_splits: Sequence[str] = ("VAL", "TEST"),
) -> dict[str, dict[str, Any]]:
    """EF probe (:func:`fit_predict`, CV inside the subset) on a fraction of the TRAIN videos, per seed.

    A fraction below 1 draws ``max(10, round(f * N))`` TRAIN videos without replacement (seeded); at 1 all of
    them (one run: the seeds would agree). Returns ``{"<f>": {"n_train", "r2": [per seed], "mae": [...],
    "r2_mean", "r2_std", "mae_mean", "mae_std"}}``.
    """
    tr, ev = data.masks(eval_splits)
    idx_tr = np.flatnonzero(tr)
    y = data.labels["ef"]
    out = {}
    for f in fractions:
        n = len(idx_tr) if f >= 1 else min(len(idx_tr), max(10, int(round(f * len(idx_tr)))))
        runs = {"r2": [], "mae": []}
        for s in seeds if f < 1 else seeds[:1]:
            sub = np.sort(np.random.default_rng(s).choice(idx_tr, n, replace=False)) if n < len(idx_tr) else idx_tr
            pred, _ = fit_predict("ef", data.x[sub], y[sub], data.groups[sub], data.x[ev], seed=s)
            runs["r2"].append(float(metric_r2(y[ev], pred)))
            runs["mae"].append(float(metric_mae(y[ev], pred)))
        entry: dict[str, Any] = {"n_train": int(n), **runs}
        for k, v in runs.items():
            entry[f"{k}_mean"] = float(np.mean(v))
            entry[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out[f"{f:g}"] = entry
    return out


def _probe_row(
    data: tuple[ProbeData | None, ProbeData | None],
    eval_splits: Sequence[str],
    n_resamples: int,
    seed: int,
    label_fractions: Sequence[float],
    label_seeds: Sequence[int],
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, Any]] | None]:
    echo, series = data
    results, scores = evaluate_row(echo, series, eval_splits=eval_splits, n_resamples=n_resamples, seed=seed)
    if echo is None:
        return results, scores, None
    return results, scores, label_efficiency(echo, label_fractions, label_seeds, eval_splits)


def probe_rows(
    rows: Mapping[str, tuple[ProbeData | None, ProbeData | None]],
    eval_splits: Sequence[str] = ("VAL", "TEST"),
    n_resamples: int = 2000,
    seed: int = 0,
    label_fractions: Sequence[float] = (0.05, 0.25, 1.0),
    label_seeds: Sequence[int] = (0, 1, 2),
    jobs: int = 1,
) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, Any]] | None]]:
    """:func:`evaluate_row` and :func:`label_efficiency` (``None`` for a row without echo features) of every
    row: ``{row: (results, scores, efficiency)}`` in the order of ``rows``.

    Rows are independent, so ``jobs`` > 1 probes them in that many spawned processes with one BLAS thread each:
    the probes' small scikit-learn fits gain nothing from a second BLAS thread (measured: 5.5 s per row with two,
    5.4 s with one beside another row), so on a 2-core machine two processes halve the time. The results match
    the one-process ones up to BLAS summation order (differences of about 1e-15).
    """
    import functools

    probe = functools.partial(  # picklable: a module-level function with plain arguments
        _probe_row,
        eval_splits=list(eval_splits),
        n_resamples=int(n_resamples),
        seed=int(seed),
        label_fractions=list(label_fractions),
        label_seeds=list(label_seeds),
    )
    out: dict[str, Any] = {}
    for name, result in zip(rows, map_in_processes(probe, list(rows.values()), jobs)):
        out[name] = result
        logger.info("probed %s", name)
    return out


# ---- machine-readable results ---------------------------------------------------------------------------

#: keys every object of ``claims.json`` has
CLAIM_KEYS = ("method", "claim", "metric", "higher_is_better", "ssl", "baseline", "diff", "diff_ci95")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_claims(claims: Any) -> None:
    """Raise ``ValueError`` unless ``claims`` is a list of objects with :data:`CLAIM_KEYS` of the right types
    (``diff_ci95`` a ``[low, high]`` pair with ``low <= diff <= high`` up to resampling, numbers finite)."""
    if not isinstance(claims, list):
        raise ValueError(f"claims must be a list, got {type(claims).__name__}")
    for i, c in enumerate(claims):
        if not isinstance(c, dict):
            raise ValueError(f"claim {i} is not an object")
        missing = [k for k in CLAIM_KEYS if k not in c]
        if missing:
            raise ValueError(f"claim {i} lacks {missing}")
        for k in ("method", "claim", "metric"):
            if not isinstance(c[k], str) or not c[k]:
                raise ValueError(f"claim {i}: {k} must be a non-empty string")
        if not isinstance(c["higher_is_better"], bool):
            raise ValueError(f"claim {i}: higher_is_better must be a boolean")
        for k in ("ssl", "baseline", "diff"):
            if not _is_number(c[k]) or not math.isfinite(c[k]):
                raise ValueError(f"claim {i}: {k} must be a finite number, got {c[k]!r}")
        ci = c["diff_ci95"]
        if not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) and math.isfinite(v) for v in ci)):
            raise ValueError(f"claim {i}: diff_ci95 must be [low, high], got {ci!r}")
        if ci[0] > ci[1]:
            raise ValueError(f"claim {i}: diff_ci95 low > high: {ci}")
        if abs(c["diff"] - (c["ssl"] - c["baseline"])) > 1e-9 * max(1.0, abs(c["diff"])):
            raise ValueError(f"claim {i}: diff != ssl - baseline")


def validate_controls(controls: Any) -> None:
    """Raise ``ValueError`` unless ``controls`` holds the oracle row's finite ``ef_r2`` and ``abnormal_auroc``."""
    if not isinstance(controls, dict):
        raise ValueError("controls must be an object")
    for k in ("ef_r2", "abnormal_auroc"):
        v = controls.get(k)
        if not _is_number(v) or not math.isfinite(v):
            raise ValueError(f"controls: {k} must be a finite number, got {v!r}")
    if not isinstance(controls.get("oracle_row"), str):
        raise ValueError("controls: oracle_row must name the oracle row")


def write_json(path: str | Path, obj: Any, validate: Callable[[Any], None] | None = None) -> Path:
    """Validate (if given) and write ``obj`` as indented JSON."""
    if validate is not None:
        validate(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path
