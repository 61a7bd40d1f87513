"""The representation benchmark: every encoder, one frozen-feature protocol, every task, one table and one chart.

Protocol (every encoder through the one encoder interface, :mod:`medssl_monai.encoders`):

- features come from :class:`~medssl_monai.encoders.ClipEncoder` (frozen, eval mode);
- every probe is *fit* on the TRAIN features and their labels only, then *scores* the evaluation features without
  seeing their labels (:func:`fit_predict` has no argument for them); metrics are computed afterwards
  (:func:`score_task`);
- tasks and probes:

  ============== ============================================ ===================================================
  task           probe                                        metric
  ============== ============================================ ===================================================
  ef             standardised ridge regression                MAE, R2
  abnormal_knn   DINO-weighted kNN (:mod:`.knn`)              AUROC
  abnormal_lin   standardised logistic regression (:mod:`.knn`) AUROC
  anomaly        mean kNN cosine distance to *normal* TRAIN   AUROC
                 clips (:mod:`.anomaly`)
  progression    standardised logistic regression on the      AUROC
                 timed-series features
  ============== ============================================ ===================================================

- probe seed ``s`` fits on a bootstrap resample (seed ``s``) of the TRAIN clips, so the spread over seeds shows how
  much the result depends on which labelled clips the probe saw; several seeds give mean +- std
  (:func:`summarize_runs`) and the first seed's paired percentile bootstrap interval over evaluation clips
  (:func:`~medssl_monai.evaluation.bootstrap.bootstrap_ci`).

:func:`benchmark_table` writes the markdown table and refuses a run with a missing cell (a cell that does not
apply must be marked :data:`NOT_APPLICABLE`) and, given ``oracle_row``, a run whose positive control scores below
EF R2 0.9 or abnormal AUROC 0.95 (:class:`~medssl_monai.evaluation.controls.BrokenProtocolError`: the protocol is
broken); :func:`benchmark_chart` writes the PNG. The cross-validated protocol of ``scripts/
benchmark_representations.py`` is :mod:`medssl_monai.evaluation.protocol`; its cells carry ``estimate`` and a
bootstrap interval instead of a mean and std over probe seeds, and both kinds of cell are written here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medssl_monai.evaluation.anomaly import knn_anomaly_scores, safe_auroc
from medssl_monai.evaluation.bootstrap import bootstrap_ci
from medssl_monai.evaluation.knn import knn_predict_proba

__all__ = [
    "NOT_APPLICABLE",
    "TASKS",
    "METRICS",
    "MissingCellError",
    "fit_predict",
    "score_task",
    "probe_task",
    "summarize_runs",
    "check_oracle_row",
    "benchmark_table",
    "benchmark_chart",
    "claims_chart",
    "monitor_chart",
]

#: a cell that does not apply to an encoder (e.g. segmentation without a spatial decoder)
NOT_APPLICABLE = "n/a"
TASKS = ("ef", "abnormal_knn", "abnormal_lin", "anomaly", "progression")
#: table columns: (task, metric, header, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("ef", "mae", "EF MAE", False),
    ("ef", "r2", "EF R2", True),
    ("abnormal_knn", "auroc", "abnormal kNN AUROC", True),
    ("abnormal_lin", "auroc", "abnormal linear AUROC", True),
    ("anomaly", "auroc", "one-class anomaly AUROC", True),
    ("progression", "auroc", "progression AUROC", True),
    ("segmentation", "dice", "few-label seg. Dice", True),
)


class MissingCellError(ValueError):
    """A benchmark run lacks a (encoder, metric) cell that was neither measured nor marked not applicable."""


def _standardised(model) -> object:
    return make_pipeline(StandardScaler(), model)


def fit_predict(
    task: str,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    seed: int = 0,
    resample: bool = True,
    k: int = 20,
    temperature: float = 0.07,
    anomaly_k: int = 5,
    ridge_alpha: float = 1.0,
    C: float = 1.0,
) -> np.ndarray:
    """Fit ``task``'s probe on the TRAIN features/labels and return its scores for ``features``.

    The evaluation labels are not an argument: nothing fit here can depend on them.

    Args:
        task: one of :data:`TASKS`.
        train_features, train_labels: ``N x D`` and ``N`` (EF values, or 0/1 with 1 = abnormal / progresses).
        features: ``M x D`` features to score.
        seed: probe seed (the TRAIN resample and the solver's ``random_state``).
        resample: fit on a bootstrap resample of the TRAIN clips (seed ``seed``); ``False``: all of them.
        k, temperature: kNN classifier (DINO weighting). anomaly_k: neighbours of the one-class score.
        ridge_alpha, C: ridge penalty and inverse logistic-regression penalty.

    Returns:
        ``M`` predictions (EF) or scores (higher = more likely positive / anomalous).
    """
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels)
    if resample:
        rng = np.random.default_rng(seed)
        for _ in range(100):  # a resample with both classes (classification) or any (regression)
            idx = rng.integers(0, len(x), len(x))
            if task == "ef" or len(np.unique(y[idx])) == len(np.unique(y)):
                break
        x, y = x[idx], y[idx]
    z = np.asarray(features, dtype=np.float64)
    if task == "ef":
        return _standardised(Ridge(alpha=ridge_alpha)).fit(x, y.astype(np.float64)).predict(z)
    y = y.astype(int)
    if task == "abnormal_knn":
        proba, classes = knn_predict_proba(x, y, z, k=k, temperature=temperature)
        return proba[:, list(classes).index(1)] if 1 in classes else np.zeros(len(z))
    if task in ("abnormal_lin", "progression"):
        if len(np.unique(y)) < 2:
            raise ValueError(f"{task}: the TRAIN labels hold one class only")
        clf = _standardised(LogisticRegression(C=C, max_iter=2000, class_weight="balanced", random_state=seed))
        return clf.fit(x, y).predict_proba(z)[:, 1]
    if task == "anomaly":
        return knn_anomaly_scores(x[y == 0], z, k=anomaly_k)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _mae(t: np.ndarray, p: np.ndarray) -> float:
    return float(mean_absolute_error(t, p))


def _r2(t: np.ndarray, p: np.ndarray) -> float:
    return float(r2_score(t, p)) if len(np.unique(t)) > 1 else float("nan")


_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"mae": _mae, "r2": _r2, "auroc": safe_auroc}


def score_task(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Metrics of ``task`` (``{"mae", "r2"}`` for EF, ``{"auroc"}`` otherwise), each ``{"estimate", "ci_low",
    "ci_high"}`` with a paired percentile bootstrap interval over the evaluation clips (NaN when undefined)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    names = ("mae", "r2") if task == "ef" else ("auroc",)
    if task != "ef":
        labels = labels.astype(int)
    out = {}
    for name in names:
        fn = _METRIC_FNS[name]
        est = fn(labels, scores)
        lo = hi = float("nan")
        if np.isfinite(est) and n_resamples > 0:
            try:
                res = bootstrap_ci(
                    fn,
                    labels,
                    scores,
                    n_resamples=n_resamples,
                    seed=seed,
                    confidence_level=confidence_level,
                    vectorized=False,
                )
                lo, hi = float(res.ci[0]), float(res.ci[1])
            except ValueError:  # every resample degenerate (one class)
                pass
        out[name] = {"estimate": float(est), "ci_low": lo, "ci_high": hi}
    return out


def probe_task(
    task: str,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    seeds: Sequence[int] = (0, 1, 2),
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    **probe_kwargs,
) -> dict[str, dict[str, float | list[float]]]:
    """:func:`fit_predict` for every probe seed, then :func:`score_task`.

    Returns:
        ``{metric: {"values": [one per seed], "mean", "std", "ci_low", "ci_high"}}``; the interval is the bootstrap
        interval of the first seed's probe.
    """
    per_seed = []
    for i, s in enumerate(seeds):
        scores = fit_predict(task, train_features, train_labels, features, seed=int(s), **probe_kwargs)
        per_seed.append(score_task(task, labels, scores, n_resamples if i == 0 else 0, int(s), confidence_level))
    out: dict[str, dict] = {}
    for name in per_seed[0]:
        values = [r[name]["estimate"] for r in per_seed]
        out[name] = {
            "values": values,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "ci_low": per_seed[0][name]["ci_low"],
            "ci_high": per_seed[0][name]["ci_high"],
        }
    return out


def summarize_runs(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of per-seed results."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def _value(cell: Mapping) -> float:
    """A cell's central value: ``mean`` over seeds, or the protocol's single ``estimate``."""
    return float(cell.get("mean", cell.get("estimate", np.nan)))


def _cell(value) -> str:
    if value == NOT_APPLICABLE:
        return NOT_APPLICABLE
    s = f"{_value(value):.3f}"
    if "std" in value:
        s += f" +- {value['std']:.3f}"
    if np.isfinite(value.get("ci_low", np.nan)):
        s += f" [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
    return s


def _check_cells(results: Mapping[str, Mapping[str, Mapping]], columns) -> None:
    missing = []
    for enc, tasks in results.items():
        for task, metric, _, _ in columns:
            r = tasks.get(task)
            if r == NOT_APPLICABLE:
                continue
            cell = r.get(metric) if isinstance(r, Mapping) else None
            if cell == NOT_APPLICABLE:
                continue
            if not isinstance(cell, Mapping) or not np.isfinite(_value(cell)):
                missing.append(f"{enc}/{task}/{metric}")
    if missing:
        raise MissingCellError(f"benchmark run has missing cells (measure them or mark them n/a): {missing}")


def check_oracle_row(
    results: Mapping[str, Mapping[str, Mapping | str]],
    oracle_row: str,
    ef_task: str = "ef",
    abnormal_task: str = "abnormal_lin",
) -> None:
    """Raise :class:`~medssl_monai.evaluation.controls.BrokenProtocolError` unless ``results[oracle_row]`` is there
    and reaches EF R2 0.9 and abnormal AUROC 0.95 (:func:`~medssl_monai.evaluation.controls.check_positive_control`).
    """
    from medssl_monai.evaluation.controls import BrokenProtocolError, check_positive_control

    row = results.get(oracle_row)
    if not isinstance(row, Mapping):
        raise BrokenProtocolError(f"the protocol is broken: the table has no oracle row {oracle_row!r}")
    try:
        r2 = _value(row[ef_task]["r2"])
        auroc = _value(row[abnormal_task]["auroc"])
    except (KeyError, TypeError) as e:
        raise BrokenProtocolError(f"the protocol is broken: oracle row {oracle_row!r} lacks {e}") from None
    check_positive_control(r2, auroc)


def benchmark_table(
    results: Mapping[str, Mapping[str, Mapping | str]],
    columns: Sequence[tuple[str, str, str, bool]] = METRICS,
    oracle_row: str | None = None,
) -> str:
    """One markdown table: a row per encoder, a column per (task, metric), cells ``mean +- std [CI]`` (or
    ``estimate [CI]``).

    Args:
        results: ``{encoder: {task: {metric: {"mean", "std", "ci_low", "ci_high"}} | "n/a"}}`` (``estimate``
            instead of ``mean``/``std`` for single-fit cells).
        columns: ``(task, metric, header, higher_is_better)`` per column.
        oracle_row: the positive-control row; when given, a table whose oracle scores below EF R2 0.9 or abnormal
            AUROC 0.95 is not written (:func:`check_oracle_row`).

    Raises:
        MissingCellError: a cell is absent or not finite without being marked :data:`NOT_APPLICABLE`.
        BrokenProtocolError: the oracle row is missing or below its floor.
    """
    _check_cells(results, columns)
    if oracle_row is not None:
        check_oracle_row(results, oracle_row)
    head = "| encoder | " + " | ".join(f"{h} {'(up)' if up else '(down)'}" for _, _, h, up in columns) + " |"
    lines = [head, "| --- |" + " --- |" * len(columns)]
    for enc, tasks in results.items():
        cells = []
        for task, metric, _, _ in columns:
            r = tasks[task]
            cells.append(_cell(NOT_APPLICABLE if r == NOT_APPLICABLE else r[metric]))
        lines.append(f"| {enc} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_chart(
    results: Mapping[str, Mapping[str, Mapping | str]],
    out_png: str | Path,
    columns: Sequence[tuple[str, str, str, bool]] = METRICS,
) -> Path:
    """One PNG: a panel per column, a bar per encoder (mean, error bar = std over seeds, or the bootstrap interval
    of a single-fit cell); n/a cells left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_cells(results, columns)
    encoders = list(results)
    n = len(columns)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(len(encoders)) % 10)
    for ax, (task, metric, header, up) in zip(axes.flat, columns):
        means, err = [], []
        for enc in encoders:
            r = results[enc][task]
            cell = NOT_APPLICABLE if r == NOT_APPLICABLE else r[metric]
            m = np.nan if cell == NOT_APPLICABLE else _value(cell)
            means.append(m)
            if cell == NOT_APPLICABLE:
                err.append((0.0, 0.0))
            elif "std" in cell:
                err.append((float(cell["std"]),) * 2)
            else:  # a single fit: its bootstrap interval
                lo, hi = cell.get("ci_low", np.nan), cell.get("ci_high", np.nan)
                err.append((m - lo, hi - m) if np.isfinite(lo) and np.isfinite(hi) else (0.0, 0.0))
        pos = np.arange(len(encoders))
        ax.bar(pos, np.nan_to_num(means), yerr=np.asarray(err).T, color=colors, capsize=3)
        for p, m in zip(pos, means):
            if not np.isfinite(m):
                ax.text(p, 0, NOT_APPLICABLE, ha="center", va="bottom", fontsize=7)
        if metric == "auroc":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(pos, encoders, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{header} ({'higher' if up else 'lower'} is better)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def claims_chart(claims: Sequence[Mapping], out_png: str | Path, title: str = "SSL minus baseline") -> Path:
    """A forest plot of paired differences: one line per claim, the difference and its 95 % paired interval,
    signed so that right of zero is always "SSL better" (lower-is-better metrics are negated)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not claims:
        raise ValueError("no claims to plot")
    fig = Figure(figsize=(8.0, 0.42 * len(claims) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, c in enumerate(claims):
        sign = 1.0 if c["higher_is_better"] else -1.0
        lo, hi = sorted(sign * v for v in c["diff_ci95"])
        d = sign * c["diff"]
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:grey"
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot([d], [i], "o", color=color)
    ax.axvline(0.0, color="black", lw=0.8)
    labels = [f"{c['method']}: {c['metric']} ({c['ssl_row']} - {c['baseline_row']})" for c in claims]
    ax.set_yticks(range(len(claims)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference, signed so that > 0 = SSL better (95 % paired bootstrap interval)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def monitor_chart(histories: Mapping[str, Sequence[Mapping[str, float]]], out_png: str | Path) -> Path:
    """The representation monitor's curves of every pretraining run: a panel per score (kNN scores, the
    normalised embedding std, RankMe), one line per run, against the fraction of the run's iterations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = {name: list(h) for name, h in histories.items() if h}
    if not runs:
        raise ValueError("no monitor history to plot")
    keys = sorted({k for h in runs.values() for row in h for k in row if k.startswith("knn_")})
    panels = [*keys, "std", "rankme"]
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows))
    FigureCanvasAgg(fig)
    for j, key in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        for name, h in runs.items():
            pts = [(row["iteration"], row[key]) for row in h if key in row and np.isfinite(row[key])]
            if pts:
                last = max(row["iteration"] for row in h)
                ax.plot([p[0] / last for p in pts], [p[1] for p in pts], "o-", ms=3, label=name)
        if key == "std":
            ax.axhline(0.1, color="grey", lw=0.8, ls="--")  # the monitor's collapse threshold
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("fraction of the run's iterations", fontsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
