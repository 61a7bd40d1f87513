"""The whole-video EF diagnostics: the synthetic truth of every frame, and a run over the bundle's video path."""

from __future__ import annotations

import numpy as np
import torch
from monai.bundle import ConfigParser

from medssl_monai.data.echonet import load_echonet_datalist
from medssl_monai.data.tracings import tracing_mask
from medssl_monai.evaluation.ef_diagnostics import (
    Variant,
    diagnose_video_ef,
    markdown_table,
    summarise_variants,
    synthetic_truth_masks,
)
from medssl_monai.evaluation.segmentation import frame_dice
from tests.bundles.test_unilvseg_video_ef import BUNDLE


def test_synthetic_truth_matches_the_tracings(tiny_data) -> None:
    item = load_echonet_datalist(tiny_data["echonet"], split="ALL")[0]
    truth = synthetic_truth_masks(tiny_data["echonet"], item["video_id"])
    assert truth is not None and truth.shape == (item["num_frames"], item["height"], item["width"])
    for phase, f in item["traced_frames"].items():
        rows = np.asarray(item["tracings"][phase])
        traced = tracing_mask(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], truth.shape[1:])
        inter = np.logical_and(traced, truth[f]).sum()
        assert frame_dice([inter], [traced.sum()], [truth[f].sum()])[0] > 0.9
    assert synthetic_truth_masks(tiny_data["camus"], "x") is None


def test_diagnose_video_ef_runs_the_bundle_video_path(tiny_data, tmp_path) -> None:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ("train.yaml", "small.yaml", "evaluate.yaml")])
    parser.update(
        {"bundle_root": str(tmp_path), "dataset_dir": str(tiny_data["echonet"]), "num_workers": 0, "eval_split": "ALL"}
    )
    datalist = parser.get_parsed_content("evaluate#video_datalist")[:2]
    parser["evaluate#video_dataset#data"] = datalist
    torch.manual_seed(0)
    variants = [Variant("fp32"), Variant("fp32 net-cl in-cl", network_channels_last=True, input_channels_last=True)]
    df = diagnose_video_ef(
        parser.get_parsed_content("network_def"),
        parser.get_parsed_content("evaluate#video_dataset"),
        datalist,
        parser.get_parsed_content("evaluate#video_inferer"),
        variants=variants,
        dataset_dir=tiny_data["echonet"],
        min_distance=5,
    )
    assert len(df) == 4 and df["variant"].tolist() == ["fp32", "fp32 net-cl in-cl"] * 2
    assert (df.loc[df["variant"] == "fp32", "pixels_differing_from_reference"] == 0).all()
    # fp32 in either memory format gives the same masks up to rounding at the threshold
    assert (df["pixels_differing_from_reference"] < 1e-3).all()
    # the true masks through the same EF code land near the true EF (tiny videos hold about one beat)
    assert np.all(np.abs(df["ef_from_true_masks"] - df["ef_true"]) < 15)
    assert df["dice_traced"].between(0, 1).all() and df["dice_untraced"].between(0, 1).all()
    summary = summarise_variants(df)
    assert summary["videos"].tolist() == [2, 2]
    assert markdown_table(summary).count("\n") == 3
