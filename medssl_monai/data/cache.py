"""The decoded-clip cache: each source decoded once to ``uint8`` frames on disk, memory-mapped after.

An entry is ``<sha1 of the resolved source path>-<size>-<mtime_ns>.npy`` holding ``T x H x W x C`` ``uint8``.
The fingerprint is in the name, so a changed source simply misses and is rebuilt (the stale entry is
removed), and no sidecar can disagree with its array. Writes go to a unique temporary file that is
``os.replace``-d into place: a half-written entry is never visible, and many DataLoader workers (or
ranks) building the same entry at once each produce a complete file, the last rename winning.

A lookup costs the same with 10 or 10,000 entries: the entry's name follows from the source's path and ``stat``,
so a hit or a miss opens one file and lists nothing. The stale entries of a rebuilt source are found in an index of
the folder's entry names that each process lists once, at its first miss (a listing per miss made an epoch of
misses quadratic in the number of entries).

Entries hold the frames at the source's own size (videos as 3-channel RGB), so they take far more space than the
compressed sources (EchoNet-Dynamic: about 66 GB). Before a loader starts, :func:`check_dataset_cache_space`
estimates the entries still to build from the sources' headers and stops when the cache's disk cannot hold them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medssl_monai.data.sources import (
    IMAGE_EXTENSIONS,
    decode_frames,
    frame_files,
    header_shape,
    is_medical_image,
)
from medssl_monai.data.video import VIDEO_EXTENSIONS, video_info
from medssl_monai.errors import DataError
from medssl_monai.opencv import import_cv2

__all__ = [
    "CacheSpaceError",
    "ClipCache",
    "SpaceEstimate",
    "check_cache_space",
    "check_dataset_cache_space",
    "default_cache_dir",
    "entry_nbytes",
    "estimate_cache_bytes",
    "source_fingerprint",
]

logger = logging.getLogger(__name__)

_ENTRY_NAME = re.compile(r"^([0-9a-f]{40})-\d+-\d+\.npy$")
_NPY_HEADER_BYTES = 128  # what np.save writes before the array for these shapes


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


class _EntryIndex:
    """The entry names of each cache folder by source hash, listed once per process: where stale entries are found.

    An entry built by another process after the listing is not in it; it is the current one of its source
    unless that source changed again, in which case a later process's listing finds it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.folders: dict[str, dict[str, set[str]]] = {}
        self.listings = 0  # folder listings made by this process (the tests and the benchmark read it)

    def after_fork_in_child(self) -> None:
        # the parent's listing may be older than the child's files, and its lock may have been held at the fork
        self.lock = threading.Lock()
        self.folders = {}
        self.listings = 0

    def replace(self, folder: Path, stem: str, keep: str) -> list[str]:
        """Record ``keep`` as the one entry of source hash ``stem`` in ``folder``; return the names it replaces."""
        key = os.path.abspath(folder)
        with self.lock:
            names = self.folders.get(key)
            if names is None:
                names = self.folders[key] = self._list(folder)
            old = names.get(stem, set()) - {keep}
            names[stem] = {keep}
        return sorted(old)

    def _list(self, folder: Path) -> dict[str, set[str]]:
        self.listings += 1
        names: dict[str, set[str]] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _ENTRY_NAME.match(entry.name)
                    if match:
                        names.setdefault(match.group(1), set()).add(entry.name)
        except FileNotFoundError:
            pass
        return names


_INDEX = _EntryIndex()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_INDEX.after_fork_in_child)


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
        self._drop_stale(entry)
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

    def _drop_stale(self, keep: Path) -> None:
        """Remove the entries of ``keep``'s source at other fingerprints (found in the per-process index)."""
        for name in _INDEX.replace(self.cache_dir, keep.name.split("-", 1)[0], keep.name):
            (self.cache_dir / name).unlink(missing_ok=True)

    def build(self, paths: Iterable[str | Path], num_workers: int = 0, progress: bool = True) -> dict:
        """Decode every source not yet cached; returns ``{"built", "cached", "failed": {path: error}}``.

        A source that fails to decode is reported, not fatal: one bad file must not stop a long run. Entries that
        will not fit on the disk stop it before any decoding (:func:`check_cache_space`).
        """
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        try:
            check_cache_space(self, paths)  # before hours of decoding, not when the disk is full
        except CacheSpaceError as e:
            _exit_on_command_line(e)
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


# ---- space: estimate the entries still to build from headers, before a loader starts ---------------------------


class CacheSpaceError(OSError):
    """The entries still to build will not fit on the cache's disk; the message gives both sizes and the options."""


def _image_nbytes(path: Path) -> int:
    """Bytes of one decoded frame of an image file, as the cache stores it (grey 1 channel, colour 3)."""
    cv2 = import_cv2()
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(path, "cannot be decoded as an image (corrupt or unsupported)")
    return int(img.shape[0] * img.shape[1] * (1 if img.ndim == 2 else 3))


def entry_nbytes(path: str | Path) -> int:
    """Bytes of the cache entry ``path`` will get, read from its header: nothing is decoded but one frame of a folder.

    Videos: frames x height x width x 3 (decoded to RGB); frame folders: images x the first image's pixels x its
    channels; ``.npy``: the array's size; NIfTI / MetaImage: the sequence's size (grey, 1 channel).

    Raises:
        DataError: the header cannot be read, or the source is of no supported kind.
    """
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise DataError(path, f"frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        frames, frame_bytes = len(files), _image_nbytes(files[0])
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        info = video_info(path)
        frames, frame_bytes = info["num_frames"], info["height"] * info["width"] * 3
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        frames, frame_bytes = 1, _image_nbytes(path)
    elif path.suffix.lower() == ".npy":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError, EOFError) as e:
            raise DataError(path, f"cannot be read as a .npy array ({e})") from e
        frames, frame_bytes = (shape[0], int(np.prod(shape[1:]))) if shape else (0, 0)
    elif is_medical_image(path):
        shape = header_shape(path)
        frames, frame_bytes = shape[-1], int(np.prod(shape[:-1]))
    else:
        raise DataError(path, "unsupported clip source: no header to read its size from")
    return max(int(frames), 0) * int(frame_bytes) + _NPY_HEADER_BYTES


@dataclass
class SpaceEstimate:
    """The estimated size of the cache entries still to build.

    Attributes:
        sources: sources not cached yet.
        headers_read: how many of them had their header read (fewer than ``sources``: a random sample, its mean
            size extrapolated to all of them).
        unreadable: headers that could not be read (counted as 0 bytes: such a source will not decode either).
        nbytes: the estimated bytes of all ``sources``' entries.
    """

    sources: int
    headers_read: int
    unreadable: int
    nbytes: int

    @property
    def sampled(self) -> bool:
        """Whether the size was extrapolated from a sample of the headers."""
        return self.headers_read < self.sources

    def describe(self) -> str:
        """E.g. ``7465 sources not cached yet, about 49.2 GB (extrapolated from the headers of 200 of them)``."""
        how = f"extrapolated from the headers of {self.headers_read} of them" if self.sampled else "from their headers"
        if self.unreadable:
            how += f"; {self.unreadable} unreadable headers counted as empty"
        return f"{self.sources} sources not cached yet, about {_gb(self.nbytes)} ({how})"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def estimate_cache_bytes(sources: Sequence[str | Path], max_headers: int = 200, seed: int = 0) -> SpaceEstimate:
    """Estimate the bytes of the cache entries of ``sources`` from their headers (see :func:`entry_nbytes`).

    Args:
        sources: the sources (not yet cached) to estimate.
        max_headers: read at most this many headers; with more sources a random sample of this size is read
            and its mean size extrapolated (a header read is cheap, ~0.2 ms for a 112 x 112 AVI, but slow
            network storage can make 10,000 of them take minutes).
        seed: the sample's seed (the same sources give the same estimate).
    """
    sources = list(sources)
    if len(sources) > max_headers > 0:
        picked = np.random.default_rng(seed).choice(len(sources), size=max_headers, replace=False)
        sample = [sources[i] for i in sorted(picked)]
    else:
        sample = sources
    sizes, unreadable = [], 0
    for source in sample:
        try:
            sizes.append(entry_nbytes(source))
        except (ValueError, OSError):  # DataError is a ValueError; the loader will report that source itself
            sizes.append(0)
            unreadable += 1
    total = int(round(np.mean(sizes) * len(sources))) if sizes else 0
    return SpaceEstimate(len(sources), len(sample), unreadable, total)


def _free_bytes(folder: Path) -> tuple[int, Path]:
    """Free bytes (for this user) on the disk ``folder`` will be on, and the existing folder measured."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def space_check_enabled() -> bool:
    """``False`` when ``$MEDSSL_CACHE_SPACE_CHECK`` is ``0``/``off``/``false``/``no`` (e.g. a quota the disk's
    free space does not show)."""
    return os.environ.get("MEDSSL_CACHE_SPACE_CHECK", "1").strip().lower() not in ("0", "off", "false", "no")


class _Pending:
    """Per cache folder, the sources this process's loaders will cache and their estimated bytes.

    Loaders built one after another (training, then validation) share a folder: each check counts the entries
    all of them will still write, so a validation set that tips the disk over is caught before training starts.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, set[str]] = {}
        self.bytes: dict[str, dict[str, float]] = {}

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_PENDING = _Pending()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PENDING.after_fork_in_child)


def _cached(cache: ClipCache, source: Path) -> bool:
    try:
        return source in cache
    except ValueError:  # a missing source: no entry will be written for it
        return True


def check_cache_space(
    cache: ClipCache,
    sources: Iterable[str | Path],
    margin: float = 0.1,
    reserve_bytes: int = 10**9,
    max_headers: int = 200,
) -> SpaceEstimate | None:
    """Stop when the entries of ``sources`` not cached yet will not fit on the disk of ``cache.cache_dir``.

    The estimate (:func:`estimate_cache_bytes`) adds to what earlier checks in this process found for the same
    folder and have not been cached since; it must fit with ``margin`` (a fraction of it, for the estimate's
    error and the temporary files of writes in progress) plus ``reserve_bytes`` (checkpoints, logs) to spare.
    Sources an earlier check already counted are not counted again, so a loader built again each epoch costs
    one pass of dictionary lookups. Nothing is checked for a disabled cache or with ``$MEDSSL_CACHE_SPACE_CHECK=0``.

    Returns:
        The estimate of the new sources, or ``None`` when there was nothing new to check.

    Raises:
        CacheSpaceError: naming both sizes, the folder and the options (another ``--cache_dir``, free space,
            smaller sources; ``resize_to`` / ``spatial_size`` do not shrink entries, which hold the source's size).
    """
    if not cache.enabled or not space_check_enabled():
        return None
    key = os.path.abspath(cache.cache_dir)
    with _PENDING.lock:
        seen = _PENDING.seen.setdefault(key, set())
        new = [Path(s) for s in dict.fromkeys(str(s) for s in sources) if s not in seen]
        seen.update(str(s) for s in new)
        pending = _PENDING.bytes.setdefault(key, {})
    if not new:
        return None
    todo = [s for s in new if not _cached(cache, s)]
    estimate = estimate_cache_bytes(todo, max_headers=max_headers)
    with _PENDING.lock:
        for source in [s for s in pending if _cached(cache, Path(s))]:  # built since the last check
            del pending[source]
        each = estimate.nbytes / len(todo) if todo else 0.0
        pending.update(dict.fromkeys((str(s) for s in todo), each))
        need = sum(pending.values())
    free, disk = _free_bytes(cache.cache_dir)
    required = need * (1 + margin) + reserve_bytes if need else 0
    earlier = len(pending) - estimate.sources
    total = f"{cache.cache_dir}: {estimate.describe()}"
    if earlier > 0:
        total += f"; with the {earlier} counted for loaders built before this one, about {_gb(need)} to build"
    if estimate.sources:
        logger.info("clip cache %s; %s free on %s", total, _gb(free), disk)
    if required > free:
        raise CacheSpaceError(
            f"the decoded-clip cache will not fit: {total}. With a {margin:.0%} + {_gb(reserve_bytes)} margin "
            f"that needs {_gb(required)}, but {disk} has only "
            f"{_gb(free)} free. Options: point --cache_dir (or $MEDSSL_CACHE_DIR) at a disk with more free space; "
            f"free space on this one; or train on smaller source videos (re-encoded at a lower resolution): "
            f"--resize_to and --spatial_size do not shrink the cache, whose entries hold every frame at the "
            f"source's size (videos as 3-channel RGB). $MEDSSL_CACHE_SPACE_CHECK=0 skips this check."
        )
    return estimate


def _clip_loaders(transform: Any) -> Iterator[tuple[ClipCache, tuple[str, ...]]]:
    """The ``(ClipCache, keys)`` of every loading transform in a (nested) MONAI ``Compose``."""
    stack, visited = [transform], set()
    while stack:
        t = stack.pop()
        if t is None or id(t) in visited:
            continue
        visited.add(id(t))
        cache = getattr(t, "cache", None)
        if isinstance(cache, ClipCache):
            keys = getattr(t, "keys", ("image",))
            yield cache, tuple(str(k) for k in ((keys,) if isinstance(keys, str) else keys))
        children = getattr(t, "transforms", None)
        if isinstance(children, (list, tuple)):
            stack.extend(reversed(children))
        inner = getattr(t, "transform", None)  # wrappers around one transform
        if inner is not None and not isinstance(inner, (str, bytes)):
            stack.append(inner)


def dataset_clip_sources(dataset: Any) -> list[tuple[ClipCache, list[Path]]]:
    """The clip caches a dataset reads through and the sources it will read through each.

    Follows ``.dataset`` wrappers (:class:`~medssl_monai.data.robust.SkipBadSamples`,
    :class:`~medssl_monai.data.seeded.SeededSamples`, ``Subset``) down to a dataset with ``data`` (a datalist)
    and ``transform`` (MONAI's ``Dataset`` / ``CacheDataset``, ...). Anything else gives ``[]``.
    """
    for _ in range(16):
        if hasattr(dataset, "data") and hasattr(dataset, "transform"):
            break
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            return []
    else:
        return []
    data = dataset.data
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        return []
    found = []
    for cache, keys in _clip_loaders(dataset.transform):
        paths = [
            Path(item[k])
            for item in data
            if isinstance(item, dict)
            for k in keys
            if isinstance(item.get(k), (str, os.PathLike))
        ]
        if paths:
            found.append((cache, paths))
    return found


def check_dataset_cache_space(dataset: Any) -> list[SpaceEstimate]:
    """:func:`check_cache_space` for every clip cache ``dataset`` reads through (every bundle loader calls it).

    Under ``python -m monai.bundle run`` / ``python -m medssl_monai`` a :class:`CacheSpaceError` prints its message
    and exits with status 2, as the empty-loader check does; elsewhere it is raised.
    """
    estimates = []
    try:
        for cache, sources in dataset_clip_sources(dataset):
            estimate = check_cache_space(cache, sources)
            if estimate is not None:
                estimates.append(estimate)
    except CacheSpaceError as e:
        _exit_on_command_line(e)
    return estimates


def _exit_on_command_line(error: CacheSpaceError) -> None:
    """Print ``error`` and exit with status 2 in a command-line run, else raise it."""
    from medssl_monai.engines.loader_check import _is_command_line_run

    if _is_command_line_run():  # a traceback through MONAI's config parser would bury the one line that matters
        import sys

        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from error
    raise error
