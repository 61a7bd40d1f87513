"""Walking a user's data folder: recursive, symlinked folders followed once, hidden names left out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["walk_visible"]


def walk_visible(root: str | os.PathLike) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk(root, followlinks=True)`` without hidden names and without visiting a folder twice.

    Yields ``(folder, dirs, files)`` with both lists sorted; as with ``os.walk``, removing names from ``dirs`` in
    place keeps the walk out of them.
    """
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop, or the same folder linked twice
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), dirs, sorted(f for f in files if not f.startswith("."))
