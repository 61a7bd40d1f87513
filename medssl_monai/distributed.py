"""DDP helpers: gathers that keep gradients, so global negatives and statistics are right under ``torchrun``.

With one process every function is the identity, so single-GPU/CPU runs pay nothing.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "is_dist",
    "world_size",
    "rank",
    "all_gather_with_grad",
    "all_gather_no_grad",
    "all_reduce_sum",
    "all_reduce_mean",
    "shutdown_process_group",
    "wait_for_idle_threads",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably (identity without DDP).

    PyTorch's ``torch.distributed.nn.functional.all_gather``: its backward sends each rank the gradient of its own
    slice summed over ranks (reduce-scatter; all-to-all on gloo), which matches DDP's gradient averaging since the
    loss of every rank depends on every rank's embeddings.
    """
    if not is_dist() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.13 deprecates it for all_gather_single of the private _functional_collectives; this one still works
        warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (identity without DDP)."""
    if not is_dist() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (in place; returns ``x``)."""
    if is_dist() and world_size() > 1:
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (in place; returns ``x``)."""
    if is_dist() and world_size() > 1:
        dist.all_reduce(x)
        x /= world_size()
    return x


def wait_for_idle_threads(timeout: float = 10.0, polls: int = 3, interval: float = 0.01) -> bool:
    """Sleep, with the GIL released, until every other thread of this process has been asleep ``polls`` checks in a
    row (Linux ``/proc/self/task/*/stat`` states; elsewhere a fixed ``interval * polls`` grace period).

    Returns ``False`` if some thread was still running or runnable after ``timeout`` seconds.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        time.sleep(interval * polls)
        return True
    me = threading.get_native_id()
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(interval)
        busy = False
        for tid in os.listdir(tasks):
            if int(tid) == me:
                continue
            try:
                # the state follows the ")" that closes the thread name (which may itself hold spaces)
                state = (tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # exited between listdir and read
            if state in ("R", "D"):  # running, runnable (e.g. just woken for the GIL), or in uninterruptible I/O
                busy = True
                break
        quiet = 0 if busy else quiet + 1
        if quiet >= polls:
            return True
    return False


def shutdown_process_group(timeout: float = 10.0) -> None:
    """End a ``torchrun`` process's distributed part: barrier, ``destroy_process_group``, then let the backend's
    threads go idle before the interpreter shuts down (no-op without a process group).

    Why the wait: gloo's worker threads free a finished collective's work object (and the tensors it holds) after the
    rank waiting on it has moved on. Freeing a tensor whose Python object was dropped first takes the GIL; once the
    interpreter is finalising, a thread that asks for the GIL is ended inside that destructor and the whole process
    aborts ("terminate called without an active exception", SIGABRT) although every output was written. The process
    group's threads outlive ``destroy_process_group`` (other objects, e.g. DDP's reducer, still hold the group), so
    the only safe point is to wait, GIL released, until they sleep.
    """
    if not is_dist():
        return
    dist.barrier()  # no rank tears down while another still talks to it
    dist.destroy_process_group()
    if not wait_for_idle_threads(timeout):
        warnings.warn(f"threads still busy {timeout:.0f} s after destroy_process_group; exiting anyway", stacklevel=2)
