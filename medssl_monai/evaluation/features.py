"""Frozen clip features of a pretrained encoder and the DISCOVR feature evaluation (kNN, linear probe, anomaly).

Features are the CLS embedding of DISCOVR's *video teacher* (the reference's ``run_discovr_encoder.py``):
the pretraining bundle saves the teacher as ``models/model.pt``, loadable into its ``network_def``
(:class:`~medssl_monai.networks.videovit.VideoViT`, whose ``forward`` returns that CLS).

:func:`evaluate_features` fits on one split and scores another:

- kNN classification (the nearest TRAIN clips vote with their labels, so it is supervised, not zero-shot) and
  linear-probe classification of ``Abnormal`` (AUROC, AP, balanced accuracy),
- one-class anomaly detection fit on the *normal* clips of the fitting split only (kNN distance; AUROC, AP),

with paired percentile bootstrap intervals. :class:`FeatureEvaluationHandler` collects features from a MONAI
``SupervisedEvaluator`` (``pred`` = features) and runs it when the evaluator completes; given the trained probe
head (``head``: features -> logits) it also scores that head on the evaluated clips (``trained_head``). With
several clips per video (:mod:`medssl_monai.evaluation.multiclip`) the features of a video's clips are averaged
(the trained head's softmax outputs, as the reference's ``merge``) before scoring. :func:`ef_regression_probe`
regresses a continuous label (LVEF) from the features: ridge regression on standardised features, per seed and
label fraction, MAE / RMSE / R2 as mean +- std over seeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from sklearn.metrics import balanced_accuracy_score

from medssl_monai.data.robust import attach_skipped_samples, skipped_samples, skipped_summary
from medssl_monai.engines.prepare import ClipPrepareBatch
from medssl_monai.evaluation.anomaly import binary_score_metrics, knn_anomaly_scores
from medssl_monai.evaluation.knn import knn_predict_proba, linear_probe_predict_proba
from medssl_monai.evaluation.multiclip import group_mean
from medssl_monai.evaluation.plots import plot_roc
from medssl_monai.evaluation.probe import summarize_runs

__all__ = ["extract_features", "evaluate_features", "ef_regression_probe", "results_table", "FeatureEvaluationHandler"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    network: torch.nn.Module,
    data_loader,
    device: str | torch.device = "cpu",
    prepare_batch: ClipPrepareBatch | None = None,
    keys: Sequence[str] = ("Abnormal", "split", "video_id"),
) -> dict[str, np.ndarray]:
    """``network(clip)`` for every batch: ``{"features": N x D, <key>: N values for each of keys}``."""
    prepare_batch = prepare_batch or ClipPrepareBatch(label_key=None)
    network = network.to(device).eval()
    out: dict[str, list] = {"features": [], **{k: [] for k in keys}}
    for batch in data_loader:
        x = prepare_batch(batch, device)[0]
        out["features"].append(network(x).float().cpu().numpy())
        for k in keys:
            v = batch[k]
            out[k].extend(v.tolist() if isinstance(v, torch.Tensor) else list(v))
    return {k: np.concatenate(v) if k == "features" else np.asarray(v) for k, v in out.items()}


def _positive_scores(proba: np.ndarray, classes: np.ndarray, positive: int = 1) -> np.ndarray:
    idx = np.flatnonzero(classes == positive)
    return proba[:, idx[0]] if len(idx) else np.zeros(len(proba))


def _balanced_acc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(balanced_accuracy_score(labels, (scores >= 0.5).astype(int)))


def evaluate_features(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    anomaly_k: int = 5,
    probe_C: float = 1.0,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    return_scores: bool = False,
) -> dict[str, dict] | tuple[dict[str, dict], dict[str, np.ndarray]]:
    """kNN, linear probe and one-class anomaly detection of binary ``labels`` (1 = abnormal).

    Returns:
        ``{"knn": {"auroc", "ap", "balanced_accuracy"}, "linear_probe": {...}, "anomaly": {"auroc", "ap"}}``;
        ``auroc``/``ap`` are ``{"estimate", "ci_low", "ci_high", "n"}``; undefined values are NaN. With
        ``return_scores`` also each task's per-clip scores (higher = abnormal), e.g. for ROC curves.
    """
    fit_labels = np.asarray(fit_labels).astype(int)
    labels = np.asarray(labels).astype(int)
    boot = {"n_resamples": n_resamples, "seed": seed, "confidence_level": confidence_level}
    results: dict[str, dict] = {}

    proba, classes = knn_predict_proba(fit_features, fit_labels, features, k=k, temperature=temperature)
    s = _positive_scores(proba, classes)
    task_scores = {"knn": s}
    results["knn"] = {**binary_score_metrics(labels, s, **boot), "balanced_accuracy": _balanced_acc(labels, s)}

    try:
        proba, classes = linear_probe_predict_proba(fit_features, fit_labels, features, C=probe_C, seed=seed)
        s = _positive_scores(proba, classes)
        task_scores["linear_probe"] = s
        results["linear_probe"] = {
            **binary_score_metrics(labels, s, **boot),
            "balanced_accuracy": _balanced_acc(labels, s),
        }
    except ValueError as e:
        logger.warning("linear probe skipped: %s", e)
        nan = {"estimate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": len(labels)}
        results["linear_probe"] = {"auroc": nan, "ap": dict(nan), "balanced_accuracy": float("nan")}

    normal = np.asarray(fit_features)[fit_labels == 0]
    scores = knn_anomaly_scores(normal, features, k=anomaly_k)
    results["anomaly"] = binary_score_metrics(labels, scores, **boot)
    task_scores["anomaly"] = np.asarray(scores)
    return (results, task_scores) if return_scores else results


def ef_regression_probe(
    fit_features: np.ndarray,
    fit_targets: np.ndarray,
    features: np.ndarray,
    targets: np.ndarray,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    label_fractions: Sequence[float] = (1.0,),
    alpha: float = 1.0,
) -> dict[str, dict]:
    """Ridge regression of a continuous label (LVEF) on standardised frozen features, per label fraction and seed.

    Each run fits on a random ``fraction`` of the fitting clips (at least 2; drawn with ``seed``; all of them at
    fraction 1, where the seeds agree) and scores ``features``.

    Returns:
        ``{"<fraction>": {"runs": [{"mae", "rmse", "r2", "n_fit"}, ...], "summary": summarize_runs(runs)}}``.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_x, fit_y = np.asarray(fit_features, dtype=np.float64), np.asarray(fit_targets, dtype=np.float64)
    x, y = np.asarray(features, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    out: dict[str, dict] = {}
    for fraction in label_fractions:
        runs = []
        for seed in seeds:
            n = min(len(fit_y), max(2, int(round(fraction * len(fit_y)))))
            idx = np.sort(np.random.default_rng(seed).choice(len(fit_y), n, replace=False))
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(fit_x[idx], fit_y[idx])
            pred = model.predict(x)
            runs.append(
                {
                    "mae": float(mean_absolute_error(y, pred)),
                    "rmse": float(np.sqrt(mean_squared_error(y, pred))),
                    "r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
                    "n_fit": n,
                }
            )
        out[f"{fraction:g}"] = {"runs": runs, "summary": summarize_runs(runs)}
    return out


def _fmt(m: dict) -> str:
    if not np.isfinite(m["estimate"]):
        return "n/a"
    if not np.isfinite(m["ci_low"]):
        return f"{m['estimate']:.3f}"
    return f"{m['estimate']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def results_table(rows: dict[str, dict[str, dict]]) -> str:
    """A markdown table, one row per model (``{name: evaluate_features(...)}``), AUROC / AP with CIs."""
    lines = [
        "| encoder | kNN AUROC | kNN AP | linear-probe AUROC | linear-probe AP | anomaly AUROC | anomaly AP |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        cells = [_fmt(r[task][m]) for task in ("knn", "linear_probe", "anomaly") for m in ("auroc", "ap")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class FeatureEvaluationHandler:
    """Collect ``pred`` (clip features) with each item's label and split, then run :func:`evaluate_features`.

    Attach to a ``SupervisedEvaluator`` whose network returns features and whose data holds both the fitting
    split and the evaluated split(s). Writes ``feature_metrics.json``, ``feature_metrics.md`` and ``roc.png``
    (the three tasks' ROC curves on the evaluated clips) to ``output_dir`` and stores the results in
    ``engine.state.metrics["feature_evaluation"]``.

    Args:
        output_dir: where the report goes (created).
        label_key, split_key: batch keys of the binary label and the split name.
        fit_split: split the classifiers and the anomaly model are fit on.
        eval_splits: split(s) they are evaluated on.
        k, temperature, anomaly_k, probe_C, n_resamples, seed, confidence_level: see :func:`evaluate_features`.
        head: the trained linear probe as a function of the features (``VideoViTClassifier.classify_features``,
            whose frozen encoder produced them); ``None``: no ``trained_head`` entry.
        group_key: batch key of the video id: the clips of one video are averaged (``None``: every clip alone).
        regression_key: batch key of a continuous label (``"ef"``): adds ``ef_regression``
            (:func:`ef_regression_probe`); ``None``: none.
        probe_seeds, label_fractions, ridge_alpha: of :func:`ef_regression_probe`.
    """

    def __init__(
        self,
        output_dir: str | Path,
        label_key: str = "Abnormal",
        split_key: str = "split",
        fit_split: str = "TRAIN",
        eval_splits: str | Sequence[str] = "TEST",
        k: int = 20,
        temperature: float = 0.07,
        anomaly_k: int = 5,
        probe_C: float = 1.0,
        n_resamples: int = 1000,
        seed: int = 0,
        confidence_level: float = 0.95,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        group_key: str | None = "video_id",
        regression_key: str | None = None,
        probe_seeds: Sequence[int] = (0, 1, 2, 3, 4),
        label_fractions: Sequence[float] = (1.0,),
        ridge_alpha: float = 1.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.head = head
        self.group_key = group_key
        self.regression_key = regression_key
        self.regression_kwargs = {
            "seeds": tuple(probe_seeds),
            "label_fractions": tuple(label_fractions),
            "alpha": ridge_alpha,
        }
        self.label_key = label_key
        self.split_key = split_key
        self.fit_split = fit_split.upper()
        self.eval_splits = {s.upper() for s in ([eval_splits] if isinstance(eval_splits, str) else eval_splits)}
        self.kwargs = {
            "k": k,
            "temperature": temperature,
            "anomaly_k": anomaly_k,
            "probe_C": probe_C,
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence_level": confidence_level,
        }
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._features: list[np.ndarray] = []
        self._labels: list[int] = []
        self._splits: list[str] = []
        self._ids: list = []
        self._targets: list[float] = []

    def attach(self, engine: Engine) -> None:
        attach_skipped_samples(engine)  # the epoch ends where the data does when clips were left out
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        pred = out["pred"] if isinstance(out, dict) else out[0]["pred"]
        batch = engine.state.batch
        self._features.append(torch.as_tensor(pred).detach().float().cpu().numpy())
        self._labels.extend(torch.as_tensor(batch[self.label_key]).reshape(-1).tolist())
        self._splits.extend(str(s).upper() for s in batch[self.split_key])
        n = len(self._splits) - len(self._ids)
        if self.group_key is not None and self.group_key in batch:
            self._ids.extend(str(v) for v in batch[self.group_key])
        else:  # no grouping: a unique id per clip
            base = len(self._ids)
            self._ids.extend([("#clip", base + i) for i in range(n)])
        if self.regression_key is not None:
            self._targets.extend(torch.as_tensor(batch[self.regression_key], dtype=torch.float64).reshape(-1).tolist())

    def __call__(self, engine: Engine) -> None:
        clip_feats = np.concatenate(self._features)
        # one row per video: the mean feature of its clips (identity with one clip per video)
        feats, first = group_mean(clip_feats, self._ids)
        labels = np.asarray(self._labels, dtype=int)[first]
        splits = np.asarray(self._splits)[first]
        fit = splits == self.fit_split
        ev = np.isin(splits, list(self.eval_splits))
        if not fit.any() or not ev.any():
            raise ValueError(f"need clips of split {self.fit_split} and {sorted(self.eval_splits)}, got {set(splits)}")
        results, scores = evaluate_features(
            feats[fit], labels[fit], feats[ev], labels[ev], return_scores=True, **self.kwargs
        )
        if self.head is not None:
            clip_ev = np.isin(np.asarray(self._splits), list(self.eval_splits))
            results["trained_head"], scores["trained_head"] = self._score_head(
                clip_feats[clip_ev], [self._ids[i] for i in np.flatnonzero(clip_ev)], labels[ev]
            )
        if self.regression_key is not None:
            targets = np.asarray(self._targets, dtype=np.float64)[first]
            ok_fit, ok_ev = fit & np.isfinite(targets), ev & np.isfinite(targets)
            results["ef_regression"] = ef_regression_probe(
                feats[ok_fit], targets[ok_fit], feats[ok_ev], targets[ok_ev], **self.regression_kwargs
            )
        results["counts"] = {
            "fit": int(fit.sum()),
            "fit_abnormal": int(labels[fit].sum()),
            "eval": int(ev.sum()),
            "eval_abnormal": int(labels[ev].sum()),
        }
        results["clips"] = {"clips": len(clip_feats), "videos": len(feats)}  # test-time averaging
        # clips that could not be read (left out by the loader): the results are on the others
        results["skipped"] = skipped_summary(skipped_samples(engine), "clips")
        if results["skipped"]["count"]:
            logger.warning(
                "feature evaluation without %d videos that could not be read: %s",
                results["skipped"]["count"],
                "; ".join(f"{f['file']} ({f['reason']})" for f in results["skipped"]["files"]),
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "feature_metrics.json").write_text(json.dumps(results, indent=2))
        table = results_table({"encoder": results})
        if "trained_head" in results:
            r = results["trained_head"]
            table += (
                f"\n\ntrained probe head: AUROC {_fmt(r['auroc'])}, AP {_fmt(r['ap'])}, "
                f"accuracy {r['accuracy']:.3f}, balanced accuracy {r['balanced_accuracy']:.3f}"
            )
        for fraction, r in results.get("ef_regression", {}).items():
            s = r["summary"]
            table += (
                f"\n\n{self.regression_key} regression (ridge, label fraction {fraction}, {len(r['runs'])} seeds): "
                f"MAE {s['mae']['mean']:.3f} ± {s['mae']['std']:.3f}, RMSE {s['rmse']['mean']:.3f} ± "
                f"{s['rmse']['std']:.3f}, R2 {s['r2']['mean']:.3f} ± {s['r2']['std']:.3f}"
            )
        (self.output_dir / "feature_metrics.md").write_text(table + "\n")
        plot_roc(
            {name: (labels[ev], sc) for name, sc in scores.items()},
            self.output_dir / "roc.png",
            title=f"Frozen features, {'+'.join(sorted(self.eval_splits))}",
            positive="abnormal",
        )
        engine.state.metrics["feature_evaluation"] = results
        logger.info("feature evaluation: %s", json.dumps(results))

    @torch.no_grad()
    def _score_head(self, feats: np.ndarray, ids: Sequence, labels: np.ndarray) -> tuple[dict, np.ndarray]:
        """The trained head's P(abnormal) per video (softmax per clip, mean over the video's clips) and its metrics.

        ``labels`` are per video, in the first-seen order of ``ids``.
        """
        owner = getattr(self.head, "__self__", self.head)  # the classifier of a bound classify_features
        device = "cpu"
        if isinstance(owner, torch.nn.Module):
            owner.eval()  # a BatchNorm head uses its running statistics
            device = next(owner.parameters()).device
        logits = self.head(torch.as_tensor(feats, dtype=torch.float32, device=device)).float().cpu()
        clip_proba = torch.softmax(logits, dim=-1).numpy()
        video_proba = group_mean(clip_proba, ids)[0]  # the reference's merge: mean of the clips' softmax
        proba = video_proba[:, 1]
        boot = {k: self.kwargs[k] for k in ("n_resamples", "seed", "confidence_level")}
        metrics = {
            **binary_score_metrics(labels, proba, **boot),
            "accuracy": float((video_proba.argmax(-1) == labels).mean()),
            "balanced_accuracy": _balanced_acc(labels, proba),
        }
        return metrics, proba
