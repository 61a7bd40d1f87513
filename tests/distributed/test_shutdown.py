"""``shutdown_process_group`` and ``wait_for_idle_threads``: the clean end of a ``torchrun`` process.

The race they close (gloo worker threads freeing a collective's tensors after the interpreter started shutting
down, SIGABRT at exit) cannot be forced in a test; what is checked is the behaviour it relies on: the wait returns
only once the other threads sleep or have ended, gives up after ``timeout``, and shutdown leaves no process group.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch
import torch.distributed as dist

from medssl_monai.distributed import is_dist, shutdown_process_group, wait_for_idle_threads

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def _spin(stop: threading.Event, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        sum(range(1000))  # pure Python: runnable the whole time (it competes for the GIL)


@linux_only
def test_wait_returns_after_a_busy_thread_has_finished():
    stop = threading.Event()
    worker = threading.Thread(target=_spin, args=(stop, 0.3))
    worker.start()
    assert wait_for_idle_threads(timeout=30.0)
    assert not worker.is_alive(), "returned while another thread was still running"
    worker.join()


@linux_only
def test_wait_gives_up_on_a_thread_that_never_sleeps():
    stop = threading.Event()
    worker = threading.Thread(target=_spin, args=(stop, 60.0))
    worker.start()
    try:
        assert wait_for_idle_threads(timeout=0.2) is False
        assert worker.is_alive()
    finally:
        stop.set()
        worker.join()


def test_wait_accepts_sleeping_threads():
    stop = threading.Event()
    sleeper = threading.Thread(target=stop.wait)  # blocked on a lock: state S
    sleeper.start()
    try:
        assert wait_for_idle_threads(timeout=30.0)
        assert sleeper.is_alive()
    finally:
        stop.set()
        sleeper.join()


def test_shutdown_without_a_process_group_is_a_no_op():
    assert not is_dist()
    shutdown_process_group()
    assert not is_dist()


def test_shutdown_destroys_the_group_after_collectives(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.ones(3)
        dist.all_reduce(x)
        del x  # the Python tensor goes first: the case that needed the GIL at exit
        shutdown_process_group(timeout=30.0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
