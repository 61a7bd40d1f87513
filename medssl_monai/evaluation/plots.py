"""Evaluation figures for LV segmentation and EF (UniLVSeg/SimLVSeg and EchoNet-Dynamic style).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed, safe in
DataLoader workers and on headless servers); every function writes a PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_dice_histogram",
    "plot_overlays",
    "plot_area_curve",
    "plot_bland_altman",
    "plot_scatter",
    "plot_roc",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def _pair(true: ArrayLike, pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _np(true).astype(np.float64).ravel(), _np(pred).astype(np.float64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"true and pred must be non-empty and of equal length, got {t.size} and {p.size}.")
    return t, p


def plot_dice_histogram(dice: ArrayLike, out_png: str | Path, bins: int = 40, title: str = "Per-frame Dice") -> Path:
    """Histogram of per-frame Dice with its mean and median marked."""
    d = _np(dice).astype(np.float64).ravel()
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.hist(d, bins=bins, range=(0.0, 1.0), color="tab:blue", alpha=0.8)
    if d.size:
        ax.axvline(d.mean(), color="k", linestyle="--", label=f"mean {d.mean():.4f}")
        ax.axvline(np.median(d), color="tab:red", linestyle=":", label=f"median {np.median(d):.4f}")
        ax.legend(loc="upper left")
    ax.set_xlabel("Dice")
    ax.set_ylabel("frames")
    ax.set_title(f"{title} (n={d.size})")
    return _save(fig, out_png)


def _gray(image: np.ndarray) -> np.ndarray:
    # frames may come as H x W, H x W x C or C x H x W (the library's channel-first layout)
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_overlays(
    images: Sequence[ArrayLike] | np.ndarray | torch.Tensor,
    preds: Sequence[ArrayLike] | np.ndarray | torch.Tensor,
    targets: Sequence[ArrayLike] | np.ndarray | torch.Tensor,
    titles: Sequence[str] | None,
    out_png: str | Path,
    ncols: int = 4,
) -> Path:
    """Montage of frames with the predicted (red) and true (green) LV contours, e.g. the best and worst Dice cases.

    Args:
        images: N frames (``H x W``, ``H x W x C`` or ``C x H x W``; any intensity range).
        preds: N predicted masks ``H x W`` (foreground ``> 0``).
        targets: N reference masks ``H x W``.
        titles: N panel titles (e.g. "video 0X1A ED  Dice 0.93"), or None.
        out_png: output path.
        ncols: panels per row.
    """
    n = len(images)
    if not n == len(preds) == len(targets) or (titles is not None and len(titles) != n):
        raise ValueError("plot_overlays: images, preds, targets and titles need one entry per panel.")
    if n == 0:
        raise ValueError("plot_overlays: nothing to plot.")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.8 * nrows))
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(_gray(_np(images[i])), cmap="gray", vmin=0, vmax=1)
        for mask, color in ((preds[i], "tab:red"), (targets[i], "lime")):
            m = (_np(mask) > 0).astype(np.float64)
            if m.any() and not m.all():
                ax.contour(m, levels=[0.5], colors=color, linewidths=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        ax.set_axis_off()
    fig.suptitle("red: prediction, green: reference", fontsize=9)
    return _save(fig, out_png)


def plot_area_curve(
    area: ArrayLike,
    ed: Sequence[int] | int,
    es: Sequence[int] | int,
    out_png: str | Path,
    title: str = "LV area",
    ylabel: str = "area",
    smoothed: ArrayLike | None = None,
    reference: dict[str, Sequence[int] | int] | None = None,
) -> Path:
    """Per-frame LV area curve with the ED (peaks) and ES (troughs) frames marked.

    Args:
        smoothed: the smoothed curve the frames were picked on, drawn dashed.
        reference: true frames to show as vertical lines, e.g. ``{"traced ED": 12, "traced ES": 40}``.
    """
    a = _np(area).astype(np.float64).ravel()
    ed_idx = np.atleast_1d(np.asarray(ed, dtype=np.int64))
    es_idx = np.atleast_1d(np.asarray(es, dtype=np.int64))
    if np.any((ed_idx < 0) | (ed_idx >= a.size)) or np.any((es_idx < 0) | (es_idx >= a.size)):
        raise ValueError(f"ED/ES frame indices must lie in [0, {a.size}).")
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.plot(np.arange(a.size), a, color="k", linewidth=1.0)
    if smoothed is not None:
        ax.plot(np.arange(a.size), _np(smoothed).ravel(), color="0.5", linewidth=1.0, linestyle="--", label="smoothed")
    colours = iter(("tab:orange", "tab:green", "tab:purple", "tab:brown"))
    for name, frames in (reference or {}).items():
        colour = next(colours, "0.3")
        for i, f in enumerate(np.atleast_1d(np.asarray(frames, dtype=np.int64))):
            ax.axvline(int(f), color=colour, linestyle=":", linewidth=1.2, label=name if i == 0 else None)
    ax.scatter(ed_idx, a[ed_idx], color="tab:red", zorder=3, label="ED")
    ax.scatter(es_idx, a[es_idx], color="tab:blue", zorder=3, label="ES")
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    return _save(fig, out_png)


def plot_bland_altman(true: ArrayLike, pred: ArrayLike, out_png: str | Path, title: str = "Bland-Altman") -> Path:
    """Bland-Altman plot: difference (pred - true) against the mean, with the bias and the 95% limits of agreement."""
    t, p = _pair(true, pred)
    mean, diff = (t + p) / 2.0, p - t
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=8, alpha=0.6)
    ax.axhline(bias, color="k", label=f"bias {bias:.2f}")
    for k in (-1.96, 1.96):
        ax.axhline(bias + k * sd, color="tab:red", linestyle="--")
    ax.plot([], [], color="tab:red", linestyle="--", label=f"±1.96 SD ({1.96 * sd:.2f})")
    ax.set_xlabel("mean of reference and prediction")
    ax.set_ylabel("prediction - reference")
    ax.set_title(title)
    ax.legend(loc="best")
    return _save(fig, out_png)


def plot_scatter(
    true: ArrayLike, pred: ArrayLike, out_png: str | Path, title: str = "Prediction vs reference", unit: str = ""
) -> Path:
    """Scatter of prediction against reference with the identity line, MAE and R^2 in the title."""
    t, p = _pair(true, pred)
    mae = float(np.abs(p - t).mean())
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float(((p - t) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.scatter(t, p, s=8, alpha=0.6)
    ax.plot([lo, hi], [lo, hi], color="k", linestyle="--", linewidth=1.0)
    ax.set_xlabel(f"reference {unit}".strip())
    ax.set_ylabel(f"prediction {unit}".strip())
    ax.set_title(f"{title}\nMAE {mae:.2f}  R² {r2:.3f}", fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, out_png)


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], out_png: str | Path, title: str = "ROC", positive: str = ""
) -> Path:
    """ROC curves of binary scores (``sklearn.metrics.roc_curve``), one per entry, AUROC in the legend.

    Args:
        curves: name -> ``(labels, scores)``; labels are 0/1 (1 = positive), higher scores mean positive.
            A curve whose labels hold one class only is listed as undefined and not drawn.
        out_png: where the PNG goes.
        title: figure title.
        positive: name of the positive class for the axis labels (e.g. ``"abnormal"``).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(4.8, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1.0, label="chance (0.5)")
    for name, (labels, scores) in curves.items():
        y, sc = _np(labels).astype(int).reshape(-1), _np(scores).astype(float).reshape(-1)
        if len(np.unique(y)) < 2:
            ax.plot([], [], linestyle="none", label=f"{name}: undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, sc)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUROC {roc_auc_score(y, sc):.3f}, n={len(y)})")
    suffix = f" ({positive})" if positive else ""
    ax.set_xlabel("false positive rate" + suffix)
    ax.set_ylabel("true positive rate" + suffix)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)
