"""A diverging run stops at its first NaN loss and writes nothing after it; a failed run writes no final model.

The unit tests drive ignite engines with the real handlers (``NonFiniteGuard``, ``ResumeHandler``,
``AtomicCheckpointSaver``). The slow tests run every training bundle (the first case of each in
``test_resume.CASES``: its ``train.yaml`` + ``small.yaml``, tiny synthetic data, 2 epochs) in a subprocess
(``_bundle_runner.py``) with a fault at the first iteration of epoch 2: a NaN loss, an exception, a Ctrl-C. The
files in ``models/`` at the start of that iteration must be exactly the files there when the process has exited.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _bundle_runner import folder_hashes
from bounded import BUNDLE_RUN_TIMEOUT_S, run_bounded
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from test_resume import CASES, ROOT, RUNNER, _configs, _flatten, _overrides, _write_pretrained

from medssl_monai.bundle_tools import config_path, find_bundles, train_configs
from medssl_monai.engines.checkpoint import AtomicCheckpointSaver
from medssl_monai.engines.finite import NonFiniteGuard, first_nonfinite
from medssl_monai.engines.resume import ResumeHandler
from medssl_monai.engines.sync_guard import assert_no_cuda_sync, no_host_sync
from medssl_monai.errors import NonFiniteLossError, NonFiniteStateError

#: one case per training bundle: the plain one (no variant config, no worker processes)
BUNDLE_CASES = {}
for _case in CASES.values():
    if not _case.extra_configs and not _case.suffix:
        BUNDLE_CASES.setdefault(_case.bundle, _case)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- the handlers on a toy trainer -------------------------------------------------------------------------
EPOCH_LENGTH = 4


def _trainer(
    save_dir: Path,
    nan_at: int = 0,
    check_every: int = 0,
    checkpoint_every: int = 0,
    guard: bool = True,
    final: bool = False,
    fault: Any = None,
    fault_event: Any = Events.ITERATION_STARTED,
) -> tuple[Engine, torch.nn.Module]:
    """A linear model trained with SGD, whose loss is NaN at iteration ``nan_at`` (``fault(engine)`` runs at every
    ``fault_event``, before the writers), with the guard, a ``ResumeHandler`` and an interval
    ``AtomicCheckpointSaver`` attached in the bundles' order (the guard first, the writers after it)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step(engine: Engine, batch: torch.Tensor) -> dict:
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        if engine.state.iteration == nan_at:
            loss = loss * float("nan")
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    engine = Engine(step)
    if fault is not None:
        engine.add_event_handler(fault_event, fault)
    if guard:
        NonFiniteGuard(check_every=check_every).attach(engine)
    save_dict = {"model": net, "optimizer": opt}
    ResumeHandler(save_dir, save_dict, checkpoint_every=checkpoint_every, run_record=None).attach(engine)
    saver = AtomicCheckpointSaver(
        save_dir=str(save_dir),
        save_dict=save_dict,
        save_interval=1,
        n_saved=1,
        save_final=final,
        final_filename="model.pt",
    )
    saver.attach(engine)
    return engine, net


def _data() -> list[torch.Tensor]:
    return [torch.randn(2, 3, generator=torch.Generator().manual_seed(i)) for i in range(EPOCH_LENGTH)]


def test_a_nan_loss_is_named_by_its_iteration_at_the_epoch_end(tmp_path: Path):
    engine, _ = _trainer(tmp_path, nan_at=6)
    with pytest.raises(NonFiniteLossError) as e:
        engine.run(_data(), max_epochs=3)
    assert e.value.iteration == 6 and engine.state.iteration == 8  # read at the epoch end, not at every step
    message = str(e.value)
    assert "at iteration 6 (epoch 2)" in message
    assert f"the last good checkpoint is {tmp_path / 'resume.pt'} (iteration 4)" in message
    assert f"also kept: {tmp_path / 'checkpoint_epoch=1.pt'} (iteration 4)" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "resume.pt"]
    resume = _state(tmp_path / "resume.pt")
    assert resume["trainer"]["iteration"] == 4
    assert all(torch.isfinite(t).all() for t in resume["objects"]["model"].values())


def test_the_record_is_read_every_check_every_iterations(tmp_path: Path):
    engine, _ = _trainer(tmp_path, nan_at=2, check_every=3)
    with pytest.raises(NonFiniteLossError, match="at iteration 2 ") as e:
        engine.run(_data(), max_epochs=2)
    assert engine.state.iteration == 3
    assert "this run wrote no checkpoint before it" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_an_iteration_checkpoint_consults_the_guard_first(tmp_path: Path):
    # checkpoint_every 1: the NaN iteration's own resume.pt write is the first to see it
    engine, _ = _trainer(tmp_path, nan_at=6, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"resume\.pt \(iteration 5\)"):
        engine.run(_data(), max_epochs=3)
    assert engine.state.iteration == 6
    assert _state(tmp_path / "resume.pt")["trainer"]["iteration"] == 5
    assert _state(tmp_path / "resume.pt.prev")["trainer"]["iteration"] == 4


def test_recording_the_loss_does_not_sync():
    guard, engine = NonFiniteGuard(check_every=0), Engine(lambda e, b: None)
    losses = [1.0, float("nan"), float("inf"), 2.0]
    with no_host_sync():  # raises at any .item(), bool(tensor), ...
        for iteration, value in enumerate(losses, start=1):
            engine.state.iteration, engine.state.output = iteration, {"loss": torch.tensor(value)}
            guard.record(engine)
    with pytest.raises(NonFiniteLossError, match="at iteration 2"):
        guard.check(engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recording_a_cuda_loss_does_not_sync():
    guard, engine = NonFiniteGuard(check_every=0), Engine(lambda e, b: None)
    engine.state.iteration, engine.state.output = 1, {"loss": torch.tensor(float("nan"), device="cuda")}
    assert_no_cuda_sync(lambda: guard.record(engine))  # raises at any host-device sync
    with pytest.raises(NonFiniteLossError, match="at iteration 1"):
        guard.check(engine)


def _ddp_worker(rank: int, store: str, out_dir: str) -> None:
    """One of two gloo ranks: rank 1's loss alone is NaN at iteration 2, the last before the epoch-end check; the
    epoch end then runs a collective, as DDP's validation does."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    engine = Engine(lambda e, b: {"loss": torch.tensor(float("nan") if (rank, e.state.iteration) == (1, 2) else 1.0)})
    NonFiniteGuard(check_every=0).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: dist.all_reduce(torch.ones(1)))
    try:
        engine.run([0, 1], max_epochs=2)
        outcome = "finished"
    except Exception as e:  # a rank that waits for a rank that stopped: gloo's error after the timeout
        outcome = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


def test_under_ddp_every_rank_stops_at_the_same_check(tmp_path: Path):
    # without the guard's all-reduce rank 0 (finite loss) would go on into the collective and wait for rank 1
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("NonFiniteLossError: training stopped: the loss is NaN or infinite at iteration 2 ")


def test_weights_that_diverged_with_a_finite_loss_are_not_written(tmp_path: Path):
    """No guard: the writers' own check refuses NaN weights; the previous files stay, the rotation deletes none."""

    def poison(engine: Engine) -> None:  # as an overflow in the last backward pass: every loss was finite
        if engine.state.epoch == 2:
            with torch.no_grad():
                net.bias.fill_(float("nan"))

    engine, net = _trainer(tmp_path, guard=False, fault=poison, fault_event=Events.EPOCH_COMPLETED)
    with pytest.raises(NonFiniteStateError) as e:
        engine.run(_data(), max_epochs=3)
    assert e.value.path == str(tmp_path / "resume.pt") and e.value.key == "model.bias"
    assert f"{tmp_path / 'resume.pt'}: not written: model.bias holds NaN or infinite values" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "resume.pt"]
    assert _state(tmp_path / "resume.pt")["trainer"]["iteration"] == 4

    # the interval file alone (its rotation used to delete model_epoch=1.pt before writing epoch 2's)
    saver_dir = tmp_path / "saver"
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    engine = Engine(lambda e, b: {"loss": torch.zeros(())})
    engine.add_event_handler(Events.EPOCH_COMPLETED, poison)
    AtomicCheckpointSaver(save_dir=str(saver_dir), save_dict={"model": net}, save_interval=1, n_saved=1).attach(engine)
    with pytest.raises(NonFiniteStateError, match=r"model_epoch=2\.pt: not written: model\.bias"):
        engine.run(_data(), max_epochs=3)
    assert [p.name for p in saver_dir.iterdir()] == ["model_epoch=1.pt"]
    assert torch.isfinite(_state(saver_dir / "model_epoch=1.pt")["bias"]).all()


def test_first_nonfinite_checks_weights_and_optimizer_state_only():
    class History:  # like the representation monitor: NaN stands for "no value" and is not a weight
        def state_dict(self) -> dict:
            return {"history": torch.tensor([float("nan")])}

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    objects = {"model": net, "optimizer": opt, "monitor": History()}
    assert first_nonfinite(objects) is None
    opt.state[net.bias]["momentum_buffer"].fill_(float("inf"))
    assert first_nonfinite(objects) == "optimizer.state.1.momentum_buffer"
    net.weight.data[0, 0] = float("nan")
    assert first_nonfinite(objects) == "model.weight"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_writes_no_final_model(tmp_path: Path, error: type[BaseException]):
    sentinel = tmp_path / "model.pt"
    torch.save({"earlier": torch.ones(1)}, sentinel)
    before = sentinel.read_bytes()

    def crash(engine: Engine) -> None:
        if engine.state.iteration == 6:
            raise error("crash")

    engine, _ = _trainer(tmp_path, final=True, fault=crash)
    with pytest.raises(error):
        engine.run(_data(), max_epochs=3)
    assert sentinel.read_bytes() == before


@pytest.mark.parametrize("stop", ["completed", "early_stopping", "finished_before"])
def test_a_run_that_ends_writes_its_final_model(tmp_path: Path, stop: str):
    def terminate(engine: Engine) -> None:
        if stop == "early_stopping" and engine.state.iteration == 6:  # as ignite's EarlyStopping does
            engine.terminate()

    engine, net = _trainer(tmp_path, final=True, fault=terminate)
    if stop == "finished_before":  # as ResumeHandler does when resume.pt is of a finished run: nothing to do
        engine.add_event_handler(Events.STARTED, lambda e: e.terminate())
    engine.run(_data(), max_epochs=3)
    assert torch.equal(_state(tmp_path / "model.pt")["model"]["weight"], net.weight)


def test_every_training_bundle_lists_the_guard_first():
    """First in ``train#handlers``: its epoch-end check runs before validation, the projector and every writer."""
    for bundle in find_bundles(ROOT / "bundles"):
        if config_path(bundle, "train") is None:
            continue
        parser = ConfigParser()
        parser.read_config(train_configs(bundle))
        first = parser["train#handlers"][0]
        assert first["_target_"] == "medssl_monai.engines.finite.NonFiniteGuard", bundle.name
        assert first["check_every"] == "@log_every", bundle.name
        assert isinstance(parser.get_parsed_content("train#handlers#0"), NonFiniteGuard)


# ---- every training bundle ---------------------------------------------------------------------------------
def _run_with_fault(bundle: str, fault: str, tiny_data: dict, tmp_path: Path) -> tuple[Any, dict, Path]:
    """Run ``bundle`` (2 epochs) with ``fault`` at the first iteration of epoch 2 in a subprocess.

    Returns the finished process, the snapshot of ``models/`` at the start of that iteration and ``models/``.
    """
    case = BUNDLE_CASES[bundle]
    overrides = _overrides(case, tiny_data, tmp_path / "run")
    if case.pretrained:
        ckpt = tmp_path / "pretrained.pt"
        _write_pretrained(case, overrides, ckpt)
        overrides["pretrained_ckpt"] = str(ckpt)
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    # a model of an earlier run: a final-model saver must not replace it unless this run ends
    torch.save({"earlier": torch.ones(1)}, models / "model.pt")
    snapshot = tmp_path / "snapshot.json"
    cmd = [sys.executable, str(RUNNER), json.dumps(_configs(case)), json.dumps(overrides), f"{fault}:epoch2"]
    proc = run_bounded([*cmd, str(snapshot)], env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=BUNDLE_RUN_TIMEOUT_S)
    assert snapshot.is_file(), f"the run did not reach epoch 2:\n{proc.stderr[-3000:]}"
    return proc, json.loads(snapshot.read_text()), models


def _nonfinite(path: Path) -> list[str]:
    """The floating tensors of a checkpoint file holding NaN or inf (a monitor's history is not weights)."""
    flat = _flatten(_state(path))
    return [
        k
        for k, v in flat.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.startswith("objects.monitor.")
        if not torch.isfinite(v).all()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLE_CASES))
def test_a_nan_loss_stops_every_bundle_and_keeps_its_last_good_files(bundle: str, tiny_data, tmp_path: Path):
    proc, snapshot, models = _run_with_fault(bundle, "nan", tiny_data, tmp_path)
    k = snapshot["iteration"]
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert f"NonFiniteLossError: training stopped: the loss is NaN or infinite at iteration {k} (epoch 2)" in (
        proc.stderr
    ), proc.stderr[-3000:]
    assert f"the last good checkpoint is {models / 'resume.pt'} (iteration {k - 1})" in proc.stderr
    assert folder_hashes(models) == snapshot["files"], "a file in models/ was written after the NaN loss"
    for path in models.glob("*.pt"):
        assert _nonfinite(path) == [], path.name


@pytest.mark.slow
@pytest.mark.parametrize(
    "bundle, fault",
    [(b, "raise") for b in sorted(BUNDLE_CASES)] + [("ucl_us_ssl_pretraining", "interrupt")],
)
def test_an_exception_writes_no_model_in_any_bundle(bundle: str, fault: str, tiny_data, tmp_path: Path):
    proc, snapshot, models = _run_with_fault(bundle, fault, tiny_data, tmp_path)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert ("RuntimeError: fault injected" if fault == "raise" else "KeyboardInterrupt") in proc.stderr
    # no final file (model.pt, checkpoint_final.pt), nothing else rewritten: the earlier model.pt is kept
    assert folder_hashes(models) == snapshot["files"], "a file in models/ was written after the exception"
    assert "checkpoint_final.pt" not in snapshot["files"]


@pytest.mark.slow
def test_a_diverging_learning_rate_exits_non_zero_and_writes_nothing(tiny_data, tmp_path: Path):
    """The real command line: ``--learning_rate 1e30`` diverges within the first iterations."""
    bundle = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"
    configs = "[" + ",".join(f"'{c}'" for c in train_configs(bundle)) + "]"
    args = ["--bundle_root", str(tmp_path), "--dataset_dir", str(tiny_data["echonet"]), "--cache_dir"]
    args += [str(tmp_path / "cache"), "--epochs", "2", "--num_workers", "0", "--batch_size", "2"]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, *args, "--learning_rate", "1e30"]
    proc = run_bounded(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=BUNDLE_RUN_TIMEOUT_S)
    assert proc.returncode != 0
    assert "NonFiniteLossError: training stopped: the loss is NaN or infinite at iteration" in proc.stderr
    assert not any(p.suffix == ".pt" for p in (tmp_path / "models").iterdir())
