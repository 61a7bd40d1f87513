"""Positive controls of the progression task: the true lesion sizes of each timed series, with and without times.

The progression label of a timed series (TVRL's irregularly timed setting) is whether the lesion reaches a
threshold within a horizon after the last visit, ``s_last + r * horizon >= threshold``: linear in the last size
``s_last`` and the growth rate ``r``. An encoder sees sizes only; the rate is (size change) / (time interval),
so a model must read both the images and the visit times. Two rows bound what the encoders can reach:

- **growth oracle** (``use_time=True``): the true sizes of the probed visits and their times: ``[s_last,
  growth over the last interval, least-squares growth]`` in mm per year. The label is a linear function of the
  first two (exact unless the earlier visit saw no lesion yet), so the linear probe must reach AUROC 0.95, or
  the protocol is broken (:func:`check_growth_oracle`).
- **sizes without times** (``use_time=False``): the same features with the visit index in place of the time,
  i.e. everything a model that ignores the intervals could know, even with perfect perception. The gap between
  the two rows is what the time embedding can add at most; an encoder below the second row has not read the
  sizes well enough for the times to matter.

The sizes come from the synthetic generator's ``SyntheticTruth.csv`` (``image_path,lesion_size_mm``) next to
the series CSV; a dataset without it has no such rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.evaluation.controls import BrokenProtocolError

__all__ = ["MIN_GROWTH_ORACLE_AUROC", "check_growth_oracle", "growth_features", "lesion_sizes"]

#: the growth oracle's progression AUROC floor (the label is linear in its features)
MIN_GROWTH_ORACLE_AUROC = 0.95
TRUTH_CSV = "SyntheticTruth.csv"


def lesion_sizes(series_csv: str | Path, items: Sequence[Mapping]) -> list[np.ndarray] | None:
    """The true lesion size (mm) of every visit of every series item, in the item's visit order.

    Args:
        series_csv: the series CSV the items were read from; the truth is ``SyntheticTruth.csv`` beside it.
        items: :func:`~medssl_monai.data.timed_series.load_timed_series_datalist` items (``image``: visit paths).

    Returns:
        One array per item, or ``None`` when there is no truth file with ``image_path`` and ``lesion_size_mm``.

    Raises:
        ValueError: a visit image has no row in the truth file (named).
    """
    root = Path(series_csv).resolve().parent
    truth = root / TRUTH_CSV
    if not truth.is_file():
        return None
    df = pd.read_csv(truth, dtype={"image_path": str})
    if not {"image_path", "lesion_size_mm"} <= set(df.columns):
        return None
    by_path = {str((root / p).resolve()): float(s) for p, s in zip(df["image_path"], df["lesion_size_mm"])}
    out = []
    for it in items:
        paths = [str(Path(p).resolve()) for p in it["image"]]
        missing = [p for p in paths if p not in by_path]
        if missing:
            raise ValueError(f"{truth}: no lesion_size_mm for {missing[0]} (subject {it.get('subject_id')})")
        out.append(np.array([by_path[p] for p in paths], dtype=np.float64))
    return out


def growth_features(
    times: Sequence[Sequence[float]], sizes: Sequence[np.ndarray], num_visits: int, use_time: bool = True
) -> np.ndarray:
    """``N x 3`` oracle features of the last ``num_visits`` visits: ``[s_last, last-interval growth, LS growth]``.

    Args:
        times: per series, its visit times (years), in visit order.
        sizes: per series, the true lesion sizes (mm) of the same visits (:func:`lesion_sizes`).
        num_visits: how many of the last visits the encoders see (the benchmark's ``series_frames``).
        use_time: ``False`` replaces each time by the visit index (0, 1, ...): what a time-blind model can know.

    Returns:
        Per series the last size, the growth over the last interval and the least-squares slope of size
        against time (both 0 for a single visit).
    """
    if num_visits < 1:
        raise ValueError(f"num_visits must be >= 1, got {num_visits}")
    rows = []
    for t, s in zip(times, sizes):
        s = np.asarray(s, dtype=np.float64)[-num_visits:]
        t = np.asarray(t, dtype=np.float64)[-num_visits:] if use_time else np.arange(len(s), dtype=np.float64)
        if len(t) != len(s):
            raise ValueError(f"{len(t)} visit times but {len(s)} sizes")
        if len(s) < 2:
            rows.append([s[-1], 0.0, 0.0])
            continue
        last = (s[-1] - s[-2]) / max(t[-1] - t[-2], 1e-6)
        tc = t - t.mean()
        ls = float((tc * (s - s.mean())).sum() / max((tc**2).sum(), 1e-12))
        rows.append([s[-1], last, ls])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def check_growth_oracle(auroc: float, min_auroc: float = MIN_GROWTH_ORACLE_AUROC) -> None:
    """Raise :class:`~medssl_monai.evaluation.controls.BrokenProtocolError` unless the growth oracle's progression
    AUROC reaches ``min_auroc``."""
    if not (np.isfinite(auroc) and auroc >= min_auroc):
        raise BrokenProtocolError(
            f"the protocol is broken: the growth oracle (true lesion sizes and visit times) scores progression AUROC "
            f"{auroc:.3f} < {min_auroc}; check the series split, the label alignment and the probes"
        )
