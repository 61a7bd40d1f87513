"""DDP helpers: gathers that keep gradients, so global negatives and statistics are right under ``torchrun``;
process-group start and end that survive elastic restarts and interpreter shutdown; the checks a resume needs
across ranks (same world size, same checkpoint iteration on every rank).

With one process every function is the identity, so single-GPU/CPU runs pay nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

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
    "all_gather_object",
    "init_process_group",
    "ResumeMismatchError",
    "check_resume_world_size",
    "check_same_resume_iteration",
    "shutdown_process_group",
    "wait_for_idle_threads",
]

T = TypeVar("T")


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


def all_gather_object(obj: T) -> list[T]:
    """``obj`` (picklable) of every rank, in rank order (``[obj]`` without DDP)."""
    if not is_dist() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _elastic_attempt_store(timeout: timedelta) -> dist.Store | None:
    """This ``torchrun`` attempt's own namespace of the agent's store, or ``None`` to let torch build the store.

    torchrun (torch >= 2.4, c10d rendezvous, ``--standalone`` too) lends its workers the agent's TCPStore and keeps
    that one store across ``--max-restarts`` restarts, without a per-attempt prefix (torch 2.13's
    ``_create_c10d_store`` says it creates a new store per retry; the rendezvous reuses the server). The restarted
    workers then read the failed attempt's gloo addresses and fail to connect, or wait forever (measured here: 3 of
    3 restarts of a two-process CPU run). Within one node the agent restarts all workers together, so
    ``TORCHELASTIC_RESTART_COUNT`` names the attempt on every rank; across nodes it does not (a node whose workers
    were healthy restarts without counting), so there the store is left as it is and a warning names torch's
    opt-out.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) == 0:
        return None  # torch's own store per run, or no restart that could meet stale keys
    if int(env.get("GROUP_WORLD_SIZE", "1")) > 1:
        if env.get("RANK") == "0":
            warnings.warn(
                "torchrun --max-restarts over several nodes keeps one store across restarts; a restarted group may "
                "fail to connect: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun on every node",
                stacklevel=3,
            )
        return None
    client = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False, timeout=timeout
    )
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"medssl_monai/attempt_{attempt}", client)  # keys become <prefix>/<key>


def init_process_group(backend: str, timeout: timedelta | None = None) -> bool:
    """``torch.distributed.init_process_group(backend)`` from the ``torchrun`` environment, also after a restart.

    Under ``torchrun --max-restarts N`` on one node the process group gets a store namespace per attempt, so a
    restarted group never reads the failed attempt's addresses (see :func:`_elastic_attempt_store`).

    Returns:
        ``False`` if a process group already existed (nothing done), else ``True``.
    """
    if is_dist():
        return False
    from torch.distributed.constants import default_pg_timeout

    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    store = _elastic_attempt_store(timeout or default_pg_timeout)
    if store is None:
        dist.init_process_group(backend=backend, **kwargs)
    else:
        rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, **kwargs)
    return True


class ResumeMismatchError(RuntimeError):
    """A resume checkpoint that does not fit this run's processes: another world size, or ranks at other points."""


def _stop(message: str) -> None:
    """Stop the run: ``error: message`` on stderr and exit status 2 on a command line (``python -m monai.bundle``,
    ``torchrun`` workers of it, our CLI), else :class:`ResumeMismatchError`."""
    from medssl_monai.engines.loader_check import _is_command_line_run  # here: engines import this module

    if _is_command_line_run():  # a traceback would bury the one line that says what to do
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    raise ResumeMismatchError(message)


def check_resume_world_size(saved: int | None, path: str | Path) -> None:
    """Stop unless the resume checkpoint ``path`` was written by a run with this run's world size.

    Another world size would silently change each rank's data partition, the per-rank batch and the random
    streams the ranks continue. ``saved`` is ``None`` for a checkpoint that does not record it (nothing checked).
    """
    if saved is None or int(saved) == world_size():
        return
    saved, current = int(saved), world_size()
    _stop(
        f"{path} was written by a run of {saved} process(es) (world size {saved}); this run has {current}: an exact "
        f"resume needs the same world size (each rank's data share and random state depend on it). Resume with "
        f"{saved} process(es) in all (torchrun --nproc_per_node {saved} on one node, or nodes x --nproc_per_node = "
        f"{saved}), or start over with --resume False"
    )


def check_same_resume_iteration(iteration: int | None, path: str | Path) -> None:
    """Stop unless every rank resumes from the same iteration (``None``: no checkpoint, a fresh start).

    A collective: every rank calls it, once, after loading. Ranks differ when they read different files, e.g. a
    ``ckpt_dir`` on each node's local disk.
    """
    iterations = all_gather_object(None if iteration is None else int(iteration))
    if len(set(iterations)) <= 1:
        return
    where = ", ".join(
        f"rank {r} " + ("fresh start (no checkpoint)" if it is None else f"iteration {it}")
        for r, it in enumerate(iterations)
    )
    _stop(
        f"the ranks would resume from different points ({where}; this rank read {path}): every rank must read the "
        f"same resume checkpoint, so put ckpt_dir (--bundle_root) on a file system all nodes share, or start over "
        f"with --resume False"
    )


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
