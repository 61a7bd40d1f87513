"""MONAI's ``DataLoader`` with a stall watchdog: a loader that delivers nothing for a long time says so.

A deadlocked worker (a fork-unsafe library, a hung network file system, a stuck decoder) otherwise leaves a
training or evaluation run waiting forever without a word. :class:`DataLoader` times every ``next()``; when one
has waited ``stall_warning_s`` seconds (default 600, or ``$MEDSSL_LOADER_STALL_S``), a watchdog thread logs a
WARNING with the stacks of every thread of the waiting process, then signals each worker (``SIGUSR1``), whose
``faulthandler`` prints the stacks of its threads on the same standard error. It warns again every
``stall_warning_s`` while the wait goes on. Nothing changes in the batches, their order or the workers' seeding
(MONAI's ``worker_init_fn`` still runs first).

Unreadable samples (:mod:`medssl_monai.data.robust`): with ``on_bad_sample`` (validation, evaluation, inference)
the loader wraps its dataset in ``SkipBadSamples(replace=False)`` and its collate in ``SkipBadCollate``; each pass
collects the samples left out in ``loader.bad_samples`` and leaves out a batch that became empty. For a dataset
that already is a ``SkipBadSamples`` (training), the skips of every worker are added up, logged and checked against
its ``max_bad_fraction`` when the pass's last batch arrives.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from monai.data import DataLoader as MonaiDataLoader
from monai.data.utils import worker_init_fn as monai_worker_init_fn

from medssl_monai.data.cache import check_dataset_cache_space
from medssl_monai.data.robust import BAD_SAMPLES_KEY, BadSample, SkipBadCollate, SkipBadSamples

__all__ = ["DataLoader", "default_stall_warning_s", "format_thread_stacks"]

logger = logging.getLogger(__name__)

_STACK_SIGNAL = getattr(signal, "SIGUSR1", None)


def default_stall_warning_s() -> float:
    """``$MEDSSL_LOADER_STALL_S`` or 600 s: how long ``next()`` may wait before the watchdog warns."""
    return float(os.environ.get("MEDSSL_LOADER_STALL_S", 600))


def format_thread_stacks() -> str:
    """The Python stack of every thread of this process, most recent call last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if names.get(ident) == _Watchdog.THREAD_NAME:
            continue
        parts.append(f'Thread {ident} "{names.get(ident, "?")}":\n' + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class _WorkerInit:
    """Run the loader's ``worker_init_fn``, then let ``SIGUSR1`` print this worker's stacks (picklable: spawn)."""

    def __init__(self, fn: Callable[[int], Any] | None) -> None:
        self.fn = fn

    def __call__(self, worker_id: int) -> None:
        if self.fn is not None:
            self.fn(worker_id)
        if _STACK_SIGNAL is not None:
            try:  # sys.stderr may be replaced by an object without a file descriptor (pytest, notebooks)
                fd = sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):
                fd = 2
            try:
                faulthandler.register(_STACK_SIGNAL, file=fd, all_threads=True, chain=False)
            except (OSError, ValueError, RuntimeError) as err:  # a diagnostic must never stop a worker
                logger.debug("no stack dump on SIGUSR1 in worker %d: %s", worker_id, err)


class _Wait:
    __slots__ = ("iterator", "loader", "started", "warned")

    def __init__(self, iterator: Any, loader: DataLoader) -> None:
        self.iterator, self.loader = iterator, loader
        self.started = self.warned = time.monotonic()


class _Watchdog:
    """One daemon thread per process that looks at the loaders' current waits."""

    THREAD_NAME = "medssl-loader-watchdog"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waits: dict[int, _Wait] = {}
        self.thread: threading.Thread | None = None
        self.pid = 0

    def begin(self, iterator: Any, loader: DataLoader) -> int:
        wait = _Wait(iterator, loader)
        with self.lock:
            self.waits[id(wait)] = wait
            if self.thread is None or self.pid != os.getpid():  # none yet, or inherited through a fork
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
                self.thread.start()
        return id(wait)

    def after_fork_in_child(self) -> None:
        # the parent's lock may have been held by its watchdog thread, which does not exist here
        self.lock = threading.Lock()
        self.waits = {}
        self.thread = None

    def end(self, token: int) -> None:
        with self.lock:
            self.waits.pop(token, None)

    def _run(self) -> None:
        while True:
            with self.lock:
                waits = list(self.waits.values())
            now = time.monotonic()
            period = min([w.loader.stall_warning_s for w in waits] or [60.0])
            for wait in waits:
                if now - wait.warned >= wait.loader.stall_warning_s:
                    wait.warned = now
                    self._warn(wait, now - wait.started)
            # hold no finished wait while asleep: its iterator (and persistent workers) must be collectable
            waits = wait = None  # noqa: F841
            time.sleep(max(0.05, min(5.0, period / 10)))

    @staticmethod
    def _warn(wait: _Wait, waited: float) -> None:
        workers = [w for w in getattr(wait.iterator, "_workers", []) if getattr(w, "pid", None)]
        pids = [w.pid for w in workers]
        dataset = type(getattr(wait.loader, "dataset", None)).__name__
        logger.warning(
            f"DataLoader ({dataset}, {len(pids)} workers{': pids ' + str(pids) if pids else ''}) has delivered "
            f"no batch for {waited:.0f} s; the run may be hung. Stacks of process {os.getpid()}:\n"
            f"{format_thread_stacks()}" + ("\nEach worker prints its stacks to standard error next." if pids else "")
        )
        for pid in pids:
            if _STACK_SIGNAL is None:
                break
            try:
                os.kill(pid, _STACK_SIGNAL)
            except ProcessLookupError:
                logger.warning(f"DataLoader worker {pid} has exited")


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG.after_fork_in_child)


class _WatchedIterator:
    """The loader's iterator with every ``next()`` registered with the watchdog."""

    def __init__(self, iterator: Any, loader: DataLoader) -> None:
        self._iterator = iterator
        self._loader = loader

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        token = _WATCHDOG.begin(self._iterator, self._loader)
        try:
            return next(self._iterator)
        finally:
            _WATCHDOG.end(token)

    def __len__(self) -> int:
        return len(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


class _PassIterator:
    """One pass of a loader over a ``SkipBadSamples`` dataset: markers collected, empty batches left out, and the
    pass's skips checked when its last batch arrives (training stops at ``max_bad_fraction``).

    Nothing starts before the first ``next()``: Ignite creates an iterator it never reads when an evaluator's epoch
    ends early (:class:`~medssl_monai.data.robust.SkippedSamplesHandler`), which must neither start workers nor
    clear the last pass's :attr:`DataLoader.bad_samples`.
    """

    def __init__(self, loader: DataLoader, skipping: SkipBadSamples) -> None:
        self._loader = loader
        self._skipping = skipping
        self._iterator: Any = None
        self._start: tuple[int, int] = (0, 0)
        self._total = len(loader)
        self._fetched = 0
        self._finished = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __len__(self) -> int:
        return self._total

    def _begin(self) -> None:
        self._start = self._skipping.counts()  # before the workers start on this pass
        self._iterator = self._loader._batches()
        self._total = len(self._iterator)
        self._loader.bad_samples = []

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        bad: list[BadSample] = self._loader.bad_samples
        if not self._skipping.replace and bad:
            # the whole pass in one place: the workers' lines are interleaved with everything else
            files = "; ".join(f"{s.file} ({s.reason})" for s in bad[:20]) + (" ..." if len(bad) > 20 else "")
            requested = self._skipping.counts()[0] - self._start[0]
            logger.warning(f"{len(bad)} of {requested} samples could not be read and were left out: {files}")
        elif self._skipping.replace:
            self._skipping.check_pass(self._start)

    def __next__(self) -> Any:
        if self._iterator is None:
            self._begin()
        while True:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._finish()
                raise
            self._fetched += 1
            if isinstance(batch, dict) and BAD_SAMPLES_KEY in batch:
                self._loader.bad_samples.extend(batch.pop(BAD_SAMPLES_KEY))
            if self._fetched >= self._total:
                # Ignite stops at the epoch length without asking for more: the last batch ends the pass
                self._finish()
            if isinstance(batch, dict) and not batch:
                if self._fetched >= self._total:
                    raise StopIteration
                continue  # every sample of the batch was left out
            return batch


class DataLoader(MonaiDataLoader):
    """``monai.data.DataLoader`` that warns with stacks when no batch arrives for ``stall_warning_s`` seconds.

    On construction it checks that the decoded-clip cache the dataset reads through has room for the entries still
    to build (:func:`~medssl_monai.data.cache.check_dataset_cache_space`).

    Args:
        dataset: the dataset.
        num_workers: worker processes, as for ``monai.data.DataLoader``.
        stall_warning_s: seconds a ``next()`` may wait before the warning (``None``: $MEDSSL_LOADER_STALL_S or
            600; ``0``: no watchdog).
        on_bad_sample: ``None`` (default: samples are loaded as they are), ``"skip"`` (an unreadable sample is
            logged and left out of its batch; :attr:`bad_samples` lists it) or ``"raise"`` (it stops the run,
            naming the file): see :class:`~medssl_monai.data.robust.SkipBadSamples` with ``replace=False``.
        kwargs: everything else ``monai.data.DataLoader`` takes.

    Attributes:
        bad_samples: the :class:`~medssl_monai.data.robust.BadSample` markers left out in the current (or last)
            pass, in loader order (main process).
    """

    def __init__(
        self,
        dataset: Any,
        num_workers: int = 0,
        stall_warning_s: float | None = None,
        on_bad_sample: str | None = None,
        **kwargs: Any,
    ):
        # every bundle loader is built before the first epoch: a clip cache its disk cannot hold stops the run here
        check_dataset_cache_space(dataset)
        self.stall_warning_s = default_stall_warning_s() if stall_warning_s is None else float(stall_warning_s)
        if num_workers > 0:
            kwargs["worker_init_fn"] = _WorkerInit(kwargs.get("worker_init_fn", monai_worker_init_fn))
        if on_bad_sample is not None:
            dataset = SkipBadSamples(dataset, on_bad_sample=on_bad_sample, replace=False)
        if isinstance(dataset, SkipBadSamples) and not dataset.replace:
            kwargs["collate_fn"] = SkipBadCollate(kwargs.get("collate_fn"))
        self.bad_samples: list[BadSample] = []
        super().__init__(dataset, num_workers=num_workers, **kwargs)

    def _batches(self) -> Any:
        iterator = super().__iter__()
        return _WatchedIterator(iterator, self) if self.stall_warning_s > 0 else iterator

    def __iter__(self) -> Any:
        if isinstance(self.dataset, SkipBadSamples):
            return _PassIterator(self, self.dataset)
        return self._batches()
