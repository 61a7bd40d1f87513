"""What a resume needs across processes, in one process (the ``torchrun`` runs are in ``test_elastic.py``).

* the world-size check and the same-iteration check: no-ops where they agree, an error naming the sizes and the
  options where they do not;
* ``init_process_group``'s store under ``torchrun --max-restarts``: one namespace per attempt on one node (a restarted
  group never sees the failed attempt's keys), torch's own store elsewhere;
* ``ResumeHandler`` records the world size and stops on another one before any other check.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Engine

from medssl_monai.distributed import (
    ResumeMismatchError,
    _elastic_attempt_store,
    check_resume_world_size,
    check_same_resume_iteration,
)
from medssl_monai.engines.resume import ResumeHandler


def test_world_size_check_passes_the_same_size_and_old_files():
    check_resume_world_size(1, "resume.pt")
    check_resume_world_size(None, "resume.pt")  # written before the world size was recorded


def test_world_size_check_names_both_sizes_and_the_options():
    with pytest.raises(ResumeMismatchError) as info:
        check_resume_world_size(2, "models/resume.pt")
    message = str(info.value)
    assert "models/resume.pt" in message and "world size 2" in message and "this run has 1" in message
    assert "--nproc_per_node 2" in message and "--resume False" in message


def test_same_iteration_check_is_a_no_op_in_one_process():
    check_same_resume_iteration(None, "resume.pt")
    check_same_resume_iteration(12, "resume.pt")


TORCHRUN_ENV = {
    "TORCHELASTIC_USE_AGENT_STORE": "True",
    "TORCHELASTIC_MAX_RESTARTS": "1",
    "GROUP_WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "WORLD_SIZE": "1",
    "RANK": "0",
}


@pytest.fixture
def agent_store(monkeypatch: pytest.MonkeyPatch) -> dist.TCPStore:
    """A TCPStore server on loopback standing in for torchrun's agent, and the env of one of its workers."""
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    for key, value in {**TORCHRUN_ENV, "MASTER_PORT": str(server.port)}.items():
        monkeypatch.setenv(key, value)
    return server


def test_each_restart_gets_its_own_store_namespace(agent_store: dist.TCPStore, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = _elastic_attempt_store(timedelta(seconds=10))
    assert first is not None
    first.set("rank_0", "address of the worker that died")  # what gloo publishes
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = _elastic_attempt_store(timedelta(seconds=10))
    assert second is not None
    assert second.check(["rank_0"]) is False  # the restarted group waits for the new address instead
    assert agent_store.check(["medssl_monai/attempt_0/rank_0"])


def test_torchs_own_store_where_no_restart_or_several_nodes(agent_store: dist.TCPStore, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert _elastic_attempt_store(timedelta(seconds=10)) is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # restart counts are not shared between nodes: no prefix
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        assert _elastic_attempt_store(timedelta(seconds=10)) is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # torch's opt-out: a fresh store per attempt
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _elastic_attempt_store(timedelta(seconds=10)) is None


def _handler(save_dir: Path) -> tuple[ResumeHandler, Engine]:
    net = torch.nn.Linear(2, 1)
    handler = ResumeHandler(save_dir, {"model": net}, seed=0, run_record=None)
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 2
    return handler, engine


def test_resume_checkpoint_records_the_world_size_and_another_one_stops(tmp_path: Path):
    handler, engine = _handler(tmp_path)
    engine.run([0, 1], max_epochs=1)
    handler.save(engine)
    ckpt = torch.load(handler.path, weights_only=True)
    assert ckpt["world_size"] == 1 and "rng_ranks" not in ckpt  # one process: its states are "rng"

    ckpt["world_size"], ckpt["trainer"]["epoch_length"] = 2, 1  # as a two-process run with half the batches
    torch.save(ckpt, handler.path)
    resumed, engine = _handler(tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"world size 2\); this run has 1"):
        resumed.attach(engine)  # before the epoch-length check, which would blame the data
