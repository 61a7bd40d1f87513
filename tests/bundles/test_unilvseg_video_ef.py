"""UniLVSeg's EF-from-masks path at the recipe's sizes, through the bundle's own ``evaluate#video_evaluator``.

An analytic video (a bright ellipse beating on black, 112 x 112 px, 100 frames) with a known EF, a stand-in network
whose output is the true mask (a 3D convolution that thresholds the input, so the memory format reaches a real
conv3d), the recipe's 32-frame window, and every combination of network and input memory format: the EF from the
masks must come within 2 points of the analytic one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser
from skimage.draw import ellipse

from medssl_monai.data.video import write_video

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "unilvseg_echo_lv_segmentation"
SIZE, FRAMES, PERIOD = 112, 100, 40


def _axes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    phase = (1 + np.cos(2 * np.pi * t / PERIOD)) / 2  # 1 at ED (frames 0, 40, 80), 0 at ES (20, 60)
    return 24 + 12 * phase, 12 + 6 * phase  # long and short semi-axes, pixels


def _write_dataset(root: Path) -> float:
    """An EchoNet-format folder with one TEST video of an ellipse (the LV) and its analytic EF."""
    a, b = _axes(np.arange(FRAMES))
    frames = np.zeros((FRAMES, SIZE, SIZE), np.uint8)
    for f in range(FRAMES):
        r, c = ellipse(SIZE / 2, SIZE / 2, a[f], b[f], shape=(SIZE, SIZE), rotation=0.4)
        frames[f, r, c] = 255
    write_video(root / "Videos" / "analytic.avi", frames, fps=50.0)
    edv, esv = 4 / 3 * np.pi * a.max() * b.max() ** 2, 4 / 3 * np.pi * a.min() * b.min() ** 2  # prolate spheroids
    ef = 100 * (edv - esv) / edv
    pd.DataFrame(
        [
            {
                "FileName": "analytic",
                "EF": ef,
                "ESV": esv,
                "EDV": edv,
                "FrameHeight": SIZE,
                "FrameWidth": SIZE,
                "FPS": 50,
                "NumberOfFrames": FRAMES,
                "Split": "TEST",
            }
        ]
    ).to_csv(root / "FileList.csv", index=False)
    return float(ef)


class ThresholdNet(torch.nn.Module):
    """Logits ``> 0`` exactly where the (normalised) first channel is brighter than mid-grey: the true LV mask."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 1, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1, 1] = 1.0
            # mid-grey (128/255) after the EchoNet normalisation of channel 0
            self.conv.bias.fill_(-(128 / 255 - 0.12741163) / 0.19557191)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("input_channels_last", [False, True], ids=["input-contiguous", "input-channels-last"])
@pytest.mark.parametrize("network_channels_last", [False, True], ids=["net-contiguous", "net-channels-last"])
def test_recipe_video_path_recovers_the_analytic_ef(network_channels_last, input_channels_last, tmp_path):
    data = tmp_path / "echonet"
    ef_true = _write_dataset(data)
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "evaluate.yaml")])
    parser.update(
        {
            "bundle_root": str(tmp_path / "bundle"),
            "dataset_dir": str(data),
            "cache_dir": str(tmp_path / "cache"),
            "eval_dir": str(tmp_path / "eval"),
            "num_workers": 0,
            "n_resamples": 10,
            "amp": False,
            "channels_last": network_channels_last,
            "network_def": "$__import__('tests.bundles.test_unilvseg_video_ef', fromlist=['x']).ThresholdNet()",
            "evaluate#video_evaluator#prepare_batch#channels_last": input_channels_last,
            "evaluate#video_inferer#channels_last": input_channels_last,
        }
    )
    assert parser.get_parsed_content("num_frames") == 32 and parser.get_parsed_content("resize_to") is None
    net = parser.get_parsed_content("network")
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last_3d) == network_channels_last
    seen: list[bool] = []
    net.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
    )
    parser.get_parsed_content("evaluate#video_evaluator").run()

    assert seen and all(s == input_channels_last for s in seen)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["ef"]
    row = pd.read_csv(tmp_path / "eval" / "per_video_ef.csv").iloc[0]
    assert summary["videos"] == 1 and summary["videos_without_mask"] == 0
    assert row["ef_pred"] == pytest.approx(ef_true, abs=2.0)
    assert [int(f) for f in str(row["ed_frames"]).split()] in ([40], [0, 40])
    assert [int(f) for f in str(row["es_frames"]).split()] in ([20, 60], [60])
