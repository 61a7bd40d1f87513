"""Smoke test of ``scripts/benchmark.py``: it runs at tiny sizes and reports the expected columns.

No timing assertions (the CI machine is shared); FLOPs of a known step are checked against a hand count.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

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
