"""OpenCV, configured once per process tree, before any DataLoader worker is forked.

The library runs OpenCV in many processes at once (DataLoader workers, synthetic-data writers), so each process
uses one OpenCV thread. OpenCV's thread pool is not fork-safe: once a parallel call (even ``cvtColor`` of 256
pixels, as the device CLAHE's lookup tables make in the training process) has started the pool's threads,
``cv2.setNumThreads`` in a forked child waits forever for threads that exist only in the parent. So:

- every module gets OpenCV from :func:`import_cv2`, which sets one thread the first time it runs in a process
  tree, before any parallel call of the library's;
- a forked child inherits that setting (and the flag saying it was made) and never re-configures the pool;
- a fork hook configures a parent that imported ``cv2`` by other means (a user's code, a test) before it forks,
  in the parent, where changing the pool is safe.

Plain OpenCV calls in a forked child are safe: only re-configuring the inherited pool hangs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from types import ModuleType

__all__ = ["import_cv2", "opencv_configured"]

_log = logging.getLogger(__name__)

_configured = False
# ``cv2`` was imported before this module: someone else may have run parallel OpenCV calls already
_preloaded = "cv2" in sys.modules


def opencv_configured() -> bool:
    """Whether this process (or the parent it was forked from) has set OpenCV's thread count."""
    return _configured


def import_cv2() -> ModuleType:
    """Return ``cv2`` with one OpenCV thread in this process tree (set at most once, never in a forked child).

    Returns:
        The ``cv2`` module.
    """
    import cv2

    if not _configured:
        _configure(cv2)
    return cv2


def _configure(cv2: ModuleType) -> None:
    global _configured
    _configured = True  # before the call: a hook or a retry must never call setNumThreads twice
    if _preloaded and multiprocessing.parent_process() is not None:
        # a child whose parent imported cv2 without this module: its pool may have run threads there, and
        # re-configuring it here is what hangs; keep the inherited setting
        _log.debug("OpenCV thread count left as inherited in child process %d", os.getpid())
        return
    cv2.setNumThreads(1)


def _before_fork() -> None:
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and not _configured:
        _configure(cv2)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)
