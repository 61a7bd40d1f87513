"""Where does a wrong EF from masks come from? Whole-video predictions checked frame by frame.

EF from masks depends on every frame of a video, while the segmentation metric (pooled Dice) looks at the two
traced frames of a clip centred on them. :func:`diagnose_video_ef` runs a trained UniLVSeg network over whole test
videos through the bundle's own video path (``evaluate#video_preprocessing``, :class:`ClipPrepareBatch`,
:class:`VideoSlidingWindowInferer`) in several numerical variants (precision and the memory formats of network and
input) and reports, per video and variant:

* Dice on the traced frames inside the whole-video prediction (compare with the traced-frame evaluator's Dice: a
  drop means the video path, not the network, is at fault);
* Dice on every other frame where the truth is known (the synthetic generator re-renders the true mask of every
  frame; real data has tracings on two frames only): the network's predictions on frames no loss ever saw;
* the EF from the predicted masks, the EF from the true masks through the same code, and the share of mask pixels
  that differ from the reference variant (fp32, contiguous).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medssl_monai.data.tracings import tracing_mask
from medssl_monai.engines.inferers import VideoSlidingWindowInferer
from medssl_monai.engines.prepare import ClipPrepareBatch
from medssl_monai.evaluation.ef import ef_from_masks
from medssl_monai.evaluation.segmentation import frame_dice
from medssl_monai.opencv import import_cv2

cv2 = import_cv2()

__all__ = [
    "Variant",
    "DEFAULT_VARIANTS",
    "synthetic_truth_masks",
    "diagnose_video_ef",
    "summarise_variants",
    "markdown_table",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One numerical setting of the whole-video path."""

    name: str
    amp: bool = False
    network_channels_last: bool = False
    input_channels_last: bool = False


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("fp32"),
    Variant("fp32 net-cl", network_channels_last=True),
    Variant("fp32 net-cl in-cl", network_channels_last=True, input_channels_last=True),
    Variant("bf16", amp=True),
    Variant("bf16 net-cl", amp=True, network_channels_last=True),
    Variant("bf16 net-cl in-cl", amp=True, network_channels_last=True, input_channels_last=True),
)


def synthetic_truth_masks(dataset_dir: str | Path, video_id: str) -> np.ndarray | None:
    """The true LV mask of every frame (``T x H x W`` bool) of a video of the built-in synthetic EchoNet data.

    The generator is deterministic, so the video is rendered again from the parameters in ``.synthetic.json`` and
    its row of ``SyntheticTruth.csv``. ``None`` when ``dataset_dir`` is not synthetic.
    """
    from medssl_monai.data.synthetic.echonet import synthesize_echo_video
    from medssl_monai.data.synthetic.heart import LABEL_LV

    root = Path(dataset_dir)
    marker, truth_csv = root / ".synthetic.json", root / "SyntheticTruth.csv"
    if not (marker.is_file() and truth_csv.is_file()):
        return None
    meta = json.loads(marker.read_text())
    if meta.get("generator") != "echonet":
        return None
    p = meta["params"]
    truth = pd.read_csv(truth_csv)
    row = truth.loc[truth["FileName"].astype(str).str.replace(".avi", "", regex=False) == str(video_id)]
    if row.empty:
        return None
    r = row.iloc[0]
    video = synthesize_echo_video(
        int(p["seed"]),
        int(r["Index"]),
        str(r["Abnormality"]),
        int(p["image_size"]),
        float(p["fps"]),
        int(p["min_frames"]),
        int(p["max_frames"]),
    )
    return video.labels == LABEL_LV


def _traced_truth(item: dict, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """The tracing masks of a datalist item, by frame index."""
    out: dict[int, np.ndarray] = {}
    traced, tracings = item.get("traced_frames"), item.get("tracings")
    if not traced or not tracings:
        return out
    for phase, f in traced.items():
        rows = np.asarray(tracings[phase], dtype=np.float64)
        out[int(f)] = tracing_mask(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], shape).astype(bool)
    return out


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if masks.shape[-2:] == size:
        return masks
    return np.stack([cv2.resize(m.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST) for m in masks]) > 0


def _pooled(pred: np.ndarray, true: np.ndarray) -> float:
    if pred.size == 0:
        return float("nan")
    inter = np.logical_and(pred, true).sum()
    return float(frame_dice(np.array([inter]), np.array([pred.sum()]), np.array([true.sum()]))[0])


@torch.no_grad()
def diagnose_video_ef(
    network: torch.nn.Module,
    dataset: Sequence[dict],
    datalist: Sequence[dict],
    inferer: VideoSlidingWindowInferer,
    device: torch.device | str = "cpu",
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
    dataset_dir: str | Path | None = None,
    min_distance: int = 20,
) -> pd.DataFrame:
    """Per video and variant: EF (predicted, from the true masks, true), Dice on traced / untraced frames, mask
    disagreement with the first variant.

    Args:
        network: the trained segmentation network (weights loaded).
        dataset: the bundle's whole-video dataset (``evaluate#video_dataset``), item ``i`` from ``datalist[i]``.
        datalist: its datalist (for the tracings and ids).
        inferer: the bundle's video inferer (window, period, overlap; its ``channels_last`` is set per variant).
        device: where the network runs.
        variants: the numerical settings to compare; the first is the reference for the disagreement column.
        dataset_dir: the synthetic dataset folder, for the true mask of every frame (``None``: tracings only).
        min_distance: as :class:`~medssl_monai.engines.reports.VideoEFReport`.

    Returns:
        One row per (video, variant).
    """
    device = torch.device(device)
    network = network.to(device).eval()
    rows: list[dict] = []
    for i, item in enumerate(datalist):
        sample = dataset[i]
        image = torch.as_tensor(sample["image"])[None]
        t, h, w = image.shape[2:]
        vid = str(item.get("video_id", i))
        native = _traced_truth(item, (int(item.get("height") or h), int(item.get("width") or w)))
        full = synthetic_truth_masks(dataset_dir, vid) if dataset_dir is not None else None
        if full is not None:
            full = _resize_masks(full, (h, w))
        traced = {f: _resize_masks(m[None], (h, w))[0] for f, m in native.items()}
        untraced = [f for f in range(t) if f not in traced] if full is not None else []
        ef_from_truth = float("nan")
        if full is not None and full.shape[0] == t:
            ef_from_truth = ef_from_masks(full, min_distance=min_distance).ef
        reference: np.ndarray | None = None
        for v in variants:
            network.to(memory_format=torch.channels_last_3d if v.network_channels_last else torch.contiguous_format)
            prep = ClipPrepareBatch(label_key=None, channels_last=v.input_channels_last)
            x, _, _, _ = prep({"image": image}, device)
            inferer.channels_last = v.input_channels_last
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=v.amp):
                logits = inferer(x, network)
            masks = (logits.float()[0, 0] > 0).cpu().numpy()
            reference = masks if reference is None else reference
            try:
                ef = ef_from_masks(masks, min_distance=min_distance).ef
            except ValueError:
                ef = float("nan")
            traced_idx = sorted(traced)
            row = {
                "video_id": vid,
                "variant": v.name,
                "frames": t,
                "ef_true": float(item.get("ef", float("nan")) or float("nan")),
                "ef_from_true_masks": ef_from_truth,
                "ef_pred": ef,
                "dice_traced": _pooled(masks[traced_idx], np.stack([traced[f] for f in traced_idx]))
                if traced_idx
                else float("nan"),
                "dice_untraced": _pooled(masks[untraced], full[untraced]) if untraced else float("nan"),
                "pixels_differing_from_reference": float(np.mean(masks != reference)),
                "pred_area_min_max": float(masks.sum((1, 2)).min() / max(masks.sum((1, 2)).max(), 1)),
            }
            if full is not None:
                area_true, area_pred = full.sum((1, 2)), masks.sum((1, 2))
                row["frames_area_below_80pct"] = float(np.mean(area_pred < 0.8 * area_true))
                row["frames_area_above_120pct"] = float(np.mean(area_pred > 1.2 * area_true))
            rows.append(row)
        logger.info("diagnose_video_ef: %s done (%d/%d)", vid, i + 1, len(datalist))
    return pd.DataFrame(rows)


def summarise_variants(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: EF MAE and bias against the true EF, Dice on traced and untraced frames, disagreement."""
    out = []
    for name, g in df.groupby("variant", sort=False):
        err = g["ef_pred"] - g["ef_true"]
        out.append(
            {
                "variant": name,
                "videos": len(g),
                "ef_mae": float(err.abs().mean()),
                "ef_bias": float(err.mean()),
                "ef_mae_true_masks": float((g["ef_from_true_masks"] - g["ef_true"]).abs().mean()),
                "dice_traced": float(g["dice_traced"].mean()),
                "dice_untraced": float(g["dice_untraced"].mean()),
                "pixels_differing_from_reference": float(g["pixels_differing_from_reference"].mean()),
            }
        )
    return pd.DataFrame(out)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table of a small data frame (floats rounded to ``digits``)."""

    def cell(v) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
