"""The decoded-clip cache: each source decoded once to ``uint8`` frames on disk, memory-mapped after.

An entry is ``<sha1 of the resolved source path>-<size>-<mtime_ns>.npy`` holding ``T x H x W x C`` ``uint8``.
The fingerprint is in the name, so a changed source simply misses and is rebuilt (the stale entry is
removed), and no sidecar can disagree with its array. Writes go to a unique temporary file that is
``os.replace``-d into place: a half-written entry is never visible, and many DataLoader workers (or
ranks) building the same entry at once each produce a complete file, the last rename winning.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from medssl_monai.data.sources import decode_frames, frame_files

__all__ = ["ClipCache", "default_cache_dir", "source_fingerprint"]


def default_cache_dir() -> Path:
    """``$MEDSSL_CACHE_DIR`` or ``~/.cache/medssl_monai/clips``."""
    env = os.environ.get("MEDSSL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medssl_monai" / "clips"


def source_fingerprint(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, or summed over a frame folder's images (newest mtime)."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        stats = [f.stat() for f in files]
        return sum(s.st_size for s in stats) + len(files), max((s.st_mtime_ns for s in stats), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class ClipCache:
    """Decode-once, memory-mapped frame store.

    Args:
        cache_dir: where entries live; created on first write. ``None`` uses :func:`default_cache_dir`.
        decoder: source -> ``T x H x W x C`` ``uint8`` frames (default :func:`decode_frames`).
        enabled: ``False`` decodes every call (the reference behaviour, for benchmarks and debugging).

    Example::

        cache = ClipCache("/tmp/clips")
        frames = cache.frames("Videos/0X1A.avi")   # decoded the first time, memory-mapped after
        clip = frames[10:42]                        # a slice costs a page read, not a decode
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        decoder: Callable[[Path], np.ndarray] = decode_frames,
        enabled: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.decoder = decoder
        self.enabled = enabled

    def _stem(self, path: Path) -> str:
        return hashlib.sha1(str(path.resolve()).encode()).hexdigest()

    def entry_path(self, path: str | Path) -> Path:
        """Where the entry of ``path`` (at its current fingerprint) lives."""
        path = Path(path)
        if not path.exists():
            from medssl_monai.errors import DataError

            raise DataError(path, "file not found")
        size, mtime = source_fingerprint(path)
        return self.cache_dir / f"{self._stem(path)}-{size}-{mtime}.npy"

    def __contains__(self, path: str | Path) -> bool:
        return self.enabled and self.entry_path(path).is_file()

    def frames(self, path: str | Path) -> np.ndarray:
        """``T x H x W x C`` ``uint8`` frames of ``path``: memory-mapped from the cache, built if needed."""
        path = Path(path)
        if not self.enabled:
            return self.decoder(path)
        entry = self.entry_path(path)
        try:
            return np.load(entry, mmap_mode="r")
        except FileNotFoundError:
            pass
        except (ValueError, EOFError):  # unreadable entry (disk trouble; numpy raises EOFError when empty): rebuild
            entry.unlink(missing_ok=True)
        frames = np.ascontiguousarray(self.decoder(path))
        self._write(entry, frames)
        self._drop_stale(path, keep=entry)
        return np.load(entry, mmap_mode="r")

    def _write(self, entry: Path, frames: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, frames, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_stale(self, path: Path, keep: Path) -> None:
        for old in self.cache_dir.glob(f"{self._stem(path)}-*.npy"):
            if old != keep:
                old.unlink(missing_ok=True)

    def build(self, paths: Iterable[str | Path], num_workers: int = 0, progress: bool = True) -> dict:
        """Decode every source not yet cached; returns ``{"built", "cached", "failed": {path: error}}``.

        A source that fails to decode is reported, not fatal: one bad file must not stop a long run.
        """
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        todo, report = [], {"built": 0, "cached": 0, "failed": {}}
        for p in paths:
            try:
                if p in self:
                    report["cached"] += 1
                else:
                    todo.append(p)
            except ValueError as e:
                report["failed"][str(p)] = str(e)
        work = _build_one if num_workers <= 0 else None
        it: Iterable = (work(self, p) for p in todo) if work else _parallel(self, todo, num_workers)
        for p, err in tqdm(it, total=len(todo), desc="cache", disable=not progress or not todo):
            if err is None:
                report["built"] += 1
            else:
                report["failed"][str(p)] = err
        return report


def _build_one(cache: ClipCache, path: Path) -> tuple[Path, str | None]:
    try:
        cache.frames(path)
        return path, None
    except ValueError as e:  # DataError is a ValueError
        return path, str(e)


def _parallel(cache: ClipCache, todo: list[Path], num_workers: int):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        yield from pool.map(_build_one, [cache] * len(todo), todo, chunksize=4)
