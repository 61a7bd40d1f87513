"""Tracking: learning-rate scalars, epoch-end image summaries, quiet progress bars, ``--tracking mlflow``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medssl_monai.engines.tracking import (
    LearningRateLogger,
    TensorBoardClipImageHandler,
    clip_frames_to_images,
    mlflow_settings,
    progress_bar,
)

ROOT = Path(__file__).resolve().parents[2]


class _Writer:
    """Records ``add_scalar`` / ``add_images`` calls."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.images: list[tuple[str, torch.Tensor, int]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_images(self, tag, images, step, dataformats="NCHW"):
        assert dataformats == "NCHW"
        self.images.append((tag, images, step))

    def flush(self):
        pass

    def close(self):
        raise AssertionError("a given writer must not be closed by the handler")


def test_clip_frames_evenly_spaced_and_jointly_scaled():
    # 1 x 5 x 2 x 2 clip whose frame t is constant t: frames round(linspace(0, 4, 3)) = 0, 2, 4 -> 0, 0.5, 1
    x = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 2, 2)
    img = clip_frames_to_images(x, max_frames=3)
    assert img.shape == (3, 1, 2, 2)
    torch.testing.assert_close(img[:, 0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    # 2 channels -> the first one; a 2D frame -> one image; a constant clip -> zeros
    assert clip_frames_to_images(torch.rand(2, 4, 3, 3), max_frames=8).shape == (4, 1, 3, 3)
    assert clip_frames_to_images(torch.rand(3, 5, 5)).shape == (1, 3, 5, 5)
    assert clip_frames_to_images(torch.full((1, 2, 2, 2), 7.0)).abs().sum() == 0
    with pytest.raises(ValueError):
        clip_frames_to_images(torch.rand(4))


def test_learning_rate_logger_per_group_epoch_and_iteration():
    w = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    engine = Engine(lambda e, batch: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: opt.step())
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())  # runs before the logger
    writer = _Writer()
    LearningRateLogger(opt, summary_writer=writer, iteration_interval=2).attach(engine)
    engine.run([0, 1, 2], max_epochs=2)
    epoch = [(t, round(v, 6), s) for t, v, s in writer.scalars if not t.startswith("iteration/")]
    assert epoch == [
        ("lr/group_0", 0.05, 1),
        ("lr/group_1", 0.005, 1),
        ("lr/group_0", 0.025, 2),
        ("lr/group_1", 0.0025, 2),
    ]  # ignite's OptimizerParamsHandler tags
    # iterations 2, 4, 6: the rate in force while they ran (0.1 in epoch 1, 0.05 in epoch 2)
    it = [(s, round(v, 6)) for t, v, s in writer.scalars if t == "iteration/lr/group_0"]
    assert it == [(2, 0.1), (4, 0.05), (6, 0.05)]


def test_learning_rate_logger_real_summary_writer_and_tag_prefix(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    engine = Engine(lambda e, b: None)
    LearningRateLogger(opt, log_dir=str(tmp_path), tag_name="train").attach(engine)
    engine.run([0], max_epochs=2)  # the owned writer is closed at COMPLETED
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("train/lr/group_0")] == [(1, 0.3), (2, 0.3)]


def test_clip_image_handler_logs_last_batch_at_epoch_end():
    outputs = []

    def step(engine, i):
        out = {
            "image": torch.full((2, 1, 4, 3, 3), float(i)) + torch.arange(4.0).view(1, 1, 4, 1, 1),
            "pred": torch.zeros(2, 1, 4, 3, 3),  # logits 0 -> sigmoid 0.5 everywhere -> constant -> zeros
            "loss": torch.tensor(1.0),
        }
        outputs.append(out)
        return out

    engine = Engine(step)
    writer = _Writer()
    handler = TensorBoardClipImageHandler(
        keys=["image", "pred", "label"], summary_writer=writer, max_frames=2, activations={"pred": "sigmoid"}
    )
    handler.attach(engine)
    engine.run([0, 1, 2], max_epochs=2)
    # one call per present key per epoch ("label" is missing: skipped), at the engine epoch
    assert [(t, s) for t, _, s in writer.images] == [
        ("val/image", 1),
        ("val/pred", 1),
        ("val/image", 2),
        ("val/pred", 2),
    ]
    img = writer.images[0][1]
    assert img.shape == (2, 1, 3, 3)  # frames 0 and 3 of sample 0 of the LAST batch (i = 2)
    torch.testing.assert_close(img[:, 0, 0, 0], torch.tensor([0.0, 1.0]))
    assert writer.images[1][1].abs().sum() == 0


def test_clip_image_handler_real_summary_writer(tmp_path: Path):
    engine = Engine(lambda e, i: {"image": torch.rand(1, 3, 2, 8, 8)})
    TensorBoardClipImageHandler(log_dir=str(tmp_path), keys=["image"]).attach(engine)
    engine.run([0], max_epochs=1)
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard event file written"


def test_progress_bar_is_silent_off_a_tty(capsys):
    engine = Engine(lambda e, i: None)
    pbar = progress_bar()
    pbar.attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert pbar.tqdm_kwargs["disable"] is None  # tqdm "auto": drawn on a TTY only
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_mlflow_tracking_writes_a_run(tiny_data, tmp_path: Path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from monai.bundle import ConfigWorkflow

    bundle = ROOT / "bundles" / "unilvseg_echo_ssl_pretraining"
    work = tmp_path / bundle.name
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    # MONAI's default local store: a SQLite file (MLflow 3 dropped the plain file store)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    wf = ConfigWorkflow(
        config_file=[str(work / "configs" / "train.yaml"), str(work / "configs" / "small.yaml")],
        workflow_type="train",
        tracking=mlflow_settings(),  # MONAI mlflow defaults, non-decollated loss fixed
        tracking_uri=uri,
        experiment_name="tracking_test",
        bundle_root=str(work),
        dataset_dir=str(tiny_data["echonet"]),
        cache_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=2,
        num_workers=0,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracking_test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert runs, "no mlflow run written"
    metrics = set().union(*(r.data.metrics for r in runs))
    params = set().union(*(r.data.params for r in runs))
    assert "train_loss" in metrics and "val_mse" in metrics, metrics
    assert "max_epochs" in params, params
    # the TensorBoard side of the same run: lr scalars and validation images
    assert list((work / "runs").glob("events.out.tfevents.*"))
