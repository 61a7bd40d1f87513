"""DataLoader-time bad samples: a video that became unreadable after the datalist was built.

The readers skip and report bad files at datalist time (``on_error``); a file can still fail later (deleted,
truncated by a copy, a decoder error on one frame). :class:`SkipBadSamples` wraps a dataset so that a long run
does not die on one such file: with ``on_bad_sample="skip"`` the failure is logged with the file name, counted,
and the sample is replaced by the next index (deterministic: no RNG is drawn, so resume and seeding stay exact);
with ``"raise"`` it raises an error naming the index and the file. Messages give the root cause (e.g. "truncated: the
header announces 40 frames but only 9 decode"), not MONAI's ``applying transform <...>`` wrapper around it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from medssl_monai.data.report import check_on_error
from medssl_monai.errors import DataError

__all__ = ["BadSampleError", "SkipBadSamples", "describe_item", "root_cause", "describe_error"]

logger = logging.getLogger(__name__)
_PATH_KEYS = ("image", "video", "path", "image_path", "filename", "label")


class BadSampleError(RuntimeError):
    """A sample failed to load or transform; the message names the index and the source file."""


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


def describe_item(dataset: Any, index: int) -> str:
    """The file behind ``dataset[index]`` (from the datalist item, e.g. its ``image`` path), for messages."""
    data = getattr(dataset, "data", None)
    try:
        item = data[index] if data is not None else None
    except Exception:  # noqa: BLE001 - describing must never fail
        item = None
    if isinstance(item, dict):
        for key in _PATH_KEYS:
            if isinstance(item.get(key), str):
                return item[key]
        return repr({k: v for k, v in item.items() if isinstance(v, (str, int, float))})[:200]
    return repr(item)[:200] if item is not None else f"index {index}"


class SkipBadSamples(Dataset):
    """Wrap ``dataset``: a failing ``__getitem__`` is logged, counted and replaced, or raised with its file name.

    Args:
        dataset: any map-style dataset (MONAI ``Dataset``/``CacheDataset``...; ``.data`` is used for names).
        on_bad_sample: ``"skip"`` (log, count, use the next index) or ``"raise"``. Samplers that yield
            non-integer indices (UCL's ``(video, frames)``) always raise, naming the file.
        max_consecutive: give up (raise) after this many bad samples in a row, e.g. a missing data folder.
        exceptions: the exception types treated as a bad sample (others always propagate).

    Attributes:
        skipped: number of bad samples replaced so far (per process: each DataLoader worker counts its own).
        bad: the ``(index, file, error)`` of each skip.
    """

    def __init__(
        self,
        dataset: Any,
        on_bad_sample: str = "skip",
        max_consecutive: int = 10,
        exceptions: Sequence[type[BaseException]] = (Exception,),
    ) -> None:
        check_on_error(on_bad_sample)
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.dataset = dataset
        self.on_bad_sample = on_bad_sample
        self.max_consecutive = int(max_consecutive)
        self.exceptions = tuple(exceptions)
        self.skipped = 0
        self.bad: list[tuple[int, str, str]] = []

    @property
    def data(self) -> Any:
        """The wrapped dataset's datalist (samplers and handlers that read ``dataset.data`` keep working)."""
        return getattr(self.dataset, "data", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):  # e.g. UCL's (video, frames) indices: no safe replacement exists
            try:
                return self.dataset[index]
            except self.exceptions as e:
                first = index[0] if isinstance(index, (tuple, list)) and index else index
                name = describe_item(self.dataset, first) if isinstance(first, int) else repr(first)
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
                if self.on_bad_sample == "raise":
                    # logged too: in a DataLoader worker the traceback can be far from the cause
                    logger.error(f"bad sample {i} ({name}) failed: {cause}; use --on_bad_sample skip to skip it")
                    raise BadSampleError(f"sample {i} ({name}) failed: {cause}") from e
                self.skipped += 1
                self.bad.append((i, name, cause))
                logger.warning(
                    f"bad sample {i} ({name}) skipped [{self.skipped} so far]: {cause}; using index {(i + 1) % n}"
                )
        raise BadSampleError(f"{self.max_consecutive + 1} consecutive bad samples starting at index {index}")
