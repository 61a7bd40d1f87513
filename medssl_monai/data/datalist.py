"""Datalist utilities shared by every bundle."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["subsample_by_key"]


def subsample_by_key(
    datalist: Sequence[dict], fraction: float = 1.0, key: str = "video_id", seed: int = 0
) -> list[dict]:
    """Keep a random ``fraction`` of the groups sharing ``key`` (e.g. videos), all items of a kept group.

    Used for label-fraction experiments (UniLVSeg ``pct_train``, TVRL's 1%/100%): subsampling by video keeps a
    video's ED and ES samples together, so no video is half-labelled. At least one group is always kept.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(datalist)
    groups = sorted({str(d[key]) for d in datalist})
    n = max(1, math.ceil(fraction * len(groups)))
    rng = np.random.default_rng(seed)
    keep = {groups[i] for i in rng.choice(len(groups), size=n, replace=False)}
    return [d for d in datalist if str(d[key]) in keep]
