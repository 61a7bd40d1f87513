"""UCL frame sampling: anchor, positive and intra-video hard negatives per video, with the hardness curriculum.

Reference: ``GbVideoDataset.__getitem__`` (gbc-iitd/US_UCL ``ucl/datasets_gb.py``) and ``adjust_negs`` /
the curriculum in ``train_ucl.py`` (gbc-iitd/US_UCL, commit 65fea11). Per video of ``N`` frames and per step:

- anchor ``a ~ U[ceil(0.2 N), ceil(0.5 N))``;
- positive: a frame in ``[a - 3, a + 3]``, ``!= a``, inside the video;
- ``num_negatives`` negatives drawn with replacement from ``[left_low, left_high) U [right_low, right_high)`` with
  ``left_low = max(0, min(a - int(hi N), a - d - 3))``, ``left_high = max(0, min(a - int(lo N), a - d - 1))``,
  ``right_low = min(N, max(a + int(lo N), a + d + 1))``, ``right_high = min(N, max(a + ceil(hi N), a + d + 3))``
  (``d`` = 3 the positive distance): the band, widened to at least ``[a-6, a-4) U [a+4, a+6)``;
- ``(lo, hi)`` starts at ``(0.2, 0.4)``; with the cosine curriculum (``--cosine-curriculum``, what
  ``scripts/pretrain_gb.sh`` runs), from ``start_epoch`` (30) on it is multiplied every epoch by
  ``0.5 (1 + cos(pi (e - start) / (epochs - start)))``. The factor *compounds* (the reference mutates
  ``low_n``/``high_n`` in place), so the band closes in on the anchor fast; optional clipping at ``(0.03, 0.07)``
  (``--cosine-clipping``, cosine curriculum only);
- without ``--cosine-curriculum`` the reference steps through its table ``[10, 0.2-0.4, n^ only], [30, 0.2-0.4],
  [50, 0.1-0.15], [60, 0.03-0.07]`` (entry = the epoch it lasts until): ``(0.2, 0.4)`` before epoch 30,
  ``(0.1, 0.15)`` from 30, ``(0.03, 0.07)`` from 50 (:data:`STEP_CURRICULUM`; the ``n^``-only epochs are the
  method's ``warmup_epochs``).

The reference rebuilds its dataset every epoch to change the band. Here the sampling runs in the main process in a
``torch.utils.data.Sampler`` (:class:`UCLFrameSampler`) that yields ``(item_index, frame_indices)``; DataLoader
workers only load the frames they are told to, so the curriculum epoch (``set_epoch``, called by
:class:`medssl_monai.methods.ucl.UCLEpochHandler` at ``EPOCH_STARTED``, before the epoch's iterator exists) is
always the one the trainer is in, with any number of workers, persistent or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from medssl_monai import distributed

__all__ = [
    "STEP_CURRICULUM",
    "curriculum_band",
    "negative_candidates",
    "sample_ucl_indices",
    "UCLFrameSampler",
    "IndexedFrameDataset",
    "holdout_split",
    "split_videos",
    "load_video_datalist",
]


# ``train_ucl.py``'s step curriculum (used without ``--cosine-curriculum``) as ``(first epoch, lo, hi)`` after the
# initial band: its table ``[[10, .2, .4, True], [30, .2, .4, False], [50, .1, .15, False], [60, .03, .07, False]]``
# holds each entry until the listed epoch, so the band changes at epochs 30 and 50.
STEP_CURRICULUM: tuple[tuple[int, float, float], ...] = ((30, 0.1, 0.15), (50, 0.03, 0.07))


def curriculum_band(
    epoch: int,
    low: float = 0.2,
    high: float = 0.4,
    cosine_curriculum: bool = True,
    start_epoch: int = 30,
    max_epochs: int = 60,
    cosine_clipping: bool = False,
    min_low: float = 0.03,
    min_high: float = 0.07,
    step_curriculum: Sequence[Sequence[float]] = STEP_CURRICULUM,
) -> tuple[float, float]:
    """``(lo, hi)`` of the negative band at (0-based) ``epoch``: ``train_ucl.py``'s curricula.

    Cosine (``cosine_curriculum``, the reference script's choice): ``(lo, hi) = (low, high) * prod_{j=start}^{epoch}
    0.5 (1 + cos(pi (j - start) / (max_epochs - start)))`` for ``epoch >= start_epoch`` (the first factor is 1),
    then clipped from below when ``cosine_clipping``. Step (``cosine_curriculum=False``): ``(low, high)``, replaced
    by the ``(lo, hi)`` of every ``(first_epoch, lo, hi)`` entry of ``step_curriculum`` with ``epoch >=
    first_epoch`` (an empty table keeps the initial band throughout).
    """
    lo, hi = float(low), float(high)
    if not cosine_curriculum:
        for first, s_lo, s_hi in sorted(tuple(e) for e in step_curriculum):
            if epoch >= first:
                lo, hi = float(s_lo), float(s_hi)
        return lo, hi  # the reference clips only the cosine curriculum
    if epoch >= start_epoch:
        span = max(1, max_epochs - start_epoch)
        for j in range(start_epoch, epoch + 1):
            f = 0.5 * (1.0 + math.cos(math.pi * (j - start_epoch) / span))
            lo, hi = lo * f, hi * f
    if cosine_clipping:
        lo, hi = max(min_low, lo), max(min_high, hi)
    return lo, hi


def negative_candidates(num_frames: int, anchor: int, low: float, high: float, pos_distance: int = 3) -> np.ndarray:
    """Frame indices the negatives of ``anchor`` are drawn from (the reference's band with its margins)."""
    n, a, d = int(num_frames), int(anchor), int(pos_distance)
    left_low = max(0, min(a - int(high * n), a - d - 3))
    left_high = max(0, min(a - int(low * n), a - d - 1))
    right_low = min(n, max(a + int(low * n), a + d + 1))
    right_high = min(n, max(a + int(math.ceil(high * n)), a + d + 3))
    return np.concatenate([np.arange(left_low, left_high), np.arange(right_low, right_high)]).astype(np.int64)


def sample_ucl_indices(
    num_frames: int,
    rng: np.random.Generator,
    low: float = 0.2,
    high: float = 0.4,
    num_negatives: int = 3,
    pos_distance: int = 3,
    anchor_range: Sequence[float] = (0.2, 0.5),
) -> np.ndarray:
    """``[anchor, positive, negative_1, ..., negative_K]`` frame indices for one video of ``num_frames`` frames.

    Raises:
        ValueError: the video is too short to hold an anchor range, a positive and a negative band.
    """
    n = int(num_frames)
    a_lo, a_hi = int(math.ceil(n * anchor_range[0])), int(math.ceil(n * anchor_range[1]))
    if a_hi <= a_lo:
        raise ValueError(f"a {n}-frame video has an empty anchor range [{a_lo}, {a_hi})")
    anchor = int(rng.integers(a_lo, a_hi))
    pos = [i for i in range(max(0, anchor - pos_distance), min(n, anchor + pos_distance + 1)) if i != anchor]
    cand = negative_candidates(n, anchor, low, high, pos_distance)
    if not pos or len(cand) == 0:
        raise ValueError(f"a {n}-frame video is too short for UCL sampling (anchor {anchor})")
    positive = int(rng.choice(pos))
    negatives = rng.choice(cand, size=num_negatives, replace=True)  # with replacement, as np.random.choice there
    return np.concatenate([[anchor, positive], negatives]).astype(np.int64)


class UCLFrameSampler(Sampler):
    """Yields ``(item_index, [anchor, positive, negatives...])`` once per video per epoch (the reference's one item
    per video), sharded across DDP ranks like ``DistributedSampler``.

    Args:
        lengths: frames per video (e.g. ``[d["num_frames"] for d in datalist]``) or the datalist itself.
        num_negatives, pos_distance, anchor_range: per-video sampling (:func:`sample_ucl_indices`).
        low, high, cosine_curriculum, start_epoch, max_epochs, cosine_clipping, min_low, min_high,
            step_curriculum: the curriculum (:func:`curriculum_band`).
        shuffle: shuffle the videos every epoch.
        seed: base seed; the draw of epoch ``e`` depends on ``(seed, e)`` only (and not on ``e`` with
            ``fixed=True``, for validation).
        drop_last: drop the tail so every rank gets the same number of items.
        num_replicas, rank: DDP sharding; ``None`` reads the process group when iterating.
        fixed: the same indices and band every epoch (``set_epoch`` is ignored): a fixed validation task.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[dict],
        num_negatives: int = 3,
        pos_distance: int = 3,
        anchor_range: Sequence[float] = (0.2, 0.5),
        low: float = 0.2,
        high: float = 0.4,
        cosine_curriculum: bool = True,
        start_epoch: int = 30,
        max_epochs: int = 60,
        cosine_clipping: bool = False,
        min_low: float = 0.03,
        min_high: float = 0.07,
        step_curriculum: Sequence[Sequence[float]] = STEP_CURRICULUM,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        fixed: bool = False,
    ) -> None:
        self.lengths = [int(x["num_frames"]) if isinstance(x, dict) else int(x) for x in lengths]
        self.num_negatives = int(num_negatives)
        self.pos_distance = int(pos_distance)
        self.anchor_range = tuple(anchor_range)
        self.curriculum = dict(
            low=low,
            high=high,
            cosine_curriculum=cosine_curriculum,
            start_epoch=start_epoch,
            max_epochs=max_epochs,
            cosine_clipping=cosine_clipping,
            min_low=min_low,
            min_high=min_high,
            step_curriculum=[tuple(e) for e in step_curriculum],
        )
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.fixed = fixed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch (the curriculum and the shuffle depend on it)."""
        self.epoch = int(epoch)

    def band(self) -> tuple[float, float]:
        """``(lo, hi)`` used in the current epoch."""
        return curriculum_band(0 if self.fixed else self.epoch, **self.curriculum)

    def _shard(self) -> tuple[int, int]:
        reps = self.num_replicas if self.num_replicas is not None else distributed.world_size()
        rank = self.rank if self.rank is not None else distributed.rank()
        return reps, rank

    def __len__(self) -> int:
        reps, _ = self._shard()
        n = len(self.lengths)
        return n // reps if self.drop_last else math.ceil(n / reps)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        epoch = 0 if self.fixed else self.epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        reps, rank = self._shard()
        per_rank = len(self)
        total = per_rank * reps
        if total > len(order):  # pad by repeating, as DistributedSampler does
            order = np.concatenate([order, order[: total - len(order)]])
        mine = order[:total][rank::reps]
        lo, hi = self.band()
        # draws are computed up front, so prefetching workers cannot see a later epoch's band
        draws = [
            (
                int(i),
                sample_ucl_indices(
                    self.lengths[i], rng, lo, hi, self.num_negatives, self.pos_distance, self.anchor_range
                ).tolist(),
            )
            for i in mine
        ]
        return iter(draws)


class IndexedFrameDataset(Dataset):
    """A map dataset over a datalist that also accepts ``(index, frame_indices)`` keys from :class:`UCLFrameSampler`.

    ``dataset[(i, idx)]`` is ``transform({**data[i], indices_key: idx})``; ``dataset[i]`` is ``transform(data[i])``.
    """

    def __init__(
        self, data: Sequence[dict], transform: Callable | None = None, indices_key: str = "frame_indices"
    ) -> None:
        self.data = list(data)
        self.transform = transform
        self.indices_key = indices_key

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (tuple, list)):
            i, frames = index
            item = {**self.data[int(i)], self.indices_key: list(frames)}
        else:
            item = dict(self.data[int(index)])
        return self.transform(item) if self.transform is not None else item


def holdout_split(
    datalist: Sequence[dict], val_fraction: float = 0.1, seed: int = 0, min_val: int = 1
) -> tuple[list[dict], list[dict]]:
    """Split videos into ``(train, val)``: a seeded ``val_fraction`` (at least ``min_val``) held out for validation."""
    items = list(datalist)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(min_val, int(round(val_fraction * len(items)))) if val_fraction > 0 else 0
    if n_val >= len(items):
        raise ValueError(f"cannot hold out {n_val} of {len(items)} videos and still train")
    perm = np.random.default_rng(seed).permutation(len(items))
    val_idx = set(perm[:n_val].tolist())
    return [d for i, d in enumerate(items) if i not in val_idx], [d for i, d in enumerate(items) if i in val_idx]


def split_videos(
    datalist: Sequence[dict],
    num_folds: int = 5,
    fold: int = 0,
    val_fraction: float = 0.2,
    seed: int = 0,
    label_key: str = "label",
    group_key: str | None = None,
    fold_key: str | None = None,
) -> dict[str, list[dict]]:
    """Train / val / test split *by video* (no frame of a video in two splits), for k-fold cross-validation.

    Test = fold ``fold`` of sklearn's ``StratifiedKFold(num_folds, shuffle=True, random_state=seed)`` over the
    videos' labels, or of ``StratifiedGroupKFold`` when ``group_key`` names a group per item (e.g. the patient:
    no patient in two splits), or the items whose ``fold_key`` equals ``fold`` (folds given with the data, as the
    POCUS evaluation's five fixed folds). Val = a seeded, per-class ``val_fraction`` of the remaining groups (at
    least one overall, never a class's last training group; a group's class is its most frequent label); train =
    the rest. Model selection uses val only (the reference's POCUS evaluation selected on its test fold).

    Raises:
        ValueError: ``fold`` outside ``[0, num_folds)``, an empty test fold, or too few videos.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    items = list(datalist)
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    labels = np.asarray([int(d[label_key]) for d in items])
    groups = np.asarray([str(d[group_key]) for d in items] if group_key else [str(i) for i in range(len(items))])
    if fold_key is not None:
        test_idx = np.asarray([i for i, d in enumerate(items) if int(d[fold_key]) == fold], dtype=np.int64)
        if len(test_idx) == 0:
            raise ValueError(f"no item has {fold_key} == {fold}")
        split_groups = set(groups[test_idx]) & set(np.delete(groups, test_idx))
        if group_key and split_groups:
            raise ValueError(f"groups in the test fold and outside it: {sorted(split_groups)[:5]}")
    elif group_key:
        sgkf = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        _, test_idx = list(sgkf.split(np.zeros(len(items)), labels, groups))[fold]
    else:
        skf = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        _, test_idx = list(skf.split(np.zeros(len(items)), labels))[fold]
    rest = np.setdiff1d(np.arange(len(items)), test_idx)
    # validation groups, stratified by each group's most frequent label
    rest_groups = list(dict.fromkeys(groups[rest].tolist()))
    group_label = {g: int(np.bincount(labels[rest][groups[rest] == g]).argmax()) for g in rest_groups}
    rng = np.random.default_rng([seed, fold])
    val_groups: list[str] = []
    by_class: dict[int, list[str]] = {}
    for g in rest_groups:
        by_class.setdefault(group_label[g], []).append(g)
    for c in sorted(by_class):
        members = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1)
        val_groups.extend(members[:n_val])
    if not val_groups:  # tiny data: one group of the largest class that keeps a training group
        c = max(sorted(by_class), key=lambda k: len(by_class[k]))
        val_groups = [by_class[c][int(rng.permutation(len(by_class[c]))[0])]]
    val_set = set(val_groups)
    val_idx = [int(i) for i in rest if groups[i] in val_set]
    train_idx = [int(i) for i in rest if groups[i] not in val_set]
    if not train_idx:
        raise ValueError(f"{len(items)} videos are too few for a train/val/test split with {num_folds} folds")
    return {
        "train": [items[i] for i in train_idx],
        "val": [items[i] for i in val_idx],
        "test": [items[i] for i in sorted(test_idx.tolist())],
    }


def load_video_datalist(path: str | Path, cache_dir: str | Path | None = None) -> list[dict]:
    """Video items ``{"image", "video_id", "num_frames"}`` for inference from a video file, one frame folder, or a
    folder of videos / frame folders (frame counts from the decoded-clip cache)."""
    from medssl_monai.data.cache import ClipCache
    from medssl_monai.data.sources import IMAGE_EXTENSIONS
    from medssl_monai.data.video import VIDEO_EXTENSIONS

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)

    def is_frame_folder(p: Path) -> bool:
        return p.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir())

    if path.is_file() or is_frame_folder(path):
        sources = [path]
    else:
        sources = sorted(
            p for p in path.iterdir() if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or is_frame_folder(p)
        )
    cache = ClipCache(cache_dir)
    return [
        {"image": str(p), "video_id": p.stem if p.is_file() else p.name, "num_frames": len(cache.frames(p))}
        for p in sources
    ]
