"""Every training bundle's ``multi_gpu_train.yaml`` under ``torchrun --nproc_per_node=2`` on the CPU (gloo).

One epoch on the tiny synthetic data, as a user runs it::

    torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['configs/train.yaml','configs/small.yaml','configs/multi_gpu_train.yaml']" ...

Checked: both ranks finish; ``models/model.pt`` is a plain state_dict; only rank 0 wrote TensorBoard logs (one
process id in the event file names); the shared clip cache holds one complete entry per decoded video and no
temporary files (both ranks decode into the same folder at once; ``ClipCache`` writes are atomic renames).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bounded import run_bounded

from medssl_monai.bundle_tools import find_bundles, load_state_dict

ROOT = Path(__file__).resolve().parents[2]
TRAINING = [b for b in find_bundles(ROOT / "bundles") if (b / "configs" / "multi_gpu_train.yaml").is_file()]
# the pretraining bundles (gathered losses, method-level DDP) and one downstream bundle run by default
FAST = {
    "tvrl_echo_ssl_pretraining",
    "ucl_us_ssl_pretraining",
    "discovr_echo_ssl_pretraining",
    "unilvseg_echo_ssl_pretraining",
    "unilvseg_echo_lv_segmentation",
}
PARAMS = [pytest.param(b, id=b.name, marks=() if b.name in FAST else pytest.mark.slow) for b in TRAINING]


def _kind(bundle: Path) -> str:
    text = (bundle / "configs" / "train.yaml").read_text()
    m = re.search(r"synthetic_dataset\s*\n\s*kind:\s*(\w+)", text)
    return m.group(1) if m else "echonet"


@pytest.mark.parametrize("bundle", PARAMS)
def test_torchrun_two_processes(bundle: Path, tiny_data, tmp_path: Path):
    work = tmp_path / bundle.name
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    cache = tmp_path / "cache"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run",
        "--config_file", "['configs/train.yaml','configs/small.yaml','configs/multi_gpu_train.yaml']",
        "--bundle_root", str(work), "--dataset_dir", str(tiny_data[_kind(bundle)]), "--cache_dir", str(cache),
        "--epochs", "1", "--num_workers", "0", "--batch_size", "2", "--log_every", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_bounded(cmd, cwd=work, env=env, timeout=540)  # a hang fails with every process's stacks
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    state = load_state_dict(work / "models" / "model.pt")
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    events = list((work / "runs").rglob("events.out.tfevents.*"))
    pids = {p.name.split(".")[-2] for p in events}
    assert len(pids) <= 1, f"TensorBoard files from several processes: {sorted(p.name for p in events)}"
    # both ranks logged a training iteration (each ran its own partition)
    assert len(re.findall(r"Epoch: 1/1, Iter: 1/", proc.stdout + proc.stderr)) == 2

    if cache.is_dir():
        assert not [p.name for p in cache.iterdir() if p.suffix == ".tmp"], "half-written cache entries left over"
        stems = [p.name.split("-")[0] for p in cache.glob("*.npy")]
        assert len(stems) == len(set(stems)), "one entry per source video"
        for p in cache.glob("*.npy"):
            frames = np.load(p, mmap_mode="r")
            assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] > 0
