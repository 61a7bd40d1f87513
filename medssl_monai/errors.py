"""Errors raised for bad input (each names the file and the problem) and for a training run that diverged."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DataError",
    "VideoReadError",
    "CSVFormatError",
    "TracingError",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteStateError",
]


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


class NonFiniteError(RuntimeError):
    """A training run that diverged (NaN or infinite values): it stops before writing them to any file."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite.

    Args:
        message: what happened, which iteration and which checkpoints are kept.
        iteration: the first iteration whose loss was not finite.
    """

    def __init__(self, message: str, iteration: int) -> None:
        self.iteration = int(iteration)
        super().__init__(message)

    def __reduce__(self):  # keep the two-argument form picklable (e.g. passed between processes)
        return (self.__class__, (str(self), self.iteration))


class NonFiniteStateError(NonFiniteError):
    """Weights or optimizer state with NaN or infinite values, refused when a file of them was to be written.

    Args:
        path: the file that was not written.
        key: the first tensor that is not finite (``model.conv.weight``, ``optimizer.state.3.exp_avg``).
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = str(path)
        self.key = key
        super().__init__(
            f"{self.path}: not written: {key} holds NaN or infinite values (the run diverged; the file keeps its "
            "previous content)"
        )

    def __reduce__(self):
        return (self.__class__, (self.path, self.key))
