"""Classification metrics of UCL's downstream evaluation, their ignite wrappers and the report writer.

Reference: ``lincls_bin.py`` (gbc-iitd/US_UCL): 3-class accuracy, binary accuracy
(malignant vs rest), sensitivity and specificity of the binary task, and the best epoch chosen by the harmonic
mean of specificity and sensitivity on the validation list. Here ``positive_classes`` names the "malignant"
side (on the synthetic frame folders: ``lesion``), AUROC is the binary AUROC of the summed positive-class
probabilities, and the reference's "val = test" model selection of the POCUS evaluation is not reproduced:
the best epoch is chosen on a validation split, never on test.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from sklearn.metrics import confusion_matrix

from medssl_monai.data.robust import BadSample, SkipCursor, attach_skipped_samples, skipped_summary
from medssl_monai.evaluation.bootstrap import bootstrap_ci
from medssl_monai.evaluation.plots import plot_roc

__all__ = [
    "METRIC_NAMES",
    "binary_counts",
    "binary_scores",
    "classification_metrics",
    "harmonic_mean",
    "aggregate_by_video",
    "video_bootstrap",
    "video_bootstrap_all",
    "plot_confusion_matrix",
    "ClassificationMetric",
    "ClassificationReportHandler",
    "pool_fold_reports",
]

logger = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "binary_accuracy", "sensitivity", "specificity", "harmonic_mean", "auroc")


def harmonic_mean(sensitivity: float, specificity: float) -> float:
    """``2 s p / (s + p)``, 0 when both are 0 (the reference's model-selection score)."""
    s, p = float(sensitivity), float(specificity)
    return 0.0 if s + p == 0 else 2.0 * s * p / (s + p)


def binary_counts(labels: np.ndarray, preds: np.ndarray, positive_classes: Sequence[int]) -> tuple[int, int, int, int]:
    """``(tp, fn, tn, fp)`` of the binary task "class in ``positive_classes``" vs the rest."""
    t = np.isin(np.asarray(labels), positive_classes)
    p = np.isin(np.asarray(preds), positive_classes)
    return int((t & p).sum()), int((t & ~p).sum()), int((~t & ~p).sum()), int((~t & p).sum())


def binary_scores(
    labels: Sequence[int] | np.ndarray, probs: np.ndarray, positive_classes: Sequence[int] = (1,)
) -> tuple[np.ndarray, np.ndarray]:
    """The binary task ``positive_classes`` vs rest: truth (bool ``N``) and score (summed positive probabilities)."""
    return np.isin(np.asarray(labels), positive_classes), np.asarray(probs)[:, list(positive_classes)].sum(1)


def classification_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    positive_classes: Sequence[int] = (1,),
    num_classes: int | None = None,
    with_confusion: bool = True,
) -> dict[str, Any]:
    """Every metric of the evaluation from integer ``labels`` (``N``) and class probabilities ``probs`` (``N x C``).

    Returns:
        ``accuracy`` (argmax, all classes), ``binary_accuracy``, ``sensitivity`` = TP / (TP + FN), ``specificity``
        = TN / (TN + FP) (``nan`` when a side is absent), ``harmonic_mean`` of the two, ``auroc`` (binary, score =
        summed positive-class probability; ``nan`` with one side only) and ``confusion_matrix`` (``C x C`` list,
        rows = truth; omitted with ``with_confusion=False``).
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    prob = np.asarray(probs, dtype=np.float64)
    if prob.ndim != 2 or len(prob) != len(y) or len(y) == 0:
        raise ValueError(f"need N labels and N x C probabilities, got {y.shape} and {prob.shape}")
    c = num_classes or prob.shape[1]
    pred = prob.argmax(1)
    tp, fn, tn, fp = binary_counts(y, pred, positive_classes)
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    auroc = _auroc(*binary_scores(y, prob, positive_classes))
    out = {
        "accuracy": float((pred == y).mean()),
        "binary_accuracy": float((tp + tn) / len(y)),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "harmonic_mean": harmonic_mean(sens, spec) if np.isfinite(sens) and np.isfinite(spec) else float("nan"),
        "auroc": auroc,
    }
    if with_confusion:
        out["confusion_matrix"] = confusion_matrix(y, pred, labels=list(range(c))).tolist()
    return out


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """Binary AUROC as the Mann-Whitney statistic with average ranks for ties (equals ``roc_auc_score``; faster,
    which matters inside the bootstrap); ``nan`` with one class only."""
    from scipy.stats import rankdata

    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aggregate_by_video(
    video_ids: Sequence[str], probs: np.ndarray, labels: Sequence[int] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Per-video mean of frame probabilities: ``(ids in first-seen order, V x C probs, V labels or None)``.

    Raises:
        ValueError: frames of one video carry different labels.
    """
    ids = [str(v) for v in video_ids]
    order = list(dict.fromkeys(ids))
    index = {v: i for i, v in enumerate(order)}
    rows = np.array([index[v] for v in ids])
    prob = np.asarray(probs, dtype=np.float64)
    sums = np.zeros((len(order), prob.shape[1]))
    np.add.at(sums, rows, prob)
    out = sums / np.bincount(rows, minlength=len(order))[:, None]
    if labels is None:
        return order, out, None
    lab = np.asarray(labels, dtype=np.int64)
    vid_labels = np.full(len(order), -1, dtype=np.int64)
    for r, lbl in zip(rows, lab):
        if vid_labels[r] not in (-1, lbl):
            raise ValueError(f"video {order[r]} has frames with different labels")
        vid_labels[r] = lbl
    return order, out, vid_labels


def video_bootstrap(
    metric: str,
    video_ids: Sequence[str],
    labels: Sequence[int],
    probs: np.ndarray,
    positive_classes: Sequence[int] = (1,),
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, float]:
    """Cluster bootstrap of a frame-level ``metric``: resample test *videos*, keep all their frames.

    Frames of one video are strongly correlated, so resampling frames would give intervals that are far too
    narrow; resampling videos keeps the dependence. With one frame per video it is the plain bootstrap.
    """
    ids = np.asarray([str(v) for v in video_ids])
    y, prob = np.asarray(labels), np.asarray(probs)
    groups = [np.flatnonzero(ids == v) for v in dict.fromkeys(ids.tolist())]

    def stat(sel: np.ndarray) -> float:
        rows = np.concatenate([groups[i] for i in sel])
        return classification_metrics(y[rows], prob[rows], positive_classes, prob.shape[1])[metric]

    res = bootstrap_ci(
        stat,
        np.arange(len(groups)),
        n_resamples=n_resamples,
        seed=seed,
        confidence_level=confidence_level,
        vectorized=False,
    )
    return {"estimate": res.estimate, "ci_low": res.ci[0], "ci_high": res.ci[1], "n_invalid": res.n_invalid}


def video_bootstrap_all(
    video_ids: Sequence[str],
    labels: Sequence[int],
    probs: np.ndarray,
    positive_classes: Sequence[int] = (1,),
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """:func:`video_bootstrap` of every metric in one pass (the same resampled videos for all metrics).

    Returns ``{metric: {"estimate", "ci_low", "ci_high", "n_invalid"}}``; percentile intervals over the finite
    resampled values.
    """
    ids = np.asarray([str(v) for v in video_ids])
    y, prob = np.asarray(labels), np.asarray(probs)
    groups = [np.flatnonzero(ids == v) for v in dict.fromkeys(ids.tolist())]
    names = [m for m in METRIC_NAMES]
    full = classification_metrics(y, prob, positive_classes, prob.shape[1], with_confusion=False)
    rng = np.random.default_rng(seed)
    values = np.empty((n_resamples, len(names)))
    for r in range(n_resamples):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        m = classification_metrics(y[rows], prob[rows], positive_classes, prob.shape[1], with_confusion=False)
        values[r] = [m[n] for n in names]
    alpha = 100.0 * (1.0 - confidence_level) / 2.0
    out = {}
    for j, n in enumerate(names):
        v = values[:, j][np.isfinite(values[:, j])]
        lo, hi = np.percentile(v, [alpha, 100.0 - alpha]) if v.size else (float("nan"), float("nan"))
        out[n] = {
            "estimate": full[n],
            "ci_low": float(lo),
            "ci_high": float(hi),
            "n_invalid": int(n_resamples - v.size),
        }
    return out


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], out_png: str | Path, class_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """A confusion-matrix heat map (rows = truth, columns = prediction) with counts, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    names = list(class_names) if class_names else [str(i) for i in range(len(m))]
    fig = Figure(figsize=(1.2 + 0.9 * len(m), 1.0 + 0.9 * len(m)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(m, cmap="Blues")
    for i in range(len(m)):
        for j in range(len(m)):
            colour = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", color=colour)
    ax.set_xticks(range(len(m)), names, rotation=30)
    ax.set_yticks(range(len(m)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.detach().float(), dim=1)


class ClassificationMetric(Metric):
    """One of :data:`METRIC_NAMES` over an epoch, from ``(logits, labels)`` (an ignite metric for MONAI engines).

    Use as the validation ``key_val_metric`` (``harmonic_mean``, the reference's selection, or ``auroc``). A value
    that is undefined on the epoch's data (e.g. AUROC with one class) is returned as 0.0, so model selection never
    picks it.
    """

    def __init__(
        self,
        metric: str = "harmonic_mean",
        positive_classes: Sequence[int] = (1,),
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if metric not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
        self.metric = metric
        self.positive_classes = tuple(int(c) for c in positive_classes)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, labels = output[0], output[1]
        if isinstance(logits, (list, tuple)):  # decollated batches
            logits, labels = torch.stack(list(logits)), torch.stack([torch.as_tensor(v) for v in labels])
        self._probs.append(_probs(logits).cpu())
        self._labels.append(torch.as_tensor(labels).reshape(-1).long().cpu())

    def compute(self) -> float:
        if not self._probs:
            raise RuntimeError("ClassificationMetric needs at least one batch before compute()")
        probs = torch.cat(self._probs).numpy()
        labels = torch.cat(self._labels).numpy()
        value = classification_metrics(labels, probs, self.positive_classes)[self.metric]
        return float(value) if np.isfinite(value) else 0.0


class ClassificationReportHandler:
    """Collect frame predictions of an evaluator and write the evaluation report at ``COMPLETED``.

    Writes to ``output_dir``: ``frame_predictions.csv`` (video, frame, label, per-class probabilities),
    ``video_predictions.csv`` (per-video mean probabilities and prediction) and, when the data has labels,
    ``metrics.json`` (frame- and video-level metrics with cluster-bootstrap CIs over videos, confusion matrices)
    ``confusion_matrix_frames.png`` / ``confusion_matrix_videos.png`` and ``roc_frames.png`` / ``roc_videos.png``
    (the binary ``positive_classes``-vs-rest ROC of the summed positive probabilities). Without labels
    (inference) only the predictions are written (plus ``video_predictions.json``). ``frame_predictions.csv`` is
    appended and flushed as each batch ends. Videos whose frames could not be read (left out by the loader,
    :mod:`medssl_monai.data.robust`) are not in the metrics: ``video_predictions.csv`` / ``.json`` list them with
    ``status`` ``skipped`` and the ``reason``, ``metrics.json`` under ``skipped``.

    Args:
        output_dir: where the files go.
        class_names: names for the CSV columns and figures.
        positive_classes: the binary task's positive side.
        id_key, frame_key, label_key: batch keys of the video id, frame index and label.
        n_resamples: bootstrap resamples (0: no CIs).
        enabled: ``False`` on non-zero ranks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str] | None = None,
        positive_classes: Sequence[int] = (1,),
        id_key: str = "video_id",
        frame_key: str = "frame_index",
        label_key: str = "label",
        n_resamples: int = 1000,
        seed: int = 0,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names else None
        self.positive_classes = tuple(int(c) for c in positive_classes)
        self.id_key, self.frame_key, self.label_key = id_key, frame_key, label_key
        self.n_resamples = int(n_resamples)
        self.seed = seed
        self.enabled = enabled
        self.results: dict[str, Any] = {}
        self._skips = SkipCursor()
        self._frame_file: Any = None

    def attach(self, engine: Engine) -> None:
        attach_skipped_samples(engine)  # the epoch ends where the data does when frames were left out
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine | None) -> None:
        self._ids: list[str] = []
        self._frames: list[int] = []
        self._labels: list[int] = []
        self._probs: list[np.ndarray] = []
        self.skipped: list[BadSample] = []
        self._skips.reset()
        self._close_frames()
        self._streamed = 0

    def _close_frames(self) -> None:
        if getattr(self, "_frame_file", None) is not None:
            self._frame_file.close()
        self._frame_file = None

    def _stream_frames(self, start: int, probs: np.ndarray, has_labels: bool) -> None:
        """Append the frames from ``start`` on to ``frame_predictions.csv`` (header first) and flush."""
        if self._frame_file is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._frame_file = open(self.output_dir / "frame_predictions.csv", "w", newline="")  # noqa: SIM115
            names = self._names(probs.shape[1])
            csv.writer(self._frame_file).writerow(
                ["video_id", "frame_index", "label", "pred", *[f"prob_{n}" for n in names]]
            )
        w = csv.writer(self._frame_file)
        for i, p in enumerate(probs, start=start):
            label = self._labels[i] if has_labels else ""
            w.writerow([self._ids[i], self._frames[i], label, int(p.argmax()), *[f"{x:.6f}" for x in p]])
        self._frame_file.flush()
        self._streamed = start + len(probs)

    def _collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        pred = out["pred"] if isinstance(out, dict) else torch.stack([o["pred"] for o in out])
        probs = _probs(pred).cpu().numpy()
        n = len(probs)
        start = len(self._ids)
        self._probs.append(probs)
        self._ids.extend(str(v) for v in batch.get(self.id_key, [""] * n))
        self._frames.extend(int(v) for v in torch.as_tensor(batch.get(self.frame_key, [-1] * n)).reshape(-1))
        if self.label_key in batch:
            self._labels.extend(int(v) for v in torch.as_tensor(batch[self.label_key]).reshape(-1))
        self.skipped += self._skips.take(engine)
        if self.enabled:
            self._stream_frames(start, probs, len(self._labels) == len(self._ids))

    def _names(self, c: int) -> list[str]:
        return self.class_names if self.class_names and len(self.class_names) == c else [str(i) for i in range(c)]

    def _skipped_videos(self, has_labels: bool) -> list[dict[str, Any]]:
        """One entry per video left out (all its frames could not be read): id, label, file, reason."""
        videos: dict[str, dict[str, Any]] = {}
        for s in self.skipped:
            vid = str(s.item.get(self.id_key) or Path(s.file).stem)
            label = s.item.get(self.label_key) if has_labels else None
            videos.setdefault(vid, {"video_id": vid, "label": label, "file": s.file, "reason": s.reason})
        return list(videos.values())

    def _write(self, engine: Engine | None) -> None:
        self.skipped += self._skips.take(engine)
        if not self.enabled:
            return
        if not self._probs:
            self._close_frames()
            if self.skipped:
                logger.warning("no frame could be read; skipped: %s", skipped_summary(self.skipped, "frames"))
                self.output_dir.mkdir(parents=True, exist_ok=True)
                (self.output_dir / "metrics.json").write_text(
                    json.dumps({"skipped": skipped_summary(self.skipped, "frames")}, indent=2)
                )
            return
        probs = np.concatenate(self._probs)
        names = self._names(probs.shape[1])
        has_labels = len(self._labels) == len(probs)
        labels = np.asarray(self._labels) if has_labels else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self._streamed < len(probs):  # rows given without an engine (pool_fold_reports)
            self._stream_frames(self._streamed, probs[self._streamed :], has_labels)
        self._close_frames()
        skipped_videos = self._skipped_videos(has_labels)
        vids, vprobs, vlabels = aggregate_by_video(self._ids, probs, labels)
        videos = [
            {
                "video_id": v,
                "label": int(vlabels[i]) if vlabels is not None else None,
                "pred": int(vprobs[i].argmax()),
                "pred_name": names[int(vprobs[i].argmax())],
                "probs": {n: float(x) for n, x in zip(names, vprobs[i])},
                "num_frames": int(sum(1 for x in self._ids if x == v)),
            }
            for i, v in enumerate(vids)
        ]
        with open(self.output_dir / "video_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "video_id",
                    "label",
                    "pred",
                    "pred_name",
                    "num_frames",
                    *[f"prob_{n}" for n in names],
                    "status",
                    "reason",
                ]
            )
            for r in videos:
                w.writerow(
                    [
                        r["video_id"],
                        "" if r["label"] is None else r["label"],
                        r["pred"],
                        r["pred_name"],
                        r["num_frames"],
                    ]
                    + [f"{r['probs'][n]:.6f}" for n in names]
                    + ["ok", ""]
                )
            for r in skipped_videos:  # no prediction: listed with why
                label = "" if r["label"] is None else r["label"]
                w.writerow([r["video_id"], label, "", "", 0, *[""] * len(names), "skipped", r["reason"]])
        skipped = skipped_summary(self.skipped, "frames")
        if self.skipped:
            logger.warning(
                "%d videos (%d frames) could not be read and are not in the results: %s",
                len(skipped_videos),
                len(self.skipped),
                "; ".join(f"{r['file']} ({r['reason']})" for r in skipped_videos),
            )
        if not has_labels:
            listed = videos + [{**r, "status": "skipped"} for r in skipped_videos]
            (self.output_dir / "video_predictions.json").write_text(json.dumps(listed, indent=2))
            self.results = {"videos": videos, "skipped": skipped}
            return
        report: dict[str, Any] = {
            "class_names": names,
            "positive_classes": list(self.positive_classes),
            "skipped": skipped,  # could not be read: not in the metrics
        }
        for level, (ids, y, p) in {
            "frame": (self._ids, labels, probs),
            "video": (vids, vlabels, vprobs),
        }.items():
            m = classification_metrics(y, p, self.positive_classes, len(names))
            entry: dict[str, Any] = {"n": int(len(y)), "confusion_matrix": m.pop("confusion_matrix")}
            cis = (
                video_bootstrap_all(ids, y, p, self.positive_classes, self.n_resamples, self.seed)
                if self.n_resamples > 0
                else {}
            )
            for name, value in m.items():
                entry[name] = {"estimate": value}
                if name in cis and np.isfinite(value):
                    entry[name].update(ci_low=cis[name]["ci_low"], ci_high=cis[name]["ci_high"])
            report[level] = entry
            plot_confusion_matrix(
                entry["confusion_matrix"], self.output_dir / f"confusion_matrix_{level}s.png", names, f"{level}s"
            )
            plot_roc(
                {f"{level}s": binary_scores(y, p, self.positive_classes)},
                self.output_dir / f"roc_{level}s.png",
                title=f"{' + '.join(names[c] for c in self.positive_classes)} vs rest, {level}s",
            )
        (self.output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        self.results = report
        logger.info("test metrics (frames): %s", {k: v for k, v in report["frame"].items() if k != "confusion_matrix"})


def pool_fold_reports(
    eval_dirs: Sequence[str | Path],
    output_dir: str | Path,
    class_names: Sequence[str] | None = None,
    positive_classes: Sequence[int] = (1,),
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pool the test folds of a k-fold run into one report, as the POCUS evaluation sums its folds' confusion matrices.

    Reads every fold's ``frame_predictions.csv`` (written by :class:`ClassificationReportHandler`), concatenates
    them (test folds are disjoint, so every video appears once) and writes the same report for the pooled
    predictions to ``output_dir``: ``metrics.json`` (metrics with cluster-bootstrap CIs over all videos; its
    confusion matrices are the sums of the folds'), the confusion-matrix and ROC figures, and the prediction CSVs
    with a ``fold`` column. ``metrics.json`` also lists each fold's confusion matrices under ``folds``.

    Raises:
        FileNotFoundError: a fold has no ``frame_predictions.csv``.
        ValueError: a video appears in two folds (the folds are not a partition).
    """
    import pandas as pd

    frames = []
    for k, d in enumerate(eval_dirs):
        csv_path = Path(d) / "frame_predictions.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: evaluate this fold first")
        frames.append(pd.read_csv(csv_path, dtype={"video_id": str}).assign(fold=k))
    df = pd.concat(frames, ignore_index=True)
    owners = df.groupby("video_id")["fold"].nunique()
    if (owners > 1).any():
        raise ValueError(f"videos in more than one fold: {owners[owners > 1].index.tolist()[:5]}")
    prob_cols = [c for c in df.columns if c.startswith("prob_")]
    handler = ClassificationReportHandler(output_dir, class_names, positive_classes, n_resamples=n_resamples, seed=seed)
    handler._reset(None)
    handler._ids = df["video_id"].tolist()
    handler._frames = df["frame_index"].astype(int).tolist()
    handler._labels = df["label"].astype(int).tolist()
    handler._probs = [df[prob_cols].to_numpy(dtype=np.float64)]
    handler._write(None)
    report = handler.results
    c = len(prob_cols)
    report["folds"] = []
    for k, part in df.groupby("fold"):
        y, pred = part["label"].to_numpy(int), part[prob_cols].to_numpy().argmax(1)
        _, vprob, vy = aggregate_by_video(part["video_id"].tolist(), part[prob_cols].to_numpy(), y)
        report["folds"].append(
            {
                "fold": int(k),
                "eval_dir": str(eval_dirs[int(k)]),
                "frame_confusion_matrix": confusion_matrix(y, pred, labels=list(range(c))).tolist(),
                "video_confusion_matrix": confusion_matrix(vy, vprob.argmax(1), labels=list(range(c))).tolist(),
            }
        )
    out = Path(output_dir)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    df.to_csv(out / "frame_predictions.csv", index=False)
    logger.info("pooled %d folds: %d frames, %d videos", len(frames), len(df), df["video_id"].nunique())
    return report
