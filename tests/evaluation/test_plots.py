from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medssl_monai.evaluation.plots import (
    plot_area_curve,
    plot_bland_altman,
    plot_dice_histogram,
    plot_overlays,
    plot_roc,
    plot_scatter,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_all_plots_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    assert _is_png(plot_dice_histogram(rng.uniform(0.8, 1.0, 50), tmp_path / "hist.png"))
    images = torch.rand(3, 3, 16, 16)  # C x H x W frames
    yy, xx = np.mgrid[:16, :16]
    true = np.stack([(yy - 8) ** 2 + (xx - 8) ** 2 < r * r for r in (4, 5, 6)])
    pred = np.stack([(yy - 8) ** 2 + (xx - 7) ** 2 < r * r for r in (4, 5, 6)])
    pred[2] = False  # an empty prediction must not break the contour drawing
    out = plot_overlays(images, pred, true, ["best", "median", "worst"], tmp_path / "sub" / "overlays.png", ncols=2)
    assert _is_png(out) and out.parent.name == "sub"
    area = 1000 + 200 * np.cos(np.arange(60) * 2 * np.pi / 30)
    assert _is_png(plot_area_curve(area, [0, 30], [15, 45], tmp_path / "area.png"))
    t, p = rng.normal(55, 10, 40), rng.normal(55, 10, 40)
    assert _is_png(plot_bland_altman(t, p, tmp_path / "ba.png"))
    assert _is_png(plot_scatter(t, p, tmp_path / "scatter.png", unit="%"))


def test_plot_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="equal length"):
        plot_scatter([1, 2], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one entry per panel"):
        plot_overlays(np.zeros((2, 8, 8)), np.zeros((1, 8, 8)), np.zeros((2, 8, 8)), None, tmp_path / "y.png")
    with pytest.raises(ValueError, match="ED/ES frame"):
        plot_area_curve(np.ones(5), [7], [1], tmp_path / "z.png")


def test_plot_roc_draws_defined_curves_and_lists_one_class_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    curves = {
        "informative": (y, y + rng.normal(0, 0.5, 60)),
        "chance": (y, rng.normal(0, 1, 60)),
        "one class": (np.zeros(10), rng.normal(0, 1, 10)),  # undefined AUROC: listed, not drawn, no error
    }
    assert _is_png(plot_roc(curves, tmp_path / "roc.png", positive="abnormal"))
