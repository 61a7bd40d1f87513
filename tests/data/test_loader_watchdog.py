"""The loader watchdog: a DataLoader that delivers nothing for a while logs the stacks of every process."""

from __future__ import annotations

import sys
import textwrap

import pytest
from bounded import run_bounded

SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    import torch
    from medssl_monai.data.loader import DataLoader

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 1:
                stuck_reading_sample()
            return torch.tensor([i])

    def stuck_reading_sample():
        time.sleep(4)

    loader = DataLoader(Slow(), batch_size=1, num_workers=int(sys.argv[1]), stall_warning_s=1)
    print("got", [int(b) for b in loader], flush=True)
    """
)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stalled_loader_warns_with_the_stacks_of_the_waiting_process_and_its_workers(num_workers: int):
    out = run_bounded([sys.executable, "-c", SCRIPT, str(num_workers)], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "got [0, 1, 2, 3]" in out.stdout  # batches and their order are unchanged
    assert "has delivered no batch for" in out.stderr
    if num_workers:
        assert "workers: pids [" in out.stderr
    # the stuck frame: from the main process itself (0 workers) or printed by the worker's faulthandler
    assert "stuck_reading_sample" in out.stderr


def test_no_warning_while_batches_flow():
    script = SCRIPT.replace("time.sleep(4)", "pass")
    out = run_bounded([sys.executable, "-c", script, "2"], timeout=120)
    assert out.returncode == 0 and "got [0, 1, 2, 3]" in out.stdout
    assert "delivered no batch" not in out.stderr


def test_the_workers_still_run_monais_worker_init():
    """MONAI's worker_init_fn (per-worker transform seeds) runs before the watchdog's."""
    from monai.data.utils import worker_init_fn

    from medssl_monai.data.loader import DataLoader, _WorkerInit

    loader = DataLoader([1, 2], num_workers=1)
    assert isinstance(loader.worker_init_fn, _WorkerInit) and loader.worker_init_fn.fn is worker_init_fn
    assert DataLoader([1], num_workers=1, worker_init_fn=None).worker_init_fn.fn is None
    assert DataLoader([1], num_workers=0).worker_init_fn is not None  # MONAI's default, untouched


def test_workers_start_when_stderr_has_no_file_descriptor(monkeypatch):
    """pytest's capsys and notebooks replace sys.stderr with an object without fileno(): workers still start."""
    import io

    import torch

    from medssl_monai.data.loader import DataLoader

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    loader = DataLoader(list(range(4)), batch_size=2, num_workers=1)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert torch.utils.data.get_worker_info() is None
