"""Per-sample seeding: a sample's random transform draws as a function of the run's seed, the epoch and its index.

A DataLoader worker's transforms draw from random states seeded when the worker starts. With
``persistent_workers=True`` a worker lives for the whole run, so what epoch ``e`` draws depends on every earlier
epoch, and a run resumed at epoch ``e`` (new workers) draws differently. :class:`SeededSamples` reseeds the wrapped
dataset's transforms before each sample from ``(seed, epoch, index)``, so the draws (UniLVSeg's clip window, or any
worker-side augmentation) are the same whichever worker loads the sample, whether the workers persist, and after a
resume. The epoch reaches persistent workers through a shared-memory counter that
:class:`~medssl_monai.engines.ssl.SetEpochHandler` sets at every epoch start, before the epoch's first index is sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data.utils import set_rnd
from torch.utils.data import Dataset

__all__ = ["SeededSamples", "sample_seed"]


def _index_words(index: Any) -> list[int]:
    """The integers of an index: an ``int``, or a nested tuple / list of them (UCL's ``(video, [frames])``)."""
    if isinstance(index, (tuple, list)):
        return [w for part in index for w in _index_words(part)]
    return [int(index)]


def sample_seed(seed: int, epoch: int, index: Any) -> int:
    """A well-mixed 32-bit seed for sample ``index`` (an ``int`` or a nested tuple of ints) in ``epoch`` of a run
    seeded with ``seed``. A tuple index is prefixed with its length, so ``(1, [2])`` and ``1`` never collide."""
    words = _index_words(index)
    key = [len(words), *words] if isinstance(index, (tuple, list)) else words
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), *key]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Wrap a map-style dataset: ``self[i]`` seeds the transforms from :func:`sample_seed` ``(seed, epoch, i)``.

    Args:
        dataset: a MONAI ``Dataset`` (its ``transform`` is reseeded) or any dataset whose random parts
            ``monai.data.utils.set_rnd`` reaches.
        seed: the run's seed.

    Example (bundle YAML)::

        seeded_dataset: {_target_: medssl_monai.data.seeded.SeededSamples, dataset: "@train#dataset", seed: "@seed"}
        handlers:
          - {_target_: medssl_monai.engines.ssl.SetEpochHandler, method: "@train#seeded_dataset"}
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        # shared memory: worker processes (persistent or not) read the value the main process sets
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def data(self) -> Any:
        """The wrapped dataset's datalist (for samplers and error messages that read ``dataset.data``)."""
        return getattr(self.dataset, "data", None)

    @property
    def epoch(self) -> int:
        """The epoch the next samples are drawn for."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw the following samples for ``epoch`` (call before the epoch's DataLoader iterator is created)."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        # only the transform chain: set_rnd on a MONAI Dataset would also walk its whole datalist
        set_rnd(getattr(self.dataset, "transform", self.dataset), sample_seed(self.seed, self.epoch, index))
        return self.dataset[index]
