"""The resume file on disk: a damaged one named and explained, the previous one kept, crash leftovers removed.

* :func:`read_resume_file` loads a resume checkpoint (``weights_only=True``) or raises
  :class:`DamagedCheckpointError` naming the file and what is wrong with it (empty, truncated, not a PyTorch file,
  not a resume checkpoint) instead of torch's raw error, which names no file.
* :func:`keep_previous` makes ``resume.pt.prev`` the file about to be replaced (a hard link: no copy, and
  ``resume.pt`` is never absent), so a new file damaged after it was written (a bad disk, a truncating copy)
  still leaves one to resume from.
* :func:`remove_stale_temp_files` deletes the temporary files a killed
  :func:`~medssl_monai.engines.checkpoint.atomic_torch_save` (or
  :func:`~medssl_monai.engines.run_record.write_json_atomic`) left: ``.<name>.<8 random characters>.tmp``,
  ``tempfile.mkstemp``'s names with their prefix and suffix.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DamagedCheckpointError", "read_resume_file", "keep_previous", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

#: ``tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")``: the random part is 8 of ``[a-z0-9_]``
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be used; ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable with its two arguments
        return (self.__class__, (self.path, self.problem))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def read_resume_file(path: str | os.PathLike, required: Sequence[str] = ("objects", "trainer")) -> dict[str, Any]:
    """Load a resume checkpoint with ``torch.load(weights_only=True)``, or say what is wrong with the file.

    Args:
        path: the file.
        required: entries a resume checkpoint has.

    Raises:
        DamagedCheckpointError: ``empty file (0 bytes)``, ``truncated: ...``, ``not a PyTorch checkpoint: ...``,
            ``corrupt: ...`` or ``not a resume checkpoint: ...``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise DamagedCheckpointError(path, f"cannot be read ({_first_line(e)})") from e
    if size == 0:
        raise DamagedCheckpointError(path, "empty file (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, OSError, ... without the name
        if head != _ZIP_MAGIC:
            problem = f"not a PyTorch checkpoint: the file starts with {head!r} ({size} bytes)"
        elif not zipfile.is_zipfile(path):
            problem = f"truncated: the zip archive has no end ({size} bytes; an interrupted write or copy?)"
        else:
            problem = f"corrupt ({size} bytes): {_first_line(e)}"
        raise DamagedCheckpointError(path, problem) from e
    if not isinstance(ckpt, dict):
        raise DamagedCheckpointError(path, f"not a resume checkpoint: holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise DamagedCheckpointError(path, f"not a resume checkpoint: no {missing} (it has {sorted(ckpt)})")
    return ckpt


def keep_previous(path: str | os.PathLike, previous: str | os.PathLike) -> bool:
    """Make ``previous`` the current content of ``path`` before ``path`` is replaced.

    A hard link (no copy; ``path`` stays in place until its atomic replacement). On a file system without hard
    links ``path`` is renamed instead: until the new file is written only ``previous`` exists.

    Returns:
        Whether there was a file to keep.
    """
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return False
    tmp = path.parent / f".{previous.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here (some network or FAT file systems)
        os.replace(path, previous)
        return True
    try:
        os.replace(tmp, previous)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder``; returns those removed.

    Call it at start, before anything writes there (a writer's live temporary file has the same form).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if TEMP_FILE.fullmatch(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError as e:
                logger.warning(f"{p}: leftover temporary file not removed ({e})")
                continue
            removed.append(p)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) left by an interrupted write in {folder}")
    return removed
