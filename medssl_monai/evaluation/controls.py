"""Positive controls of the representation benchmark: rows that must score well if the protocol works.

A table in which no encoder beats chance says nothing unless something *does* score well under the same split,
labels, probes and metrics. Three control rows go into every table (``docs/benchmark.md``):

- **oracle**: the true LV volume of every probed frame, pooled like every encoder's per-time features
  (:func:`oracle_features`). The synthetic generator knows it (:func:`~medssl_monai.data.synthetic.echonet.
  lv_volume_curve`, the method-of-discs volume of each frame's tracing); a dataset may ship it as
  ``LVVolumes.csv`` (``FileName,Frame,Volume``). Real EchoNet-Dynamic has volumes at two frames only: there the
  oracle is ``[EDV, ESV, ESV / EDV]`` from ``FileList.csv`` (:func:`edv_esv_features`), which checks the split,
  label alignment and probes but not the clip sampling. If this row is below EF R2 0.9 or abnormal AUROC 0.95,
  the protocol is broken (:func:`check_positive_control`) and no table is written.
- **pixels**: no learning at all: a 14 x 14 map of each pixel's temporal standard deviation
  (:func:`std_map_features`) and the sorted dark-area curve (:func:`dark_area_features`, the share of the
  imaging fan darker than a threshold per frame: the blood pools). An SSL encoder that does not beat these has
  not learnt anything a probe could not read from the pixels.
- **supervised**: the same architecture trained on the TRAIN labels (EF and abnormal) for the same number of
  optimizer steps and batch size as its self-supervised pretraining (:func:`train_supervised`), then probed
  frozen like the others: what the architecture can reach at that budget when it is told the task.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from medssl_monai.evaluation.processes import map_in_processes
from medssl_monai.evaluation.temporal import DEFAULT_QUANTILES, TemporalFeatures, pool_time

__all__ = [
    "MIN_ORACLE_EF_R2",
    "MIN_ORACLE_AUROC",
    "BrokenProtocolError",
    "check_positive_control",
    "lv_volume_curves",
    "write_lv_volumes",
    "oracle_features",
    "edv_esv_features",
    "std_map_features",
    "dark_area_features",
    "train_supervised",
    "train_supervised_rows",
]

logger = logging.getLogger(__name__)

#: the oracle row must reach these, or the protocol (split, labels, clips, probes, metrics) is broken
MIN_ORACLE_EF_R2 = 0.9
MIN_ORACLE_AUROC = 0.95
LV_VOLUMES_CSV = "LVVolumes.csv"


class BrokenProtocolError(RuntimeError):
    """The positive control (oracle row) scores below its floor: the protocol is broken, not the encoders."""


def check_positive_control(
    ef_r2: float, abnormal_auroc: float, min_ef_r2: float = MIN_ORACLE_EF_R2, min_auroc: float = MIN_ORACLE_AUROC
) -> None:
    """Raise :class:`BrokenProtocolError` unless the oracle row reaches ``min_ef_r2`` and ``min_auroc``."""
    problems = []
    if not (np.isfinite(ef_r2) and ef_r2 >= min_ef_r2):
        problems.append(f"EF R2 {ef_r2:.3f} < {min_ef_r2}")
    if not (np.isfinite(abnormal_auroc) and abnormal_auroc >= min_auroc):
        problems.append(f"abnormal AUROC {abnormal_auroc:.3f} < {min_auroc}")
    if problems:
        raise BrokenProtocolError(
            "the protocol is broken: the oracle row (true LV volumes) scores " + " and ".join(problems) + "; "
            "check the split, the label alignment, the probed clips and the probes before reading any encoder row"
        )


# ---- the oracle row ---------------------------------------------------------------------------------------


def lv_volume_curves(root: str | Path) -> dict[str, np.ndarray] | None:
    """Per-frame LV volumes (mL) of every video of an EchoNet-layout folder, keyed by ``FileName`` (no ``.avi``).

    From ``root/LVVolumes.csv`` (``FileName,Frame,Volume``) when the dataset ships one; else, for a synthetic
    EchoNet set (``.synthetic.json`` marker), recomputed from the generator without rendering
    (:func:`~medssl_monai.data.synthetic.echonet.lv_volume_curve`, a few ms per video); else ``None``.
    """
    root = Path(root)
    sidecar = root / LV_VOLUMES_CSV
    if sidecar.is_file():
        df = pd.read_csv(sidecar)
        df["FileName"] = df["FileName"].astype(str).str.replace(r"\.avi$", "", regex=True)
        out = {}
        for name, rows in df.sort_values(["FileName", "Frame"]).groupby("FileName", sort=False):
            vol = np.full(int(rows["Frame"].max()) + 1, np.nan)
            vol[rows["Frame"].to_numpy(int)] = rows["Volume"].to_numpy(float)
            out[str(name)] = vol
        return out
    marker = root / ".synthetic.json"
    if not marker.is_file():
        return None
    spec = json.loads(marker.read_text())
    if spec.get("generator") != "echonet":
        return None
    from medssl_monai.data.synthetic.echonet import lv_volume_curve

    p = spec["params"]
    truth = pd.read_csv(root / "SyntheticTruth.csv")
    kw = {k: p[k] for k in ("image_size", "fps", "min_frames", "max_frames")}
    return {
        str(row.FileName): lv_volume_curve(int(p["seed"]), int(row.Index), str(row.Abnormality), **kw)
        for row in truth.itertuples()
    }


def write_lv_volumes(curves: Mapping[str, np.ndarray], out_csv: str | Path) -> Path:
    """Write per-frame volumes as ``FileName,Frame,Volume`` (the ``LVVolumes.csv`` sidecar format)."""
    rows = [(name, i, float(v)) for name, vol in curves.items() for i, v in enumerate(vol)]
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["FileName", "Frame", "Volume"]).to_csv(out, index=False)
    return out


def oracle_features(
    volumes: np.ndarray, frame_indices: np.ndarray, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> np.ndarray:
    """The oracle's clip features: per probed frame ``[V, log V]``, pooled over time like the encoders'.

    Args:
        volumes: the video's per-frame LV volumes (mL).
        frame_indices: ``clips x T`` frame indices of the probed clips (clamped to the video).

    Returns:
        ``clips x 2 (2 + len(quantiles))``: the quantiles 0 and 1 are ESV and EDV when a clip spans a beat.
    """
    idx = np.clip(np.asarray(frame_indices, dtype=np.int64), 0, len(volumes) - 1)
    v = np.asarray(volumes, dtype=np.float64)[idx]  # clips x T
    seq = torch.as_tensor(np.stack([v, np.log(np.maximum(v, 1e-6))], axis=-1))
    return pool_time(seq, quantiles).double().numpy()


def edv_esv_features(items: Sequence[Mapping]) -> np.ndarray:
    """``[EDV, ESV, ESV / EDV]`` per item (the oracle where only the two traced volumes exist, e.g. EchoNet)."""
    edv = np.array([float(it["edv"]) for it in items])
    esv = np.array([float(it["esv"]) for it in items])
    return np.stack([edv, esv, esv / edv], axis=1)


# ---- the pixel rows ---------------------------------------------------------------------------------------


def _grey(clips: torch.Tensor) -> torch.Tensor:
    """``B x C x T x H x W`` 8-bit -> ``B x T x H x W`` float grey in [0, 1]."""
    if clips.ndim != 5:
        raise ValueError(f"expected B x C x T x H x W clips, got shape {tuple(clips.shape)}")
    return clips.float().mean(dim=1) / 255.0


def std_map_features(clips: torch.Tensor, grid: int = 14) -> torch.Tensor:
    """Each pixel's temporal standard deviation on a ``grid x grid`` map (area-averaged frames): ``B x grid^2``.

    Where the wall moves the map is bright, so its size and the motion amplitude show; nothing is learnt.
    """
    g = _grey(clips)
    b, t, h, w = g.shape
    small = F.adaptive_avg_pool2d(g.reshape(b * t, 1, h, w), grid).reshape(b, t, grid * grid)
    return small.std(dim=1, unbiased=False)


def dark_area_features(
    clips: torch.Tensor,
    thresholds: Sequence[float] = (0.05, 0.08, 0.12, 0.2),
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> torch.Tensor:
    """The sorted dark-area curves: per frame, the share of the imaging fan darker than each threshold, pooled.

    The fan is every pixel that is non-black in some frame of the clip; a 3 x 3 mean filter first takes the edge
    off the speckle. The dark area is mostly blood (LV, RV, atria), so over a beat its extremes follow EDV and ESV
    (diluted by the atria, which fill as the ventricles empty). Which grey level separates blood from tissue
    depends on gain and depth, so the curves at several ``thresholds`` (grey levels of 1) are kept and the probe's
    cross-validated penalty weighs them: nothing is tuned on evaluation videos. Returns
    ``B x len(thresholds) (2 + len(quantiles))`` (:func:`~.temporal.pool_time` of each 1-D curve).
    """
    g = _grey(clips)
    b, t, h, w = g.shape
    fan = (g > 0).any(dim=1, keepdim=True)  # B x 1 x H x W
    smooth = F.avg_pool2d(g.reshape(b * t, 1, h, w), 3, stride=1, padding=1).reshape(b, t, h, w)
    fan_area = fan.flatten(2).sum(dim=2).clamp_min(1).float()  # B x 1
    curves = [((smooth < thr) & fan).flatten(2).sum(dim=2).float() / fan_area for thr in thresholds]
    return pool_time(torch.stack(curves, dim=-1), quantiles)


# ---- the supervised row -----------------------------------------------------------------------------------


def train_supervised(
    encoder: nn.Module,
    clips: torch.Tensor,
    ef: np.ndarray,
    abnormal: np.ndarray,
    steps: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    times: torch.Tensor | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> list[float]:
    """Train ``encoder`` on the TRAIN labels: the supervised control row (same architecture, same budget).

    A linear head on the encoder's motion-keeping features (:class:`~.temporal.TemporalFeatures`, after a
    LayerNorm) regresses the standardised EF and classifies ``abnormal`` (MSE + BCE, equal weights); AdamW with
    a linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0. Each step draws
    ``batch_size`` rows of ``clips`` with replacement from a seeded generator. The encoder is trained in place
    and left in eval mode; the head is discarded (the row is probed frozen, like every other row).

    Args:
        encoder: a :class:`~medssl_monai.encoders.ClipEncoder` (random init).
        clips: ``N x C x T x H x W`` 8-bit TRAIN clips (several per video are fine).
        ef, abnormal: their labels (EF in %, 0/1).
        steps, batch_size: the budget: the SSL pretraining's optimizer steps and batch size.
        learning_rate, weight_decay, warmup_fraction: AdamW and its schedule.
        seed: the batch draws and the head's initialisation.
        times: ``N x T`` visit times for TVRL (``None``: frame indices).

    Returns:
        The training loss of every step.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    feats = TemporalFeatures(encoder, quantiles)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        dim = feats(clips[:1].clone(), None if times is None else times[:1]).shape[1]
    with torch.random.fork_rng():  # the head's init from ``seed``, the global stream left as it was
        torch.manual_seed(int(seed))
        head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2))
    y_ef = torch.as_tensor(np.asarray(ef, dtype=np.float32))
    y_ef = (y_ef - y_ef.mean()) / y_ef.std().clamp_min(1e-6)
    y_ab = torch.as_tensor(np.asarray(abnormal, dtype=np.float32))
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warm = max(1, int(round(warmup_fraction * steps)))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    encoder.train()
    head.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(clips), (batch_size,), generator=gen)
        out = head(feats(clips[idx], None if times is None else times[idx]))
        loss = F.mse_loss(out[:, 0], y_ef[idx]) + F.binary_cross_entropy_with_logits(out[:, 1], y_ab[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    return losses


def _supervised_row(task: tuple[Callable[[], nn.Module], dict[str, Any]]) -> tuple[nn.Module, list[float], float]:
    make_encoder, kwargs = task
    encoder = make_encoder()
    t0 = time.time()
    losses = train_supervised(encoder, **kwargs)
    return encoder, losses, time.time() - t0


def _supervised_row_weights(task: tuple[Callable[[], nn.Module], dict[str, Any]]) -> tuple[dict, list[float], float]:
    encoder, losses, seconds = _supervised_row(task)
    return encoder.state_dict(), losses, seconds


def train_supervised_rows(
    tasks: Mapping[str, tuple[Callable[[], nn.Module], dict[str, Any]]], jobs: int = 1
) -> dict[str, tuple[nn.Module, list[float], float]]:
    """:func:`train_supervised` for several rows: ``{row: (trained encoder, losses, seconds)}`` in task order.

    Each task is ``(make_encoder, kwargs)``: a picklable callable that builds the row's random-init encoder (the
    same one every call) and the keyword arguments of :func:`train_supervised`. The rows are independent, so
    ``jobs`` > 1 trains them in that many spawned processes of one torch thread each
    (:func:`~medssl_monai.evaluation.processes.map_in_processes`): a second torch thread gives these small steps
    only 1.3-1.55x (measured on the 2-core machine), two rows side by side 2x. A worker returns the trained
    weights, loaded here into a fresh ``make_encoder()``; the result equals the one-process result at the
    workers' thread count (one), not necessarily bit for bit at another (summation order).
    """
    fn = _supervised_row if jobs <= 1 or len(tasks) <= 1 else _supervised_row_weights
    out: dict[str, tuple[nn.Module, list[float], float]] = {}
    for (name, (make_encoder, _)), (result, losses, seconds) in zip(
        tasks.items(), map_in_processes(fn, list(tasks.values()), jobs)
    ):
        if isinstance(result, dict):
            encoder = make_encoder()
            encoder.load_state_dict(result)
            result = encoder.eval()
        out[name] = (result, losses, seconds)
        logger.info("supervised row %s: %d steps in %.0f s", name, len(losses), seconds)
    return out
