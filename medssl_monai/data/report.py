"""What a dataset reader kept, skipped and warned about.

Readers must not die on one bad video out of ten thousand, nor hide it: every skipped item is
recorded with its reason, counted in a one-line summary that is logged, and returned on request.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from medssl_monai.errors import CSVFormatError, DataError

__all__ = ["ReadReport", "OnError", "check_on_error", "read_csv_checked", "plain"]

OnError = Literal["skip", "raise"]


def check_on_error(on_error: str) -> None:
    """Reject anything but ``"skip"`` or ``"raise"`` early, with the allowed values in the message."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


@dataclass
class ReadReport:
    """Skipped items and warnings of one reader call.

    Attributes:
        source: the dataset root or CSV read.
        on_error: ``"skip"`` records bad items; ``"raise"`` raises the first one's :class:`DataError`.
        kept: number of datalist items returned.
        skipped: ``(item id or path, reason)`` per skipped item.
        warnings: ``(item id or path, message)`` per item kept despite a problem (e.g. ED/ES swapped by area).
    """

    source: str
    on_error: OnError = "skip"
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    _skip_kinds: Counter = field(default_factory=Counter, repr=False)
    _warn_kinds: Counter = field(default_factory=Counter, repr=False)

    def __len__(self) -> int:
        """The number of skipped items."""
        return len(self.skipped)

    def skip(self, item: str, error: DataError, kind: str) -> None:
        """Record ``item`` as skipped because of ``error`` (or raise it when ``on_error="raise"``).

        Args:
            item: the item's id (video id, subject id, path).
            error: the error naming the file and the problem.
            kind: a short category for the summary counts, e.g. ``"missing video"``.
        """
        if self.on_error == "raise":
            raise error
        self.skipped.append((str(item), str(error)))
        self._skip_kinds[kind] += 1

    def warn(self, item: str, message: str, kind: str) -> None:
        """Record a warning about a kept item."""
        self.warnings.append((str(item), message))
        self._warn_kinds[kind] += 1

    def summary(self) -> str:
        """One line: kept, skipped (by kind) and warnings (by kind)."""

        def counts(c: Counter) -> str:
            return ", ".join(f"{n} {k}" for k, n in c.most_common())

        text = f"{self.source}: kept {self.kept}, skipped {len(self.skipped)}"
        if self.skipped:
            text += f" ({counts(self._skip_kinds)})"
        text += f", {len(self.warnings)} warnings"
        if self.warnings:
            text += f" ({counts(self._warn_kinds)})"
        return text

    def log(self, logger: logging.Logger) -> None:
        """Log the summary (WARNING when anything was skipped or warned about, else INFO) and each skip at DEBUG."""
        level = logging.WARNING if self.skipped or self.warnings else logging.INFO
        logger.log(level, self.summary())
        for item, reason in self.skipped:
            logger.debug("skipped %s: %s", item, reason)
        for item, message in self.warnings:
            logger.debug("warning %s: %s", item, message)


def read_csv_checked(path: str | Path, required: Sequence[str], **kwargs) -> pd.DataFrame:
    """Read a CSV with pandas and check it has the ``required`` columns.

    Header names are stripped of surrounding spaces (``"FileName, X1"`` headers exist in the wild).

    Raises:
        CSVFormatError: the file is missing, empty, unparsable, or lacks columns (all of them are named).
    """
    path = Path(path)
    if not path.is_file():
        raise CSVFormatError(path, "CSV file not found")
    try:
        df = pd.read_csv(path, skipinitialspace=True, **kwargs)
    except pd.errors.EmptyDataError as e:
        raise CSVFormatError(path, "empty CSV file (no header)") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CSVFormatError(path, f"cannot be parsed as CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CSVFormatError(path, f"missing columns {missing}; found {list(df.columns)}")
    return df


def plain(value):
    """A numpy / pandas scalar as a plain Python value (datalists are JSON-able and collate cleanly)."""
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value
