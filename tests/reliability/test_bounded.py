"""The test harness's bounded subprocess: a hang fails fast with the stacks of every process, leaving none."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest
from bounded import HungProcessError, run_bounded

HANG = """
import os, sys, time
pid = os.fork()
if pid == 0:
    def stuck_in_child():
        time.sleep(600)
    stuck_in_child()
def stuck_in_parent():
    time.sleep(600)
print('child', pid, flush=True)
stuck_in_parent()
"""


def _printed_pid(message: str, label: str) -> int:
    """The pid a hung script printed as ``label pid`` on its stdout (the processes' stderr dumps interleave)."""
    found = re.search(rf"^{label} (\d+)$", message.split("--- stdout ---")[-1], re.M)
    assert found, f"no '{label} <pid>' line in the output tail:\n{message}"
    return int(found.group(1))


def test_a_hung_run_fails_with_every_process_stack_and_leaves_no_process():
    t0 = time.monotonic()
    with pytest.raises(HungProcessError) as info:
        run_bounded([sys.executable, "-c", HANG], timeout=5)
    assert time.monotonic() - t0 < 30
    message = str(info.value)
    assert "stuck_in_parent" in message and "stuck_in_child" in message  # the forked child's stack too
    child = _printed_pid(message, "child")
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_finished_run_returns_its_output_and_status():
    out = run_bounded([sys.executable, "-c", "import sys; print('ok'); sys.exit(3)"], timeout=60)
    assert out.returncode == 3 and out.stdout.strip() == "ok"


# a child in a session of its own, as torchrun starts its workers: the runner's group signal would miss it
HANG_SETSID = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time\\ndef stuck_in_own_session():\\n    time.sleep(600)\\nstuck_in_own_session()"],
    start_new_session=True,
)
print('session-child', child.pid, flush=True)
time.sleep(600)
"""


def test_a_hung_run_also_stops_descendants_in_sessions_of_their_own():
    t0 = time.monotonic()
    with pytest.raises(HungProcessError) as info:
        run_bounded([sys.executable, "-c", HANG_SETSID], timeout=5)
    assert time.monotonic() - t0 < 30, "the child kept the output pipe open"
    message = str(info.value)
    assert "stuck_in_own_session" in message  # its stack too
    child = _printed_pid(message, "session-child")
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
