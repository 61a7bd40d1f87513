"""Subprocesses that cannot hang a test run: a time limit, stacks of every process on a hang, no orphans.

Tests that start a bundle run (or anything that forks DataLoader workers) use :func:`run_bounded` instead of
``subprocess.run``. The command runs in a session (process group) of its own with Python's faulthandler on. On
timeout every process of the group, and of the groups its descendants started (``torchrun`` runs each worker in a
session of its own), gets SIGABRT, so each Python process (the runner and its forked workers, which inherit the
handler) prints the stack of every thread; then those groups are SIGKILLed, and the test fails with those stacks.
After a normal exit the group is killed too, so no worker outlives its runner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: default limit for one tiny bundle run (they take 10-90 s on the 2-core CI machine)
BUNDLE_RUN_TIMEOUT_S = 300


class HungProcessError(AssertionError):
    """The command ran past its time limit; the message holds the stacks of its processes."""


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _groups_of_tree(pid: int) -> set[int]:
    """``pid`` and the process groups of all its descendants (Linux ``/proc``; elsewhere ``{pid}``).

    ``torchrun`` starts each worker in a session of its own, which a signal to the runner's group misses; once
    the runner is dead its workers are reparented, so the tree is read before any signal.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    proc_dir = Path("/proc")
    for entry in proc_dir.iterdir() if proc_dir.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:  # the fields after the ")" closing the command name: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append((int(entry.name), int(fields[2])))
    groups, todo = {pid}, [pid]
    while todo:
        for child, pgid in children.get(todo.pop(), []):
            groups.add(pgid)
            todo.append(child)
    return groups


def run_bounded(
    cmd: Sequence[str],
    *,
    timeout: float = BUNDLE_RUN_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` like ``subprocess.run(..., capture_output=True, text=True)``, bounded by ``timeout`` seconds.

    Raises:
        HungProcessError: the command did not finish in time (its stacks and output tail are in the message).
    """
    full_env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        list(cmd),
        env=full_env,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        groups = _groups_of_tree(proc.pid)
        for pgid in groups:
            _kill_group(pgid, signal.SIGABRT)  # faulthandler: every thread's stack, in every Python process
        time.sleep(3)
        for pgid in groups:
            _kill_group(pgid, signal.SIGKILL)
        out, err = proc.communicate()
        raise HungProcessError(
            f"{' '.join(map(str, cmd))[:500]}\nran past {timeout:.0f} s; stacks and output tail:\n"
            f"--- stderr ---\n{err[-12000:]}\n--- stdout ---\n{out[-3000:]}"
        ) from None
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # leftover workers of the group
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
