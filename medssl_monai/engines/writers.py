"""Inference writers shared by the bundles' ``configs/inference.yaml``: clip embeddings and per-sample predictions.

- :class:`EncoderPrepareBatch` hands 8-bit clips (plus optional inputs such as TVRL's ``times`` / ``frame_mask``)
  to a :class:`~medssl_monai.encoders.ClipEncoder` unchanged: the encoder normalises them itself.
- :class:`EmbeddingWriter` collects the evaluator's ``pred`` (``B x D`` clip embeddings) and writes
  ``embeddings.npy`` (``N x D`` float32) and ``embeddings.csv`` (row, id and metadata columns, one line per row).
- :class:`PredictionWriter` writes ``predictions.csv``: per sample the predicted value (regression) or the
  predicted class and the softmax probability of every class (classification, from logits).

Every writer resets at ``EPOCH_STARTED``, collects at ``ITERATION_COMPLETED`` and writes at ``COMPLETED``; the
batch must not be decollated (``decollate: false``) so that ``engine.state.batch`` holds the ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch

__all__ = ["EncoderPrepareBatch", "EmbeddingWriter", "PredictionWriter"]

logger = logging.getLogger(__name__)


def _column(batch: Any, key: str, n: int) -> list:
    """``n`` values of ``batch[key]`` as Python scalars/strings (``""`` when the batch lacks the key)."""
    value = batch.get(key) if isinstance(batch, Mapping) else None
    if value is None:
        return [""] * n
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(len(value), -1)[:, 0].tolist() if value.ndim else [value.item()] * n
    elif isinstance(value, (str, int, float)):
        value = [value] * n
    return [v.item() if isinstance(v, torch.Tensor) else v for v in list(value)[:n]]


class EncoderPrepareBatch(PrepareBatch):
    """The clip batch to the device as it is (8-bit scale), with ``input_keys`` passed to the network by name.

    Args:
        image_key: the clip, ``B x C x T x H x W`` (``uint8`` or float in ``[0, 255]``).
        input_keys: network keyword -> batch key, passed when the batch has the key (e.g.
            ``{"times": "times", "frame_mask": "frame_mask"}`` for TVRL's timed series).
    """

    def __init__(self, image_key: str = "image", input_keys: Mapping[str, str] | None = None) -> None:
        self.image_key = image_key
        self.input_keys = dict(input_keys or {})

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        """Returns ``(inputs, None, (), extra)`` as MONAI's engines expect."""
        x = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
        extra = {
            name: torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking)
            for name, key in self.input_keys.items()
            if key in batchdata
        }
        return x, None, (), extra


class _Collector:
    """Reset / collect / write on an Ignite engine."""

    def __init__(self, output_dir: str | Path, id_key: str, metadata_keys: Sequence[str]) -> None:
        self.output_dir = Path(output_dir)
        self.id_key = id_key
        self.metadata_keys = list(metadata_keys)
        self._reset()

    def attach(self, engine: Engine) -> None:
        """Registers the handler's events."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine | None = None) -> None:
        self.values: list[np.ndarray] = []
        self.rows: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        pred = engine.state.output["pred"]
        pred = pred.detach().float().cpu().reshape(len(pred), -1).numpy()
        n = len(pred)
        batch = engine.state.batch
        columns = {key: _column(batch, key, n) for key in (self.id_key, *self.metadata_keys)}
        self.values.append(pred)
        self.rows += [{key: columns[key][i] for key in columns} for i in range(n)]

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class EmbeddingWriter(_Collector):
    """Writes every clip's embedding: ``embeddings.npy`` (``N x D`` float32) and ``embeddings.csv`` (ids, in order).

    Attach to an evaluator whose network is a clip encoder (:func:`~medssl_monai.encoders.wrap_backbone` around
    the bundle's ``network_def``). Row ``i`` of the CSV describes row ``i`` of the array.

    Args:
        output_dir: folder of the two files.
        id_key: batch key of the clip ids (the CSV's ``id`` column).
        metadata_keys: further batch keys copied to the CSV (absent keys are left empty).
        filename: stem of the two files.
    """

    def __init__(
        self,
        output_dir: str | Path,
        id_key: str = "video_id",
        metadata_keys: Sequence[str] = (),
        filename: str = "embeddings",
    ) -> None:
        super().__init__(output_dir, id_key, metadata_keys)
        self.filename = filename

    def _write(self, engine: Engine) -> None:
        if not self.values:
            logger.warning("EmbeddingWriter: no clip was embedded")
            return
        mat = np.concatenate(self.values).astype(np.float32)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.output_dir / f"{self.filename}.npy", mat)
        table = pd.DataFrame(self.rows).rename(columns={self.id_key: "id"})
        table.insert(0, "row", np.arange(len(table)))
        table.to_csv(self.output_dir / f"{self.filename}.csv", index=False)
        logger.info("EmbeddingWriter: %d clips x %d dims -> %s", mat.shape[0], mat.shape[1], self.output_dir)


class PredictionWriter(_Collector):
    """Writes ``predictions.csv``: one line per sample, in the order of the data loader.

    ``task="classification"``: ``pred`` holds ``B x K`` logits; the columns are ``id``, ``prediction`` (the class
    name, or index without ``class_names``) and ``prob_<class>`` (softmax) for every class. ``task="regression"``:
    ``pred`` holds ``B x 1`` values; the columns are ``id`` and ``prediction``.

    Args:
        output_dir: folder of the CSV.
        task: ``"classification"`` or ``"regression"``.
        id_key: batch key of the sample ids.
        class_names: names of the K classes (default ``0 .. K-1``).
        metadata_keys: further batch keys copied to the CSV.
        filename: the CSV's name.
    """

    def __init__(
        self,
        output_dir: str | Path,
        task: str = "classification",
        id_key: str = "video_id",
        class_names: Sequence[str] | None = None,
        metadata_keys: Sequence[str] = (),
        filename: str = "predictions.csv",
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        super().__init__(output_dir, id_key, metadata_keys)
        self.task = task
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.filename = filename

    def table(self) -> pd.DataFrame:
        """The collected predictions as the CSV's table."""
        pred = np.concatenate(self.values) if self.values else np.zeros((0, 1), dtype=np.float32)
        table = pd.DataFrame(self.rows).rename(columns={self.id_key: "id"})
        if self.task == "regression":
            table["prediction"] = pred[:, 0]
            return table
        probs = torch.softmax(torch.from_numpy(pred), dim=1).numpy()
        names = self.class_names or [str(k) for k in range(pred.shape[1])]
        if len(names) != pred.shape[1]:
            raise ValueError(f"{len(names)} class names for {pred.shape[1]} logits")
        table["prediction"] = [names[k] for k in probs.argmax(axis=1)] if len(probs) else []
        for k, name in enumerate(names):
            table[f"prob_{name}"] = probs[:, k]
        return table

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        table = self.table()
        table.to_csv(self.output_dir / self.filename, index=False)
        logger.info("PredictionWriter: %d predictions -> %s", len(table), self.output_dir / self.filename)
