"""Smoke test of ``scripts/benchmark.py``: it runs at tiny sizes and reports the expected columns.

No timing assertions (the CI machine is shared); FLOPs of a known step are checked against a hand count.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medssl_monai.benchmarking import TABLE_COLUMNS, count_step_flops, format_table, random_like_batch

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # conftest points the default data at the tiny synthetic set
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        _load_script().main(
            device="cpu",
            bundles="unilvseg_echo_ssl_pretraining",
            steps=1,
            warmup=0,
            num_workers=0,
            threads=1,
            overrides={"batch_size": 2, "num_frames": 16, "spatial_size": 32, "resize_to": 32},
            out=str(out),
        )
    finally:
        torch.set_num_threads(threads)
    proc_stdout = capsys.readouterr().out
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in proc_stdout
    payload = json.loads(out.read_text())
    assert {"machine", "options", "results", "table"} <= set(payload)
    rows = payload["results"]
    assert [r["mode"] for r in rows] == ["pipeline", "model"]
    for row in rows:
        assert row["error"] is None
        assert row["bundle"] == "unilvseg_echo_ssl_pretraining"
        assert row["batch_shape"] == [2, 3, 16, 32, 32]  # the overrides: batch 2 of RGB 16 x 32 x 32 clips
        assert row["samples_per_s"] > 0 and row["flop_per_step"] > 0 and row["peak_mem_gib"] > 0
        assert 0 <= row["data_wait_pct"] <= 100
    assert rows[1]["data_wait_pct"] == 0.0  # model-only: the batch is already on the device


class _Engine:
    """The few trainer attributes a step touches, around a bias-free linear layer."""

    def __init__(self) -> None:
        from ignite.engine import Engine

        self.network = torch.nn.Linear(8, 4, bias=False)
        self._engine = Engine(self._iteration)
        self.state = self._engine.state
        self.state.iteration = 0

    def _iteration(self, engine, batch):
        loss = self.network(batch["image"]).sum()
        loss.backward()
        return {"loss": loss}

    def _process_function(self, engine, batch):
        return self._iteration(engine, batch)

    def fire_event(self, event) -> None:
        self._engine.fire_event(event)


def test_flops_of_one_step_match_hand_count():
    engine = _Engine()
    batch = {"image": torch.randn(5, 8)}
    # forward 2*5*8*4 = 320; backward: grad wrt weight 320 (the input needs no grad) -> 640
    assert count_step_flops(engine, batch) == 640.0


def test_random_like_batch_tiles_and_randomises():
    batch = {"image": torch.zeros(2, 3, 4, 5, 5, dtype=torch.uint8), "label": torch.tensor([0, 1]), "id": ["a", "b"]}
    out = random_like_batch(batch, torch.device("cpu"), batch_size=5)
    assert out["image"].shape == (5, 3, 4, 5, 5) and out["image"].dtype == torch.uint8
    assert out["image"].any()  # random, not the zeros
    assert out["label"].tolist() == [0, 1, 0, 1, 0] and out["id"] == ["a", "b", "a", "b", "a"]
    table = format_table([{"bundle": "x", "mode": "model", "batch_shape": [5, 3]}])
    assert "| x | model |  | 5x3 |" in table


def test_loader_mode_times_each_transform(tmp_path, capsys, tiny_data):
    out = tmp_path / "loader.json"
    threads = torch.get_num_threads()
    # a dataset path with slashes in a YAML flow mapping: fire passes it on as a string
    _load_script().main(
        bundles="unilvseg_echo_lv_segmentation",
        modes="loader",
        sizes="recipe",
        samples=2,
        overrides=f"{{dataset_dir: {tiny_data['echonet']}, num_frames: 16}}",
        out=str(out),
    )
    assert torch.get_num_threads() == threads  # one thread only while timing
    stdout = capsys.readouterr().out
    assert "| bundle | sizes | sample_shape | ms_per_sample |" in stdout
    assert "| unilvseg_echo_lv_segmentation | LoadClipd |" in stdout  # one row per transform
    payload = json.loads(out.read_text())
    assert payload["results"] == [] and payload["options"]["overrides"]["dataset_dir"] == str(tiny_data["echonet"])
    (row,) = payload["loader"]
    assert row["error"] is None and row["sample_shape"] == [3, 16, 112, 112] and row["target_ms"] == 2.0
    names = [t["name"] for t in row["transforms"]]
    assert names[0] == "LoadClipd" and names[-1].startswith("overhead")
    assert all(t["calls_per_sample"] == 1.0 and t["ms_per_sample"] >= 0 for t in row["transforms"])


def test_transform_rows_through_nested_compose_and_wrappers():
    import numpy as np
    from monai.data import Dataset
    from monai.transforms import Compose, Lambdad, OneOf, RandFlipd, RandRotated, ScaleIntensityd

    from medssl_monai.benchmarking import _timed, _transform_units, _unwrap_dataset
    from medssl_monai.data.robust import SkipBadSamples
    from medssl_monai.transforms.spatial import ClipConsistentd

    spatial = Compose([RandRotated("image", range_x=0.3, prob=1.0), RandFlipd("image", prob=1.0)])
    chain = Compose(
        [
            ScaleIntensityd("image"),
            Compose([Lambdad("image", lambda x: x + 1)]),  # a nested plain Compose is flattened
            ClipConsistentd(spatial, keys=["image"], time_keys=("image",)),
            OneOf([RandFlipd("image", prob=1.0, spatial_axis=0), RandFlipd("image", prob=1.0, spatial_axis=1)]),
        ]
    )
    data = [{"image": np.random.rand(1, 4, 16, 16).astype(np.float32)} for _ in range(3)]
    dataset = SkipBadSamples(Dataset(data, transform=chain))
    units = _transform_units(_unwrap_dataset(dataset).transform)
    assert [(name, depth) for name, depth, _ in units] == [
        ("ScaleIntensityd", 0),
        ("Lambdad", 0),
        ("ClipConsistentd", 0),
        ("ClipConsistentd > RandRotated", 1),
        ("ClipConsistentd > RandFlipd", 1),
        ("OneOf", 0),  # its children do not all run: one row
    ]
    with _timed(units) as rows:
        for i in range(len(dataset)):
            assert dataset[i]["image"].shape == (1, 4, 16, 16)
    assert [r["calls"] for r in rows] == [3] * 6 and all(r["wall_s"] > 0 for r in rows)
    assert type(units[2][2]) is ClipConsistentd  # classes restored after timing


def test_malformed_overrides_are_a_clear_error():
    with pytest.raises(SystemExit, match="--overrides: could not parse overrides"):
        _load_script().main(bundles="none", overrides="{dataset_dir: [}")


def test_data_size_sets_the_synthetic_default_only():
    from medssl_monai.benchmarking import build_parser

    bundle = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"
    parser = build_parser(bundle, sizes="recipe", device="cpu", data_size="bench")
    assert parser.get()["dataset_dir"]["size"] == "bench"  # not parsed here: nothing is written
    parser = build_parser(bundle, sizes="recipe", device="cpu", data_size="bench", overrides={"dataset_dir": "/d/x"})
    assert parser.get()["dataset_dir"] == "/d/x"  # a user's dataset is never resized


def test_cpu_sizes_read_the_representation_benchmark_preset():
    from medssl_monai.benchmarking import build_parser

    seg = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"
    parser = build_parser(seg, sizes="cpu", device="cpu")
    assert parser["epoch_length"] == 480 and parser["spatial_size"] == 48  # cpu.yaml's, not train.yaml's 112
    assert build_parser(seg, sizes="recipe", device="cpu")["spatial_size"] == 112
    with pytest.raises(ValueError, match="ucl_us_classification has no configs/cpu.yaml"):
        build_parser(ROOT / "bundles" / "ucl_us_classification", sizes="cpu", device="cpu")
    with pytest.raises(ValueError, match="'recipe', 'small' or 'cpu'"):
        build_parser(seg, sizes="tiny", device="cpu")


def test_benchmark_script_profile_writes_tables_and_trace(tmp_path, monkeypatch):
    """``--profile DIR`` writes, per bundle, the op and module tables, the precision census and a Chrome trace."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        _load_script().main(
            device="cpu",
            bundles="discovr_echo_ssl_pretraining",
            modes="none",
            warmup=1,
            profile=str(tmp_path),
            profile_steps=1,
            threads=1,
        )
    finally:
        torch.set_num_threads(threads)
    name = "discovr_echo_ssl_pretraining"
    summary = json.loads((tmp_path / f"{name}.json").read_text())
    assert summary["sort_by"] == "self_cpu_time_total" and summary["precision_error"] is None
    assert 0 < len(summary["ops"]) <= 20 and summary["ops"][0]["self_cpu_ms"] > 0
    modules = {r["name"] for r in summary["modules"]}
    assert {"DISCOVR", "DISCOVR.encoder.blocks", "DISCOVR.decoder"} <= modules  # blocks the method calls directly
    assert "Self CPU" in (tmp_path / f"{name}.ops.txt").read_text()
    assert (tmp_path / f"{name}.modules.md").read_text().count("\n") > 3
    # the census under CPU bf16 autocast: the fp32 islands are the prototype scores and the DINO last layers
    fp32 = {r["module"] for r in summary["precision"] if r["dtype"] == "float32" and r["pass"] == "forward"}
    assert "DISCOVR.prototypes" in fp32 and "DISCOVR.video_head" in fp32
    assert any(r["dtype"] == "bfloat16" for r in summary["precision"])
    trace = json.loads((tmp_path / f"{name}.trace.json").read_text())
    assert any(e.get("name") == "train_step_0" for e in trace["traceEvents"])


# ---- the representation benchmark (scripts/benchmark_representations.py) and its CPU presets ---------------

PRETRAINING = ("unilvseg_echo_ssl_pretraining", "tvrl_echo_ssl_pretraining", "discovr_echo_ssl_pretraining")
PRETRAINING_US = "ucl_us_ssl_pretraining"
#: TRAIN items of the `bench` sets the presets' step counts are stated for (717 EchoNet videos, 1,280 sweeps)
BENCH_TRAIN = {"echo": 717, "ultrasound": 1280}


def _preset(bundle: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = ROOT / "bundles" / bundle / "configs"
    parser.read_config([str(configs / "train.yaml"), str(configs / "cpu.yaml")])
    return parser, (configs / "cpu.yaml").read_text()


@pytest.mark.parametrize("bundle", [*PRETRAINING, PRETRAINING_US])
def test_cpu_preset_states_its_steps_and_spans_a_beat(bundle):
    import math
    import re

    parser, text = _preset(bundle)
    epochs, batch = int(parser["epochs"]), int(parser["batch_size"])
    # the comment's budget: "<epochs> epochs x ... = <steps> optimizer steps", checked against the arithmetic
    m = re.search(r"Budget: (\d+) epochs x .*?= ([\d,]+) optimizer steps", text)
    assert m, "cpu.yaml must report its number of optimizer steps"
    if bundle == PRETRAINING_US:  # UCL keeps a partial last batch
        per_epoch = math.ceil(BENCH_TRAIN["ultrasound"] / batch)
    else:
        per_epoch = BENCH_TRAIN["echo"] // batch  # drop_last
    assert int(m.group(1)) == epochs and int(m.group(2).replace(",", "")) == epochs * per_epoch
    bench = yaml.safe_load((ROOT / "scripts" / "benchmark_representations.yaml").read_text())
    kind = bundle.split("_")[0]
    layout = bench["encoders"][f"{kind}_ssl"]["layout"]
    fps, slowest_beat_bpm = 50.0, 50.0  # the synthetic echo videos; 50 bpm is the slowest heart rate drawn
    if bundle == PRETRAINING_US:
        assert layout["num_frames"] > 1  # frame encoder: probed per frame over a beat-long clip
    else:
        frames = int(parser["num_frames"])
        if kind == "unilvseg":  # its clip loader's stride (1 in train.yaml: consecutive frames)
            period = int(parser["train#preprocessing#period"])
        else:
            period = int(parser["period"] if kind == "tvrl" else parser["sampling_rate"])
        # the benchmark probes each encoder in its pretraining layout, and that layout spans a beat
        assert (layout["num_frames"], layout["period"]) == (frames, period)
        assert ((frames - 1) * period + 1) / fps >= 60.0 / slowest_beat_bpm * 0.97
        if kind == "unilvseg":  # the validation clips and embedding views use the same stride
            assert parser["validate#preprocessing#period"] == parser["train#embedding_transform#period"] == period


@pytest.mark.slow
@pytest.mark.parametrize("bundle", [*PRETRAINING, PRETRAINING_US])
def test_cpu_preset_trains_two_iterations(bundle, tiny_data, tmp_path):
    import shutil
    import sys

    from bounded import run_bounded

    work = tmp_path / bundle
    shutil.copytree(ROOT / "bundles" / bundle, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    data = tiny_data["ultrasound" if bundle == PRETRAINING_US else "echonet"]
    # tiny: 4 TRAIN echo videos at batch 2 (drop_last), 6 sweeps at batch 3: two iterations either way
    batch = 3 if bundle == PRETRAINING_US else 2
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.yaml','configs/cpu.yaml']",
        "--bundle_root",
        str(work),
        "--dataset_dir",
        str(data),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--epochs",
        "1",
        "--batch_size",
        str(batch),
        "--num_workers",
        "0",
        "--log_every",
        "1",
    ]
    if bundle == "unilvseg_echo_ssl_pretraining":
        cmd += ["--val_interval", "1"]  # validation writes models/model.pt
    if bundle == "discovr_echo_ssl_pretraining":
        cmd += ["--val_interval", "1"]
    proc = run_bounded(cmd, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Iter: 2/2" in log, log[-4000:]
    assert (work / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_ucl_cpu_preset_weights_do_not_depend_on_validation(tiny_data, tmp_path):
    """configs/cpu.yaml validates every 10th epoch to save time: that must not change what is trained."""
    import shutil
    import sys

    from bounded import run_bounded

    parser, _ = _preset(PRETRAINING_US)
    assert int(parser["val_interval"]) > 1
    weights = []
    for val_interval in (1, 2):
        work = tmp_path / f"val{val_interval}"
        shutil.copytree(ROOT / "bundles" / PRETRAINING_US, work, ignore=shutil.ignore_patterns("models", "runs"))
        configs = "['configs/train.yaml','configs/cpu.yaml']"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
        cmd += ["--bundle_root", str(work), "--dataset_dir", str(tiny_data["ultrasound"])]
        cmd += ["--cache_dir", str(tmp_path / "cache"), "--epochs", "2", "--batch_size", "3", "--num_workers", "0"]
        cmd += ["--val_interval", str(val_interval), "--monitor_every", "0"]
        proc = run_bounded(cmd, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert log.count("SupervisedEvaluator - INFO - Epoch[") == 2 // val_interval, log[-4000:]
        weights.append(torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


TINY_BENCHMARK = {
    "protocol": "tiny (CI)",
    "data_seed": 0,
    "data": {"echonet_videos": 30, "ultrasound_videos": 8, "series_subjects": 40},
    "num_workers": 0,
    "threads": 1,
    "jobs": 2,  # the pretraining stages two at a time, as the full config runs them
    "seed": 0,
    "eval_splits": ["VAL", "TEST"],
    "n_resamples": 100,
    "probe_size": 32,
    "clips_per_video": 2,
    "batch_size": 8,
    "series_frames": 4,
    "label_fractions": [0.25, 1.0],
    "label_seeds": [0, 1],
    "supervised": {"learning_rate": 0.001, "weight_decay": 0.05},
    "controls": {"pixels": {"layout": {"num_frames": 32, "period": 2}, "grid": 14, "dark_thresholds": [0.05, 0.12]}},
    "ultrasound_labelled": {
        "videos": 12,
        "eval_fraction": 0.5,
        "frames_per_video": 3,
        "size": 32,
        "thumbnail_grid": 8,
        "settings": {"2_per_class": 2, "all": None},
        "draws": 2,
    },
    "segmentation": {  # UniLVSeg's few-label claim: 2 labelled videos, 2 fine-tuning steps per arm
        "label_videos": [2],
        "configs": ["train.yaml", "cpu.yaml"],
        "overrides": {"epoch_length": 2, "batch_size": 2, "num_workers": 0},
    },
    "headline_claims": [
        {
            "method": "unilvseg",
            "claim": "few-label segmentation",
            "metric": "pooled_dice_2",
            "ssl_row": "unilvseg_ssl",
            "baseline_row": "unilvseg_random",
        },
        {
            "method": "tvrl",
            "claim": "EF probe",
            "metric": "ef_r2",
            "ssl_row": "tvrl_ssl",
            "baseline_row": "tvrl_random",
        },
        {
            "method": "ucl",
            "claim": "few-label frames",
            "metric": "frame_accuracy_2_per_class",
            "ssl_row": "ucl_ssl",
            "baseline_row": "ucl_random",
        },
        {"method": "ucl", "claim": "not run", "metric": "ef_r2", "ssl_row": "nope_ssl", "baseline_row": "ucl_random"},
    ],
    "encoders": {
        "unilvseg_ssl": {
            "kind": "unilvseg",
            "configs": ["cpu.yaml"],
            "layout": {"num_frames": 32, "period": 2},
            "supervised": True,
            "overrides": {"epochs": 1, "batch_size": 4, "val_interval": 1, "num_workers": 0},
        },
        "tvrl_ssl": {
            "kind": "tvrl",
            "configs": ["cpu.yaml"],
            "layout": {"num_frames": 16, "period": 4},
            "supervised": True,
            "overrides": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "mlm_start_epoch": 0, "num_workers": 0},
        },
        "discovr_ssl": {
            "kind": "discovr",
            "configs": ["cpu.yaml"],
            "layout": {"num_frames": 16, "period": 4},
            "supervised": True,
            "overrides": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "val_interval": 1, "num_workers": 0},
        },
        "ucl_ssl": {
            "kind": "ucl",
            "configs": ["cpu.yaml"],
            "layout": {"num_frames": 16, "period": 4},
            "supervised": True,
            "overrides": {
                "epochs": 1,
                "batch_size": 4,
                "warmup_epochs": 0,
                "curriculum_start_epoch": 0,
                "num_workers": 0,
            },
        },
    },
}


@pytest.mark.slow
def test_representation_benchmark_tiny_end_to_end(tmp_path):
    """Every stage of the benchmark at toy sizes: data, cache, pretraining of all four bundles, supervised rows,
    features, CV probes, label efficiency, paired claims, the oracle check and every output file; then the same
    command again, which skips the finished pretraining stages (~2-3 min)."""
    import sys

    from bounded import run_bounded

    from medssl_monai.evaluation.protocol import validate_claims, validate_controls

    out = tmp_path / "out"
    cfg = {**TINY_BENCHMARK, "output_dir": str(out), "data_root": str(out / "data")}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = ROOT / "scripts" / "benchmark_representations.py"
    cmd = [sys.executable, str(script), "--config", str(config), "--publish", str(tmp_path / "published")]
    proc = run_bounded(cmd, timeout=900, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    payload = json.loads((out / "results.json").read_text())
    stages = payload["meta"]["stages_s"]
    assert set(stages) == {
        "data",
        "cache",
        "train",
        "supervised",
        "features",
        "fewlabel_frames",
        "fewlabel_segmentation",
        "probes",
        "write",
    }
    rows = set(payload["results"])
    kinds = ("unilvseg", "tvrl", "discovr", "ucl")
    expected = {f"{k}_{v}" for k in kinds for v in ("random", "ssl", "supervised")}
    growth = {"oracle_lesion_growth", "oracle_lesion_sizes_no_time"}  # the progression task's controls
    assert rows == expected | growth | {"oracle_lv_volume", "pixels_std_map", "pixels_dark_area"}
    assert payload["results"]["oracle_lv_volume"]["progression"] == "n/a"
    assert all(payload["results"][g]["ef"] == "n/a" for g in growth)  # series-only rows
    for k in kinds:  # the supervised budget is the SSL run's steps and batch size
        meta = payload["meta"]["rows"]
        assert meta[f"{k}_supervised"]["steps"] == meta[f"{k}_ssl"]["steps"] > 0

    comparisons = json.loads((out / "comparisons.json").read_text())
    validate_claims(comparisons)
    pairs = {(c["ssl_row"], c["baseline_row"]) for c in comparisons}
    for k in kinds:
        for base in ("random", "supervised"):
            assert (f"{k}_ssl", f"{k}_{base}") in pairs
        assert (f"{k}_ssl", "pixels_std_map") in pairs
    # claims.json: exactly the declared headline claims that were run, in the declared words
    claims = json.loads((out / "claims.json").read_text())
    validate_claims(claims)
    assert [(c["method"], c["metric"], c["claim"]) for c in claims] == [
        ("unilvseg", "pooled_dice_2", "few-label segmentation"),
        ("tvrl", "ef_r2", "EF probe"),
        ("ucl", "frame_accuracy_2_per_class", "few-label frames"),
    ]
    seg, ucl = claims[0], claims[2]
    arms = payload["fewlabel_segmentation"]["2"]
    assert arms["unilvseg_ssl"]["train_videos"] == arms["unilvseg_random"]["train_videos"]  # the same 2 videos
    assert arms["unilvseg_ssl"]["steps"] == arms["unilvseg_random"]["steps"] == 2  # the same budget
    assert seg["ssl"] == pytest.approx(arms["unilvseg_ssl"]["pooled_dice"]) and 0.0 <= seg["ssl"] <= 1.0
    assert seg["n_eval"] == payload["meta"]["counts"]["eval"]  # every evaluation video scored by both arms
    assert ucl["baseline_row"] == "ucl_random" and ucl["n_eval"] == 6  # 6 evaluation videos of 12
    frames = payload["fewlabel_frames"]
    assert set(frames["rows"]) == {"ucl_random", "ucl_ssl", "pixels_thumbnail"}
    assert len(frames["rows"]["ucl_ssl"]["2_per_class"]["draws"]) == 2
    assert ucl["ssl"] == pytest.approx(frames["rows"]["ucl_ssl"]["2_per_class"]["accuracy"])
    controls = json.loads((out / "controls.json").read_text())
    validate_controls(controls)
    assert controls["ef_r2"] >= 0.9 and controls["abnormal_auroc"] >= 0.95  # else no table would be written
    assert controls["progression_auroc"] >= 0.95 and controls["progression_row"] == "oracle_lesion_growth"
    assert 0.0 <= controls["progression_no_time_auroc"] <= 1.0

    md = (out / "benchmark.md").read_text()
    assert "| oracle_lv_volume |" in md and "Headline claims" in md and "EF R2 by share of TRAIN labels" in md
    assert "Few-label frame classification" in md and "Every paired comparison" in md
    assert (out / "benchmark.png").stat().st_size > 0 and (out / "LVVolumes.csv").is_file()
    assert (out / "claims.png").stat().st_size > 0  # the forest plot of the headline claims
    histories = {r: m.get("monitor") for r, m in payload["meta"]["rows"].items() if r.endswith("_ssl")}
    assert all(h for h in histories.values()), histories  # the cpu presets run the monitor (its last step at least)
    assert (out / "monitor.png").stat().st_size > 0
    for name in ("claims.json", "comparisons.json", "controls.json", "benchmark.md", "benchmark.png"):
        assert (tmp_path / "published" / name).is_file()

    # the pretraining ran as stages of the reproduce plan: run records, logs, the monitor's rows across processes
    kinds_models = {k: out / k / "models" / "model.pt" for k in kinds}
    for k, model in kinds_models.items():
        stage = json.loads((out / k / "stage.json").read_text())
        assert stage["status"] == "done" and (out / k / "stage.log").is_file()
        info = json.loads((out / k / "pretrain.json").read_text())
        assert info["checkpoint"] == str(model.resolve()) and info["steps"] == stage["trainer"]["iteration"]
        history = json.loads((out / k / "runs" / "monitor.json").read_text())["history"]
        assert info["monitor"] and json.dumps(info["monitor"]) == json.dumps(history)  # NaN scores compare as text
        assert 0 < info["monitor_share"] < 1
        assert f"/8] {k}: start (not run yet); stage ETA" in proc.stdout  # the plan's progress lines
    assert "plan ETA" in proc.stdout
    # the few-label segmentation arms are stages of the same plan: fine-tuning, then its evaluation
    for arm in ("random", "ssl"):
        for name in (f"seg_{arm}_2", f"seg_{arm}_2_eval"):
            assert json.loads((out / name / "stage.json").read_text())["status"] == "done"
            assert f"/8] {name}: start (" in proc.stdout
    ssl_seg = json.loads((out / "seg_ssl_2" / "stage.json").read_text())
    assert ssl_seg["overrides"]["pretrained_ckpt"] == str(kinds_models["unilvseg"].resolve())
    assert ssl_seg["started"] >= json.loads((out / "unilvseg" / "stage.json").read_text())["finished"]
    # jobs: 2: the second stage started before the first had finished (stage.json times, to the second)
    first, second = (json.loads((out / k / "stage.json").read_text()) for k in kinds[:2])
    assert second["started"] <= first["finished"]

    # the one-class diagnostic on the saved features: its whole-embedding row is the benchmark's own comparison
    spec = importlib.util.spec_from_file_location("bench_diag", ROOT / "scripts" / "benchmark_diagnostics.py")
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    table = diag.main(["--output_dir", str(out), "--rows", "discovr", "--components", "2"])
    same = next(
        c
        for c in comparisons
        if c["metric"] == "anomaly_auroc" and c["ssl_row"] == "discovr_ssl" and c["baseline_row"] == "discovr_random"
    )
    assert [r["subspace"] for r in table] == ["whole embedding", "2 EF-PLS directions"]
    assert table[0]["diff"] == pytest.approx(same["diff"]) and table[0]["ssl"] == pytest.approx(same["ssl"])
    assert all(0.0 <= r[k] <= 1.0 for r in table for k in ("ssl", "random"))
    # what the series rows read: the oracles first, then the rows with the benchmark's own progression AUROC
    series = diag.main(["--output_dir", str(out), "--series", "tvrl_ssl", "tvrl_random"])
    names = ["oracle_lesion_growth", "oracle_lesion_sizes_no_time", "tvrl_ssl", "tvrl_random"]
    assert [r["row"] for r in series] == names
    assert series[0]["size_r2"] > 0.95 and series[0]["growth_r2"] > 0.95  # the oracle holds both
    assert series[1]["minus_no_time"] == 0.0
    for r in series[2:]:
        assert r["auroc"] == pytest.approx(payload["results"][r["row"]]["progression"]["auroc"]["estimate"])

    # the same command again (one encoder, to keep CI short): its finished pretraining stage is skipped (settings
    # unchanged) and no model is touched
    before = {k: (m.stat().st_mtime_ns, m.read_bytes()) for k, m in kinds_models.items()}
    again = run_bounded([*cmd, "--only", "tvrl_ssl"], timeout=900, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert "tvrl: skipped (done, settings unchanged)" in again.stdout
    assert ": start (" not in again.stdout
    assert {k: (m.stat().st_mtime_ns, m.read_bytes()) for k, m in kinds_models.items()} == before
    rerun = json.loads((out / "results.json").read_text())["meta"]["rows"]
    assert rerun["tvrl_ssl"]["steps"] == meta["tvrl_ssl"]["steps"] and rerun["tvrl_ssl"]["monitor"]


def test_representation_benchmark_reads_any_echonet_folder(tiny_data, tmp_path):
    """``--dataset_dir`` without the synthetic files: abnormal = EF < 50 and the oracle falls back to EDV/ESV."""
    import shutil

    from medssl_monai.evaluation.controls import edv_esv_features, lv_volume_curves

    spec = importlib.util.spec_from_file_location("bench_repr", ROOT / "scripts" / "benchmark_representations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = tmp_path / "echonet"
    shutil.copytree(tiny_data["echonet"], real, ignore=shutil.ignore_patterns("SyntheticTruth.csv", ".synthetic.json"))
    items = module.echo_items(real)
    assert items and all(it["abnormal"] == int(it["ef"] < 50.0) for it in items)
    assert lv_volume_curves(real) is None  # no per-frame volumes: the oracle row uses EDV / ESV
    x = edv_esv_features(items)
    np.testing.assert_allclose(100.0 * (1.0 - x[:, 2]), [it["ef"] for it in items], rtol=1e-6)
    synthetic = module.echo_items(tiny_data["echonet"])  # the synthetic truth's Abnormal column when present
    truth = pd.read_csv(tiny_data["echonet"] / "SyntheticTruth.csv").set_index("FileName")["Abnormal"]
    assert [it["abnormal"] for it in synthetic] == [int(truth[it["video_id"]]) for it in synthetic]
