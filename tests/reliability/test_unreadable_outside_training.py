"""Unreadable samples outside the training set, skip totals of all loader workers, and failures that are not bad
samples (disk full, I/O error, out of memory).

Validation, evaluation and inference loaders (``DataLoader(on_bad_sample=...)``) leave an unreadable sample out,
list it with its reason, drop a batch that became empty and end the evaluator's epoch where the data ends; the
training loader adds up what every worker skipped and stops above ``max_bad_fraction``.
"""

from __future__ import annotations

import errno
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator

from medssl_monai.data.loader import DataLoader
from medssl_monai.data.robust import (
    BadSample,
    BadSampleError,
    ResourceError,
    SkipBadSamples,
    SkippedSamplesHandler,
    TooManyBadSamplesError,
)
from medssl_monai.engines.reports import VideoEFReport, VideoMaskWriter
from medssl_monai.engines.writers import InferenceProgress, PredictionWriter
from medssl_monai.evaluation.classification import ClassificationReportHandler
from medssl_monai.evaluation.probe import ProbeMetricsWriter


class Videos:
    """``len`` samples ``{"x", "video_id"}``; the indices in ``bad`` fail as an unreadable file would."""

    def __init__(self, n: int, bad=(), error: type[BaseException] | BaseException = ValueError) -> None:
        self.data = [{"image": f"/data/v{i}.avi", "video_id": f"v{i}", "ef": 50.0 + i} for i in range(n)]
        self.bad, self.error = set(bad), error

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        if i in self.bad:
            if isinstance(self.error, BaseException):
                raise RuntimeError("applying transform <LoadClipd>") from self.error  # as MONAI wraps it
            raise self.error(f"/data/v{i}.avi: truncated")
        return {"x": torch.tensor([float(i)]), "video_id": f"v{i}"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_leaves_out_unreadable_samples_and_emptied_batches(num_workers: int):
    loader = DataLoader(Videos(7, bad={2, 3, 5}), batch_size=2, num_workers=num_workers, on_bad_sample="skip")
    seen: list[float] = []
    engine = Engine(lambda e, b: seen.extend(b["x"].flatten().tolist()))
    SkippedSamplesHandler().attach(engine)
    for _ in range(2):  # a validator runs once per training epoch: each run reads every sample once
        seen.clear()
        engine.run(loader, max_epochs=1)
        assert seen == [0.0, 1.0, 4.0, 6.0]  # batch [2, 3] became empty and was left out
    assert [s.file for s in loader.bad_samples] == ["/data/v2.avi", "/data/v3.avi", "/data/v5.avi"]
    assert all(s.reason == f"ValueError: {s.file}: truncated" for s in loader.bad_samples)
    assert loader.bad_samples[0].item["video_id"] == "v2" and engine.state.metrics["skipped_samples"] == 3
    assert engine.state.epoch_length == len(loader)  # restored for the next run


def test_eval_loader_raise_policy_names_the_file(caplog):
    loader = DataLoader(Videos(4, bad={1}), batch_size=1, on_bad_sample="raise")
    with caplog.at_level(logging.ERROR), pytest.raises(BadSampleError, match=r"/data/v1.avi.*truncated"):
        list(loader)
    assert "--on_bad_sample skip" in caplog.text


def test_monai_evaluator_survives_a_batch_that_became_empty(tmp_path: Path):
    """An unreadable video alone in its batch (batch size 1): the evaluator goes on, predictions.csv marks it."""
    loader = DataLoader(Videos(4, bad={1, 3}), batch_size=1, on_bad_sample="skip")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["x"], None),
        decollate=False,
        val_handlers=[PredictionWriter(tmp_path, task="regression")],
    )
    for epoch in (1, 2):
        evaluator.run(global_epoch=epoch)
        table = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
        assert list(table["id"]) == ["v0", "v1", "v2", "v3"]
        assert list(table["status"]) == ["ok", "skipped", "ok", "skipped"]
        assert list(table["prediction"]) == ["0.0", "", "2.0", ""] and "truncated" in table["reason"][1]


def test_a_validation_that_reads_nothing_computes_no_metric_and_keeps_the_best(tmp_path: Path):
    """Every VAL sample unreadable: no metric from no data (a pooled Dice of nothing is 1.0), no checkpoint."""
    from ignite.metrics import Average

    videos = Videos(3, bad={0, 1, 2})
    epochs_completed: list[int] = []
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(videos, batch_size=2, on_bad_sample="skip"),
        network=torch.nn.Identity(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["x"], None),
        key_val_metric={"val_mean": Average(output_transform=lambda out: out["pred"].mean())},
        decollate=False,
        val_handlers=[SkippedSamplesHandler()],
    )
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_completed.append(e.state.epoch))
    evaluator.run(global_epoch=1)
    assert epochs_completed == [] and "val_mean" not in evaluator.state.metrics
    assert evaluator.state.metrics["skipped_samples"] == 3 and evaluator.state.best_metric == -1
    videos.bad = {1}  # the files are back, but for one
    evaluator.run(global_epoch=2)
    assert epochs_completed == [2] and evaluator.state.metrics["val_mean"] == pytest.approx(1.0)  # (0 + 2) / 2
    assert evaluator.state.best_metric == pytest.approx(1.0) and evaluator.state.metrics["skipped_samples"] == 1


def test_under_ddp_a_rank_that_reads_nothing_still_completes_its_epoch(monkeypatch):
    """The metrics all-reduce at EPOCH_COMPLETED: a rank that skipped it would leave the others waiting."""
    import medssl_monai.data.robust as robust

    monkeypatch.setattr(robust, "_world_size", lambda: 2)
    engine = Engine(lambda e, b: None)
    SkippedSamplesHandler().attach(engine)
    completed: list[int] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: completed.append(e.state.epoch))
    engine.run(DataLoader(Videos(2, bad={0, 1}), batch_size=1, on_bad_sample="skip"), max_epochs=1)
    assert completed == [1] and engine.state.metrics["skipped_samples"] == 2


def test_training_skips_of_every_worker_are_added_up_and_limited(caplog):
    """Each worker is a process: only the shared counts let the main process see what all of them skipped."""
    dataset = SkipBadSamples(Videos(8, bad={1, 6}), max_bad_fraction=0.5)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="medssl_monai.data.robust"):
        batches = list(loader)
    assert len(batches) == 4 and dataset.counts() == (8, 2) and dataset.skipped == 0  # skipped in the workers
    assert "training: 2 of 8 samples (25.0%) could not be read in this pass and were skipped" in caplog.text

    strict = DataLoader(SkipBadSamples(Videos(8, bad={1, 6}), max_bad_fraction=0.1), batch_size=2, num_workers=2)
    with pytest.raises(TooManyBadSamplesError, match=r"2 of 8 .*more than max_bad_fraction 0.1.*--max_bad_fraction"):
        list(strict)


@pytest.mark.parametrize(
    "error, said",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (ENOSPC"),
        (OSError(errno.EIO, "Input/output error"), "an I/O error (EIO"),
        (MemoryError(), "out of memory (MemoryError"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory (torch.OutOfMemory"),
    ],
    ids=["ENOSPC", "EIO", "MemoryError", "torch-OOM"],
)
@pytest.mark.parametrize("replace", [True, False], ids=["training", "evaluation"])
def test_full_disk_io_error_and_oom_stop_the_run(error: BaseException, said: str, replace: bool):
    dataset = SkipBadSamples(Videos(3, bad={1}, error=error), on_bad_sample="skip", replace=replace)
    assert dataset[0]["video_id"] == "v0"
    with pytest.raises(
        ResourceError, match=rf"sample 1 \(/data/v1.avi\) failed because {re.escape(said)}.*not a bad sample"
    ):
        dataset[1]
    assert dataset.skipped == 0


def _fake_engine(output: dict, batch: dict, bad: list[BadSample]) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(output=output, batch=batch, dataloader=SimpleNamespace(bad_samples=bad))
    )


def _bad(vid: str, **item) -> BadSample:
    return BadSample(
        0, f"/data/{vid}.avi", f"VideoReadError: /data/{vid}.avi: empty file (0 bytes)", {"video_id": vid, **item}
    )


def _disc(radius_es: float, frames: int = 60) -> torch.Tensor:
    t = torch.arange(frames, dtype=torch.float32)
    radius = 10.0 - (10.0 - radius_es) * (0.5 - 0.5 * torch.cos(2 * torch.pi * t / 30))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    inside = ((yy - 16) ** 2 + (xx - 16) ** 2)[None] <= radius[:, None, None] ** 2
    return torch.where(inside, 5.0, -5.0)[None, None]


def test_per_video_ef_rows_are_on_disk_as_each_video_ends_and_skipped_videos_listed(tmp_path: Path):
    report = VideoEFReport(tmp_path, n_resamples=20, min_distance=10, num_curves=0)
    report.reset()
    bad = [_bad("broken", ef=61.0)]
    report.iteration_completed(
        _fake_engine({"pred": _disc(7.0)}, {"video_id": ["v0"], "ef": torch.tensor([65.7])}, bad)
    )
    # before the evaluation ends (a crash here keeps them): the finished video and the skipped one
    rows = pd.read_csv(tmp_path / "per_video_ef.csv")
    assert list(rows["video_id"]) == ["broken", "v0"] and list(rows["status"]) == ["skipped", "ok"]
    report.iteration_completed(
        _fake_engine({"pred": _disc(8.0)}, {"video_id": ["v1"], "ef": torch.tensor([48.8])}, bad)
    )
    report.completed(_fake_engine({}, {}, bad))
    rows = pd.read_csv(tmp_path / "per_video_ef.csv")
    assert list(rows["video_id"]) == ["broken", "v0", "v1"] and "empty file" in rows["reason"][0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ef"]["videos"] == 2 and summary["ef"]["videos_skipped"] == 1  # metrics on what was read
    assert summary["skipped"]["ef"] == {
        "count": 1,
        "files": [{"file": "/data/broken.avi", "reason": bad[0].reason, "videos": 1}],
    }


def test_video_mask_writer_streams_predictions_and_keeps_relative_names(tmp_path: Path):
    writer = VideoMaskWriter(tmp_path, write_video=False)
    clip = torch.zeros(1, 3, 60, 32, 32, dtype=torch.uint8)
    bad = [_bad("c/still")]
    for vid in ("a/1", "b/1"):
        writer.iteration_completed(_fake_engine({"pred": _disc(7.0)}, {"video_id": [vid], "image": clip}, bad))
    rows = pd.read_csv(tmp_path / "predictions.csv")  # before completed()
    assert list(rows["video_id"]) == ["c/still", "a/1", "b/1"] and list(rows["status"]) == ["skipped", "ok", "ok"]
    assert (tmp_path / "a" / "1_mask.nii.gz").is_file() and (tmp_path / "b" / "1_mask.nii.gz").is_file()
    writer.iteration_completed(_fake_engine({"pred": _disc(7.0)}, {"video_id": ["../../escape"], "image": clip}, bad))
    assert (tmp_path / "escape_mask.nii.gz").is_file()  # an id never writes outside output_dir


def test_classification_and_probe_reports_list_skipped_inputs(tmp_path: Path):
    bad = [_bad("v9", label=1, frame_index=0), _bad("v9", label=1, frame_index=1)]  # two frames of one video
    report = ClassificationReportHandler(tmp_path / "cls", ["n", "l"], n_resamples=0)
    report._reset(None)
    batch = {"video_id": ["v0", "v1"], "frame_index": torch.tensor([0, 0]), "label": torch.tensor([0, 1])}
    report._collect(_fake_engine({"pred": torch.tensor([[2.0, 0.0], [0.0, 2.0]])}, batch, bad))
    assert len(pd.read_csv(tmp_path / "cls" / "frame_predictions.csv")) == 2  # streamed
    report._write(_fake_engine({}, {}, bad))
    videos = pd.read_csv(tmp_path / "cls" / "video_predictions.csv", keep_default_na=False)
    assert list(videos["video_id"]) == ["v0", "v1", "v9"] and list(videos["status"]) == ["ok", "ok", "skipped"]
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert metrics["frame"]["n"] == 2 and metrics["skipped"]["files"][0]["frames"] == 2

    engine = Engine(lambda e, b: {"pred": torch.tensor([[1.0]]), "label": torch.tensor([1.0])})
    ProbeMetricsWriter("regression", tmp_path / "probe" / "metrics.json").attach(engine)
    loader = DataLoader(Videos(3, bad={1}), batch_size=1, on_bad_sample="skip")
    engine.run(loader, max_epochs=1)
    rows = (tmp_path / "probe" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label,prediction,status,reason" and rows[2].startswith("v1,,,skipped,ValueError")
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["skipped"] == 1 and metrics["skipped_files"][0]["file"] == "/data/v1.avi"


def test_inference_progress_one_line_per_input(caplog):
    engine = Engine(lambda e, b: {"pred": b["x"]})
    InferenceProgress().attach(engine)
    with caplog.at_level(logging.INFO, logger="medssl_monai.engines.writers"):
        engine.run(DataLoader(Videos(3, bad={1}), batch_size=1, on_bad_sample="skip"), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "medssl_monai.engines.writers"]
    assert [line.split(" (elapsed")[0] for line in lines] == [
        "[1/3] v0 done",
        "[2/3] v1 skipped: ValueError: /data/v1.avi: truncated",
        "[3/3] v2 done",
    ]
    assert all("ETA" in line for line in lines)
