"""Exact resume: a bundle run SIGKILLed mid-epoch and resumed ends with the weights of an uninterrupted run.

Every training bundle under ``bundles/`` (its ``train.yaml`` + CPU ``small.yaml``, as
``medssl_monai.bundle_tools.train_configs`` picks them, plus variants such as DISCOVR's ``videomae.yaml``) runs in
subprocesses (``_bundle_runner.py``), CPU, tiny synthetic data (loaders below). The killed run dies at the
start of an iteration of epoch 2 (of 2), so the resumed run must replay part of an epoch (same sampler order,
augmentation, masks) and, where an epoch has >= 4 iterations, redo a lost iteration. Downstream bundles start from
a ``pretrained_ckpt``, so the resumed weights must also win over the pretrained-weight loader.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from bounded import BUNDLE_RUN_TIMEOUT_S, run_bounded
from monai.bundle import ConfigParser

from medssl_monai.bundle_tools import config_path, find_bundles, train_configs
from medssl_monai.engines.checkpoint import atomic_torch_save

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("_bundle_runner.py")


@dataclass(frozen=True)
class Case:
    """One kill-and-resume run.

    Attributes:
        bundle: folder name under ``bundles/``.
        overrides: extra overrides (batch sizes giving >= 2 iterations per epoch on the tiny data).
        extra_configs: config files (relative to the bundle) merged after ``train_configs``.
        pretrained: ``config_id[.attribute...]`` of the module whose ``state_dict`` the bundle's
            ``pretrained_ckpt`` takes; the test writes one (a differently seeded init) and passes it.
        suffix: distinguishes several cases of one bundle.
    """

    bundle: str
    overrides: dict[str, Any] = field(default_factory=dict)
    extra_configs: tuple[str, ...] = ()
    pretrained: str | None = None
    suffix: str = ""


# iterations per epoch on the tiny data in brackets; UCL's mixed negatives need 2 videos per step, the
# BatchNorm heads (TVRL projection, DISCOVR probe) and NT-Xent need batches of 2 (their loaders drop the last).
# Every bundle has a plain case (num_workers 0) and one with its default loader (-2workers: persistent workers,
# device augmentation streams in resume.pt); which of them the kill-and-resume test runs: RESUME_CASES below.
CASES = {
    c.bundle + ("-" + Path(c.extra_configs[0]).stem if c.extra_configs else "") + c.suffix: c
    for c in [
        Case("unilvseg_echo_ssl_pretraining", {"batch_size": 1}),  # [4]
        Case("unilvseg_echo_lv_segmentation", {"batch_size": 2}, pretrained="network_def"),  # [4]
        # the UniLVSeg bundles' default loader: persistent workers (windows seeded per sample, augmentation on
        # the device from a stream saved in resume.pt)
        Case("unilvseg_echo_ssl_pretraining", {"batch_size": 1, "num_workers": 2}, suffix="-2workers"),  # [4]
        Case(
            "unilvseg_echo_lv_segmentation",
            {"batch_size": 2, "num_workers": 2},
            pretrained="network_def",
            suffix="-2workers",
        ),  # [4]
        Case("ucl_us_ssl_pretraining", {"batch_size": 2}),  # [2]
        # UCL pretraining's default loader: persistent workers, the frames' crops on the device (stream in resume.pt)
        Case("ucl_us_ssl_pretraining", {"batch_size": 2, "num_workers": 2}, suffix="-2workers"),  # [2]
        # the worker-side crops (augment_on: workers), seeded per (video, frames) sample
        Case(
            "ucl_us_ssl_pretraining",
            {"batch_size": 2, "num_workers": 2, "augment_on": "workers"},
            suffix="-2workers-worker-crops",
        ),  # [2]
        Case("ucl_us_classification", {"batch_size": 4}, pretrained="network_def.encoder"),  # [4]
        # UCL classification's default loader: persistent workers, the frames' crops on the device
        Case(
            "ucl_us_classification",
            {"batch_size": 4, "num_workers": 2},
            pretrained="network_def.encoder",
            suffix="-2workers",
        ),  # [4]
        # the POCUS preset's default: the resized crop and flip of every frame on the device (its own stream)
        Case(
            "ucl_us_classification",
            {"batch_size": 4, "num_workers": 2, "num_folds": 2, "fold_key": None, "extra_columns": []},
            extra_configs=("configs/pocus.yaml",),
            pretrained="network_def.encoder",
            suffix="-2workers",
        ),  # [4]
        Case("tvrl_echo_ssl_pretraining", {"batch_size": 2}),  # [2]
        # TVRL pretraining's default loader, as UniLVSeg's: persistent workers, augmentation on the device
        Case("tvrl_echo_ssl_pretraining", {"batch_size": 2, "num_workers": 2}, suffix="-2workers"),  # [2]
        Case("tvrl_echo_linear_probe", {"batch_size": 2}, pretrained="encoder"),  # [2]
        # the probe's default loader: persistent workers, each clip's draws seeded per sample
        Case("tvrl_echo_linear_probe", {"batch_size": 2, "num_workers": 2}, pretrained="encoder", suffix="-2workers"),
        Case("discovr_echo_ssl_pretraining", {"batch_size": 2}),  # [2]
        Case("discovr_echo_ssl_pretraining", {"batch_size": 2}, extra_configs=("configs/videomae.yaml",)),  # [2]
        Case("discovr_echo_evaluation", {"batch_size": 2}, pretrained="network_def.encoder"),  # [2]
        Case("discovr_echo_lv_segmentation", {"batch_size": 2}, pretrained="network_def.encoder"),  # [4]
        # the DISCOVR bundles' default loader, as UniLVSeg's: persistent workers, augmentation on the device
        Case("discovr_echo_ssl_pretraining", {"batch_size": 2, "num_workers": 2}, suffix="-2workers"),  # [2]
        Case(
            "discovr_echo_evaluation",
            {"batch_size": 2, "num_workers": 2},
            pretrained="network_def.encoder",
            suffix="-2workers",
        ),  # [2]
        Case(
            "discovr_echo_lv_segmentation",
            {"batch_size": 2, "num_workers": 2},
            pretrained="network_def.encoder",
            suffix="-2workers",
        ),  # [4]
    ]
}

#: every bundle is killed and resumed with its default loader (the -2workers cases); the in-process loader
#: (num_workers 0) for one bundle of each family, as both loaders resume through the same sampler and stream state
#: and each kill-and-resume case costs 17-40 s of CI. The plain cases of the other bundles stay in CASES: the
#: nonfinite and exception tests (test_nonfinite.py) run them.
IN_PROCESS_RESUMED = (
    "ucl_us_classification",
    "tvrl_echo_linear_probe",
    "discovr_echo_ssl_pretraining",
    "discovr_echo_ssl_pretraining-videomae",
)
RESUME_CASES = {k: c for k, c in CASES.items() if c.suffix or k in IN_PROCESS_RESUMED}


def _dataset_kind(bundle: Path) -> str:
    """Which synthetic dataset a bundle reads: the ``kind`` of its default ``dataset_dir``."""
    parser = ConfigParser()
    parser.read_config(str(config_path(bundle, "train")))
    default = parser.get("dataset_dir")
    return default.get("kind", "echonet") if isinstance(default, dict) else "echonet"


def _configs(case: Case) -> list[str]:
    bundle = ROOT / "bundles" / case.bundle
    return train_configs(bundle) + [str(bundle / c) for c in case.extra_configs]


def _run(case: Case, overrides: dict, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(RUNNER), json.dumps(_configs(case)), json.dumps(overrides)]
    if kill_at:
        cmd.append(str(kill_at))
    return run_bounded(cmd, env=env, timeout=BUNDLE_RUN_TIMEOUT_S)


def _overrides(case: Case, data: dict, root: Path) -> dict:
    return {
        "bundle_root": str(root),
        "dataset_dir": str(data[_dataset_kind(ROOT / "bundles" / case.bundle)]),
        "cache_dir": str(root.parent / "cache"),
        "epochs": 2,
        "num_workers": 0,
        **case.overrides,
    }


def _write_pretrained(case: Case, overrides: dict, path: Path) -> None:
    """A ``pretrained_ckpt`` for ``case``: the expected module, initialised with another seed than the run's."""
    parser = ConfigParser()
    parser.read_config(_configs(case))
    parser.update(overrides)
    config_id, *attributes = str(case.pretrained).split(".")
    torch.manual_seed(987654321)
    module = parser.get_parsed_content(config_id)
    for name in attributes:
        module = getattr(module, name)
    torch.save(module.state_dict(), path)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(ref: Any, out: Any, what: str) -> None:
    flat_ref, flat_out = _flatten(ref), _flatten(out)
    assert flat_ref.keys() == flat_out.keys(), what
    for key, value in flat_ref.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, flat_out[key]), f"{what}.{key} differs after resume"
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(flat_out[key]), f"{what}.{key} differs after resume"
        else:
            assert value == flat_out[key], f"{what}.{key} differs after resume"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(name: str, tiny_data, tmp_path: Path):
    case = RESUME_CASES[name]
    ref_overrides = _overrides(case, tiny_data, tmp_path / "ref")
    run_overrides = _overrides(case, tiny_data, tmp_path / "run")
    if case.pretrained:
        ckpt = tmp_path / "pretrained.pt"
        _write_pretrained(case, ref_overrides, ckpt)
        ref_overrides["pretrained_ckpt"] = run_overrides["pretrained_ckpt"] = str(ckpt)

    ref = _run(case, ref_overrides)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_ckpt = _state(tmp_path / "ref" / "models" / "resume.pt")
    length = ref_ckpt["trainer"]["epoch_length"]
    assert length >= 2, "need at least 2 iterations per epoch to kill mid-epoch"
    # checkpoint mid-epoch 2, then die one iteration later (length >= 4: that iteration's work is lost and redone)
    every = 2 if length >= 4 else 1
    saved, kill_at = length + every, length + every + (2 if every == 2 else 1)
    run_overrides["checkpoint_every"] = every

    killed = _run(case, run_overrides, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = _state(tmp_path / "run" / "models" / "resume.pt")
    assert mid["trainer"]["iteration"] == saved

    resumed = _run(case, run_overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"-> iteration {saved}" in resumed.stdout + resumed.stderr
    out = _state(tmp_path / "run" / "models" / "resume.pt")
    assert out["trainer"]["iteration"] == ref_ckpt["trainer"]["iteration"] == 2 * length
    # model / whole method (EMA teachers, queues, prototypes, centres), optimizer, scheduler, early stopping
    assert ref_ckpt["objects"].keys() == out["objects"].keys()
    for obj, ref_sd in ref_ckpt["objects"].items():
        _assert_same(ref_sd, out["objects"][obj], obj)
    _assert_same(ref_ckpt.get("evaluator"), out.get("evaluator"), "evaluator")  # best metric and its epoch
    _assert_same(ref_ckpt["rng"], out["rng"], "rng")  # the same draws happened up to the end
    # models/model.pt (best validation, or the final encoder/teacher) was written from the same state
    best_ref, best_out = tmp_path / "ref" / "models" / "model.pt", tmp_path / "run" / "models" / "model.pt"
    assert best_ref.is_file(), "every training bundle writes models/model.pt"
    _assert_same(_state(best_ref), _state(best_out), "model.pt")


# bundles whose workers hold no random state (per-sample seeded windows, augmentation on the device): their
# workers persist and resume stays exact (their ``-2workers`` cases)
PERSISTENT = {
    "unilvseg_echo_ssl_pretraining",
    "unilvseg_echo_lv_segmentation",
    "discovr_echo_ssl_pretraining",
    "discovr_echo_evaluation",
    "discovr_echo_lv_segmentation",
    "tvrl_echo_ssl_pretraining",
    "ucl_us_ssl_pretraining",
    "ucl_us_classification",
    "tvrl_echo_linear_probe",
}
#: of those, the bundles that keep per-sample seeding in the workers (UCL: for augment_on workers; the probe's window)
SEEDED_IN_WORKERS = {"ucl_us_ssl_pretraining", "ucl_us_classification", "tvrl_echo_linear_probe"}


def test_training_workers_persist_only_where_resume_stays_exact():
    """Persistent workers keep their transform RNGs across epochs, which a resume cannot repeat (measured: the
    UCL classifier's ``-2workers`` case differed with unseeded persistent workers); bundles whose workers draw
    nothing random across epochs keep them, the others restart them every epoch."""
    for bundle in find_bundles(ROOT / "bundles"):
        if config_path(bundle, "train") is None:
            continue
        parser = ConfigParser()
        parser.read_config(train_configs(bundle))
        parser["num_workers"] = 2
        persistent = parser.get_parsed_content("train#dataloader#persistent_workers")
        if bundle.name in PERSISTENT:
            assert persistent is True, bundle.name
            if bundle.name in SEEDED_IN_WORKERS:
                assert type(parser.get_parsed_content("train#seeded_dataset")).__name__ == "SeededSamples"
            else:
                assert parser.get_parsed_content("augment_on") == "device", bundle.name
        elif persistent:  # the other bundles are converted later: they may not persist before they are exact
            raise AssertionError(f"{bundle.name}: persistent workers without per-sample seeding")


def test_every_training_bundle_has_a_resume_case():
    trainable = {b.name for b in find_bundles(ROOT / "bundles") if config_path(b, "train") is not None}
    assert trainable == {c.bundle for c in RESUME_CASES.values()}  # each killed and resumed, default loader
    assert trainable == {c.bundle for c in CASES.values() if not c.suffix and not c.extra_configs}  # plain cases


def test_early_stop_state_round_trip(tmp_path: Path):
    """The early-stopping count survives a resume (else a resumed probe could train past the uninterrupted stop)."""
    import numpy as np
    from ignite.engine import Engine
    from monai.handlers import EarlyStopHandler

    from medssl_monai.engines.resume import EarlyStopState

    def make() -> tuple[EarlyStopHandler, Engine]:
        handler, trainer = EarlyStopHandler(patience=2, score_function=lambda e: e.state.score), Engine(lambda e, b: b)
        handler.set_trainer(trainer)
        return handler, trainer

    handler, _ = make()
    assert math.isnan(EarlyStopState(handler).state_dict()["best_score"])  # no validation yet
    validator = Engine(lambda e, b: b)
    for score in (np.float64(0.5), np.float64(0.4)):  # numpy scores, as sklearn-based metrics return
        validator.state.score = score
        handler(validator)
    atomic_torch_save(EarlyStopState(handler).state_dict(), tmp_path / "s.pt")

    resumed, trainer = make()
    EarlyStopState(resumed).load_state_dict(_state(tmp_path / "s.pt"))
    validator.state.score = 0.3  # the second epoch without improvement: stops, as the uninterrupted run would
    resumed(validator)
    assert trainer.should_terminate
    with pytest.raises(RuntimeError, match="set_trainer"):
        EarlyStopState(EarlyStopHandler(patience=1, score_function=float)).state_dict()


def _flatten(obj: Any, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix: obj}


def test_atomic_save_keeps_previous_file_on_failure(tmp_path: Path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")  # what a full disk looks like mid-write

    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"w": torch.zeros(2), "bad": Unpicklable()}, path)
    assert torch.equal(_state(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "the temporary file must be removed"


def _saver_run(save_dir: Path, resume_from_epoch: int, max_epochs: int) -> list[str]:
    """An ignite run with an interval ``AtomicCheckpointSaver`` (n_saved 1), resumed at ``resume_from_epoch``."""
    from ignite.engine import Engine

    from medssl_monai.engines.checkpoint import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(
        save_dir=str(save_dir), save_dict={"model": net, "optimizer": opt}, save_interval=1, n_saved=1
    ).attach(engine)
    if resume_from_epoch:
        engine.load_state_dict({"epoch": resume_from_epoch, "epoch_length": 2, "max_epochs": max_epochs})
    engine.run([0, 1], max_epochs=max_epochs)
    return sorted(p.name for p in save_dir.glob("checkpoint_epoch=*.pt"))


def test_resumed_saver_rotates_the_killed_runs_interval_file(tmp_path: Path):
    # the killed run wrote epoch 2's interval file (n_saved 1); the resumed run must replace it, not keep it
    assert _saver_run(tmp_path, 0, 2) == ["checkpoint_epoch=2.pt"]
    assert _saver_run(tmp_path, 2, 4) == ["checkpoint_epoch=4.pt"]


def test_fresh_saver_never_deletes_files_of_an_earlier_run(tmp_path: Path):
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "checkpoint_epoch=7.pt")  # unrelated, older run
    assert _saver_run(tmp_path, 0, 1) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=7.pt"]
