"""No silent no-op: a training bundle whose loader yields no batch stops before training, naming the fix.

Every bundle's train config calls ``check_loader_nonempty`` first in ``run``. Two ways to an empty loader: an empty
training set (every bundle) and, where the loader drops incomplete batches, a dataset smaller than one batch.
MONAI's own ``Workflow.run`` would only warn "`dataloader` is empty ... skip the `run`" and return.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from bounded import run_bounded
from monai.bundle import ConfigParser, ConfigWorkflow

from medssl_monai.bundle_tools import find_bundles, train_configs
from medssl_monai.data.robust import root_cause
from medssl_monai.engines.loader_check import EmptyLoaderError

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = find_bundles(ROOT / "bundles")
IDS = [b.name for b in BUNDLES]


def _parser(configs: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs)
    return parser


def _dataset_kind(bundle: Path) -> str:
    default = _parser([str(bundle / "configs" / "train.yaml")]).get("dataset_dir")
    return default.get("kind", "echonet") if isinstance(default, dict) else "echonet"


def _drops_incomplete_batches(bundle: Path) -> bool:
    """Whether ``--batch_size`` alone can empty the loader: ``drop_last: true`` and the batch size as configured."""
    loader = _parser(train_configs(bundle)).get("train#dataloader")
    return loader.get("drop_last") is True and loader.get("batch_size") == "@batch_size"


CASES = [pytest.param(b, "empty", id=f"{b.name}-empty") for b in BUNDLES] + [
    pytest.param(b, "batch", id=f"{b.name}-batch") for b in BUNDLES if _drops_incomplete_batches(b)
]


def test_the_batch_case_covers_the_drop_last_bundles():
    assert {p.values[0].name for p in CASES if p.values[1] == "batch"} >= {
        "tvrl_echo_ssl_pretraining",
        "discovr_echo_ssl_pretraining",
        "unilvseg_echo_ssl_pretraining",
    }


@pytest.mark.parametrize("bundle, case", CASES)
def test_training_with_no_batch_stops_with_sizes_and_override(bundle: Path, case: str, tiny_data, tmp_path: Path):
    data = tiny_data[_dataset_kind(bundle)]
    overrides = {
        "bundle_root": str(tmp_path),
        "dataset_dir": str(data),
        "cache_dir": str(tmp_path / "cache"),
        "epochs": 1,
        "num_workers": 0,
    }
    if case == "empty":  # what an empty split or a filter that removed everything gives the dataset
        overrides.update({"train#datalist": [], "batch_size": 2})
        expected = rf"the training dataset is empty \(0 samples, batch size \d+\); point --dataset_dir at .*{data.name}"
    else:
        overrides["batch_size"] = 1000
        expected = (
            r"the training dataset has (\d+) samples, fewer than one batch \(batch size 1000, incomplete batches "
            r"dropped\); use --batch_size \1 \(or smaller\)"
        )
    workflow = ConfigWorkflow(config_file=train_configs(bundle), workflow_type="train", **overrides)
    workflow.initialize()
    with pytest.raises(Exception) as info:  # MONAI wraps the expression's error in a RuntimeError
        workflow.run()
    cause = root_cause(info.value)
    assert isinstance(cause, EmptyLoaderError), repr(info.value)
    assert re.search(expected, str(cause)), str(cause)
    assert not (tmp_path / "models" / "model.pt").exists()


def test_monai_bundle_runner_exits_non_zero_with_the_message(tiny_data, tmp_path: Path):
    """The recipe (its own train.yaml, batch 128) on a dataset smaller than one batch, through MONAI's runner."""
    bundle = ROOT / "bundles" / "tvrl_echo_ssl_pretraining"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSSL_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.yaml")]
    cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tiny_data["echonet"])]
    cmd += ["--cache_dir", str(tmp_path / "cache"), "--num_workers", "0"]
    result = run_bounded(cmd, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(
        r"error: the training loader yields no batch.* has \d+ samples, fewer than one batch \(batch size 128.*"
        r"use --batch_size \d+",
        result.stderr,
    ), result.stderr[-3000:]
    assert "skip the `run`" not in result.stderr + result.stdout
    assert not (tmp_path / "models" / "model.pt").exists()
