"""Exact resume: a bundle run SIGKILLed mid-epoch and resumed ends with the weights of an uninterrupted run.

Real bundles in subprocesses (``_bundle_runner.py``), CPU, tiny synthetic data, ``num_workers=0``. The killed
run dies at the start of an iteration whose predecessor was not checkpointed, so the resumed run must replay
part of an epoch (same sampler order, augmentation, masks) and redo the lost iteration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medssl_monai.engines.checkpoint import atomic_torch_save

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("_bundle_runner.py")

# bundle -> (synthetic dataset kind, extra overrides); UCL's mixed negatives need 2 videos per step
CASES = {
    "unilvseg_echo_ssl_pretraining": ("echonet", {"batch_size": 1}),
    "ucl_us_ssl_pretraining": ("ultrasound", {"batch_size": 2}),
}


def _run(bundle: str, overrides: dict, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(RUNNER), str(ROOT / "bundles" / bundle), json.dumps(overrides)]
    if kill_at:
        cmd.append(str(kill_at))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _overrides(bundle: str, data: dict, root: Path) -> dict:
    kind, extra = CASES[bundle]
    return {
        "bundle_root": str(root),
        "dataset_dir": str(data[kind]),
        "cache_dir": str(root.parent / "cache"),
        "epochs": 2,
        "num_workers": 0,
        **extra,
    }


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(CASES))
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(bundle: str, tiny_data, tmp_path: Path):
    ref = _run(bundle, _overrides(bundle, tiny_data, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_ckpt = _state(tmp_path / "ref" / "models" / "resume.pt")
    length = ref_ckpt["trainer"]["epoch_length"]
    assert length >= 2, "need at least 2 iterations per epoch to kill mid-epoch"
    # checkpoint mid-epoch 2, then die one iteration later (length >= 4: that iteration's work is lost and redone)
    every = 2 if length >= 4 else 1
    saved, kill_at = length + every, length + every + (2 if every == 2 else 1)
    overrides = {**_overrides(bundle, tiny_data, tmp_path / "run"), "checkpoint_every": every}

    killed = _run(bundle, overrides, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = _state(tmp_path / "run" / "models" / "resume.pt")
    assert mid["trainer"]["iteration"] == saved

    resumed = _run(bundle, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"-> iteration {saved}" in resumed.stdout + resumed.stderr
    out = _state(tmp_path / "run" / "models" / "resume.pt")
    assert out["trainer"]["iteration"] == ref_ckpt["trainer"]["iteration"] == 2 * length
    for name, ref_sd in ref_ckpt["objects"].items():  # model / whole method (EMA teacher, queue), optimizer, ...
        flat_ref, flat_out = _flatten(ref_sd), _flatten(out["objects"][name])
        assert flat_ref.keys() == flat_out.keys(), name
        for key, value in flat_ref.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, flat_out[key]), f"{name}.{key} differs after resume"
            else:
                assert value == flat_out[key], f"{name}.{key} differs after resume"
    # the best-model file was written from the same validation, so it matches too
    best_ref, best_out = (
        _state(tmp_path / "ref" / "models" / "model.pt"),
        _state(tmp_path / "run" / "models" / "model.pt"),
    )
    assert all(torch.equal(best_ref[k], best_out[k]) for k in best_ref)


def _flatten(obj, prefix: str = "") -> dict:
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
