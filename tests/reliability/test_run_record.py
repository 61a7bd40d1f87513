"""A resume file stands in only for its own run; damaged resume files; the synthetic data is never silent.

* Run records (``medssl_monai.engines.run_record``): what is compared (seed, data, pretrained weights, network)
  and what may change (epochs, workers, logging); ``resume.pt`` of another run stops the run with exit status 2
  naming each difference (a real ``python -m monai.bundle run`` of the segmentation bundle, random init then
  ``--pretrained_ckpt`` in the same folder); a file without a record resumes with a warning.
* ``model.pt.json`` next to the model files a run writes; evaluation on other data warns naming both.
* A truncated, empty or garbage ``resume.pt`` is named with what is wrong and ``resume.pt.prev`` is resumed.
* The built-in synthetic data logs one WARNING naming its folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bounded import run_bounded
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from medssl_monai.bundle_tools import train_configs
from medssl_monai.engines import run_record as rr
from medssl_monai.engines.checkpoint import atomic_torch_save
from medssl_monai.engines.resume import ResumeHandler
from medssl_monai.engines.resume_files import DamagedCheckpointError, read_resume_file, remove_stale_temp_files

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"


# ---- records from a bundle config --------------------------------------------------------------------------------


def _record(tiny_data, files: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    parser = ConfigParser()
    parser.read_config(files or train_configs(SEG))
    parser.update({"dataset_dir": str(tiny_data["echonet"]), **overrides})
    return rr.build_run_record(parser)


def _diff_keys(old: dict, new: dict) -> list[str]:
    return [key for key, _, _ in rr.compare_settings(old["settings"], new["settings"])]


def test_epochs_workers_and_logging_may_change_seed_may_not(tiny_data):
    base = _record(tiny_data)
    assert base["settings"]["seed"] == 0 and base["settings"]["dataset_dir"] == str(tiny_data["echonet"].resolve())
    assert base["settings"]["pretrained_ckpt"] is None and "epochs" not in base["settings"]
    control = _record(tiny_data, epochs=7, num_workers=3, log_every=1, checkpoint_every=5, bundle_root="/elsewhere")
    assert _diff_keys(base, control) == []
    assert rr.compare_settings(base["settings"], _record(tiny_data, seed=1)["settings"]) == [("seed", 0, 1)]
    assert _diff_keys(base, _record(tiny_data, label_fraction=0.5, learning_rate=0.1)) == [
        "label_fraction",
        "learning_rate",
    ]


def test_data_network_and_variant_configs_define_the_run(tiny_data, tmp_path: Path):
    base = _record(tiny_data)
    other = tmp_path / "echonet"
    shutil.copytree(tiny_data["echonet"], other)
    assert _diff_keys(base, _record(tiny_data, dataset_dir=str(other))) == ["dataset_dir"]
    assert _diff_keys(base, _record(tiny_data, **{"network_def#out_channels": 2})) == ["network_def"]
    superimage = [*train_configs(SEG), str(SEG / "configs" / "superimage.yaml")]  # a 2D network on frame mosaics
    assert "network_def" in _diff_keys(base, _record(tiny_data, superimage))


def test_pretrained_ckpt_is_compared_by_content_not_place(tiny_data, tmp_path: Path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save({"w": torch.ones(3)}, a)
    shutil.copy(a, b)
    torch.save({"w": torch.zeros(3)}, c)
    rec_a = _record(tiny_data, pretrained_ckpt=str(a))
    assert rec_a["settings"]["pretrained_ckpt"] == {
        "path": str(a.resolve()),
        "size": a.stat().st_size,
        "sha256": hashlib.sha256(a.read_bytes()).hexdigest(),
    }
    assert _diff_keys(rec_a, _record(tiny_data, pretrained_ckpt=str(b))) == []  # the same weights elsewhere
    assert _diff_keys(rec_a, _record(tiny_data, pretrained_ckpt=str(c))) == ["pretrained_ckpt"]
    assert _diff_keys(rec_a, _record(tiny_data)) == ["pretrained_ckpt"]


def test_a_resume_handler_built_by_a_config_records_its_run(tmp_path: Path):
    parser = ConfigParser(
        {
            "seed": 3,
            "label_fraction": 0.25,
            "epochs": 9,
            "network_def": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
            "handler": {
                "_target_": "medssl_monai.engines.resume.ResumeHandler",
                "save_dir": str(tmp_path),
                "save_dict": {"model": "@network_def"},
                "seed": "@seed",
            },
        }
    )
    handler = parser.get_parsed_content("handler")
    assert handler.run_record["settings"]["seed"] == 3 and handler.run_record["settings"]["label_fraction"] == 0.25
    assert "epochs" not in handler.run_record["settings"]
    assert handler.run_record["settings"]["network_def"] == {
        "_target_": "torch.nn.Linear",
        "in_features": 2,
        "out_features": 1,
    }
    assert ResumeHandler(tmp_path, {}).run_record is None  # built from python: nothing to record


# ---- the check on resume -----------------------------------------------------------------------------------------


def _rec(**settings: Any) -> dict[str, Any]:
    return {"record_version": rr.RECORD_VERSION, "settings": {"seed": 0, "lr": 0.1, **settings}, "info": {}}


def _toy_run(folder: Path, record: dict | None, epochs: int = 2, resume: bool = True) -> ResumeHandler:
    """Two iterations per epoch of a linear model, checkpointed at every epoch end by a ``ResumeHandler``."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> float:
        opt.zero_grad()
        loss = net(batch).sum()
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    # a best-model saver attached before the resume handler, as the bundles' validation savers are
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: atomic_torch_save(net.state_dict(), folder / "model.pt"))
    handler = ResumeHandler(folder, {"model": net, "optimizer": opt}, resume=resume, run_record=record)
    handler.attach(engine)
    engine.run([torch.ones(1, 2), torch.full((1, 2), 2.0)], max_epochs=epochs)
    return handler


def test_another_runs_resume_file_stops_before_anything_is_restored(tmp_path: Path):
    _toy_run(tmp_path, _rec())
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["run_record"] == _rec()
    before = (tmp_path / "resume.pt").read_bytes()
    with pytest.raises(rr.RunMismatchError) as e:
        _toy_run(tmp_path, _rec(seed=1, pretrained_ckpt={"path": "/w.pt", "size": 4, "sha256": "ab" * 32}), epochs=3)
    message = str(e.value)
    assert f"{tmp_path / 'resume.pt'} is of another run" in message
    assert "  seed: 0 -> 1" in message
    assert "  pretrained_ckpt: <not set> -> /w.pt (4 bytes, sha256 abababababab)" in message
    assert "--resume False" in message and "--bundle_root or --ckpt_dir" in message
    assert (tmp_path / "resume.pt").read_bytes() == before, "nothing ran, nothing was written"
    # run-control settings may change: the same run extended by one epoch
    assert _toy_run(tmp_path, _rec(), epochs=3).resumed_from == 4
    # and --resume False starts the other run over in the same folder
    assert _toy_run(tmp_path, _rec(seed=1), resume=False).resumed_from is None


def test_a_resume_file_without_record_resumes_with_a_warning(tmp_path: Path, caplog):
    _toy_run(tmp_path, None)  # as written before run records existed
    assert "run_record" not in torch.load(tmp_path / "resume.pt", weights_only=True)
    with caplog.at_level(logging.WARNING):
        assert _toy_run(tmp_path, _rec(), epochs=3).resumed_from == 4
    assert "holds no run record" in caplog.text and str(tmp_path / "resume.pt") in caplog.text


def test_a_mismatch_on_the_command_line_exits_with_status_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr("medssl_monai.engines.loader_check._is_command_line_run", lambda: True)
    with pytest.raises(SystemExit) as e:
        rr.check_resume_record(tmp_path / "resume.pt", _rec(), _rec(lr=0.2))
    assert e.value.code == 2
    assert "lr: 0.1 -> 0.2" in capsys.readouterr().err


# ---- model.pt.json and evaluation on other data -------------------------------------------------------------------


def test_model_files_the_run_writes_get_its_record(tmp_path: Path):
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "model_final.pt")  # an earlier run's model: left alone
    _toy_run(tmp_path, _rec())
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar["settings"] == _rec()["settings"] and sidecar["trainer"] == {"epoch": 2, "iteration": 4}
    model = tmp_path / "model.pt"
    assert sidecar["model_file"] == {
        "name": "model.pt",
        "size": model.stat().st_size,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    assert not (tmp_path / "model_final.pt.json").exists()


def _trained_model(folder: Path, data: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = atomic_torch_save({"w": torch.ones(2)}, folder / "model.pt")
    writer = rr.ModelRecordWriter(folder, _rec(dataset_dir=str(data.resolve())))
    writer.update()
    return model


def test_evaluation_on_other_data_warns_naming_both(tiny_data, tmp_path: Path, caplog):
    model = _trained_model(tmp_path / "models", tiny_data["echonet"])
    other = tmp_path / "EchoNet-Dynamic"
    other.mkdir()
    with caplog.at_level(logging.INFO):
        assert rr.check_model_data(model, str(other)) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{model} was trained on {tiny_data['echonet'].resolve()} (the built-in synthetic data); this run reads "
        f"other data: {other.resolve()}"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the training data, or files inside it: no warning
        rr.check_model_data(model, str(tiny_data["echonet"]))
        rr.check_model_data(model, [str(p) for p in sorted(tiny_data["echonet"].rglob("*.avi"))[:2]])
    assert caplog.records == []
    atomic_torch_save({"w": torch.zeros(2)}, model)  # replaced after training: the record is not its own
    with caplog.at_level(logging.WARNING):
        assert rr.check_model_data(model, str(other)) is None
    assert "is the record of another model.pt" in caplog.text


def test_evaluate_config_warns_when_the_data_differs(tiny_data, tmp_path: Path, caplog):
    """The evaluation config's first ``run`` entries check the model's record (unilvseg: train + evaluate)."""
    model = _trained_model(tmp_path / "models", tiny_data["echonet"])
    parser = ConfigParser()
    parser.read_config([*train_configs(SEG), str(SEG / "configs" / "evaluate.yaml")])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tiny_data["camus"])})
    assert parser["run"][0] == "$from medssl_monai.engines.run_record import check_model_data"
    with caplog.at_level(logging.WARNING):
        parser.get_parsed_content("run#0")
        parser.get_parsed_content("run#1")
    assert f"{model} was trained on {tiny_data['echonet'].resolve()}" in caplog.text
    assert f"this run reads other data: {tiny_data['camus'].resolve()}" in caplog.text


# ---- damaged resume files ------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint\n" * 64}[how])


PROBLEMS = {
    "truncated": "truncated: the zip archive has no end",
    "empty": "empty file (0 bytes)",
    "garbage": "not a PyTorch checkpoint: the file starts with b'not '",
}


@pytest.mark.parametrize("how", list(PROBLEMS))
def test_a_damaged_resume_file_is_named_and_the_previous_one_resumed(how: str, tmp_path: Path, caplog):
    _toy_run(tmp_path, _rec())  # resume.pt at iteration 4, resume.pt.prev at 2
    assert torch.load(tmp_path / "resume.pt.prev", weights_only=True)["trainer"]["iteration"] == 2
    _damage(tmp_path / "resume.pt", how)
    with pytest.raises(DamagedCheckpointError, match=re.escape(PROBLEMS[how])) as e:
        read_resume_file(tmp_path / "resume.pt")
    assert e.value.path == str(tmp_path / "resume.pt")

    with caplog.at_level(logging.WARNING):
        handler = _toy_run(tmp_path, _rec(), epochs=2)  # redoes epoch 2
    assert handler.resumed_from == 2
    assert f"resume: {tmp_path / 'resume.pt'}: {PROBLEMS[how]}" in caplog.text
    assert f"resuming from the previous checkpoint {tmp_path / 'resume.pt.prev'}" in caplog.text
    # the next save replaced the damaged file without keeping it as the previous one
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["trainer"]["iteration"] == 4
    assert torch.load(tmp_path / "resume.pt.prev", weights_only=True)["trainer"]["iteration"] == 2


@pytest.mark.parametrize("how", list(PROBLEMS))
def test_a_damaged_resume_file_without_a_usable_previous_one_stops_naming_both(how: str, tmp_path: Path):
    _toy_run(tmp_path, _rec())
    _damage(tmp_path / "resume.pt", how)
    (tmp_path / "resume.pt.prev").unlink()
    with pytest.raises(DamagedCheckpointError) as e:
        _toy_run(tmp_path, _rec(), epochs=3)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'resume.pt'}: {PROBLEMS[how]}")
    assert f"{tmp_path / 'resume.pt.prev'} does not exist" in message and "--resume False" in message


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path, monkeypatch):
    # a write killed before its rename leaves atomic_torch_save's temporary file: make the rename a no-op
    import medssl_monai.engines.checkpoint as checkpoint

    renames: list[str] = []
    monkeypatch.setattr(checkpoint.os, "replace", lambda src, dst: renames.append(os.fspath(src)))
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "resume.pt")
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "model.pt")
    monkeypatch.undo()
    leftovers = [Path(p) for p in renames]
    assert len(leftovers) == 2 and all(p.is_file() for p in leftovers)
    (tmp_path / "keep.tmp").write_text("not ours")
    (tmp_path / ".hidden.json").write_text("{}")

    _toy_run(tmp_path, _rec(), epochs=1)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".hidden.json",
        "keep.tmp",
        "model.pt",
        "model.pt.json",
        "resume.pt",
    ]
    assert remove_stale_temp_files(tmp_path) == []


# ---- the built-in synthetic data -----------------------------------------------------------------------------------


def test_the_built_in_synthetic_data_logs_one_warning_naming_its_folder(monkeypatch, caplog):
    from medssl_monai.data import defaults

    monkeypatch.setattr(defaults, "_WARNED", set())
    with caplog.at_level(logging.WARNING):
        folder = defaults.synthetic_dataset("echonet")
        assert defaults.synthetic_dataset("echonet") == folder
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"built-in synthetic echonet dataset in {folder}" in warnings[0] and "--dataset_dir" in warnings[0]
    assert rr.is_synthetic_dataset(folder)


# ---- the real command line ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_init_then_pretrained_ckpt_in_the_same_folder_exits_2(tiny_data, tmp_path: Path):
    """``python -m monai.bundle run`` of the segmentation bundle: a finished random-init run, then the same folder
    with ``--pretrained_ckpt``: exit status 2 naming ``pretrained_ckpt``, before anything is trained or written;
    ``--resume False`` then trains from the pretrained weights and records them in ``model.pt.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    configs = train_configs(SEG)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs)]
    cmd += ["--meta_file", str(SEG / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(SEG / "configs" / "logging.conf")]
    cmd += ["--bundle_root", str(tmp_path / "run"), "--dataset_dir", str(tiny_data["echonet"])]
    cmd += ["--cache_dir", str(tmp_path / "cache"), "--epochs", "1", "--num_workers", "0", "--batch_size", "2"]

    first = run_bounded(cmd, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    models = tmp_path / "run" / "models"
    trained = (models / "model.pt").read_bytes()
    assert json.loads((models / "model.pt.json").read_text())["settings"]["pretrained_ckpt"] is None

    pretrained = tmp_path / "pretrained.pt"
    torch.manual_seed(987654321)
    parser = ConfigParser()
    parser.read_config(configs)
    torch.save(parser.get_parsed_content("network_def").state_dict(), pretrained)
    again = run_bounded([*cmd, "--pretrained_ckpt", str(pretrained)], env=env)
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"error: {models / 'resume.pt'} is of another run" in again.stderr
    assert f"  pretrained_ckpt: null -> {pretrained.resolve()} (" in again.stderr
    assert "--resume False" in again.stderr and "nothing to do" not in again.stdout + again.stderr
    assert (models / "model.pt").read_bytes() == trained

    fresh = run_bounded([*cmd, "--pretrained_ckpt", str(pretrained), "--resume", "False"], env=env)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    record = json.loads((models / "model.pt.json").read_text())
    assert record["settings"]["pretrained_ckpt"]["sha256"] == hashlib.sha256(pretrained.read_bytes()).hexdigest()
    assert record["settings"]["dataset_dir"] == str(tiny_data["echonet"].resolve())
    assert record["info"]["config_files"] == ["train.yaml", "small.yaml"]
