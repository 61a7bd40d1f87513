"""SimLVSeg's CAMUS test protocol: subsampling, resizing, ground truth per frame, the Dice report and the config."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medssl_monai.data.camus import load_camus_datalist
from medssl_monai.data.sources import decode_frames
from medssl_monai.engines.reports import SequenceDiceReport
from medssl_monai.transforms.camus import PHASE_CODES, LoadCamusSequenced, even_subsample

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "unilvseg_echo_lv_segmentation"


def test_even_subsample_matches_the_reference_rule() -> None:
    for t in (33, 40, 57, 100):
        reference = sorted({round(float(i)) for i in np.linspace(0, t - 1, num=32)})
        idx = even_subsample(t, 32)
        assert idx.tolist() == reference and len(idx) == 32 and idx[0] == 0 and idx[-1] == t - 1
    assert even_subsample(20, 32).tolist() == list(range(20))


def test_load_camus_sequence_with_half_sequence_ground_truth(tiny_data) -> None:
    item = load_camus_datalist(tiny_data["camus"])[0]
    assert Path(item["sequence_label"]).is_file()
    out = LoadCamusSequenced(max_frames=32, spatial_size=112)(item)
    frames = decode_frames(item["image"])[..., 0]
    gt = decode_frames(item["sequence_label"])[..., 0] == 1
    t = frames.shape[0]
    assert out["image"].shape == (3, t, 112, 112) and out["image"].dtype == torch.uint8
    assert out["label"].shape == (1, t, 112, 112)
    assert out["label_valid"].all() and out["frame_indices"].tolist() == list(range(t))
    # area interpolation for the frames, nearest for the masks, grey repeated over the channels
    expected = cv2.resize(frames[3], (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out["image"][0, 3].numpy(), expected)
    np.testing.assert_array_equal(out["image"][2, 3].numpy(), expected)
    mask = cv2.resize(gt[3].astype(np.uint8), (112, 112), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(out["label"][0, 3].numpy(), mask)
    codes = out["phase_code"].tolist()
    assert codes[item["traced_frames"]["ED"]] == PHASE_CODES["ED"]
    assert codes[item["traced_frames"]["ES"]] == PHASE_CODES["ES"]
    assert codes.count(PHASE_CODES["middle"]) == t - 2


def test_long_sequences_are_subsampled_and_ed_es_only_without_sequence_truth(tiny_data) -> None:
    item = load_camus_datalist(tiny_data["camus"])[1]
    t = item["num_frames"]
    out = LoadCamusSequenced(max_frames=5, spatial_size=(64, 48))(item)
    keep = even_subsample(t, 5)
    assert out["frame_indices"].tolist() == keep.tolist() and out["image"].shape == (3, 5, 64, 48)
    # without the half-sequence ground truth only the ED and ES frames are scored, with their own masks
    item.pop("sequence_label")
    out = LoadCamusSequenced(max_frames=5, spatial_size=(64, 48))(item)
    assert out["label_valid"].tolist() == [True, False, False, False, True]
    ed_mask = np.asarray(nib.load(item["labels"]["ED"]).dataobj).squeeze().T == 1  # stored W x H
    expected = cv2.resize(ed_mask.astype(np.uint8), (48, 64), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(out["label"][0, 0].numpy(), expected)
    assert out["label"][0, 1:4].sum() == 0


def test_sequence_dice_report_pools_frames(tmp_path) -> None:
    report = SequenceDiceReport(tmp_path, n_resamples=20)
    report.reset()
    label = torch.zeros(1, 1, 3, 4, 4)
    label[..., :2, :] = 1  # 8 true pixels per frame
    pred = torch.full((1, 1, 3, 4, 4), -1.0)
    pred[0, 0, 0, :2, :] = 1.0  # frame 0 perfect
    pred[0, 0, 1, :1, :] = 1.0  # frame 1: 4 of 8
    pred[0, 0, 2] = 1.0  # frame 2: not scored
    batch = {
        "label_valid": torch.tensor([[True, True, False]]),
        "phase_code": torch.tensor([[1, 2, 0]]),
        "video_id": ["p1"],
    }
    engine = SimpleNamespace(state=SimpleNamespace(output={"pred": pred, "label": label}, batch=batch))
    report.iteration_completed(engine)
    report.completed(None)
    summary = json.loads((tmp_path / "summary.json").read_text())["camus_dice"]
    assert summary["overall"]["estimate"] == pytest.approx(2 * (8 + 4) / (8 + 4 + 16))
    assert summary["ED"]["estimate"] == pytest.approx(1.0) and summary["ES"]["estimate"] == pytest.approx(8 / 12)
    assert summary["overall"]["frames"] == 2 and "middle" not in summary
    df = pd.read_csv(tmp_path / "per_frame_dice.csv")
    assert df["frame"].tolist() == [0, 1] and df["phase"].tolist() == ["ED", "ES"]


def test_evaluate_camus_config_scores_every_frame(tiny_data, tmp_path) -> None:
    from monai.bundle import ConfigWorkflow

    from medssl_monai.networks.unet import UniLVSegUNet

    channels = [[8, 8], [16, 16], [32, 32], [64, 64], [96, 96]]
    model = tmp_path / "model.pt"
    torch.save(UniLVSegUNet(channels=channels).state_dict(), model)
    configs = ["train.yaml", "small.yaml", "evaluate_camus.yaml"]
    wf = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / c) for c in configs],
        workflow_type="eval",
        logging_file=False,
        bundle_root=str(tmp_path),
        camus_dir=str(tiny_data["camus"]),
        model_path=str(model),
        n_resamples=20,
        num_workers=0,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    summary = json.loads((tmp_path / "eval" / "camus" / "summary.json").read_text())["camus_dice"]
    datalist = load_camus_datalist(tiny_data["camus"])
    assert summary["overall"]["frames"] == sum(min(it["num_frames"], 16) for it in datalist)  # small.yaml: 16
    assert summary["ED"]["frames"] == summary["ES"]["frames"] == len(datalist)
