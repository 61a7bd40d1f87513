"""Stop a training run whose loader yields no batch, before it starts, with the override that fixes it.

MONAI's ``Workflow.run`` only warns "`dataloader` is empty ... skip the `run`" and returns, so a run on a dataset
smaller than one batch (with ``drop_last``) exits 0 as if it had trained, and an empty split or a filter that
removed every sample fails inside torch's ``RandomSampler`` ("num_samples should be a positive integer value").
:func:`check_loader_nonempty`, the first entry of every training bundle's ``run``, counts the batches from the
dataset's and sampler's lengths (nothing is loaded) and raises :class:`EmptyLoaderError` naming the dataset size,
the batch size and the override to change. Under ``python -m monai.bundle run`` (also a ``torchrun`` worker) and
``python -m medssl_monai run`` it prints the message and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

__all__ = ["EmptyLoaderError", "loader_sizes", "check_loader_nonempty"]


class EmptyLoaderError(ValueError):
    """A training loader that would yield no batch; the message names the sizes and the fixing override."""


def _length(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):  # samplers / datasets without __len__
        return None


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def loader_sizes(
    loader: DataLoader | Dataset,
    batch_size: int | None = None,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> dict[str, Any]:
    """Dataset length, samples drawn by this rank per epoch, batch size and batches per epoch, without iterating.

    Args:
        loader: a ``DataLoader`` (its own batch size, ``drop_last`` and sampler are used), or the dataset a loader
            will be built on, with the loader's ``batch_size``, ``drop_last`` and ``sampler`` (``None``: every
            sample once): the check then runs before the ``DataLoader`` exists, whose construction fails on an
            empty dataset with ``shuffle=True`` and, with ``num_workers=0``, re-seeds torch's RNG.
        batch_size: the loader's batch size (dataset form).
        drop_last: whether the loader drops an incomplete last batch (dataset form).
        sampler: the loader's sampler (dataset form), e.g. a ``DistributedSampler`` holding this rank's share.

    Returns:
        ``samples``, ``per_rank``, ``ranks``, ``batch_size``, ``drop_last`` and ``batches`` (``len(loader)``: what
        the batch sampler yields per epoch); ``None`` where unknown (iterable datasets, samplers without a length).
    """
    if isinstance(loader, DataLoader):
        dataset, sampler = loader.dataset, loader.sampler
        batch_sampler = loader.batch_sampler
        batch_size = loader.batch_size or getattr(batch_sampler, "batch_size", None)
        drop_last = bool(loader.drop_last or getattr(batch_sampler, "drop_last", False))
    else:
        dataset = loader
    iterable = isinstance(dataset, IterableDataset)
    samples = None if iterable else _length(dataset)
    per_rank = None if iterable else (_length(sampler) if sampler is not None else samples)
    if isinstance(loader, DataLoader):
        batches = None if iterable else _length(loader)
    elif per_rank is None:
        batches = None
    elif per_rank == 0:  # before a batch size derived from the data (e.g. min(batch_size, len(data))) matters
        batches = 0
    elif batch_size is None or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer with a dataset, got {batch_size}")
    else:  # what torch's BatchSampler.__len__ gives
        batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    # a DistributedSampler draws this rank's share; otherwise (partition_dataset) the dataset already is the share
    ranks = sampler.num_replicas if isinstance(sampler, DistributedSampler) else _world_size()
    return {
        "samples": samples,
        "per_rank": per_rank,
        "ranks": ranks,
        "batch_size": batch_size,
        "drop_last": bool(drop_last),
        "batches": batches,
    }


def _is_command_line_run() -> bool:
    """Whether this process is ``python -m monai.bundle`` (also a ``torchrun`` worker), ``python -m medssl_monai``
    or its ``medssl`` console script."""
    from medssl_monai.config_checks import _is_monai_bundle_main

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    ours = program.parts[-2:] == ("medssl_monai", "__main__.py") or program.name == "medssl"
    return ours or _is_monai_bundle_main(sys.argv)


def _message(
    sizes: dict[str, Any],
    name: str,
    batch_size_key: str,
    data_key: str,
    dataset_dir: Any,
    filters: Mapping[str, Any],
) -> str:
    samples, per_rank, ranks, batch_size = sizes["samples"], sizes["per_rank"], sizes["ranks"], sizes["batch_size"]
    where = f" ({dataset_dir})" if dataset_dir is not None else ""
    data_fix = f"point --{data_key} at a larger dataset{where}"
    selected = ", ".join(f"--{k} {v}" for k, v in filters.items())
    if selected:
        data_fix += f" or select more samples ({selected} now)"
    share = ""
    if ranks > 1 and per_rank is not None:  # a DistributedSampler draws a share; partition_dataset gave one already
        share = f"; {per_rank} per rank on {ranks} ranks"
        if per_rank == samples:
            share = f" (this rank's share on {ranks} ranks)"
    head = f"the {name} loader yields no batch, so nothing would be trained: "
    if samples == 0 or (per_rank == 0 and ranks == 1):
        fix = f"point --{data_key} at a dataset with {name} samples{where}"
        if selected:
            fix += f" or check what selects them ({selected} now)"
        return head + f"the {name} dataset is empty (0 samples, batch size {batch_size}); {fix}"
    if batch_size is not None and per_rank is not None and 0 < per_rank < batch_size and sizes["drop_last"]:
        return head + (
            f"the {name} dataset has {samples} samples{share}, fewer than one batch (batch size {batch_size}, "
            f"incomplete batches dropped); use --{batch_size_key} {per_rank} (or smaller), or {data_fix}"
        )
    return head + (
        f"the {name} dataset has {samples} samples{share} and the sampler draws {per_rank} per epoch "
        f"(batch size {batch_size}, drop_last {sizes['drop_last']}); try --{batch_size_key} with a smaller value, "
        f"or {data_fix}"
    )


def check_loader_nonempty(
    loader: DataLoader | Dataset,
    batch_size: int | None = None,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    name: str = "training",
    batch_size_key: str = "batch_size",
    data_key: str = "dataset_dir",
    dataset_dir: Any = None,
    filters: Mapping[str, Any] | None = None,
) -> int | None:
    """Raise before training when ``loader`` would yield no batch.

    Args:
        loader: the training ``DataLoader``, or its dataset with the next three arguments (see :func:`loader_sizes`;
            bundles pass ``@train#dataset`` so that the check runs before the loader is built). Iterable datasets
            are not checked.
        batch_size: the loader's batch size (dataset form).
        drop_last: whether the loader drops an incomplete last batch (dataset form).
        sampler: the loader's sampler, if any (dataset form).
        name: what the loader feeds, for the message.
        batch_size_key: the config key of the batch size, named in the suggested override.
        data_key: the config key of the data folder, named in the suggested override.
        dataset_dir: its value, shown in the message.
        filters: config keys that select samples and their values (e.g. ``{"label_fraction": 0.01}``).

    Returns:
        The number of batches per epoch (``None`` when the loader has no length).

    Raises:
        EmptyLoaderError: e.g. ``the training dataset has 28 samples, fewer than one batch (batch size 128,
            incomplete batches dropped); use --batch_size 28 (or smaller), ...``. In a ``python -m monai.bundle``
            or ``python -m medssl_monai`` process the message goes to stderr and the process exits with status 2
            (``SystemExit``).
    """
    sizes = loader_sizes(loader, batch_size, drop_last, sampler)
    if sizes["batches"] is None or sizes["batches"] > 0:
        return sizes["batches"]
    message = _message(sizes, name, batch_size_key, data_key, dataset_dir, dict(filters or {}))
    if _is_command_line_run():  # a command line would print a long traceback around the one line that matters
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    raise EmptyLoaderError(message)
