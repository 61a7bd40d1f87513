"""``torchrun`` beyond one healthy process group, on the CPU (gloo, loopback only), with unilvseg_echo_ssl_pretraining.

* Elastic restart: ``torchrun --standalone --nproc_per_node 2 --max-restarts 1``; rank 1 SIGKILLs itself mid-epoch
  (``_torchrun_runner.py --kill``); torchrun restarts both workers, they resume from ``resume.pt`` and end bitwise
  equal to an uninterrupted two-process run: weights, optimizer, device-augmentation counter, trainer counters,
  best metric, and each rank's own RNG states. On the previous code the restarted group could not connect (it read
  the failed attempt's addresses from torchrun's shared store: an error or a hang) and rank 1 resumed with rank 0's
  RNG states.
* Two nodes: two ``torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d`` invocations on 127.0.0.1, each in a
  folder of its own as on two machines, train one epoch; both ranks end with identical weights. Run again, the node
  that holds rank 0's ``resume.pt`` would resume while the other starts over: both ranks stop (exit status 2).
* Another world size: a single-process resume of the two-process ``resume.pt`` stops with exit status 2 naming
  both sizes and the options.

The data: an EchoNet-like set with 8 training videos, so each of 2 ranks has 4 iterations per epoch at batch size 1.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from bounded import run_bounded

from medssl_monai.data.synthetic.echonet import make_echonet

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "unilvseg_echo_ssl_pretraining"
RUNNER = Path(__file__).with_name("_torchrun_runner.py")
CONFIGS = ["configs/train.yaml", "configs/small.yaml", "configs/multi_gpu_train.yaml"]
EPOCH_LENGTH = 4  # iterations per rank and epoch: 8 training videos, 2 ranks, batch size 1
# resume.pt is written at iteration 6 (mid-epoch 2, checkpoint_every 2); rank 1 dies when iteration 8 starts, so
# iteration 7 is lost and redone. Deterministic: rank 1 finished iteration 7 only through its gradient all-reduce
# with rank 0, which rank 0 entered after writing the checkpoint of iteration 6.
SAVED, KILL_AT = 6, 8
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def echonet8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic EchoNet-Dynamic data, 8 TRAIN / 1 VAL / 1 TEST videos of 40-48 frames."""
    root = tmp_path_factory.mktemp("echonet8") / "echonet"
    return make_echonet(
        root, num_videos=10, split_fractions=(0.8, 0.1, 0.1), fps=25.0, min_frames=40, max_frames=48, seed=0
    )


def _bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    return dest


def _overrides(root: Path, data: Path, **extra: Any) -> dict[str, Any]:
    return {
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "cache_dir": str(root.parent / "cache"),
        "num_workers": 0,
        "batch_size": 1,
        **extra,
    }


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # gloo on loopback only
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # torchrun's default: the store shared across restarts
    return env


def _torchrun(launch: list[str], root: Path, overrides: dict[str, Any], *hooks: str) -> subprocess.CompletedProcess:
    """``torchrun <launch> _torchrun_runner.py`` on the bundle copy ``root``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, str(RUNNER), json.dumps(CONFIGS)]
    cmd += [json.dumps(overrides), *hooks]
    return run_bounded(cmd, timeout=RUN_TIMEOUT_S, env=_env(), cwd=root)


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flatten(value, f"{prefix}{i}.").items()}
    return {prefix: obj}


def _differences(ref: Any, out: Any) -> list[str]:
    """Keys whose tensors / numbers differ (bitwise; NaN equals NaN)."""
    flat_ref, flat_out = _flatten(ref), _flatten(out)
    if flat_ref.keys() != flat_out.keys():
        return [f"keys: {sorted(flat_ref.keys() ^ flat_out.keys())}"]
    bad = []
    for key, value in flat_ref.items():
        other = flat_out[key]
        if isinstance(value, torch.Tensor):
            same = torch.equal(value, other)
        elif isinstance(value, float) and math.isnan(value):
            same = isinstance(other, float) and math.isnan(other)
        else:
            same = value == other
        if not same:
            bad.append(key)
    return bad


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, echonet8: Path) -> Path:
    """The models folder of an uninterrupted two-process run: 2 epochs, ``resume.pt`` every 2 iterations."""
    root = _bundle(tmp_path_factory.mktemp("reference") / "bundle")
    launch = ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    proc = _torchrun(launch, root, _overrides(root, echonet8, epochs=2, checkpoint_every=2), "--rank-state")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return root / "models"


def test_worker_killed_mid_epoch_restarts_and_ends_like_an_uninterrupted_run(
    reference: Path, echonet8: Path, tmp_path: Path
):
    root = _bundle(tmp_path / "bundle")
    launch = ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    overrides = _overrides(root, echonet8, epochs=2, checkpoint_every=2)
    proc = _torchrun(launch, root, overrides, "--kill", f"1:{KILL_AT}", "--rank-state")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    assert "failed (exitcode: -9) local_rank: 1" in log, "rank 1 was not killed"
    # both ranks of the restarted group resumed from the mid-epoch checkpoint
    assert log.count(f"resume.pt -> iteration {SAVED} (epoch 2 continues)") == 2, log[-8000:]

    ref, out = _load(reference / "resume.pt"), _load(root / "models" / "resume.pt")
    assert out["trainer"] == ref["trainer"] and out["trainer"]["iteration"] == 2 * EPOCH_LENGTH
    assert out["world_size"] == ref["world_size"] == 2
    # every saved object (network, optimizer, device-augmentation counter, ...); best validation metric and epoch
    assert ref["objects"].keys() == out["objects"].keys() >= {"model", "optimizer", "augmentation"}
    for name in ref["objects"]:
        assert not _differences(ref["objects"][name], out["objects"][name]), name
    assert not _differences(ref["evaluator"], out["evaluator"])
    # each rank's own random streams ended where the uninterrupted run's did (they differ between ranks)
    assert len(out["rng_ranks"]) == 2
    assert _differences(ref["rng_ranks"][0], ref["rng_ranks"][1]), "ranks drew the same streams"
    for r in range(2):
        assert not _differences(ref["rng_ranks"][r], out["rng_ranks"][r]), f"rank {r} RNG"
    # the final weights of both ranks, and the best-validation model.pt
    final = _load(reference / "final.rank0.pt")
    for r in range(2):
        assert not _differences(final, _load(root / "models" / f"final.rank{r}.pt")), f"rank {r} weights"
    assert not _differences(_load(reference / "model.pt"), _load(root / "models" / "model.pt"))


def test_resume_with_another_world_size_stops_with_exit_status_2(reference: Path, echonet8: Path, tmp_path: Path):
    root = _bundle(tmp_path / "bundle")
    (root / "models").mkdir()
    shutil.copy2(reference / "resume.pt", root / "models" / "resume.pt")  # world size 2
    args = [f"--{k}={v}" for k, v in _overrides(root, echonet8, epochs=2, checkpoint_every=2).items()]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS[:2]), *args]  # one process
    proc = run_bounded(cmd, timeout=RUN_TIMEOUT_S, env=_env(), cwd=root)
    assert proc.returncode == 2, proc.stderr[-4000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr[-4000:]
    assert "run of 2 process(es) (world size 2); this run has 1" in error[0]
    assert "--nproc_per_node 2" in error[0] and "--resume False" in error[0]
    assert "Traceback" not in proc.stderr
    assert _load(root / "models" / "resume.pt")["trainer"]["iteration"] == 2 * EPOCH_LENGTH  # untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(nodes: list[Path], command: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start ``command[i]`` in ``nodes[i]`` at once (each a torchrun node) and wait for both."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        runs = [
            pool.submit(run_bounded, cmd, timeout=RUN_TIMEOUT_S, env=_env(), cwd=node)
            for node, cmd in zip(nodes, command)
        ]
        return [run.result() for run in runs]


def _multi_node_launch(port: int, run_id: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
        "--local-addr", "127.0.0.1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, echonet8: Path) -> list[Path]:
    """Two torchrun nodes (one process each, ranks assigned by the rendezvous) after one epoch together; each node
    has a folder of its own, as two machines without a shared file system would."""
    base = tmp_path_factory.mktemp("two_nodes")
    nodes = [_bundle(base / f"node{i}") for i in range(2)]
    launch = _multi_node_launch(_free_port(), "two-nodes")
    commands = [
        [*launch, str(RUNNER), json.dumps(CONFIGS), json.dumps(_overrides(n, echonet8, epochs=1)), "--rank-state"]
        for n in nodes
    ]
    for proc in _two_nodes(nodes, commands):
        assert proc.returncode == 0, proc.stderr[-6000:]
    return nodes


def test_two_nodes_on_loopback_end_with_identical_weights(two_nodes: list[Path]):
    states = {p.name: p for node in two_nodes for p in (node / "models").glob("final.rank*.pt")}
    assert sorted(states) == ["final.rank0.pt", "final.rank1.pt"], "one rank per node"
    rank0_node = states["final.rank0.pt"].parent.parent
    other = next(n for n in two_nodes if n != rank0_node)
    assert other == states["final.rank1.pt"].parent.parent
    rank0, rank1 = _load(states["final.rank0.pt"]), _load(states["final.rank1.pt"])
    assert not _differences(rank0, rank1), "the ranks' weights differ"
    ckpt = _load(rank0_node / "models" / "resume.pt")  # only rank 0 writes
    assert ckpt["world_size"] == 2 and ckpt["trainer"]["iteration"] == EPOCH_LENGTH
    assert not _differences(ckpt["objects"]["model"], rank0)
    assert not (other / "models" / "resume.pt").exists() and not (other / "models" / "model.pt").exists()


def test_two_nodes_that_would_resume_from_different_points_stop(two_nodes: list[Path], echonet8: Path):
    # the same command again: rank 0's node finds its finished resume.pt, the other node finds none
    launch = _multi_node_launch(_free_port(), "two-nodes-again")
    commands = []
    for node in two_nodes:
        args = [f"--{k}={v}" for k, v in _overrides(node, echonet8, epochs=1).items()]
        commands.append([*launch, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS), *args])
    procs = _two_nodes(two_nodes, commands)
    for proc in procs:
        assert proc.returncode != 0, proc.stderr[-4000:]
        assert "exitcode  : 2" in proc.stderr, proc.stderr[-4000:]  # torchrun's summary of its failed worker
        errors = [line for line in proc.stderr.splitlines() if "error: the ranks would resume" in line]
        assert len(errors) == 1, proc.stderr[-4000:]
        # which node holds rank 0 is the new rendezvous' choice
        assert "iteration 4" in errors[0] and "fresh start (no checkpoint)" in errors[0]
        assert "--resume False" in errors[0]
