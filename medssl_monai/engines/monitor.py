"""Online representation monitoring during self-supervised pretraining: is the encoder learning or collapsing?

Every ``monitor_every`` iterations :class:`RepresentationMonitor` embeds a fixed, small labelled monitor set
(the same deterministic clips and encoder interface as the TensorBoard projector,
:class:`~medssl_monai.engines.embeddings.TensorBoardEmbeddingHandler`) and logs:

- ``knn_auroc`` / ``knn_r2``: a cross-validated kNN score inside the monitor set for each label key (AUROC of the
  out-of-fold probability for a binary label such as ``Abnormal``; R2 of the out-of-fold kNN regression for a
  continuous one such as ``ef``). Cosine neighbours, as DINO's kNN evaluation.
- ``std``: the mean per-dimension standard deviation of the L2-normalised embeddings, times ``sqrt(D)`` (the
  collapse measure of lightly and of SimSiam's analysis, Chen & He 2021, Sec. 4.1): about 1 for embeddings spread
  over the sphere, 0 when every clip maps to one point. Below ``collapse_std`` the step is flagged as collapsed.
- ``rankme``: the effective rank of the embedding matrix (RankMe, Garrido et al. 2023, Eq. 1): ``exp`` of the
  entropy of the normalised singular values, between 1 (collapse) and ``min(N, D)``.

Scalars go to TensorBoard under ``monitor/`` and one line to the console; the whole history is also rewritten as
JSON to ``<log_dir>/monitor.json`` (:data:`HISTORY_FILE`) at every monitor step, so that another process (the
representation benchmark, which runs the bundle as a plain ``monai.bundle run``) can read it. The handler reads the
device only on its own steps, draws no global random number (the folds are not shuffled) and restores every
module's train/eval flag, so the training run and its exact resume are unchanged; its history is in ``state_dict``
(put it in the resume handler's ``save_dict``) and survives a resume (``monitor.json`` is rewritten with the
restored history when the resumed run starts).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from torch import nn

from medssl_monai.engines.embeddings import TensorBoardEmbeddingHandler

__all__ = ["RepresentationMonitor", "collapse_std", "rankme", "knn_cv_score", "HISTORY_FILE", "read_history"]

#: the history file's name under the handler's ``log_dir`` (:attr:`RepresentationMonitor.history_file`)
HISTORY_FILE = "monitor.json"

logger = logging.getLogger(__name__)


def collapse_std(embeddings: np.ndarray) -> float:
    """Mean per-dimension std of the L2-normalised embeddings times ``sqrt(D)``: ~1 spread out, 0 collapsed."""
    z = np.asarray(embeddings, dtype=np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return float(z.std(axis=0).mean() * math.sqrt(z.shape[1]))


def rankme(embeddings: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al. 2023, Eq. 1): ``exp(-sum p_k log p_k)``, ``p = s / ||s||_1 + eps``."""
    s = np.linalg.svd(np.asarray(embeddings, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def _is_binary(y: np.ndarray) -> bool:
    return set(np.unique(y).tolist()) <= {0.0, 1.0}  # y is float64


def knn_cv_score(
    embeddings: np.ndarray, labels: Sequence[Any], k: int = 10, folds: int = 5, categorical: bool = False
) -> tuple[str, float]:
    """Cross-validated kNN score of ``labels`` from cosine neighbours: ``("auroc", .)`` or ``("r2", .)``.

    Binary or ``categorical`` labels (class codes ``0..C-1``): AUROC of the out-of-fold neighbour vote (stratified
    folds; one-vs-rest macro average for more than two classes). Continuous labels: R2 of the out-of-fold
    neighbour mean. Non-finite labels are left out. NaN when the set cannot be scored (one class, fewer than 2
    items of a class or per fold).
    """
    y = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(y)
    z = np.asarray(embeddings, dtype=np.float64)[ok]
    y = y[ok]
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # cosine = euclidean on the sphere
    binary = categorical or _is_binary(y)
    metric = "auroc" if binary else "r2"
    if binary:
        y = np.unique(y, return_inverse=True)[1].astype(np.float64)  # codes 0..C-1 of the classes present
        counts = np.bincount(y.astype(int))
        if len(counts) < 2:
            return metric, float("nan")
        n_folds = int(min(folds, counts.min()))
        if n_folds < 2:
            return metric, float("nan")
        splitter: Any = StratifiedKFold(n_splits=n_folds, shuffle=False)
    else:
        n_folds = int(min(folds, len(y) // 2))
        if n_folds < 2 or np.ptp(y) == 0:
            return metric, float("nan")
        splitter = KFold(n_splits=n_folds, shuffle=False)
    pred = np.zeros(len(y))
    probs = np.zeros((len(y), int(y.max()) + 1 if binary else 1))
    for train, test in splitter.split(z, y.astype(int) if binary else y):
        kk = max(1, min(k, len(train)))
        if binary:
            clf = KNeighborsClassifier(n_neighbors=kk, weights="distance").fit(z[train], y[train].astype(int))
            proba = np.zeros((len(test), len(counts)))
            proba[:, clf.classes_] = clf.predict_proba(z[test])
            probs[test] = proba
        else:
            pred[test] = (
                KNeighborsRegressor(n_neighbors=kk, weights="distance").fit(z[train], y[train]).predict(z[test])
            )
    if not binary:
        return metric, float(r2_score(y, pred))
    if probs.shape[1] == 2:
        return metric, float(roc_auc_score(y.astype(int), probs[:, 1]))
    return metric, float(roc_auc_score(y.astype(int), probs, multi_class="ovr", average="macro"))


class RepresentationMonitor(TensorBoardEmbeddingHandler):
    """Every ``monitor_every`` iterations: kNN scores, collapse std and RankMe of a labelled monitor set.

    Args:
        encoder: module mapping 8-bit clips ``B x C x T x H x W`` to ``B x D`` (the projector's encoder).
        datalist: the monitor set (the first ``max_samples`` items); ``label_keys`` are read from the items.
        transform: the deterministic clip loader (``embedding_clip_loader``); loaded clips are kept in memory.
        labels: label name -> the item key holding it, or a function of the item (e.g. reduced EF
            ``lambda item: float(item["ef"] < 50)``); scored by kNN (binary -> AUROC, continuous -> R2); items
            without a value are left out of that label's score.
        monitor_every: iterations between monitor steps (0: only at the end of the run); the run's end is always
            monitored.
        collapse_std: below this normalised std a step is flagged (logged as a WARNING).
        k: neighbours of the kNN score.
        log_dir, summary_writer, image_key, input_keys, max_samples, batch_size, amp: as the projector's.
        enabled: ``False`` attaches nothing (non-zero DDP ranks); the object still has a ``state_dict``, so it can
            stay in the resume handler's ``save_dict`` on every rank.
        history_file: where the history is written as JSON (``{"history": [rows]}``, :func:`read_history`) at every
            monitor step and when the run starts (then the history a resume restored, or none); a relative path is
            under ``log_dir``; ``None`` (or no ``log_dir`` with a relative path) writes none. Only an ``enabled``
            handler (rank 0) writes it.
    """

    def __init__(
        self,
        encoder: nn.Module | Callable[..., torch.Tensor],
        datalist: Sequence[Mapping[str, Any]],
        transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        labels: Mapping[str, str | Callable[[Mapping[str, Any]], Any]] | None = None,
        monitor_every: int = 100,
        collapse_std: float = 0.1,
        k: int = 10,
        log_dir: str | None = "./runs",
        summary_writer: Any | None = None,
        image_key: str = "image",
        input_keys: Mapping[str, str] | None = None,
        max_samples: int = 64,
        batch_size: int = 16,
        amp: bool = False,
        enabled: bool = True,
        history_file: str | os.PathLike | None = HISTORY_FILE,
    ) -> None:
        super().__init__(
            encoder=encoder,
            datalist=datalist,
            transform=transform,
            log_dir=log_dir,
            summary_writer=summary_writer,
            image_key=image_key,
            input_keys=input_keys,
            metadata_keys=[],
            max_samples=max_samples,
            batch_size=batch_size,
            thumbnail_size=0,
            amp=amp,
        )
        self.labels = dict(labels if labels is not None else {"ef": "ef"})
        self.monitor_every = max(0, int(monitor_every))
        self.collapse_threshold = float(collapse_std)
        self.k = int(k)
        self.enabled = bool(enabled)
        self.history_file = _history_path(history_file, log_dir)
        self.history: list[dict[str, float]] = []
        self._cache: tuple[list[dict], list[list[str]]] | None = None
        self._label_values: dict[str, tuple[np.ndarray, bool]] = {}

    def attach(self, engine: Engine) -> None:
        """Monitor every ``monitor_every`` iterations and at ``COMPLETED`` (nothing when not ``enabled``)."""
        if not self.enabled:
            return
        from medssl_monai.engines.tracking import _writer

        self.writer, self._owned = _writer(self.log_dir, self._given_writer)
        if self.history_file is not None:
            # after the resume handler's STARTED (attached before): the restored history, else an empty one, so a
            # file of an earlier run in the same folder never stands for this one
            engine.add_event_handler(Events.STARTED, self.write_history)
        if self.monitor_every:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.monitor_every), self)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _load(self) -> tuple[list[dict], list[list[str]]]:
        # the clips are deterministic: decode them once, not at every monitor step
        if self._cache is None:
            items, values = [], {name: [] for name in self.labels}
            for i, item in enumerate(self.datalist):
                try:
                    out = self.transform(dict(item))
                except Exception as err:  # a bad file must not stop training
                    logger.warning("monitor: skipping item %d (%s): %s", i, item.get(self.image_key, "?"), err)
                    continue
                items.append({k: out[k] for k in (self.image_key, *self.input_keys.values()) if k in out})
                for name, source in self.labels.items():
                    values[name].append(_label(item, source))
            self._cache = (items, [[] for _ in items])
            self._label_values = {n: _codes(v) for n, v in values.items()}
        return self._cache

    def _labels(self) -> dict[str, tuple[np.ndarray, bool]]:
        self._load()
        return {n: v for n, v in self._label_values.items() if np.isfinite(v[0]).any()}

    def measure(self) -> dict[str, float]:
        """Embed the monitor set and compute every score (one row of :attr:`history`, without the iteration)."""
        feats, _, _ = self.embed()
        z = feats.numpy()
        row = {"std": collapse_std(z), "rankme": rankme(z), "dims": float(z.shape[1]), "clips": float(len(z))}
        for key, (y, categorical) in self._labels().items():
            metric, value = knn_cv_score(z, y, k=self.k, categorical=categorical)
            row[f"knn_{metric}_{key}"] = value
        return row

    def _completed(self, engine: Engine) -> None:
        if not self.history or self.history[-1]["iteration"] != engine.state.iteration:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        """One monitor step at the engine's current iteration."""
        iteration = int(engine.state.iteration)
        t0 = time.perf_counter()
        try:
            row = self.measure()
        except Exception as err:  # monitoring must never stop a long run
            logger.warning("representation monitor at iteration %d failed: %s", iteration, err)
            return
        row["seconds"] = time.perf_counter() - t0  # the monitor's own cost, against the training time
        self.history.append({"iteration": float(iteration), **row})
        self.write_history()
        if self.writer is not None:
            for name, value in row.items():
                if name not in ("dims", "clips", "seconds") and math.isfinite(value):
                    self.writer.add_scalar(f"monitor/{name}", value, iteration)
            self.writer.flush()
        scores = ", ".join(f"{n[4:]} {v:.3f}" for n, v in row.items() if n.startswith("knn_"))
        line = (
            f"monitor @ iteration {iteration}: {scores + ', ' if scores else ''}std {row['std']:.3f} "
            f"(normalised; 0 = collapse), RankMe {row['rankme']:.1f} of {int(min(row['dims'], row['clips']))} "
            f"({row['seconds']:.1f} s)"
        )
        if row["std"] < self.collapse_threshold:
            logger.warning(line + f" -- COLLAPSED (std below {self.collapse_threshold})")
        else:
            logger.info(line)

    def write_history(self, engine: Engine | None = None) -> None:
        """Rewrite :attr:`history_file` with the whole history (atomically; host values only, no device sync)."""
        if self.history_file is None:
            return
        from medssl_monai.engines.run_record import write_json_atomic

        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"history": self.history}, self.history_file)
        except OSError as err:  # monitoring must never stop a long run
            logger.warning("representation monitor: cannot write %s: %s", self.history_file, err)

    @property
    def collapsed(self) -> bool:
        """Whether the latest monitor step was flagged as collapsed."""
        return bool(self.history) and self.history[-1]["std"] < self.collapse_threshold

    def state_dict(self) -> dict[str, Any]:
        """The monitor's history as tensors (``torch.load(weights_only=True)`` safe)."""
        keys = sorted({k for row in self.history for k in row})
        table = [[row.get(k, float("nan")) for k in keys] for row in self.history]
        return {"keys": keys, "history": torch.tensor(table, dtype=torch.float64).reshape(len(table), len(keys))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history written by :meth:`state_dict`."""
        keys = list(state["keys"])
        self.history = [
            {k: float(v) for k, v in zip(keys, row) if not (k != "iteration" and math.isnan(float(v)))}
            for row in torch.as_tensor(state["history"]).tolist()
        ]


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows a :class:`RepresentationMonitor` wrote to ``path`` (its ``history_file``); ``[]`` when there is none."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("history", [])) if isinstance(data, dict) else []


def _history_path(history_file: str | os.PathLike | None, log_dir: str | None) -> Path | None:
    if history_file is None:
        return None
    path = Path(history_file)
    if path.is_absolute():
        return path
    return None if log_dir is None else Path(log_dir) / path


def _label(item: Mapping[str, Any], source: str | Callable[[Mapping[str, Any]], Any]) -> Any:
    try:
        value = source(item) if callable(source) else item.get(source)
    except (TypeError, ValueError, KeyError):
        return None
    return value.item() if isinstance(value, (np.generic, torch.Tensor)) else value


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, bool]:
    """Numbers as floats (missing: NaN); any text among them: class codes, as a categorical label."""
    present = [v for v in values if v is not None and v == v]
    if all(isinstance(v, (bool, int, float)) for v in present):
        return np.asarray([float(v) if v is not None else float("nan") for v in values]), False
    classes = sorted({str(v) for v in present})
    return np.asarray([classes.index(str(v)) if v is not None and v == v else float("nan") for v in values]), True
