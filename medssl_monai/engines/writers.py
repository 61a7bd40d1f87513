"""Inference writers shared by the bundles' ``configs/inference.yaml``: clip embeddings and per-sample predictions.

- :class:`EncoderPrepareBatch` hands 8-bit clips (plus optional inputs such as TVRL's ``times`` / ``frame_mask``)
  to a :class:`~medssl_monai.encoders.ClipEncoder` unchanged: the encoder normalises them itself.
- :class:`EmbeddingWriter` collects the evaluator's ``pred`` (``B x D`` clip embeddings) and writes
  ``embeddings.npy`` (``N x D`` float32) and ``embeddings.csv`` (row, id and metadata columns, one line per row);
  the inputs that could not be read go to ``embeddings_skipped.csv`` (id, file, reason).
- :class:`PredictionWriter` writes ``predictions.csv``: per sample the predicted value (regression) or the
  predicted class and the softmax probability of every class (classification, from logits), then ``status``
  (``ok`` or ``skipped``) and ``reason`` (why an input could not be read). Rows are appended and flushed as each
  batch ends (:class:`StreamingCsv`), so a crash keeps the finished ones.
- :class:`InferenceProgress` logs one line per finished input: ``[k/N] <id> (elapsed ..., ETA ...)``.

Every writer resets at ``EPOCH_STARTED``, collects at ``ITERATION_COMPLETED`` and writes at ``COMPLETED``; the
batch must not be decollated (``decollate: false``) so that ``engine.state.batch`` holds the ids. Inputs left out
by the loader (``DataLoader(on_bad_sample="skip")``, :mod:`medssl_monai.data.robust`) are listed, not predicted.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch

from medssl_monai.data.robust import BadSample, SkipCursor, attach_skipped_samples

__all__ = ["EncoderPrepareBatch", "EmbeddingWriter", "InferenceProgress", "PredictionWriter", "StreamingCsv"]

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


def sample_id(sample: BadSample, id_key: str) -> str:
    """The id of a skipped sample: its datalist item's ``id_key``, else the file name without its extension."""
    value = sample.item.get(id_key)
    if value is not None and value != "":
        return str(value)
    name = Path(sample.file).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


class StreamingCsv:
    """A CSV whose rows are appended and flushed as they come: a crash keeps every row written before it.

    Args:
        path: the file; the first write of a run replaces an older one.
        columns: the header; keys of a row outside it are dropped, missing ones left empty.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self._file: IO[str] | None = None
        self._writer: csv.DictWriter | None = None
        self.rows = 0

    @property
    def opened(self) -> bool:
        """Whether the file was started (a header written)."""
        return self._writer is not None

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` (the header first, when the file is not open yet) and flush."""
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="")  # noqa: SIM115 - kept open across batches, closed in close()
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="", extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()
        self.rows += len(rows)

    def close(self) -> None:
        """Close the file (writing the header of an empty one)."""
        if self._writer is None:
            self.write([])
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


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
        self._skips = SkipCursor()
        self._reset()

    def attach(self, engine: Engine) -> None:
        """Registers the handler's events."""
        attach_skipped_samples(engine)  # the epoch ends where the data does when inputs were left out
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine | None = None) -> None:
        self.values: list[np.ndarray] = []
        self.rows: list[dict] = []
        self.skipped: list[BadSample] = []
        self._skips.reset()

    def _batch_rows(self, engine: Engine) -> tuple[np.ndarray, list[dict]]:
        pred = engine.state.output["pred"]
        pred = pred.detach().float().cpu().reshape(len(pred), -1).numpy()
        n = len(pred)
        batch = engine.state.batch
        columns = {key: _column(batch, key, n) for key in (self.id_key, *self.metadata_keys)}
        return pred, [{key: columns[key][i] for key in columns} for i in range(n)]

    def _collect(self, engine: Engine) -> None:
        pred, rows = self._batch_rows(engine)
        self.values.append(pred)
        self.rows += rows
        self.skipped += self._skips.take(engine)

    def _skipped_row(self, sample: BadSample) -> dict:
        row = {key: sample.item.get(key, "") for key in self.metadata_keys}
        return {self.id_key: sample_id(sample, self.id_key), **row}

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class EmbeddingWriter(_Collector):
    """Writes every clip's embedding: ``embeddings.npy`` (``N x D`` float32) and ``embeddings.csv`` (ids, in order).

    Attach to an evaluator whose network is a clip encoder (:func:`~medssl_monai.encoders.wrap_backbone` around
    the bundle's ``network_def``). Row ``i`` of the CSV describes row ``i`` of the array. The inputs that could not
    be read are listed in ``<filename>_skipped.csv`` (id, metadata, file, reason; the header only when none).

    Args:
        output_dir: folder of the files.
        id_key: batch key of the clip ids (the CSV's ``id`` column).
        metadata_keys: further batch keys copied to the CSV (absent keys are left empty).
        filename: stem of the files.
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
        self.skipped += self._skips.take(engine)
        skipped = StreamingCsv(
            self.output_dir / f"{self.filename}_skipped.csv", ["id", *self.metadata_keys, "file", "reason"]
        )
        rows = [self._skipped_row(s) for s in self.skipped]
        skipped.write(
            [{"id": r.pop(self.id_key), **r, "file": s.file, "reason": s.reason} for r, s in zip(rows, self.skipped)]
        )
        skipped.close()
        if not self.values:
            logger.warning("EmbeddingWriter: no clip was embedded (%d inputs could not be read)", len(self.skipped))
            return
        mat = np.concatenate(self.values).astype(np.float32)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.output_dir / f"{self.filename}.npy", mat)
        table = pd.DataFrame(self.rows).rename(columns={self.id_key: "id"})
        table.insert(0, "row", np.arange(len(table)))
        table.to_csv(self.output_dir / f"{self.filename}.csv", index=False)
        logger.info(
            "EmbeddingWriter: %d clips x %d dims -> %s%s",
            mat.shape[0],
            mat.shape[1],
            self.output_dir,
            f"; {len(self.skipped)} inputs could not be read: {skipped.path}" if self.skipped else "",
        )


class PredictionWriter(_Collector):
    """Writes ``predictions.csv``: one line per sample, in the order of the data loader, as each batch ends.

    ``task="classification"``: ``pred`` holds ``B x K`` logits; the columns are ``id``, ``prediction`` (the class
    name, or index without ``class_names``) and ``prob_<class>`` (softmax) for every class. ``task="regression"``:
    ``pred`` holds ``B x 1`` values; the columns are ``id`` and ``prediction``. Then ``status`` (``ok``, or
    ``skipped`` for an input that could not be read: no prediction) and ``reason``.

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
        self.task = task
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.filename = filename
        self._csv: StreamingCsv | None = None
        super().__init__(output_dir, id_key, metadata_keys)

    def _names(self, k: int) -> list[str]:
        names = self.class_names or [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for {k} logits")
        return names

    def _format(self, pred: np.ndarray, rows: list[dict]) -> pd.DataFrame:
        table = pd.DataFrame(rows, columns=[self.id_key, *self.metadata_keys]).rename(columns={self.id_key: "id"})
        if self.task == "regression":
            table["prediction"] = pred[:, 0] if len(pred) else []
            return table
        probs = torch.softmax(torch.from_numpy(pred), dim=1).numpy()
        names = self._names(pred.shape[1])
        table["prediction"] = [names[k] for k in probs.argmax(axis=1)] if len(probs) else []
        for k, name in enumerate(names):
            table[f"prob_{name}"] = probs[:, k]
        return table

    def table(self) -> pd.DataFrame:
        """The collected predictions (the inputs that were read) as the CSV's table, without the status columns."""
        width = self.values[0].shape[1] if self.values else len(self.class_names or [None])
        pred = np.concatenate(self.values) if self.values else np.zeros((0, width), dtype=np.float32)
        return self._format(pred, self.rows)

    def _stream(self, width: int | None) -> StreamingCsv:
        if self._csv is None:
            probs = [] if self.task == "regression" or width is None else [f"prob_{n}" for n in self._names(width)]
            columns = ["id", *self.metadata_keys, "prediction", *probs, "status", "reason"]
            self._csv = StreamingCsv(self.output_dir / self.filename, columns)
        return self._csv

    def _append_skipped(self, samples: list[BadSample], width: int | None) -> None:
        rows = [self._skipped_row(s) for s in samples]
        rows = [{"id": r.pop(self.id_key), **r, "status": "skipped", "reason": s.reason} for r, s in zip(rows, samples)]
        if rows:
            self._stream(width).write(rows)

    def _reset(self, engine: Engine | None = None) -> None:
        super()._reset(engine)
        if getattr(self, "_csv", None) is not None and self._csv.opened:
            self._csv.close()
        self._csv = None

    def _collect(self, engine: Engine) -> None:
        pred, rows = self._batch_rows(engine)
        table = self._format(pred, rows).assign(status="ok", reason="")
        self.values.append(pred)
        self.rows += rows
        # the inputs left out came before this batch (or within it): listed first
        new = self._skips.take(engine)
        self.skipped += new
        self._append_skipped(new, pred.shape[1])
        self._stream(pred.shape[1]).write(table.to_dict("records"))

    def _write(self, engine: Engine) -> None:
        new = self._skips.take(engine)
        self.skipped += new
        width = self.values[0].shape[1] if self.values else (len(self.class_names) if self.class_names else None)
        self._append_skipped(new, width)
        stream = self._stream(width)
        stream.close()
        self._csv = None
        logger.info(
            "PredictionWriter: %d predictions -> %s%s",
            len(self.rows),
            stream.path,
            f" ({len(self.skipped)} inputs could not be read: status 'skipped')" if self.skipped else "",
        )


def _duration(seconds: float) -> str:
    """``"12 s"``, ``"3 min 05 s"``, ``"2 h 04 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class InferenceProgress:
    """Log one line per finished input: ``[k/N] <id> done (elapsed 1 min 02 s, ETA 10 min 30 s)``.

    ``N`` is the number of distinct ids in the loader's datalist (videos, even when every frame is a sample);
    an input that could not be read is logged as ``skipped`` with its reason. With several samples per id (frames,
    clips) an id is done when the next one starts.

    Args:
        id_key: the batch / datalist key of the input's id.
    """

    def __init__(self, id_key: str = "video_id") -> None:
        self.id_key = id_key
        self._skips = SkipCursor()

    def attach(self, engine: Engine) -> None:
        """Registers the handler's events."""
        attach_skipped_samples(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _total(self, engine: Engine) -> tuple[int, bool]:
        dataset = getattr(getattr(engine.state, "dataloader", None), "dataset", None)
        data = getattr(dataset, "data", None)
        try:
            ids = [d.get(self.id_key, i) if isinstance(d, Mapping) else i for i, d in enumerate(data)]
        except TypeError:  # no datalist: one sample per input
            return (len(dataset) if dataset is not None else 0), False
        return len(set(map(str, ids))), len(set(map(str, ids))) < len(ids)

    def started(self, engine: Engine) -> None:
        self.start = time.monotonic()
        self.done = 0
        self.pending: tuple[str, str] | None = None
        self.total, self.grouped = self._total(engine)
        self._skips.reset()

    def _finish(self, vid: str, status: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        logger.info(f"[{self.done}/{self.total}] {vid} {status} (elapsed {_duration(elapsed)}, ETA {_duration(eta)})")

    def _see(self, vid: str, status: str) -> None:
        if not self.grouped:
            self._finish(vid, status)
            return
        if self.pending is not None and self.pending[0] != vid:
            self._finish(*self.pending)
        if self.pending is None or self.pending[0] != vid or status != "done":
            self.pending = (vid, status)

    def iteration_completed(self, engine: Engine) -> None:
        batch = engine.state.batch
        n = len(engine.state.output["pred"]) if isinstance(engine.state.output, Mapping) else 0
        for s in self._skips.take(engine):  # left out before this batch arrived (or within it)
            self._see(sample_id(s, self.id_key), f"skipped: {s.reason}")
        for vid in _column(batch, self.id_key, n):
            self._see(str(vid), "done")

    def completed(self, engine: Engine) -> None:
        for s in self._skips.take(engine):
            self._see(sample_id(s, self.id_key), f"skipped: {s.reason}")
        if self.pending is not None:
            self._finish(*self.pending)
            self.pending = None
