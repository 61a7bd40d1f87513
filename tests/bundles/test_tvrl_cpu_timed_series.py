"""configs/cpu_timed_series.yaml: the CPU preset both arms of TVRL's time-embedding claim pretrain with."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "tvrl_echo_ssl_pretraining"
CONFIGS = ["train.yaml", "timed_series.yaml", "cpu_timed_series.yaml"]
BENCH_TRAIN_SERIES = 715  # TRAIN subjects of the `bench` timed series (make_timed_series(root, 1024, 0))


def _parser(**overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in CONFIGS])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def test_preset_states_its_budget_and_scales_the_schedule():
    text = (BUNDLE / "configs" / "cpu_timed_series.yaml").read_text()
    assert "framework" not in yaml.safe_load(text), "the arms differ only by --framework: the preset must not set it"
    p = _parser()
    epochs, batch = int(p["epochs"]), int(p["batch_size"])
    m = re.search(r"Budget: (\d+) epochs x .*?= ([\d,]+) optimizer steps", text)
    assert m, "the preset must report its number of optimizer steps"
    assert int(m.group(1)) == epochs
    assert int(m.group(2).replace(",", "")) == epochs * (BENCH_TRAIN_SERIES // batch)  # drop_last
    assert re.search(r"measured [\d.]+ s per step", text)
    # the reference's schedule shape at this length: warm-up 20 of 200 epochs, masked-frame term from 100 of 200
    assert int(p["warmup_epochs"]) == round(0.1 * epochs)
    assert int(p["mlm_start_epoch"]) == epochs // 2
    assert 0 < int(p["monitor_every"]) <= epochs * (BENCH_TRAIN_SERIES // batch)
    # the benchmark probes the last `series_frames` visits: the layout the preset pretrains on
    bench = yaml.safe_load((ROOT / "scripts" / "benchmark_representations.yaml").read_text())
    assert int(p["num_frames"]) == int(bench["series_frames"])
    assert p.get_parsed_content("source") == "series"
    for fw, te in (("tvrl", False), ("tvrl_te", True)):
        assert _parser(framework=fw).get_parsed_content("use_time_embed") is te


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["tvrl", "tvrl_te"])
def test_preset_trains_two_iterations_on_tiny_series(framework, tiny_data, tmp_path):
    from bounded import run_bounded

    data = tiny_data["timed_series"]
    rows = pd.read_csv(data / "series.csv")
    n_train = rows.loc[rows["split"].str.upper() == "TRAIN", "subject_id"].nunique()
    batch = n_train // 2  # drop_last: two iterations
    assert batch >= 2, n_train
    work = tmp_path / "bundle"
    shutil.copytree(BUNDLE, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([f"configs/{c}" for c in CONFIGS]),
        "--bundle_root",
        str(work),
        "--dataset_dir",
        str(data),
        "--framework",
        framework,
        "--epochs",
        "1",
        "--batch_size",
        str(batch),
        "--num_workers",
        "0",
        "--log_every",
        "1",
        "--monitor_every",
        "0",
    ]
    proc = run_bounded(cmd, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Iter: 2/2" in log, log[-4000:]
    loss = [float(v) for v in re.findall(r"train_loss: ([-\d.eE+na]+)", log)]
    assert len(loss) == 2 and all(math.isfinite(v) for v in loss), log[-4000:]
    assert (work / "models" / "model.pt").is_file()
