"""The ``python -m medssl_monai`` command line: synth, cache, inspect."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bounded import run_bounded

from medssl_monai.cli import CLI, detect_dataset


def test_detect_dataset_kinds(tiny_data):
    assert {k: detect_dataset(v) for k, v in tiny_data.items()} == {
        "echonet": "echonet",
        "camus": "camus",
        "ultrasound": "frame_folders",
        "timed_series": "timed_series",
    }


def test_detect_dataset_rejects_unknown_folder(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        detect_dataset(tmp_path)


def test_cache_then_inspect(tiny_data, tmp_path):
    cli = CLI()
    first = cli.cache(root=str(tiny_data["echonet"]), cache_dir=str(tmp_path / "c"), num_workers=0)
    assert first["built"] == 6 and first["failed"] == 0
    again = cli.cache(root=str(tiny_data["echonet"]), cache_dir=str(tmp_path / "c"), num_workers=0)
    assert again == {"built": 0, "cached": 6, "failed": 0}
    info = cli.inspect(str(tiny_data["echonet"]))
    assert info["reader"] == "echonet" and info["items"] == 6
    video = next(Path(tiny_data["echonet"], "Videos").glob("*.avi"))
    frames = cli.inspect(str(video))
    assert frames["shape_THWC"][1:] == [112, 112, 3]


def test_module_entry_point_synth_is_idempotent(tmp_path):
    cmd = [sys.executable, "-m", "medssl_monai", "synth", "--root", str(tmp_path), "--size", "tiny"]
    _check(run_bounded(cmd))
    marker = tmp_path / "echonet" / ".synthetic.json"
    mtime = marker.stat().st_mtime_ns
    _check(run_bounded(cmd))
    assert marker.stat().st_mtime_ns == mtime


def _check(proc) -> None:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_load_datalist_accepts_a_relative_root(tiny_data, monkeypatch):
    from medssl_monai.cli import load_datalist

    echonet = Path(tiny_data["echonet"])
    monkeypatch.chdir(echonet.parent)
    items = load_datalist(echonet.name)  # relative: SyntheticTruth.csv must still be found
    assert len(items) == 6 and all("Abnormal" in it for it in items)


def test_run_rejects_an_unknown_override_key(tmp_path):
    from medssl_monai.demo import BUNDLES_DIR

    train = str(BUNDLES_DIR / "unilvseg_echo_ssl_pretraining" / "configs" / "train.yaml")
    with pytest.raises(KeyError, match="unknown config key 'epochz' \\(did you mean 'epochs'\\?\\)"):
        CLI().run(config_file=train, bundle_root=str(tmp_path), epochz=3)


def test_run_tracking_mlflow_uses_the_fixed_settings(tmp_path, monkeypatch):
    import monai.bundle

    from medssl_monai.demo import BUNDLES_DIR
    from medssl_monai.engines.tracking import mlflow_settings

    seen = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kw: seen.update(kw))
    train = str(BUNDLES_DIR / "unilvseg_echo_ssl_pretraining" / "configs" / "train.yaml")
    CLI().run(config_file=train, bundle_root=str(tmp_path), tracking="mlflow", tracking_uri="sqlite:///x.db")
    assert seen["tracking"] == mlflow_settings()  # MONAI's "mlflow" string would log a 1-tuple loss and fail
    assert seen["tracking"]["configs"]["trainer"]["output_transform"] == "$lambda out: out['loss']"
    assert seen["tracking_uri"] == "sqlite:///x.db" and seen["config_file"] == [train]


def test_run_overrides_take_paths_from_the_command_line(tmp_path, monkeypatch):
    import fire
    import monai.bundle

    from medssl_monai.demo import BUNDLES_DIR

    seen = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kw: seen.update(kw))
    train = str(BUNDLES_DIR / "unilvseg_echo_ssl_pretraining" / "configs" / "train.yaml")
    # fire leaves this a string ('/data/...' is no python literal); it used to fail as "dictionary update sequence"
    argv = ["run", "--config_file", train, "--bundle_root", str(tmp_path), "--epochs", "3"]
    fire.Fire(CLI, command=[*argv, "--overrides", "{dataset_dir: /data/EchoNet-Dynamic/a b, epochs: 2, seed: 7}"])
    assert seen["dataset_dir"] == "/data/EchoNet-Dynamic/a b" and seen["seed"] == 7
    assert seen["epochs"] == 3  # an explicit flag wins over --overrides
    seen.clear()
    fire.Fire(CLI, command=[*argv, "--overrides", "dataset_dir=/data/x/y,seed=1"])
    assert seen["dataset_dir"] == "/data/x/y" and seen["seed"] == 1
    with pytest.raises(KeyError, match="unknown config key 'datset_dir'"):
        CLI().run(config_file=train, overrides='{"datset_dir": "/data/x"}')  # the key check sees them too


def test_parse_overrides_forms_and_errors():
    from medssl_monai.config_checks import parse_overrides

    want = {"dataset_dir": "/data/x", "batch_size": 8}
    assert parse_overrides("{dataset_dir: /data/x, batch_size: 8}") == want
    assert parse_overrides('{"dataset_dir": "/data/x", "batch_size": 8}') == want
    assert parse_overrides("dataset_dir=/data/x, batch_size=8") == want
    assert parse_overrides(["dataset_dir=/data/x", "batch_size=8"]) == want
    assert parse_overrides(want) == want and parse_overrides(None) == {} and parse_overrides(" ") == {}
    assert parse_overrides("lr_milestones=[45, 60] amp=false") == {"lr_milestones": [45, 60], "amp": False}
    for bad in ("{dataset_dir: [}", "/data/x", "[1, 2]", "=3", "{1: 2}"):
        with pytest.raises(ValueError, match="expected a mapping"):
            parse_overrides(bad)


def test_synth_workers_and_arrays(tmp_path):
    out = CLI().synth(root=str(tmp_path / "data"), size="tiny", workers=2, arrays=True)
    assert set(out) == {"echonet", "camus", "ultrasound", "timed_series", "arrays"}
    assert len(list(Path(out["arrays"]).glob("*.npy"))) == 6  # one clip per tiny EchoNet video
