"""Unknown override keys on MONAI's own runner: ``python -m monai.bundle run ... --epochz 3`` must fail.

``check_command_line`` is the first entry of every bundle config's ``initialize``; it acts only when the process is
``monai.bundle``'s ``__main__`` and reads ``sys.argv`` the way fire does.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from bounded import run_bounded
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.scripts import create_workflow, run, run_workflow

from medssl_monai.bundle_tools import find_bundles
from medssl_monai.config_checks import _RUN_PARAMS, _RUNNER_KEYS, check_command_line, parse_bundle_command_line

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "ucl_us_classification"
TRAIN, SMALL = str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "small.yaml")
MAIN = str(Path(inspect.getfile(run)).with_name("__main__.py"))  # what `python -m monai.bundle` puts in argv[0]


def _argv(*args: str) -> list[str]:
    return [MAIN, "run", *args]


def test_unknown_key_exits_with_a_hint(capsys):
    with pytest.raises(SystemExit) as e:
        check_command_line(_argv("--config_file", TRAIN, "--bundle_root", ".", "--epochz", "3"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'epochz'" in err and "did you mean 'epochs'" in err


@pytest.mark.parametrize(
    "args",
    [
        ("--config_file", TRAIN, "--epochs", "3"),
        ("--config_file", f"['{TRAIN}','{SMALL}']", "--epochs=3", "--num-workers", "0", "--train#handlers#0#x", "1"),
        ("--config_file", TRAIN, "--noresume", "--amp"),  # fire's boolean flags: resume=False, amp=True
        ("--config_file", TRAIN, "--meta_file", "m.json", "--logging_file", "l.conf", "--workflow_type", "train"),
        ("--config_file", TRAIN, "--run_id", "run", "--init_id", "initialize", "--final_id", "finalize"),
        ("training", "init", "fin", "meta.json", TRAIN),  # positional: run_id, init_id, final_id, meta_file, config
        ("--config_file", TRAIN, "--tracking", "mlflow", "--tracking_uri", "x", "--experiment_name", "e"),
        ("--config_file", TRAIN, "--run_name", "r", "--tracking=mlflow", "--properties_path", "p.json"),
        ("--config_file", TRAIN, "--_meta_#version", "9.9.9"),
        ("--config_file", TRAIN, "--epochs", "3", "--", "--epochz"),  # after the last "--": fire's own flags
        ("--config_file", TRAIN, "--epochz", "None"),  # MONAI drops None values, as check_command_line does
    ],
)
def test_valid_command_lines_pass(args):
    assert check_command_line(_argv(*args)) is None


@pytest.mark.parametrize(
    "args, key",
    [
        (("--config_file", f"['{TRAIN}','{SMALL}']", "--epochz=3"), "epochz"),
        (("--config_file", TRAIN, "--learning-rat", "0.1"), "learning_rat"),  # fire turns - into _
        (("--config_file", TRAIN, "--nofast"), "fast"),  # --noX with no value: X=False
        (("--config_file", TRAIN, "--experiment_name", "e"), "experiment_name"),  # only with --tracking
        (("--config_file", TRAIN, "--trian#dataloader#batch_size", "2"), "trian"),
    ],
)
def test_invalid_command_lines_exit(args, key, capsys):
    with pytest.raises(SystemExit):
        check_command_line(_argv(*args))
    assert f"unknown config key {key!r}" in capsys.readouterr().err


def test_args_file_keys_are_overrides_and_may_give_the_config(tmp_path: Path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.yaml"
    good.write_text(json.dumps({"config_file": [TRAIN, SMALL], "epochs": 1, "run_id": "run"}))
    bad.write_text(f"config_file: {TRAIN}\nbatch_sise: 2\n")
    check_command_line(_argv("--args_file", str(good), "--seed", "3"))
    with pytest.raises(SystemExit):
        check_command_line(_argv("--args_file", str(bad)))
    assert "unknown config key 'batch_sise' (did you mean 'batch_size'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the command line's keys are checked next to the file's
        check_command_line(_argv("--args_file", str(good), "--sed", "3"))


def test_run_workflow_is_checked_unless_another_workflow_class():
    with pytest.raises(SystemExit):
        check_command_line([MAIN, "run_workflow", "--config_file", TRAIN, "--epochz", "3"])
    check_command_line([MAIN, "run_workflow", "--workflow_name", "my.Workflow", "--config_file", TRAIN, "--x", "1"])


@pytest.mark.parametrize(
    "argv",
    [
        [sys.argv[0], "run", "--config_file", TRAIN, "--epochz", "3"],  # pytest
        [str(ROOT / "medssl_monai" / "__main__.py"), "run", "--config_file", TRAIN, "--epochz", "3"],  # our CLI
        [MAIN, "verify_metadata", "--meta_file", "x", "--epochz", "3"],  # another monai.bundle command
        [MAIN, "run", "--bundle_root", ".", "--epochz", "3"],  # no config file: MONAI reports that itself
    ],
)
def test_does_nothing_outside_monai_run(argv):
    assert check_command_line(argv) is None


def test_default_argv_is_this_process_and_config_workflow_is_unaffected(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(sys, "argv", ["pytest", "--epochz", "3"])
    check_command_line()
    # a ConfigWorkflow built from python runs the check as its first `initialize` entry: a no-op here
    wf = ConfigWorkflow(config_file=[TRAIN, SMALL], workflow_type="train", bundle_root=str(tmp_path), epochz=3)
    wf.initialize()
    assert (tmp_path / "models").is_dir()


def test_parse_like_fire():
    command, kwargs = parse_bundle_command_line(
        _argv("training", "--config_file", f"['{TRAIN}']", "--epochs", "3", "--lr=-1e-3", "--x-y", "--noamp", "-", "z")
    )
    assert command == "run"
    assert kwargs == {"run_id": "training", "config_file": [TRAIN], "epochs": 3, "lr": -1e-3, "x_y": True, "amp": False}


def test_runner_keys_cover_monais_arguments():
    """MONAI's runner arguments are not config overrides (fails when a MONAI upgrade adds one)."""
    names = set()
    for fn in (run, run_workflow, create_workflow, ConfigWorkflow.__init__):
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    assert names <= _RUNNER_KEYS
    assert tuple(p for p in inspect.signature(run).parameters if p != "override") == _RUN_PARAMS


def test_every_initialize_starts_with_the_check():
    files = [f for b in find_bundles(ROOT / "bundles") for f in sorted((b / "configs").glob("*.yaml"))]
    with_init = [f for f in files if "initialize" in (ConfigParser.load_config_file(str(f)) or {})]
    assert len(with_init) >= 9
    for f in with_init:
        assert ConfigParser.load_config_file(str(f))["initialize"][0] == "$check_command_line()", f
    for b in find_bundles(ROOT / "bundles"):  # the name comes from the train (or standalone inference) imports
        for name in ("train.yaml", "inference.yaml"):
            cfg = b / "configs" / name
            if cfg.is_file():
                imports = ConfigParser.load_config_file(str(cfg)).get("imports", [])
                assert "$from medssl_monai.config_checks import check_command_line" in imports, cfg


def test_python_m_monai_bundle_run_rejects_unknown_key(tmp_path: Path):
    """The real runner: non-zero exit with the hint before anything is built (no models/ folder, no data)."""
    work = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSSL_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(work / "configs" / "train.yaml")]
    cmd += ["--bundle_root", str(work)]
    bad = run_bounded([*cmd, "--epochz", "3"], env=env)
    assert bad.returncode != 0
    assert "unknown config key 'epochz'" in bad.stderr and "did you mean 'epochs'" in bad.stderr
    assert not (work / "models").exists() and not (tmp_path / "data").exists(), "stopped before initialize ran on"
    # control: a valid command passes the check and runs `initialize` (then an empty `finalize` as its `run`)
    good = run_bounded([*cmd, "--epochs", "3", "--run_id", "finalize"], env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    assert (work / "models").is_dir()
