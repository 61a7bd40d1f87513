"""Errors raised for bad input: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "VideoReadError", "CSVFormatError", "TracingError"]


class DataError(ValueError):
    """A problem with one input file.

    Args:
        path: the file (or folder) the problem is in.
        problem: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep the two-argument form picklable across DataLoader workers
        return (self.__class__, (self.path, self.problem))


class VideoReadError(DataError):
    """A video that cannot be decoded (missing, corrupt, truncated, empty or of the wrong shape)."""


class CSVFormatError(DataError):
    """A CSV file with missing columns or unusable values."""


class TracingError(DataError):
    """An EchoNet tracing that cannot become a mask (too few points, too few traced frames)."""
