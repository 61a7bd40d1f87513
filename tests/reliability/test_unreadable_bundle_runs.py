"""Bundle runs with files that cannot be read, through ``python -m monai.bundle run`` (bounded subprocesses).

- a VAL video and a TEST video that cannot be read: training goes on past the validation, evaluation writes its
  reports and lists them; ``--on_bad_sample raise`` still stops;
- too much unreadable training data (added up over two loader workers) stops the run with the option to change;
- inference on a user's own folder: relative-path ids and output names, one-frame and corrupt files skipped and
  listed, a NIfTI stored time first with float [0, 1] intensities read as intended.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from bounded import run_bounded
from monai.bundle import ConfigParser

from medssl_monai.data.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDSSL_DATA_DIR": str(tmp_path / "data")}


def _bundle(tmp_path: Path) -> Path:
    work = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, work, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    return work


def _run(work: Path, configs: list[str], tmp_path: Path, *args: str):
    files = str([str(work / "configs" / c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(work)]
    return run_bounded([*cmd, "--cache_dir", str(tmp_path / "cache"), *args], env=_env(tmp_path))


def _echonet(tiny_data, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A copy of the tiny EchoNet with 2 TRAIN, 2 VAL and 2 TEST videos."""
    root = tmp_path / "echonet"
    shutil.copytree(tiny_data["echonet"], root)
    files = pd.read_csv(root / "FileList.csv")
    train = files.index[files["Split"] == "TRAIN"]
    files.loc[train[0], "Split"], files.loc[train[1], "Split"] = "VAL", "TEST"
    files.to_csv(root / "FileList.csv", index=False)
    return root, files


def _corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8).tobytes())


def _video_of(root: Path, files: pd.DataFrame, split: str, k: int = 0) -> Path:
    name = files.loc[files["Split"] == split, "FileName"].iloc[k]
    return root / "Videos" / (name if name.endswith(".avi") else f"{name}.avi")


def test_unreadable_val_and_test_videos_are_left_out_and_listed(tiny_data, tmp_path: Path):
    data, files = _echonet(tiny_data, tmp_path)
    bad_val, bad_test = _video_of(data, files, "VAL"), _video_of(data, files, "TEST")
    _corrupt(bad_val)
    _corrupt(bad_test)
    work = _bundle(tmp_path)
    common = ["--dataset_dir", str(data), "--num_workers", "0", "--batch_size", "2"]

    train = _run(work, ["train.yaml", "small.yaml"], tmp_path, *common, "--epochs", "1")
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-4000:]  # before: a crash at the end of epoch 1
    assert f"2 of 4 samples could not be read and were left out: {bad_val}" in log
    assert (work / "models" / "model.pt").is_file()  # the validation Dice of the readable VAL video picked it

    evaluate = _run(work, ["train.yaml", "small.yaml", "evaluate.yaml"], tmp_path, *common, "--n_resamples", "20")
    assert evaluate.returncode == 0, (evaluate.stdout + evaluate.stderr)[-4000:]
    summary = json.loads((work / "eval" / "summary.json").read_text())
    assert summary["dice"]["overall"]["frames"] == 2  # the readable TEST video's ED and ES
    assert [f["file"] for f in summary["skipped"]["dice"]["files"]] == [str(bad_test)]
    assert summary["skipped"]["dice"]["files"][0]["frames"] == 2
    assert "VideoReadError" in summary["skipped"]["ef"]["files"][0]["reason"]
    assert summary["ef"]["videos"] == 1 and summary["ef"]["videos_skipped"] == 1
    per_video = pd.read_csv(work / "eval" / "per_video_ef.csv")
    assert sorted(per_video["status"]) == ["ok", "skipped"]
    assert per_video.loc[per_video["status"] == "skipped", "video_id"].item() == bad_test.stem

    strict = _run(work, ["train.yaml", "small.yaml", "evaluate.yaml"], tmp_path, *common, "--on_bad_sample", "raise")
    log = strict.stdout + strict.stderr
    assert strict.returncode != 0 and f"BadSampleError: sample 0 ({bad_test}) failed" in log
    assert "--on_bad_sample skip" in log


def test_too_much_unreadable_training_data_stops_the_run(tiny_data, tmp_path: Path):
    data, files = _echonet(tiny_data, tmp_path)
    _corrupt(_video_of(data, files, "TRAIN"))  # 2 of the 4 traced TRAIN samples
    work = _bundle(tmp_path)
    common = ["--dataset_dir", str(data), "--num_workers", "2", "--batch_size", "2", "--epochs", "1"]

    stopped = _run(work, ["train.yaml", "small.yaml"], tmp_path, *common)
    log = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    # the two workers' skips, added up in the main process
    assert "TooManyBadSamplesError: training: 2 of 4 samples (50.0%) could not be read in this pass" in log
    assert "more than max_bad_fraction 0.05" in log and "--max_bad_fraction 0.5" in log

    allowed = _run(work, ["train.yaml", "small.yaml"], tmp_path, *common, "--max_bad_fraction", "0.6")
    log = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, log[-4000:]
    assert "training: 2 of 4 samples (50.0%) could not be read in this pass and were skipped" in log


def test_inference_on_a_folder_of_own_files(tiny_data, tmp_path: Path):
    videos = sorted((tiny_data["echonet"] / "Videos").glob("*.avi"))
    own = tmp_path / "own"
    for rel, src in (("a/1.avi", videos[0]), ("b/1.avi", videos[1])):
        (own / rel).parent.mkdir(parents=True)
        shutil.copy(src, own / rel)
    (own / "c").mkdir()
    (own / "c" / "broken.avi").write_text("not a video at all")
    frames = read_video(videos[2])  # T x 112 x 112 x 3
    write_video(own / "d" / "still.avi", frames[:1])
    (own / "e").mkdir()
    grey = frames[..., 0].astype(np.float32) / 255.0  # T x H x W in [0, 1], saved as a numpy video is: time first
    nib.save(nib.Nifti1Image(grey, np.eye(4)), str(own / "e" / "seq.nii.gz"))

    work = _bundle(tmp_path)
    configs = ["inference.yaml", "small_inference.yaml"]
    parser = ConfigParser()
    parser.read_config([str(work / "configs" / c) for c in configs])
    (work / "models").mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")

    out = tmp_path / "out"
    args = ["--inputs", str(own), "--output_dir", str(out), "--num_workers", "0", "--write_video", "False"]
    run = _run(work, configs, tmp_path, *args)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("video_id")
    assert sorted(table.index) == ["a/1", "b/1", "c/broken", "d/still", "e/seq"]
    assert table.loc["c/broken", "status"] == "skipped" and "not a video" in table.loc["c/broken", "reason"]
    assert "too few frames: 1 decoded, at least 2 needed" in table.loc["d/still", "reason"]
    assert set(table.loc[["a/1", "b/1", "e/seq"], "status"]) == {"ok"}
    assert (out / "a" / "1_mask.nii.gz").is_file() and (out / "b" / "1_mask.nii.gz").is_file()
    mask = nib.load(str(out / "e" / "seq_mask.nii.gz"))
    assert mask.shape == (64, 64, len(frames))  # W x H x T: the time axis was found first in the file
    assert "[5/5]" in log and "ETA" in log
    assert "built-in synthetic" not in log  # the user's files only: no dataset was read

    strict = _run(work, configs, tmp_path, *args, "--on_bad_sample", "raise")
    assert strict.returncode != 0 and f"({own / 'c' / 'broken.avi'}) failed" in strict.stdout + strict.stderr
