"""DataLoader-time bad samples: a video that became unreadable after the datalist was built.

The readers skip and report bad files at datalist time (``on_error``); a file can still fail later (deleted,
truncated by a copy, a decoder error on one frame). :class:`SkipBadSamples` wraps a dataset so that a long run
does not die on one such file. With ``on_bad_sample="raise"`` it raises an error naming the index and the file.
With ``"skip"`` the failure is logged with the file name and counted, and

- training (``replace=True``): the sample is replaced by the next index (deterministic: no RNG is drawn, so resume
  and seeding stay exact). The counts of every DataLoader worker live in shared memory, so the loader
  (:class:`medssl_monai.data.loader.DataLoader`) adds them up at the end of each pass, logs them and stops the run
  when more than ``max_bad_fraction`` of the pass was skipped;
- validation, evaluation and inference (``replace=False``): the sample becomes a :class:`BadSample` marker (the
  file, the reason and the datalist item's ids). :class:`SkipBadCollate` drops the markers from the batch and
  hands them over under :data:`BAD_SAMPLES_KEY`; the loader collects them (``loader.bad_samples``) and leaves
  out a batch that became empty. :class:`SkippedSamplesHandler` lets an evaluator end its epoch where the data
  ends (fewer batches than ``len(loader)``), and the reports list the skipped files.

Messages give the root cause (e.g. "truncated: the header announces 40 frames but only 9 decode"), not MONAI's
``applying transform <...>`` wrapper around it. A full disk (ENOSPC, EDQUOT), an I/O error (EIO) or running out of
memory (``MemoryError``, torch's out-of-memory error) is not a bad sample: whatever ``on_bad_sample`` says, it
stops the run with a :class:`ResourceError` that says what happened.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset, get_worker_info

from medssl_monai.data.report import check_on_error
from medssl_monai.errors import DataError

__all__ = [
    "BAD_SAMPLES_KEY",
    "BadSample",
    "BadSampleError",
    "ResourceError",
    "SkipBadCollate",
    "SkipBadSamples",
    "SkipCursor",
    "SkippedSamplesHandler",
    "TooManyBadSamplesError",
    "attach_skipped_samples",
    "describe_error",
    "describe_item",
    "resource_problem",
    "root_cause",
    "skipped_samples",
    "skipped_summary",
]

logger = logging.getLogger(__name__)
_PATH_KEYS = ("image", "video", "path", "image_path", "filename", "label")

#: batch key under which :class:`SkipBadCollate` hands over the samples it left out
BAD_SAMPLES_KEY = "bad_samples"

# shared-memory count slots: 0 for the main process, 1 + worker id for each DataLoader worker (each slot has one
# writer, so no lock is needed); more workers than this wrap around, which only matters for the exact count
_SLOTS = 257


class BadSampleError(RuntimeError):
    """A sample failed to load or transform; the message names the index and the source file."""


class TooManyBadSamplesError(BadSampleError):
    """More than ``max_bad_fraction`` of a training pass could not be read."""


class ResourceError(RuntimeError):
    """Not a bad sample: the disk is full, an I/O operation failed or memory ran out. Stops the run."""


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be read, in place of the sample (``replace=False``).

    Attributes:
        index: its dataset index.
        file: the file behind it (see :func:`describe_item`).
        reason: the root cause, ``"<type>: <message>"``.
        item: the datalist item's plain fields (``video_id``, ``split``, ``frame_index``...) for output rows.
    """

    index: int
    file: str
    reason: str
    item: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"file", "reason"}`` plus the item's id fields, for JSON and CSV outputs."""
        ids = {k: v for k, v in self.item.items() if k not in _PATH_KEYS and k not in ("file", "reason")}
        return {"file": self.file, "reason": self.reason, **ids}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything it wraps (``__cause__``, else ``__context__``), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def root_cause(error: BaseException) -> BaseException:
    """The error that says what is wrong, under the wrappers MONAI adds (``raise RuntimeError(...) from e``).

    Follows ``__cause__`` and returns the first :class:`~medssl_monai.errors.DataError` (it names the file and the
    problem; a deeper cause is a library detail it already summarises), else the innermost cause.
    """
    seen: set[int] = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DataError) or current.__cause__ is None:
            return current
        current = current.__cause__
    return current


def describe_error(error: BaseException) -> str:
    """``"<type>: <message>"`` of the :func:`root_cause` of ``error``, for log lines and errors."""
    cause = root_cause(error)
    return f"{type(cause).__name__}: {cause}"


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def resource_problem(error: BaseException) -> str | None:
    """What the machine ran out of when ``error`` (or an error it wraps) is not the sample's fault, else ``None``.

    Disk full (``ENOSPC``, ``EDQUOT``), an I/O error (``EIO``), ``MemoryError`` and torch's out-of-memory errors
    (also as the plain ``RuntimeError`` messages of the CPU and CUDA allocators).
    """
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return f"the disk is full ({errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e})"
        if isinstance(e, OSError) and e.errno == errno.EIO:
            return f"an I/O error (EIO: {e.strerror or e}): the disk or network file system failed"
        if isinstance(e, MemoryError):
            return f"out of memory (MemoryError{': ' + str(e) if str(e) else ''})"
        if isinstance(e, torch.OutOfMemoryError):
            return f"out of memory (torch.OutOfMemoryError: {str(e).splitlines()[0] if str(e) else ''})"
        if isinstance(e, RuntimeError) and not isinstance(e, (BadSampleError, ResourceError)):
            text = str(e)
            if "out of memory" in text.lower() or "can't allocate memory" in text.lower():
                return f"out of memory ({type(e).__name__}: {text.splitlines()[0]})"
    return None


def describe_item(dataset: Any, index: int) -> str:
    """The file behind ``dataset[index]`` (from the datalist item, e.g. its ``image`` path), for messages."""
    item = _item(dataset, index)
    if isinstance(item, dict):
        for key in _PATH_KEYS:
            if isinstance(item.get(key), str):
                return item[key]
        return repr({k: v for k, v in item.items() if isinstance(v, (str, int, float))})[:200]
    return repr(item)[:200] if item is not None else f"index {index}"


def _item(dataset: Any, index: int) -> Any:
    data = getattr(dataset, "data", None)
    try:
        return data[index] if data is not None else None
    except Exception:  # noqa: BLE001 - describing must never fail
        return None


def _plain_fields(item: Any) -> dict:
    """The item's ``str`` / ``int`` / ``float`` / ``bool`` fields (ids and labels, not arrays), picklable."""
    if not isinstance(item, Mapping):
        return {}
    return {str(k): v for k, v in item.items() if isinstance(v, (str, int, float, bool, np.integer, np.floating))}


def _world_size() -> int:
    """The number of DDP processes (1 without a process group)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class SkipBadSamples(Dataset):
    """Wrap ``dataset``: a failing ``__getitem__`` is logged, counted and replaced or marked, or raised with its file.

    Args:
        dataset: any map-style dataset (MONAI ``Dataset``/``CacheDataset``...; ``.data`` is used for names).
        on_bad_sample: ``"skip"`` or ``"raise"``. Samplers that yield non-integer indices (UCL's
            ``(video, frames)``) always raise with ``replace=True``, naming the file.
        max_consecutive: give up (raise) after this many bad samples in a row, e.g. a missing data folder
            (``replace=True`` only).
        exceptions: the exception types treated as a bad sample (others always propagate).
        replace: ``True`` (training): use the next index. ``False`` (validation, evaluation, inference): return a
            :class:`BadSample` marker for :class:`SkipBadCollate` to drop.
        max_bad_fraction: the share of a pass that may be skipped; more stops the run
            (:meth:`check_pass`, called by the loader at the end of each pass). ``None``: no limit.

    Attributes:
        skipped: number of bad samples skipped so far in this process.
        bad: the ``(index, file, reason)`` of each skip in this process.
    """

    def __init__(
        self,
        dataset: Any,
        on_bad_sample: str = "skip",
        max_consecutive: int = 10,
        exceptions: Sequence[type[BaseException]] = (Exception,),
        replace: bool = True,
        max_bad_fraction: float | None = None,
    ) -> None:
        check_on_error(on_bad_sample)
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        if max_bad_fraction is not None and not 0.0 <= float(max_bad_fraction) <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1] or None, got {max_bad_fraction}")
        self.dataset = dataset
        self.on_bad_sample = on_bad_sample
        self.max_consecutive = int(max_consecutive)
        self.exceptions = tuple(exceptions)
        self.replace = bool(replace)
        self.max_bad_fraction = None if max_bad_fraction is None else float(max_bad_fraction)
        self.skipped = 0
        self.bad: list[tuple[int, str, str]] = []
        # [slot, (requested, unreadable)] in shared memory: DataLoader workers are processes, and only shared
        # memory lets the main process add up what each of them skipped
        self._counts = torch.zeros((_SLOTS, 2), dtype=torch.int64).share_memory_()

    @property
    def data(self) -> Any:
        """The wrapped dataset's datalist (samplers and handlers that read ``dataset.data`` keep working)."""
        return getattr(self.dataset, "data", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def counts(self) -> tuple[int, int]:
        """``(requested, unreadable)`` samples so far, summed over this process and every DataLoader worker (a
        replacement that fails too is counted when it is requested itself)."""
        total = self._counts.sum(dim=0)
        return int(total[0]), int(total[1])

    def check_pass(self, start: tuple[int, int], name: str = "training") -> tuple[int, int]:
        """Log the samples skipped since ``start`` (a :meth:`counts` value) and stop when there are too many.

        Returns:
            ``(requested, skipped)`` in the pass.

        Raises:
            TooManyBadSamplesError: more than ``max_bad_fraction`` of the pass was skipped.
        """
        requested, skipped = (now - then for now, then in zip(self.counts(), start))
        if skipped <= 0 or requested <= 0:
            return requested, skipped
        fraction = skipped / requested
        line = (
            f"{name}: {skipped} of {requested} samples ({100 * fraction:.1f}%) could not be read in this pass and "
            f"were skipped (each file and its reason are logged as 'bad sample ...')"
        )
        if self.max_bad_fraction is not None and fraction > self.max_bad_fraction:
            logger.error(line)
            raise TooManyBadSamplesError(
                f"{line}: more than max_bad_fraction {self.max_bad_fraction:g}. Too much of the data is unreadable "
                f"to go on: check the files named in the log (disk, copy, format), or allow more with "
                f"--max_bad_fraction {min(1.0, math.ceil(100 * fraction) / 100):g}"
            )
        logger.warning(line)
        return requested, skipped

    def _count(self, column: int) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_SLOTS - 1)
        self._counts[slot, column] += 1

    def _resource_check(self, error: BaseException, index: Any, name: str) -> None:
        problem = resource_problem(error)
        if problem is not None:
            message = (
                f"loading sample {index!r} ({name}) failed because {problem}. This is not a bad sample and is not "
                f"skipped: free the disk or memory (or fix the storage) and run again"
            )
            logger.error(message)
            raise ResourceError(message) from error

    def _marker(self, index: Any, error: BaseException) -> BadSample:
        first = index[0] if isinstance(index, (tuple, list)) and index else index
        name = describe_item(self.dataset, int(first)) if _is_index(first) else repr(first)
        item = _plain_fields(_item(self.dataset, int(first))) if _is_index(first) else {}
        return BadSample(int(first) if _is_index(first) else -1, name, describe_error(error), item)

    def __getitem__(self, index: Any) -> Any:
        self._count(0)
        if not self.replace:
            return self._get_or_mark(index)
        if not _is_index(index):  # e.g. UCL's (video, frames) indices: no safe replacement exists
            try:
                return self.dataset[index]
            except self.exceptions as e:
                first = index[0] if isinstance(index, (tuple, list)) and index else index
                name = describe_item(self.dataset, first) if _is_index(first) else repr(first)
                self._resource_check(e, index, name)
                raise BadSampleError(
                    f"sample {index!r} ({name}) failed: {describe_error(e)} (skipping needs integer indices)"
                ) from e
        n = len(self.dataset)
        for attempt in range(self.max_consecutive + 1):
            i = (int(index) + attempt) % n
            try:
                return self.dataset[i]
            except self.exceptions as e:
                name, cause = describe_item(self.dataset, i), describe_error(e)
                self._resource_check(e, i, name)
                if self.on_bad_sample == "raise":
                    # logged too: in a DataLoader worker the traceback can be far from the cause
                    logger.error(f"bad sample {i} ({name}) failed: {cause}; use --on_bad_sample skip to skip it")
                    raise BadSampleError(f"sample {i} ({name}) failed: {cause}") from e
                self.skipped += 1
                if attempt == 0:  # a replacement that fails too is counted when it is requested itself
                    self._count(1)
                self.bad.append((i, name, cause))
                logger.warning(
                    f"bad sample {i} ({name}) skipped [{self.skipped} so far]: {cause}; using index {(i + 1) % n}"
                )
        raise BadSampleError(f"{self.max_consecutive + 1} consecutive bad samples starting at index {index}")

    def _get_or_mark(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except self.exceptions as e:
            marker = self._marker(index, e)
            self._resource_check(e, index, marker.file)
            if self.on_bad_sample == "raise":
                logger.error(
                    f"bad sample {index!r} ({marker.file}) failed: {marker.reason}; "
                    "use --on_bad_sample skip to leave it out"
                )
                raise BadSampleError(f"sample {index!r} ({marker.file}) failed: {marker.reason}") from e
            self.skipped += 1
            self._count(1)
            self.bad.append((marker.index, marker.file, marker.reason))
            logger.warning(f"bad sample {index!r} ({marker.file}) left out: {marker.reason}")
            return marker


class SkipBadCollate:
    """A collate function that drops :class:`BadSample` markers and hands them over under :data:`BAD_SAMPLES_KEY`.

    A batch of markers only becomes ``{BAD_SAMPLES_KEY: [...]}``, which the loader leaves out. Runs in the
    DataLoader workers (picklable).

    Args:
        collate_fn: the collate function of the samples that loaded (default MONAI's ``list_data_collate``).
    """

    def __init__(self, collate_fn: Callable[[list], Any] | None = None) -> None:
        if collate_fn is None:
            from monai.data.utils import list_data_collate

            collate_fn = list_data_collate
        self.collate_fn = collate_fn

    def __call__(self, batch: Sequence[Any]) -> Any:
        bad = [s for s in batch if isinstance(s, BadSample)]
        good = [s for s in batch if not isinstance(s, BadSample)]
        if not bad:
            return self.collate_fn(good)
        out = self.collate_fn(good) if good else {}
        if not isinstance(out, dict):
            raise TypeError(f"SkipBadCollate needs dictionary samples to record the skipped ones, got {type(out)}")
        out[BAD_SAMPLES_KEY] = bad
        return out


def skipped_samples(engine: Engine | None) -> list[BadSample]:
    """The samples the engine's loader left out in its current (or last) pass, in loader order."""
    loader = getattr(getattr(engine, "state", None), "dataloader", None) or getattr(engine, "data_loader", None)
    return list(getattr(loader, "bad_samples", None) or [])


class SkipCursor:
    """The samples an engine's loader left out since the last call: for writers that append rows as batches end."""

    def __init__(self) -> None:
        self.seen = 0

    def reset(self) -> None:
        """Start over (a new pass)."""
        self.seen = 0

    def take(self, engine: Engine | None) -> list[BadSample]:
        """The samples left out since the previous call."""
        samples = skipped_samples(engine)
        new, self.seen = samples[self.seen :], len(samples)
        return new


def skipped_summary(samples: Sequence[BadSample], unit: str = "samples") -> dict[str, Any]:
    """``{"count", "files": [{"file", "reason", "<unit>"}]}``: one entry per file (a video's skipped clips or
    frames counted together), for ``summary.json``-style reports."""
    files: dict[str, dict[str, Any]] = {}
    for s in samples:
        entry = files.setdefault(s.file, {"file": s.file, "reason": s.reason, unit: 0})
        entry[unit] += 1
    return {"count": len(files), "files": list(files.values())}


class SkippedSamplesHandler:
    """Evaluator handler for loaders that leave unreadable samples out (``DataLoader(on_bad_sample=...)``).

    Such a loader yields fewer than ``len(loader)`` batches when every sample of a batch was unreadable. Ignite
    would then restart the loader to make up the difference (evaluating samples twice); this handler ends the epoch
    where the data ends instead (``terminate_epoch`` on ``DATALOADER_STOP_ITERATION``). When nothing at all could be
    read, the epoch ends without ``EPOCH_COMPLETED``: no metric is computed from no data (a pooled Dice of nothing
    would be 1.0), no best-model checkpoint is written and the best metric is kept; ``COMPLETED`` still fires, so
    the reports list the skipped files. Under DDP a rank that read nothing still completes its epoch: the metrics
    all-reduce across ranks there, and the other ranks' data makes them right.
    ``engine.state.metrics["skipped_samples"]`` holds the number left out (logged with the other metrics). The
    reports of :mod:`medssl_monai.engines` attach it themselves (:func:`attach_skipped_samples`); an evaluator
    without one lists it first in its handlers.
    """

    def __init__(self) -> None:
        self._epoch_start = 0

    def attach(self, engine: Engine) -> None:
        """Registers the events (once per engine)."""
        if getattr(engine, "_skipped_samples_handler", None) is not None:
            return
        engine._skipped_samples_handler = self  # type: ignore[attr-defined]
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self.data_ended)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    @staticmethod
    def _leaves_out(engine: Engine) -> bool:
        """Whether the engine's loader leaves unreadable samples out (so may yield fewer batches than its length)."""
        dataset = getattr(getattr(engine.state, "dataloader", None), "dataset", None)
        return isinstance(dataset, SkipBadSamples) and not dataset.replace

    def epoch_started(self, engine: Engine) -> None:
        self._epoch_start = engine.state.iteration

    def data_ended(self, engine: Engine) -> None:
        if not self._leaves_out(engine):
            return
        skipped = len(skipped_samples(engine))
        engine.state.metrics["skipped_samples"] = skipped
        nothing_read = engine.state.iteration == self._epoch_start and _world_size() == 1
        if nothing_read:
            logger.warning(
                f"none of the samples could be read ({skipped} left out): no metric is computed and no checkpoint "
                "written for this pass"
            )
        engine.terminate_epoch(skip_epoch_completed=nothing_read)

    def epoch_completed(self, engine: Engine) -> None:
        if self._leaves_out(engine):
            engine.state.metrics["skipped_samples"] = len(skipped_samples(engine))


def attach_skipped_samples(engine: Engine) -> SkippedSamplesHandler:
    """The engine's :class:`SkippedSamplesHandler`, attached now if it has none."""
    handler = getattr(engine, "_skipped_samples_handler", None)
    if handler is None:
        handler = SkippedSamplesHandler()
        handler.attach(engine)
    return handler
