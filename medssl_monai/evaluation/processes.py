"""Independent evaluation work (probes, supervised rows) in spawned worker processes of one thread each.

On the 2-core machine one process with two threads gets only 1.15-1.55x from its second thread in these
workloads (scikit-learn fits, small torch training steps), so two independent jobs of one thread each finish
sooner than the same jobs one after the other with two threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def one_thread() -> None:
    """Limit this process's torch, BLAS and OpenMP pools to one thread, for the rest of its life (a pool
    initializer)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def map_in_processes(fn: Callable[[T], R], items: Sequence[T], jobs: int = 1) -> Iterator[R]:
    """``map(fn, items)``; with ``jobs`` > 1, in that many spawned processes running :func:`one_thread` first.

    Spawned, not forked: a forked child of a process that has run torch, OpenMP or OpenCV threads can deadlock.
    ``fn`` and the items must be picklable (a module-level function, a ``functools.partial`` of one). Results
    come in the order of ``items``; when one fails (or the caller stops iterating) the pending items are
    cancelled and the pool is shut down.
    """
    if jobs <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(int(jobs), len(items)), mp_context=context, initializer=one_thread) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
