"""Datalist utilities shared by every bundle."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["subsample_by_key", "cycle_to_length"]


def subsample_by_key(
    datalist: Sequence[dict],
    fraction: float = 1.0,
    key: str = "video_id",
    seed: int = 0,
    count: int | None = None,
) -> list[dict]:
    """Keep a random ``fraction`` of the groups sharing ``key`` (e.g. videos), all items of a kept group.

    Used for label-fraction experiments (UniLVSeg ``pct_train``, TVRL's 1%/100%): subsampling by video keeps a
    video's ED and ES samples together, so no video is half-labelled. At least one group is always kept.

    Args:
        datalist: the items.
        fraction: the share of groups kept (ignored when ``count`` is given).
        key: the item key that names an item's group.
        seed: the selection's seed; the selection depends on nothing else (not on any model or init).
        count: keep exactly this many groups instead (few-label experiments: "5 labelled videos", which a
            fraction of 717 cannot express exactly). The groups are the first ``count`` of one seeded permutation
            of the sorted group names, so a smaller ``count`` keeps a subset of a larger one (5 videos within 10).
            More than there are keeps them all.
    """
    groups = sorted({str(d[key]) for d in datalist})
    rng = np.random.default_rng(seed)
    if count is not None:
        if int(count) < 1:
            raise ValueError(f"count must be a positive number of groups, got {count}")
        keep = {groups[i] for i in rng.permutation(len(groups))[: int(count)]}
        return [d for d in datalist if str(d[key]) in keep]
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(datalist)
    n = max(1, math.ceil(fraction * len(groups)))
    keep = {groups[i] for i in rng.choice(len(groups), size=n, replace=False)}
    return [d for d in datalist if str(d[key]) in keep]


def cycle_to_length(datalist: Sequence[dict], length: int | None = None, seed: int = 0) -> list[dict]:
    """The items of ``datalist`` repeated (or cut) to exactly ``length`` items: a fixed epoch size in samples.

    A training budget of a fixed number of optimizer steps whatever the number of labelled items (few-label
    fine-tuning: 5 or 10 videos, the same steps) becomes an epoch of ``steps x batch_size`` samples. The items
    are concatenated seeded permutations of ``datalist``, cut at ``length``: every item appears
    ``floor(length / N)`` or one more times, and each copy is a sample of its own (with
    :class:`~medssl_monai.data.seeded.SeededSamples`, its own random draws). A ``length`` below ``N`` keeps a
    seeded subset. ``None`` returns the datalist unchanged.

    Args:
        datalist: the items (not empty unless ``length`` is None or 0).
        length: the number of items to return; ``None``: unchanged.
        seed: the seed of the permutations.
    """
    items = list(datalist)
    if length is None:
        return items
    length = int(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length and not items:
        raise ValueError("cycle_to_length: an empty datalist cannot be repeated to a positive length")
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    while len(out) < length:
        out.extend(dict(items[i]) for i in rng.permutation(len(items)))  # copies: a transform may edit its item
    return out[:length]
